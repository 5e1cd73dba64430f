//! [`SqliteBackend`]: the store's [`Backend`] for SQLite, every operation
//! in this one file. Each runs the synchronous [`Store`] work on tokio's
//! blocking pool (`run`), so no caller blocks the runtime or writes its own
//! `spawn_blocking`, and a lost worker (a panic, a runtime shutting down)
//! becomes [`StoreError::Worker`] here and nowhere else. The cluster's
//! operations keep the trait's single-node defaults: this process owns
//! every session.
//!
//! It adds no SQL and no policy.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::Store;
use crate::config::{StoreConfig, Synchronous};
use crate::store::backend::{Backend, InPlay, Owed};
use crate::store::{
    CancelOutcome, CancelRequest, DeliveredCount, HealthEvent, NewNotification, NewSession,
    NotificationAttempt, NotificationCounts, NotificationEntry, OutboxEntry, OutboxSummary,
    RecentTurns, SchedulePause, ScheduleTokens, ServiceCallRecord, SessionDetail, SessionRow,
    SessionStatus, SessionTurns, StoreError, TurnRead, TurnRecord,
};

/// The SQLite store as async code reaches it.
pub(crate) struct SqliteBackend {
    /// A read-only connection beside the writer, for the session reads (the
    /// admin API's among them): a reader cannot write, migrate or change
    /// the journal mode, whatever it is asked. Only a configured store
    /// (a writing process) opens one. Declared first so it closes first:
    /// the writer, closing last, checkpoints and removes the WAL.
    reader: Option<Arc<Store>>,
    store: Arc<Store>,
}

impl SqliteBackend {
    /// The store `[store]` configures, as its one writing process, with a
    /// reader beside it; opened off the runtime (opening may migrate).
    pub(crate) async fn open_configured(config: &StoreConfig) -> Result<Self, StoreError> {
        let config = config.clone();
        blocking(move || {
            let store = Store::open_configured(&config)?;
            let reader = Store::open_read_only(&config.path)?;
            Ok(Self {
                store: Arc::new(store),
                reader: Some(Arc::new(reader)),
            })
        })
        .await
    }

    /// A store file opened (created, migrated) without the writer's lock,
    /// size cap or group-commit settings beyond the defaults.
    pub(crate) async fn open(path: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        blocking(move || Ok(Self::from(Store::open(&path, synchronous)?))).await
    }

    /// An existing store file opened to read only.
    pub(crate) async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        blocking(move || Ok(Self::from(Store::open_read_only(&path)?))).await
    }

    /// Runs `work` with the store on the blocking pool.
    pub(crate) async fn run<T, Work>(&self, work: Work) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Work: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        blocking(move || work(&store)).await
    }

    /// Runs a session read on the reader when there is one.
    async fn read<T, Work>(&self, work: Work) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Work: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.reader.as_ref().unwrap_or(&self.store).clone();
        blocking(move || work(&store)).await
    }

    /// Whether the session reads go through a connection that refuses
    /// writes (for tests of that promise).
    #[cfg(test)]
    pub(crate) async fn reads_refuse_writes(&self) -> bool {
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
}

impl From<Store> for SqliteBackend {
    fn from(store: Store) -> Self {
        Self::from(Arc::new(store))
    }
}

impl From<Arc<Store>> for SqliteBackend {
    fn from(store: Arc<Store>) -> Self {
        Self {
            store,
            reader: None,
        }
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn path(&self) -> &Path {
        self.store.path()
    }

    // Sessions.

    async fn create_session(&self, new: NewSession) -> Result<String, StoreError> {
        self.run(move |store| store.create_session(&new)).await
    }

    async fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (id, reason) = (session_id.to_string(), reason.map(str::to_string));
        self.run(move |store| store.finish_session(&id, status, reason.as_deref()))
            .await
    }

    async fn find_sessions(
        &self,
        status: Option<SessionStatus>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let schedule = schedule.map(str::to_string);
        self.read(move |store| store.find_sessions(status, schedule.as_deref(), limit))
            .await
    }

    async fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        let id = session_id.to_string();
        self.read(move |store| store.session(&id)).await
    }

    async fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        let schedule = schedule.to_string();
        self.run(move |store| store.last_scheduled_time(&schedule))
            .await
    }

    async fn token_totals_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ScheduleTokens>, StoreError> {
        self.read(move |store| store.token_totals_since(since))
            .await
    }

    async fn tokens_used_between(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        schedule: Option<&str>,
    ) -> Result<u64, StoreError> {
        let schedule = schedule.map(str::to_string);
        self.read(move |store| store.tokens_used_between(from, to, schedule.as_deref()))
            .await
    }

    async fn scheduled_slots(
        &self,
        schedule: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (schedule, from, to) = (schedule.to_string(), from.to_string(), to.to_string());
        self.read(move |store| store.scheduled_slots(&schedule, &from, &to))
            .await
    }

    // Control state.

    async fn request_cancel(
        &self,
        session_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<CancelOutcome, StoreError> {
        let (id, reason, by) = (
            session_id.to_string(),
            reason.to_string(),
            requested_by.to_string(),
        );
        self.run(move |store| store.request_cancel(&id, &reason, &by))
            .await
    }

    // Read every heartbeat and as each slot comes due: on the reader, so
    // the writer's commits never wait for them.
    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        self.read(|store| store.cancel_requests()).await
    }

    async fn schedule_pauses(&self) -> Result<Vec<SchedulePause>, StoreError> {
        self.read(|store| store.schedule_pauses()).await
    }

    async fn pause_schedule(&self, pause: SchedulePause) -> Result<(), StoreError> {
        self.run(move |store| store.pause_schedule(&pause)).await
    }

    async fn resume_schedule(&self, schedule: &str) -> Result<bool, StoreError> {
        let schedule = schedule.to_string();
        self.run(move |store| store.resume_schedule(&schedule))
            .await
    }

    // Turns.

    /// Read back in the turn's own transaction, so delivering them needs
    /// no trip of its own. With group commit, queued for the one task that
    /// commits what async callers queue, so no caller holds a thread
    /// while it waits.
    async fn record_turn(&self, turn: TurnRecord, limit: usize) -> Result<Owed, StoreError> {
        let entries = if self.store.groups_commits() {
            let (committed, start) = self.store.queue_turn(turn, limit);
            if start {
                // Not awaited: the task outlives this caller if it must.
                drop(tokio::spawn(self.store.clone().drain_commits()));
            }
            match committed.await {
                Ok(outcome) => outcome,
                Err(_) => Err(StoreError::Worker("the commit task stopped".into())),
            }
        } else {
            self.run(move |store| store.commit_turn(turn, limit)).await
        };
        entries.map(Owed::Entries)
    }

    /// Counted, so a commit under load waits for the turns of the other
    /// sessions in play (`store.commit_delay_ms`).
    fn in_play(&self) -> InPlay {
        InPlay::counted(self.store.in_play())
    }

    async fn recent_turns(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<RecentTurns, StoreError> {
        let id = session_id.to_string();
        self.run(move |store| store.recent_turns(&id, limit)).await
    }

    async fn last_turn(&self, session_id: &str) -> Result<u32, StoreError> {
        let id = session_id.to_string();
        self.run(move |store| store.last_turn(&id)).await
    }

    async fn session_turns_after(
        &self,
        session_id: &str,
        after_turn: i64,
        limit: usize,
    ) -> Result<SessionTurns, StoreError> {
        let id = session_id.to_string();
        self.read(move |store| store.session_turns_after(&id, after_turn, limit))
            .await
    }

    async fn turns_after(&self, after_id: i64, limit: usize) -> Result<Vec<TurnRead>, StoreError> {
        self.read(move |store| store.turns_after(after_id, limit))
            .await
    }

    async fn last_message_id(&self) -> Result<i64, StoreError> {
        self.read(Store::last_message_id).await
    }

    // The memory outbox.

    async fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let id = session_id.to_string();
        self.run(move |store| store.pending_outbox(&id, limit))
            .await
    }

    /// Queued, and written by the connection's next transaction
    /// (`Store::queue_delivered`): under load, the commit in flight or the
    /// session's next one; on an idle connection, now.
    async fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.store.queue_delivered(id);
        if self.store.connection_busy() {
            return Ok(());
        }
        self.run(|store| {
            store.flush_delivered();
            Ok(())
        })
        .await
    }

    /// Queued for a session whose next commit (or end) follows at once and
    /// writes the mark inside its own transaction. A clean close writes
    /// marks still queued; a crash loses them, and their writes are sent
    /// again under their idempotency keys.
    async fn mark_outbox_delivered_later(&self, id: i64) -> Result<(), StoreError> {
        self.store.queue_delivered(id);
        Ok(())
    }

    async fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_string();
        self.run(move |store| store.mark_outbox_abandoned(id, &error))
            .await
    }

    async fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_string();
        self.run(move |store| store.mark_outbox_failed(id, &error))
            .await
    }

    async fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: Vec<ServiceCallRecord>,
    ) -> Result<(), StoreError> {
        let id = session_id.to_string();
        self.run(move |store| store.record_service_calls(&id, turn_id, &calls))
            .await
    }

    async fn sessions_with_pending_outbox(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.run(move |store| store.sessions_with_pending_outbox(limit))
            .await
    }

    async fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError> {
        let id = session_id.to_string();
        self.run(move |store| store.outbox_counts(&id)).await
    }

    async fn delivered_counts(
        &self,
        ended_since: chrono::DateTime<chrono::Utc>,
        delivered_since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveredCount>, StoreError> {
        self.run(move |store| store.delivered_counts(ended_since, delivered_since, limit))
            .await
    }

    async fn mark_outbox_undelivered(&self, session_id: &str) -> Result<u64, StoreError> {
        let id = session_id.to_string();
        self.run(move |store| store.mark_outbox_undelivered(&id))
            .await
    }

    async fn delivered_payloads(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        let id = session_id.to_string();
        self.run(move |store| store.delivered_payloads(&id)).await
    }

    async fn pending_outbox_total(&self) -> Result<u64, StoreError> {
        self.run(|store| store.pending_outbox_total()).await
    }

    async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        self.run(|store| store.outbox_summary()).await
    }

    // The webhook outbox.

    async fn enqueue_notifications(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<u64, StoreError> {
        self.run(move |store| store.enqueue_notifications(&notifications))
            .await
    }

    async fn claim_notifications(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<NotificationEntry>, StoreError> {
        self.run(move |store| store.claim_notifications(limit, lease))
            .await
    }

    async fn record_notification_attempt(
        &self,
        id: i64,
        attempt: NotificationAttempt,
    ) -> Result<(), StoreError> {
        self.run(move |store| store.record_notification_attempt(id, &attempt))
            .await
    }

    async fn notification_counts(&self) -> Result<NotificationCounts, StoreError> {
        self.run(|store| store.notification_counts()).await
    }

    // Health events.

    async fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let [service, from_state, to_state, reason] =
            [service, from_state, to_state, reason].map(str::to_string);
        self.run(move |store| store.record_health_event(&service, &from_state, &to_state, &reason))
            .await
    }

    async fn health_events(&self, service: Option<&str>) -> Result<Vec<HealthEvent>, StoreError> {
        let service = service.map(str::to_string);
        self.run(move |store| store.health_events(service.as_deref()))
            .await
    }

    // Maintenance.

    /// A deleted or replaced file, or the size cap, refuses; in an outage,
    /// only a write probe shows it is over.
    async fn readiness(&self, in_outage: bool) -> Result<(), StoreError> {
        self.run(move |store| {
            store.check_identity()?;
            store.check_size_cap()?;
            if in_outage {
                store.probe_write()?;
            }
            Ok(())
        })
        .await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        self.run(|store| store.probe_write()).await
    }

    /// A lost worker counts as not usable.
    async fn is_usable(&self) -> bool {
        self.run(|store| Ok(store.is_usable()))
            .await
            .unwrap_or(false)
    }

    async fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        self.run(move |store| store.prune_sessions_before(cutoff, batch))
            .await
    }

    async fn compact(&self, pages: u32) -> Result<(), StoreError> {
        self.run(move |store| store.compact(pages)).await
    }
}

/// The one place a lost blocking task becomes [`StoreError::Worker`].
async fn blocking<T, Work>(work: Work) -> Result<T, StoreError>
where
    T: Send + 'static,
    Work: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join_error| StoreError::Worker(join_error.to_string()))?
}
