//! The one door to the store from async code: a cloneable [`StoreHandle`]
//! holding the configured backend as `Arc<dyn Backend>` (`backend`), plus
//! the state that belongs to no backend: the store outage rule's
//! (`outage`, noted after every write that can start or end an outage)
//! and the set of sessions whose outbox a task of this process is
//! delivering. Its methods are the store's surface; each is one call to
//! the backend. Callers never learn which backend they have, except by
//! asking [`StoreHandle::is_shared`] (a store several daemons share).
//! Long because it has one short forwarding method per store operation
//! (the `Backend` trait's), and splitting that list would hide none of it.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use super::backend::{Backend, InPlay, Owed};
use super::outage::StoreOutage;
use super::postgres::PgStore;
use super::sqlite::SqliteBackend;
use super::{
    CancelOutcome, CancelRequest, DeliveredCount, HealthEvent, HeartbeatReport, NewNotification,
    NewSession, NodeRow, NotificationAttempt, NotificationCounts, NotificationEntry, OutboxEntry,
    OutboxSummary, RecentTurns, SchedulePause, ScheduleTokens, ServiceCallRecord, SessionDetail,
    SessionRow, SessionStatus, SessionTurns, StoreError, TurnRead, TurnRecord,
};
use crate::config::{ClusterConfig, StoreBackend, StoreConfig, Synchronous};

/// Shared access to the audit store for async code. Cloning is cheap (an
/// `Arc`); every clone reaches the same connection or pool.
#[derive(Clone)]
pub struct StoreHandle {
    backend: Arc<dyn Backend>,
    /// Shared by every clone: the store outage rule's state.
    outage: Arc<StoreOutage>,
    /// Sessions whose outbox a task of this process is delivering now
    /// (shared by every clone). The store's claim belongs to the node, so
    /// without this two tasks of one node (the session, reconciliation, the
    /// background pass) could send the same writes and one could give up
    /// the claim while the other still sends.
    delivering: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
}

/// Held while this process delivers a session's outbox; see
/// [`StoreHandle::begin_delivery`].
pub struct DeliveryGuard {
    delivering: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
    session_id: String,
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        self.delivering.lock().remove(&self.session_id);
    }
}

impl StoreHandle {
    /// Opens the store `[store]` configures: SQLite as its one writing
    /// process (off the runtime: opening may migrate), or PostgreSQL as a
    /// node of the cluster `[cluster]` configures.
    pub async fn open_configured(
        config: &StoreConfig,
        cluster: &ClusterConfig,
    ) -> Result<Self, StoreError> {
        match config.backend {
            StoreBackend::Sqlite => Ok(Self::new(SqliteBackend::open_configured(config).await?)),
            StoreBackend::Postgres => Ok(Self::new(PgStore::open(config, cluster).await?)),
        }
    }

    /// Opens (creating and migrating if needed) the SQLite file at `path`
    /// with the store's defaults, without taking the writer's lock: for
    /// tests and benchmarks, and for looking into a store another process
    /// writes.
    pub async fn open_sqlite(path: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        Ok(Self::new(SqliteBackend::open(path, synchronous).await?))
    }

    /// Opens an existing SQLite file to read only (`heistd sessions`): never
    /// created, migrated or otherwise changed; a schema newer than this
    /// heistd is refused, an older one read as it is. Writes through it fail.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(SqliteBackend::open_read_only(path).await?))
    }

    fn new(backend: impl Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            outage: Arc::default(),
            delivering: Arc::default(),
        }
    }

    /// This process's right to deliver a session's outbox now, or `None`
    /// while another of its tasks is delivering it (that task sends the
    /// writes; the caller has nothing to do).
    pub fn begin_delivery(&self, session_id: &str) -> Option<DeliveryGuard> {
        self.delivering
            .lock()
            .insert(session_id.to_string())
            .then(|| DeliveryGuard {
                delivering: self.delivering.clone(),
                session_id: session_id.to_string(),
            })
    }

    /// The SQLite file, or the PostgreSQL URL without its password.
    pub fn path(&self) -> &Path {
        self.backend.path()
    }

    /// The backend as its concrete type, for the store's own cross-backend
    /// work (`store migrate`) and tests; `None` when it is another.
    pub(super) fn backend_as<Concrete: Backend>(&self) -> Option<&Concrete> {
        let backend: &dyn Any = &*self.backend;
        backend.downcast_ref()
    }

    // Sessions.

    pub async fn create_session(&self, new: NewSession) -> Result<String, StoreError> {
        self.noted(self.backend.create_session(new).await)
    }

    /// Ends an `active` session; `false` when it had already ended (or, on
    /// PostgreSQL, belongs to another live node).
    pub async fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.noted(
            self.backend
                .finish_session(session_id, status, reason)
                .await,
        )
    }

    pub async fn find_sessions(
        &self,
        status: Option<SessionStatus>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        self.backend.find_sessions(status, schedule, limit).await
    }

    /// The token totals of the sessions started at or after `since`, per
    /// schedule (none: runs no schedule started).
    pub async fn token_totals_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ScheduleTokens>, StoreError> {
        self.backend.token_totals_since(since).await
    }

    /// The tokens (prompt plus completion) of the sessions started in
    /// `[from, to)`, of `schedule` or (none) of every session: what a
    /// daily token budget has spent, from the store, so on PostgreSQL
    /// across the cluster.
    pub async fn tokens_used_between(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        schedule: Option<&str>,
    ) -> Result<u64, StoreError> {
        self.backend.tokens_used_between(from, to, schedule).await
    }

    pub async fn list_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.find_sessions(None, None, limit).await
    }

    pub async fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        self.backend.session(session_id).await
    }

    pub async fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        self.backend.last_scheduled_time(schedule).await
    }

    /// The slots of `schedule` in `[from, to]` (RFC 3339, as
    /// `DateTime::to_rfc3339` writes slots) that have a session.
    pub async fn scheduled_slots(
        &self,
        schedule: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.backend.scheduled_slots(schedule, from, to).await
    }

    // Control state.

    /// Cancels a queued session now, or records the request for the node
    /// that plays an active one.
    pub async fn request_cancel(
        &self,
        session_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<CancelOutcome, StoreError> {
        self.backend
            .request_cancel(session_id, reason, requested_by)
            .await
    }

    /// Cancel requests of sessions still active.
    pub async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        self.backend.cancel_requests().await
    }

    pub async fn schedule_pauses(&self) -> Result<Vec<SchedulePause>, StoreError> {
        self.backend.schedule_pauses().await
    }

    pub async fn pause_schedule(&self, pause: SchedulePause) -> Result<(), StoreError> {
        self.backend.pause_schedule(pause).await
    }

    /// `false` when the schedule was not paused.
    pub async fn resume_schedule(&self, schedule: &str) -> Result<bool, StoreError> {
        self.backend.resume_schedule(schedule).await
    }

    // Turns.

    /// Commits a turn; on PostgreSQL fenced on this node's lease, so a
    /// session taken over elsewhere fails with [`StoreError::Fenced`].
    pub async fn record_turn(&self, turn: TurnRecord) -> Result<(), StoreError> {
        self.record_turn_owing(turn, 0).await.map(drop)
    }

    /// [`Self::record_turn`], and what the session owes the memory service
    /// next: its first `limit` pending writes as the commit left them, when
    /// this node may deliver them without claiming (SQLite), or
    /// [`Owed::ClaimFirst`]: claim them with [`Self::claim_outbox`]
    /// (PostgreSQL, where another node may be delivering them).
    pub async fn record_turn_owing(
        &self,
        turn: TurnRecord,
        limit: usize,
    ) -> Result<Owed, StoreError> {
        self.noted(self.backend.record_turn(turn, limit).await)
    }

    /// Counts a session as playing turns until the guard is dropped, so
    /// that a commit under load waits for its turn (SQLite's group commit,
    /// `store.commit_delay_ms`); the guard counts nothing on PostgreSQL.
    pub fn in_play(&self) -> InPlay {
        self.backend.in_play()
    }

    pub async fn recent_turns(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<RecentTurns, StoreError> {
        self.backend.recent_turns(session_id, limit).await
    }

    pub async fn last_turn(&self, session_id: &str) -> Result<u32, StoreError> {
        self.backend.last_turn(session_id).await
    }

    // The admin API's event streams.

    /// A session's row and its turns after `after_turn`, oldest first.
    pub async fn session_turns_after(
        &self,
        session_id: &str,
        after_turn: i64,
        limit: usize,
    ) -> Result<SessionTurns, StoreError> {
        self.backend
            .session_turns_after(session_id, after_turn, limit)
            .await
    }

    /// Every session's turns after `messages.id` `after_id`, in id order.
    pub async fn turns_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<TurnRead>, StoreError> {
        self.backend.turns_after(after_id, limit).await
    }

    /// The highest `messages.id`, 0 with no turn.
    pub async fn last_message_id(&self) -> Result<i64, StoreError> {
        self.backend.last_message_id().await
    }

    // The memory outbox.

    pub async fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.backend.pending_outbox(session_id, limit).await
    }

    /// Marks a write delivered. On SQLite the mark is queued and written
    /// by the connection's next transaction: under load, the commit in
    /// flight or the session's next one; on an idle connection, now.
    pub async fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.backend.mark_outbox_delivered(id).await
    }

    /// Marks a write delivered by the connection's next use: on SQLite,
    /// for a session whose next commit (or end) follows at once and writes
    /// the mark inside its own transaction. A clean close writes marks
    /// still queued; a crash loses them, and their writes are sent again
    /// under their idempotency keys. On PostgreSQL, as
    /// [`Self::mark_outbox_delivered`].
    pub async fn mark_outbox_delivered_later(&self, id: i64) -> Result<(), StoreError> {
        self.backend.mark_outbox_delivered_later(id).await
    }

    pub async fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.backend.mark_outbox_abandoned(id, error).await
    }

    pub async fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: Vec<ServiceCallRecord>,
    ) -> Result<(), StoreError> {
        self.backend
            .record_service_calls(session_id, turn_id, calls)
            .await
    }

    pub async fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.backend.mark_outbox_failed(id, error).await
    }

    pub async fn sessions_with_pending_outbox(
        &self,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.backend.sessions_with_pending_outbox(limit).await
    }

    pub async fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError> {
        self.backend.outbox_counts(session_id).await
    }

    /// Sessions running or ended since `ended_since` whose last delivered
    /// write is no older than `delivered_since`, with delivered counts.
    pub async fn delivered_counts(
        &self,
        ended_since: chrono::DateTime<chrono::Utc>,
        delivered_since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveredCount>, StoreError> {
        self.backend
            .delivered_counts(ended_since, delivered_since, limit)
            .await
    }

    /// Marks a session's delivered writes undelivered again; returns how many.
    pub async fn mark_outbox_undelivered(&self, session_id: &str) -> Result<u64, StoreError> {
        self.backend.mark_outbox_undelivered(session_id).await
    }

    /// The payloads of a session's delivered memory writes, oldest first.
    pub async fn delivered_payloads(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        self.backend.delivered_payloads(session_id).await
    }

    pub async fn pending_outbox_total(&self) -> Result<u64, StoreError> {
        self.backend.pending_outbox_total().await
    }

    pub async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        self.backend.outbox_summary().await
    }

    // The webhook outbox (`[[notify]]`): see the `Backend` methods.

    pub async fn enqueue_notifications(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<u64, StoreError> {
        if notifications.is_empty() {
            return Ok(0);
        }
        self.backend.enqueue_notifications(notifications).await
    }

    pub async fn claim_notifications(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<NotificationEntry>, StoreError> {
        self.backend.claim_notifications(limit, lease).await
    }

    pub async fn record_notification_attempt(
        &self,
        id: i64,
        attempt: NotificationAttempt,
    ) -> Result<(), StoreError> {
        self.backend.record_notification_attempt(id, attempt).await
    }

    pub async fn notification_counts(&self) -> Result<NotificationCounts, StoreError> {
        self.backend.notification_counts().await
    }

    // Health events.

    pub async fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.backend
            .record_health_event(service, from_state, to_state, reason)
            .await
    }

    pub async fn health_events(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<HealthEvent>, StoreError> {
        self.backend.health_events(service).await
    }

    // Maintenance.

    /// Whether the store can take a run now: `Err` with the reason when
    /// it cannot (a deleted or replaced file, the size cap, or an outage
    /// that a write probe shows is not over). `/readyz` and run admission
    /// ask this; a successful probe ends the outage.
    pub async fn readiness(&self) -> Result<(), String> {
        let in_outage = self.outage.reason().is_some();
        let outcome = self.backend.readiness(in_outage).await;
        self.outage.note(&outcome);
        outcome.map_err(|error| error.to_string())
    }

    /// A small real write, at start: a store that cannot be written stops
    /// the daemon before it says READY.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.backend.probe_write().await
    }

    /// Whether the database answers a trivial query; a lost worker counts
    /// as not usable.
    pub async fn is_usable(&self) -> bool {
        self.backend.is_usable().await
    }

    /// Deletes up to `batch` sessions that ended before `cutoff`. On
    /// PostgreSQL one node prunes at a time; the others prune nothing.
    pub async fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        self.backend.prune_sessions_before(cutoff, batch).await
    }

    /// Gives free pages back on SQLite; PostgreSQL's autovacuum does that
    /// on its own, so there it does nothing.
    pub async fn compact(&self, pages: u32) -> Result<(), StoreError> {
        self.backend.compact(pages).await
    }

    // The cluster. A store one process owns (SQLite) is one node that owns
    // every session: the backend's single-node defaults.

    /// Whether several daemons may share this store (PostgreSQL): ask
    /// before what only a shared store does (the run queue).
    pub fn is_shared(&self) -> bool {
        self.backend.is_shared()
    }

    /// This node's id in the cluster; `None` on SQLite.
    pub fn node_id(&self) -> Option<&str> {
        self.backend.node_id()
    }

    /// Says this node is alive and renews its sessions' leases.
    pub async fn heartbeat(&self) -> Result<HeartbeatReport, StoreError> {
        self.backend.heartbeat().await
    }

    /// Sessions left `active` with nobody playing them, now this node's to
    /// resume: on SQLite every active session (call once, at start, before
    /// anything runs); on PostgreSQL those whose lease ran out, each taken
    /// over under a new lease epoch.
    pub async fn claim_orphaned_sessions(
        &self,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        self.backend.claim_orphaned_sessions(limit).await
    }

    /// This node no longer plays `session_id` (its task ended): its lease is
    /// no longer renewed, so another node may take it over once it runs
    /// out. Nothing on SQLite.
    pub fn release(&self, session_id: &str) {
        self.backend.release(session_id);
    }

    /// Every node known to the store; empty on SQLite.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.backend.nodes().await
    }

    /// (session id, owner node) of every active session; owners are `None`
    /// on SQLite.
    pub async fn session_owners(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        self.backend.session_owners().await
    }

    /// Queues a run request for whichever node has room; its session shows
    /// status `queued` until one claims it. [`StoreError::QueueFull`] with
    /// `max_queued` requests waiting; [`StoreError::NotShared`] on a store
    /// that is not shared ([`Self::is_shared`]; SQLite), where the daemon
    /// starts runs at once instead.
    pub async fn enqueue_run(
        &self,
        new: NewSession,
        max_queued: u32,
    ) -> Result<String, StoreError> {
        self.noted(self.backend.enqueue_run(new, max_queued).await)
    }

    /// Claims up to `limit` queued runs of `scenario` for this node to play
    /// (each now `active` and leased here); none on SQLite, which queues
    /// nothing.
    pub async fn claim_queued_runs(
        &self,
        scenario: &str,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        self.backend.claim_queued_runs(scenario, limit).await
    }

    /// Run requests waiting for a node; 0 on SQLite.
    pub async fn queued_runs(&self) -> Result<u64, StoreError> {
        self.backend.queued_runs().await
    }

    /// Sessions with memory writes to deliver that are now this node's to
    /// deliver: on PostgreSQL claimed among those no other live node is
    /// delivering or playing; on SQLite every session with pending writes.
    pub async fn claim_outbox_sessions(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.backend.claim_outbox_sessions(limit).await
    }

    /// A session's first `limit` pending memory writes, claimed for this
    /// node to deliver; empty when another live node is delivering them.
    /// Call [`StoreHandle::release_outbox`] when done.
    pub async fn claim_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.backend.claim_outbox(session_id, limit).await
    }

    /// Gives up this node's claim on a session's outbox (nothing to give up
    /// on SQLite).
    pub async fn release_outbox(&self, session_id: &str) -> Result<(), StoreError> {
        self.backend.release_outbox(session_id).await
    }

    /// Marks this node stopped (a clean shutdown).
    pub async fn stop_node(&self) -> Result<(), StoreError> {
        self.backend.stop_node().await
    }

    /// `outcome`, after noting it for the store outage rule.
    fn noted<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        self.outage.note(&outcome);
        outcome
    }
}

/// Doors for tests and benchmarks outside the crate, on a SQLite store
/// only; not the store's surface.
impl StoreHandle {
    /// Caps a SQLite database at about `max_bytes` (SQLite's
    /// `max_page_count`, which holds for this handle's connection): a
    /// write past it fails as a full disk would. Returns the cap in bytes.
    #[doc(hidden)]
    pub async fn limit_size(&self, max_bytes: u64) -> Result<u64, StoreError> {
        let Some(sqlite) = self.backend_as::<SqliteBackend>() else {
            return Err(StoreError::Worker(
                "limit_size caps a SQLite store only".into(),
            ));
        };
        sqlite.run(move |store| store.limit_size(max_bytes)).await
    }
}

#[cfg(test)]
impl StoreHandle {
    /// A handle on an already open SQLite store (the store's own tests).
    pub(super) fn from_sqlite(store: impl Into<SqliteBackend>) -> Self {
        Self::new(store.into())
    }

    /// The SQLite backend of a handle on one.
    pub(super) fn sqlite(&self) -> &SqliteBackend {
        self.backend_as().expect("a SQLite store")
    }
}
