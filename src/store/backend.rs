//! The store's one surface, written once: the [`Backend`] trait every
//! backend implements (`sqlite::SqliteBackend`, `postgres::PgStore`), which
//! [`super::StoreHandle`] holds as `Arc<dyn Backend>`. Each operation is a
//! typed async method with rows in and rows out: no driver type, no
//! closure over a connection.
//!
//! The cluster's operations (leases, heartbeats, the run queue, outbox
//! claims) have single-node defaults here: one process that owns its store
//! owns every session, delivers every write and queues nothing. A backend
//! several daemons share (PostgreSQL) overrides them; SQLite implements
//! none. What differs between backends is said with a type ([`Owed`],
//! [`InPlay`]), not an `Option` whose `None` means "the other backend".
//!
//! It holds no SQL and no state; the outage rule and the delivery set
//! are the handle's, backend-neutral.

use std::any::Any;
use std::path::Path;

use async_trait::async_trait;

use super::{
    CancelOutcome, CancelRequest, DeliveredCount, HealthEvent, HeartbeatReport, NewNotification,
    NewSession, NodeRow, NotificationAttempt, NotificationCounts, NotificationEntry, OutboxEntry,
    OutboxSummary, RecentTurns, SchedulePause, ScheduleTokens, ServiceCallRecord, SessionDetail,
    SessionRow, SessionStatus, SessionTurns, StoreError, TurnRead, TurnRecord,
};

/// What a committed turn leaves its session to deliver next.
#[derive(Debug)]
pub enum Owed {
    /// The session's first pending memory writes as the commit left them,
    /// this node's to deliver without claiming (SQLite: read in the turn's
    /// own transaction, so delivery needs no trip of its own).
    Entries(Vec<OutboxEntry>),
    /// Claim them first ([`super::StoreHandle::claim_outbox`]): another
    /// node may be delivering them (PostgreSQL).
    ClaimFirst,
}

/// Counts a session as playing turns until dropped, however the session
/// ends ([`super::StoreHandle::in_play`]). A backend that does not count
/// (PostgreSQL) hands out one that holds nothing.
#[must_use = "the session counts as in play only while this is held"]
pub struct InPlay {
    /// The backend's own counting guard, dropped with this.
    _counted: Option<Box<dyn Send + Sync>>,
}

impl InPlay {
    /// A guard that counts nothing.
    pub(crate) fn uncounted() -> Self {
        Self { _counted: None }
    }

    /// Wraps a backend's counting guard, which counts the session out when
    /// dropped.
    pub(crate) fn counted(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _counted: Some(Box::new(guard)),
        }
    }
}

/// One store backend. `async_trait` (dtolnay's) rather than native `async
/// fn` in traits: the handle holds `Arc<dyn Backend>`, and a native async
/// trait is not object safe; the crate boxes each future once, which is
/// what a hand-written `Pin<Box<dyn Future>>` would do, without the noise.
/// `Any`, so the store's own cross-backend work (`store migrate`) and
/// tests can reach a backend's concrete type.
#[async_trait]
pub(crate) trait Backend: Any + Send + Sync {
    /// The SQLite file, or the PostgreSQL URL without its password.
    fn path(&self) -> &Path;

    // Sessions.

    async fn create_session(&self, new: NewSession) -> Result<String, StoreError>;

    /// Ends an `active` session; `false` when it had already ended (or
    /// belongs to another live node).
    async fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError>;

    async fn find_sessions(
        &self,
        status: Option<SessionStatus>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError>;

    async fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError>;

    async fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError>;

    /// The token totals of the sessions started at or after `since`, per
    /// schedule (the day's totals in `GET /api/v1/status`); kept cheap by
    /// an index on `sessions.start_time`.
    async fn token_totals_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ScheduleTokens>, StoreError>;

    /// The slots (as stored) of `schedule` from `from` to `to` (RFC 3339
    /// text as `to_rfc3339` writes it, both included) that have a session.
    async fn scheduled_slots(
        &self,
        schedule: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, StoreError>;

    // Control state: what operators asked for, kept so that it holds on
    // every node and across restarts.

    /// Asks for a session to be cancelled: a queued one is cancelled at
    /// once (its queue row removed); an active one gets a recorded request
    /// its node acts on. [`StoreError::SessionNotFound`] for an unknown id.
    async fn request_cancel(
        &self,
        session_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<CancelOutcome, StoreError>;

    /// Cancel requests of sessions still active, oldest first.
    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError>;

    /// Every paused schedule.
    async fn schedule_pauses(&self) -> Result<Vec<SchedulePause>, StoreError>;

    /// Pauses a schedule (again: the note and who replace the old ones).
    async fn pause_schedule(&self, pause: SchedulePause) -> Result<(), StoreError>;

    /// Resumes a schedule; `false` when it was not paused.
    async fn resume_schedule(&self, schedule: &str) -> Result<bool, StoreError>;

    // Turns.

    /// Commits a turn, and says what its session owes the memory service
    /// next (up to `limit` writes).
    async fn record_turn(&self, turn: TurnRecord, limit: usize) -> Result<Owed, StoreError>;

    /// Counts a session as playing turns while the guard is held; nothing
    /// is counted by default.
    fn in_play(&self) -> InPlay {
        InPlay::uncounted()
    }

    async fn recent_turns(&self, session_id: &str, limit: usize)
        -> Result<RecentTurns, StoreError>;

    async fn last_turn(&self, session_id: &str) -> Result<u32, StoreError>;

    /// The tokens (prompt plus completion) of the sessions started in
    /// `[from, to)`, of one schedule or of all sessions: what a daily
    /// budget has spent. A range read on `sessions.start_time`'s index.
    async fn tokens_used_between(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        schedule: Option<&str>,
    ) -> Result<u64, StoreError>;

    // The admin API's event streams (reads only).

    /// A session's row and its turns after `after_turn`, oldest first, at
    /// most `limit`; `SessionNotFound` for an unknown id.
    async fn session_turns_after(
        &self,
        session_id: &str,
        after_turn: i64,
        limit: usize,
    ) -> Result<SessionTurns, StoreError>;

    /// Every session's turns after `messages.id` `after_id`, in id order,
    /// at most `limit`.
    async fn turns_after(&self, after_id: i64, limit: usize) -> Result<Vec<TurnRead>, StoreError>;

    /// The highest `messages.id` (0 with no turn): where a stream of new
    /// turns begins.
    async fn last_message_id(&self) -> Result<i64, StoreError>;

    // The memory outbox.

    async fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    async fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError>;

    /// Marks a write delivered by the connection's next use, where the
    /// backend can defer it; at once by default.
    async fn mark_outbox_delivered_later(&self, id: i64) -> Result<(), StoreError> {
        self.mark_outbox_delivered(id).await
    }

    async fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError>;

    async fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError>;

    async fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: Vec<ServiceCallRecord>,
    ) -> Result<(), StoreError>;

    async fn sessions_with_pending_outbox(&self, limit: usize) -> Result<Vec<String>, StoreError>;

    async fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError>;

    async fn delivered_counts(
        &self,
        ended_since: chrono::DateTime<chrono::Utc>,
        delivered_since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveredCount>, StoreError>;

    async fn mark_outbox_undelivered(&self, session_id: &str) -> Result<u64, StoreError>;

    /// The payloads (JSON) of a session's delivered memory writes, oldest
    /// first: what reconciliation hashes to compare with the service.
    async fn delivered_payloads(&self, session_id: &str) -> Result<Vec<String>, StoreError>;

    async fn pending_outbox_total(&self) -> Result<u64, StoreError>;

    async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError>;

    // Health events.

    async fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError>;

    async fn health_events(&self, service: Option<&str>) -> Result<Vec<HealthEvent>, StoreError>;

    // Maintenance.

    /// Whether the store can take a run now; `in_outage`: the handle has
    /// seen it fail, so only a real write shows it is back.
    async fn readiness(&self, in_outage: bool) -> Result<(), StoreError>;

    /// A small real write.
    async fn probe_write(&self) -> Result<(), StoreError>;

    /// Whether the database answers a trivial query.
    async fn is_usable(&self) -> bool;

    async fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError>;

    /// Gives free pages back; nothing by default (PostgreSQL's autovacuum
    /// does it on its own).
    async fn compact(&self, _pages: u32) -> Result<(), StoreError> {
        Ok(())
    }

    // The cluster, defaulting to one node that owns every session.

    /// Whether several daemons may share this store.
    fn is_shared(&self) -> bool {
        false
    }

    /// This node's id in the cluster; none for a store one process owns.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// Says this node is alive and renews its sessions' leases: nothing to
    /// renew for one node.
    async fn heartbeat(&self) -> Result<HeartbeatReport, StoreError> {
        Ok(HeartbeatReport::default())
    }

    /// Sessions left `active` with nobody playing them: for one node,
    /// every active session (asked once, at start, before anything runs).
    async fn claim_orphaned_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.find_sessions(Some(SessionStatus::Active), None, limit)
            .await
    }

    /// This node no longer plays `session_id`; one node holds no lease.
    fn release(&self, _session_id: &str) {}

    /// Every node known to the store; none for one node.
    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        Ok(Vec::new())
    }

    /// (session id, owner node) of every active session; no owners for one
    /// node.
    async fn session_owners(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        Ok(self
            .find_sessions(Some(SessionStatus::Active), None, 1000)
            .await?
            .into_iter()
            .map(|session| (session.session_id, None))
            .collect())
    }

    /// Queues a run request for whichever node has room. One process runs
    /// what it admits or answers "at capacity", so by default there is no
    /// queue: [`StoreError::NotShared`].
    async fn enqueue_run(&self, _new: NewSession, _max_queued: u32) -> Result<String, StoreError> {
        Err(StoreError::NotShared("the run queue"))
    }

    /// Claims queued runs of `scenario` for this node; none queue on one
    /// node.
    async fn claim_queued_runs(
        &self,
        _scenario: &str,
        _limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        Ok(Vec::new())
    }

    /// Run requests waiting for a node; none on one node.
    async fn queued_runs(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Sessions with memory writes that are now this node's to deliver:
    /// for one node, every session with pending writes.
    async fn claim_outbox_sessions(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.sessions_with_pending_outbox(limit).await
    }

    /// A session's first `limit` pending writes, claimed for this node: for
    /// one node, the plain read, and nothing is held.
    async fn claim_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.pending_outbox(session_id, limit).await
    }

    /// Gives up this node's claim on a session's outbox; one node holds
    /// none.
    async fn release_outbox(&self, _session_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Marks this node stopped (a clean shutdown); one node has no row.
    async fn stop_node(&self) -> Result<(), StoreError> {
        Ok(())
    }

    // The webhook outbox (`[[notify]]`), after the defaults above: every
    // backend has its own.

    /// Queues webhook events; one already queued for its receiver under
    /// the same key is left as it is. Returns how many were added.
    async fn enqueue_notifications(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<u64, StoreError>;

    /// Claims up to `limit` webhook events due now, oldest first, for one
    /// attempt each: they are not due again for `lease`, so no other node
    /// (or pass) sends them meanwhile.
    async fn claim_notifications(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<NotificationEntry>, StoreError>;

    /// Records how an attempt on a claimed event ended.
    async fn record_notification_attempt(
        &self,
        id: i64,
        attempt: NotificationAttempt,
    ) -> Result<(), StoreError>;

    async fn notification_counts(&self) -> Result<NotificationCounts, StoreError>;
}
