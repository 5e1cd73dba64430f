//! The one door to the store from async code: a cloneable [`StoreHandle`]
//! whose typed methods reach either backend. On SQLite each runs the
//! synchronous `Store` work on tokio's blocking pool, so no caller blocks
//! the runtime or writes its own `spawn_blocking`, and a lost worker (a
//! panic, a runtime shutting down) becomes [`StoreError::Worker`] here and
//! nowhere else. On PostgreSQL each is the async `PgStore` method of the
//! same name. It adds no SQL and no policy: callers never learn which
//! backend they have, except through the cluster methods, which are no-ops
//! (or "this one node") on SQLite: one SQLite process always owns every
//! session.

use std::path::Path;
use std::sync::Arc;

use super::outage::StoreOutage;
use super::postgres::{HeartbeatReport, NodeRow, OutboxMark, PgStore};
use super::{
    DeliveredCount, HealthEvent, InPlay, NewSession, OutboxEntry, OutboxSummary, RecentTurns,
    ServiceCallRecord, SessionDetail, SessionRow, SessionStatus, Store, StoreError, TurnRecord,
};
use crate::config::{ClusterConfig, StoreBackend, StoreConfig};

/// Shared access to the audit store for async code. Cloning is cheap (an
/// `Arc`); every clone reaches the same connection or pool.
#[derive(Clone)]
pub struct StoreHandle {
    backend: Backend,
    /// Shared by every clone: the store outage rule's state.
    outage: Arc<StoreOutage>,
    /// A read-only connection beside the SQLite writer, for the session
    /// reads (the admin API's among them): a reader cannot write, migrate
    /// or change the journal mode, whatever it is asked.
    reader: Option<Arc<Store>>,
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

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Store>),
    Postgres(Arc<PgStore>),
}

// The components that take a store (`HeistRunner` aside) accept
// `impl Into<StoreHandle>`, so a caller holding an `Arc<Store>` (tests, and
// the daemon's wiring until it moves to `app`) passes it as it is.
impl From<Store> for StoreHandle {
    fn from(store: Store) -> Self {
        Self::from(Arc::new(store))
    }
}

impl From<Arc<Store>> for StoreHandle {
    fn from(store: Arc<Store>) -> Self {
        Self {
            backend: Backend::Sqlite(store),
            outage: Arc::default(),
            reader: None,
            delivering: Arc::default(),
        }
    }
}

/// Runs `$sqlite` (a closure over `&Store`) on the blocking pool, or
/// `$postgres` (an expression over `store: &PgStore`) on PostgreSQL.
macro_rules! dispatch {
    ($handle:expr, |$sqlite_store:ident| $sqlite:expr, |$pg_store:ident| $postgres:expr) => {
        match &$handle.backend {
            Backend::Sqlite(store) => {
                let store = store.clone();
                blocking(move || {
                    let $sqlite_store: &Store = &store;
                    $sqlite
                })
                .await
            }
            Backend::Postgres($pg_store) => $postgres.await,
        }
    };
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
            StoreBackend::Sqlite => {
                let config = config.clone();
                let (store, reader) = blocking(move || {
                    let store = Store::open_configured(&config)?;
                    let reader = Store::open_read_only(&config.path)?;
                    Ok((store, reader))
                })
                .await?;
                let mut handle = Self::from(store);
                handle.reader = Some(Arc::new(reader));
                Ok(handle)
            }
            StoreBackend::Postgres => Ok(Self {
                backend: Backend::Postgres(Arc::new(PgStore::open(config, cluster).await?)),
                outage: Arc::default(),
                reader: None,
                delivering: Arc::default(),
            }),
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
        match &self.backend {
            Backend::Sqlite(store) => store.path(),
            Backend::Postgres(store) => store.display(),
        }
    }

    // Sessions.

    pub async fn create_session(&self, new: NewSession) -> Result<String, StoreError> {
        let outcome = dispatch!(self, |store| store.create_session(&new), |store| store
            .create_session(&new));
        self.outage.note(&outcome);
        outcome
    }

    /// Ends an `active` session; `false` when it had already ended (or, on
    /// PostgreSQL, belongs to another live node).
    pub async fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (id, reason) = (session_id.to_string(), reason.map(str::to_string));
        let outcome = dispatch!(
            self,
            |store| store.finish_session(&id, status, reason.as_deref()),
            |store| store.finish_session(&id, status, reason.as_deref())
        );
        self.outage.note(&outcome);
        outcome
    }

    pub async fn find_sessions(
        &self,
        status: Option<SessionStatus>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let schedule = schedule.map(str::to_string);
        if let Some(reader) = self.reader.clone() {
            return blocking(move || reader.find_sessions(status, schedule.as_deref(), limit))
                .await;
        }
        dispatch!(
            self,
            |store| store.find_sessions(status, schedule.as_deref(), limit),
            |store| store.find_sessions(status, schedule.as_deref(), limit)
        )
    }

    pub async fn list_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.find_sessions(None, None, limit).await
    }

    pub async fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        let id = session_id.to_string();
        if let Some(reader) = self.reader.clone() {
            return blocking(move || reader.session(&id)).await;
        }
        dispatch!(self, |store| store.session(&id), |store| store.session(&id))
    }

    /// Whether the session reads go through a connection that refuses
    /// writes (for tests of that promise).
    #[cfg(test)]
    pub(super) async fn reads_refuse_writes(&self) -> bool {
        match self.reader.clone() {
            Some(reader) => blocking(move || {
                Ok(reader
                    .lock()
                    .execute_batch("CREATE TABLE written_by_a_reader (x)")
                    .is_err())
            })
            .await
            .unwrap_or(false),
            None => false,
        }
    }

    pub async fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        let schedule = schedule.to_string();
        dispatch!(
            self,
            |store| store.last_scheduled_time(&schedule),
            |store| store.last_scheduled_time(&schedule)
        )
    }

    // Turns.

    /// Commits a turn; on PostgreSQL fenced on this node's lease, so a
    /// session taken over elsewhere fails with [`StoreError::Fenced`].
    pub async fn record_turn(&self, turn: TurnRecord) -> Result<(), StoreError> {
        self.record_turn_owing(turn, 0).await.map(drop)
    }

    /// [`Self::record_turn`], and the session's first `limit` pending memory
    /// writes as the commit left them, when this node may deliver them
    /// without claiming (SQLite: read in the turn's own transaction, so
    /// delivery needs no trip of its own). `None`: claim them with
    /// [`Self::claim_outbox`] (PostgreSQL, where another node may be
    /// delivering them).
    pub async fn record_turn_owing(
        &self,
        turn: TurnRecord,
        limit: usize,
    ) -> Result<Option<Vec<OutboxEntry>>, StoreError> {
        let outcome = match &self.backend {
            Backend::Sqlite(store) if store.groups_commits() => {
                let (committed, start) = store.queue_turn(turn, limit);
                if start {
                    // Not awaited: the task outlives this caller if it must.
                    drop(tokio::spawn(store.clone().drain_commits()));
                }
                match committed.await {
                    Ok(outcome) => outcome.map(Some),
                    Err(_) => Err(StoreError::Worker("the commit task stopped".into())),
                }
            }
            _ => dispatch!(
                self,
                |store| store.commit_turn(turn, limit).map(Some),
                |store| async { store.record_turn(&turn).await.map(|()| None) }
            ),
        };
        self.outage.note(&outcome);
        outcome
    }

    /// Counts a session as playing turns until the guard is dropped, so
    /// that a commit under load waits for its turn (SQLite's group commit,
    /// `store.commit_delay_ms`); nothing on PostgreSQL.
    pub fn in_play(&self) -> Option<InPlay> {
        match &self.backend {
            Backend::Sqlite(store) => Some(store.in_play()),
            Backend::Postgres(_) => None,
        }
    }

    pub async fn recent_turns(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<RecentTurns, StoreError> {
        let id = session_id.to_string();
        dispatch!(self, |store| store.recent_turns(&id, limit), |store| store
            .recent_turns(&id, limit))
    }

    pub async fn last_turn(&self, session_id: &str) -> Result<u32, StoreError> {
        let id = session_id.to_string();
        dispatch!(self, |store| store.last_turn(&id), |store| store
            .last_turn(&id))
    }

    // The memory outbox.

    pub async fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let id = session_id.to_string();
        dispatch!(self, |store| store.pending_outbox(&id, limit), |store| {
            store.pending_outbox(&id, limit)
        })
    }

    /// Marks a write delivered. On SQLite the mark is queued and written
    /// by the connection's next transaction (`Store::queue_delivered`):
    /// under load, the commit in flight or the session's next one; on an
    /// idle connection, now.
    pub async fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store.queue_delivered(id);
                if store.connection_busy() {
                    return Ok(());
                }
                let store = store.clone();
                blocking(move || {
                    store.flush_delivered();
                    Ok(())
                })
                .await
            }
            Backend::Postgres(store) => store.mark_outbox(id, OutboxMark::Delivered, None).await,
        }
    }

    /// Marks a write delivered by the connection's next use: on SQLite,
    /// for a session whose next commit (or end) follows at once and writes
    /// the mark inside its own transaction. A clean close writes marks
    /// still queued; a crash loses them, and their writes are sent again
    /// under their idempotency keys. On PostgreSQL, as
    /// [`Self::mark_outbox_delivered`].
    pub async fn mark_outbox_delivered_later(&self, id: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store.queue_delivered(id);
                Ok(())
            }
            Backend::Postgres(_) => self.mark_outbox_delivered(id).await,
        }
    }

    pub async fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_string();
        dispatch!(
            self,
            |store| store.mark_outbox_abandoned(id, &error),
            |store| store.mark_outbox(id, OutboxMark::Abandoned, Some(&error))
        )
    }

    pub async fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: Vec<ServiceCallRecord>,
    ) -> Result<(), StoreError> {
        let id = session_id.to_string();
        dispatch!(
            self,
            |store| store.record_service_calls(&id, turn_id, &calls),
            |store| store.record_service_calls(&id, turn_id, &calls)
        )
    }

    pub async fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_string();
        dispatch!(
            self,
            |store| store.mark_outbox_failed(id, &error),
            |store| store.mark_outbox(id, OutboxMark::Failed, Some(&error))
        )
    }

    pub async fn sessions_with_pending_outbox(
        &self,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(
            self,
            |store| store.sessions_with_pending_outbox(limit),
            |store| store.sessions_with_pending_outbox(limit)
        )
    }

    pub async fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError> {
        let id = session_id.to_string();
        dispatch!(self, |store| store.outbox_counts(&id), |store| store
            .outbox_counts(&id))
    }

    /// Sessions running or ended since `ended_since` whose last delivered
    /// write is no older than `delivered_since`, with delivered counts.
    pub async fn delivered_counts(
        &self,
        ended_since: chrono::DateTime<chrono::Utc>,
        delivered_since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveredCount>, StoreError> {
        dispatch!(
            self,
            |store| store.delivered_counts(ended_since, delivered_since, limit),
            |store| store.delivered_counts(ended_since, delivered_since, limit)
        )
    }

    /// Marks a session's delivered writes undelivered again; returns how many.
    pub async fn mark_outbox_undelivered(&self, session_id: &str) -> Result<u64, StoreError> {
        let id = session_id.to_string();
        dispatch!(self, |store| store.mark_outbox_undelivered(&id), |store| {
            store.mark_outbox_undelivered(&id)
        })
    }

    pub async fn pending_outbox_total(&self) -> Result<u64, StoreError> {
        dispatch!(self, |store| store.pending_outbox_total(), |store| store
            .pending_outbox_total())
    }

    pub async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        dispatch!(self, |store| store.outbox_summary(), |store| store
            .outbox_summary())
    }

    // Health events.

    pub async fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let [service, from_state, to_state, reason] =
            [service, from_state, to_state, reason].map(str::to_string);
        dispatch!(
            self,
            |store| store.record_health_event(&service, &from_state, &to_state, &reason),
            |store| store.record_health_event(&service, &from_state, &to_state, &reason)
        )
    }

    pub async fn health_events(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<HealthEvent>, StoreError> {
        let service = service.map(str::to_string);
        dispatch!(
            self,
            |store| store.health_events(service.as_deref()),
            |store| store.health_events(service.as_deref())
        )
    }

    // Maintenance.

    /// Whether the store can take a run now: `Err` with the reason when
    /// it cannot (a deleted or replaced file, the size cap, or an outage
    /// that a write probe shows is not over). `/readyz` and run admission
    /// ask this; a successful probe ends the outage.
    pub async fn readiness(&self) -> Result<(), String> {
        let in_outage = self.outage.reason().is_some();
        let outcome = dispatch!(
            self,
            |store| {
                store.check_identity()?;
                store.check_size_cap()?;
                if in_outage {
                    store.probe_write()?;
                }
                Ok(())
            },
            |store| store.probe()
        );
        self.outage.note(&outcome);
        outcome.map_err(|error| error.to_string())
    }

    /// A small real write, at start: a store that cannot be written stops
    /// the daemon before it says READY.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        dispatch!(self, |store| store.probe_write(), |store| store.probe())
    }

    /// Whether the database answers a trivial query; a lost worker counts
    /// as not usable.
    pub async fn is_usable(&self) -> bool {
        let usable: Result<bool, StoreError> =
            dispatch!(self, |store| Ok(store.is_usable()), |store| async {
                Ok(store.is_usable().await)
            });
        usable.unwrap_or(false)
    }

    /// Deletes up to `batch` sessions that ended before `cutoff`. On
    /// PostgreSQL one node prunes at a time; the others prune nothing.
    pub async fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        dispatch!(
            self,
            |store| store.prune_sessions_before(cutoff, batch),
            |store| store.prune_sessions_before(cutoff, batch)
        )
    }

    /// Gives free pages back on SQLite; PostgreSQL's autovacuum does that
    /// on its own, so there it does nothing.
    pub async fn compact(&self, pages: u32) -> Result<(), StoreError> {
        dispatch!(self, |store| store.compact(pages), |_store| async {
            Ok(())
        })
    }

    // The cluster. SQLite is one node that owns every session.

    /// Whether several daemons may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// This node's id in the cluster; `None` on SQLite.
    pub fn node_id(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(store.node_id()),
        }
    }

    /// Says this node is alive and renews its sessions' leases.
    pub async fn heartbeat(&self) -> Result<HeartbeatReport, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(HeartbeatReport::default()),
            Backend::Postgres(store) => store.heartbeat().await,
        }
    }

    /// Sessions left `active` with nobody playing them, now this node's to
    /// resume: on SQLite every active session (call once, at start, before
    /// anything runs); on PostgreSQL those whose lease ran out, each taken
    /// over under a new lease epoch.
    pub async fn claim_orphaned_sessions(
        &self,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => {
                self.find_sessions(Some(SessionStatus::Active), None, limit)
                    .await
            }
            Backend::Postgres(store) => store.claim_expired_sessions(limit).await,
        }
    }

    /// This node no longer plays `session_id` (its task ended): its lease is
    /// no longer renewed, so another node may take it over once it runs
    /// out. Nothing on SQLite.
    pub fn release(&self, session_id: &str) {
        if let Backend::Postgres(store) = &self.backend {
            store.forget(session_id);
        }
    }

    /// Every node known to the store; empty on SQLite.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(store) => store.nodes().await,
        }
    }

    /// (session id, owner node) of every active session; owners are `None`
    /// on SQLite.
    pub async fn session_owners(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(self
                .find_sessions(Some(SessionStatus::Active), None, 1000)
                .await?
                .into_iter()
                .map(|session| (session.session_id, None))
                .collect()),
            Backend::Postgres(store) => store.session_owners().await,
        }
    }

    // The cluster's run queue. SQLite has none: one process runs what it
    // admits, or answers "at capacity" (429), so nothing is ever queued.

    /// Queues a run request for whichever node has room; its session shows
    /// status `queued` until one claims it. [`StoreError::QueueFull`] with
    /// `max_queued` requests waiting; [`StoreError::NotShared`] on SQLite,
    /// where the daemon starts runs at once instead.
    pub async fn enqueue_run(
        &self,
        new: NewSession,
        max_queued: u32,
    ) -> Result<String, StoreError> {
        let outcome = match &self.backend {
            Backend::Sqlite(_) => Err(StoreError::NotShared("the run queue")),
            Backend::Postgres(store) => store.enqueue_run(&new, max_queued).await,
        };
        self.outage.note(&outcome);
        outcome
    }

    /// Claims up to `limit` queued runs of `scenario` for this node to play
    /// (each now `active` and leased here); none on SQLite, which queues
    /// nothing.
    pub async fn claim_queued_runs(
        &self,
        scenario: &str,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(store) => store.claim_queued_runs(scenario, limit).await,
        }
    }

    /// Run requests waiting for a node; 0 on SQLite.
    pub async fn queued_runs(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(0),
            Backend::Postgres(store) => store.queued_runs().await,
        }
    }

    // Claiming outbox deliveries. On SQLite the one process delivers every
    // session's writes, so a claim is the plain read and nothing is held.

    /// Sessions with memory writes to deliver that are now this node's to
    /// deliver: on PostgreSQL claimed (`FOR UPDATE SKIP LOCKED`) among those
    /// no other live node is delivering or playing; on SQLite every session
    /// with pending writes.
    pub async fn claim_outbox_sessions(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => self.sessions_with_pending_outbox(limit).await,
            Backend::Postgres(store) => store.claim_outbox_sessions(limit).await,
        }
    }

    /// A session's first `limit` pending memory writes, claimed for this
    /// node to deliver; empty when another live node is delivering them.
    /// Call [`StoreHandle::release_outbox`] when done.
    pub async fn claim_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => self.pending_outbox(session_id, limit).await,
            Backend::Postgres(store) => store.claim_outbox(session_id, limit).await,
        }
    }

    /// Gives up this node's claim on a session's outbox (nothing to give up
    /// on SQLite).
    pub async fn release_outbox(&self, session_id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(store) => store.release_outbox(session_id).await,
        }
    }

    /// Marks this node stopped (a clean shutdown).
    pub async fn stop_node(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(store) => store.stop_node().await,
        }
    }

    /// The PostgreSQL backend, for the store's own cross-backend work
    /// (`store migrate`).
    pub(super) fn postgres(&self) -> Option<&Arc<PgStore>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(store),
        }
    }

    /// Runs `work` on the blocking pool with this handle's SQLite store.
    /// Only the store module uses it, so every caller outside goes through
    /// a typed method that both backends implement.
    #[cfg(test)]
    pub(super) async fn call<T, Work>(&self, work: Work) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Work: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(store) => {
                let store = store.clone();
                blocking(move || work(&store)).await
            }
            Backend::Postgres(_) => Err(StoreError::Worker("not a SQLite store".into())),
        }
    }
}

/// The one place a lost blocking task becomes [`StoreError::Worker`].
pub(super) async fn blocking<T, Work>(work: Work) -> Result<T, StoreError>
where
    T: Send + 'static,
    Work: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join_error| StoreError::Worker(join_error.to_string()))?
}
