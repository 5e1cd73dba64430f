//! The one door to the store from async code: a cloneable [`StoreHandle`]
//! whose typed methods run the synchronous SQLite work on tokio's blocking
//! pool, so no caller blocks the runtime or writes its own
//! `spawn_blocking`, and a lost worker (a panic, a runtime shutting down)
//! becomes [`StoreError::Worker`] here and nowhere else. It adds no SQL and
//! no policy: each method is one `Store` call, or a few read together.

use std::path::Path;
use std::sync::Arc;

use super::outage::StoreOutage;
use super::{
    HealthEvent, NewSession, OutboxEntry, OutboxSummary, RecentTurns, ServiceCallRecord,
    SessionDetail, SessionRow, SessionStatus, Store, StoreError, TurnRecord,
};
use crate::config::StoreConfig;

/// Shared access to the audit store for async code. Cloning is cheap (an
/// `Arc`); every clone reaches the same connection.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<Store>,
    /// Shared by every clone: the store outage rule's state.
    outage: Arc<StoreOutage>,
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
            store,
            outage: Arc::default(),
        }
    }
}

impl StoreHandle {
    /// [`Store::open_configured`] off the runtime: opening may migrate.
    pub async fn open_configured(config: &StoreConfig) -> Result<Self, StoreError> {
        let config = config.clone();
        let store = blocking(move || Store::open_configured(&config)).await?;
        Ok(Self::from(store))
    }

    pub fn path(&self) -> &Path {
        self.store.path()
    }

    // Sessions.

    pub async fn create_session(&self, new: NewSession) -> Result<String, StoreError> {
        let outcome = self.call(move |store| store.create_session(&new)).await;
        self.outage.note(&outcome);
        outcome
    }

    pub async fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (id, reason) = (session_id.to_string(), reason.map(str::to_string));
        let outcome = self
            .call(move |store| store.finish_session(&id, status, reason.as_deref()))
            .await;
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
        self.call(move |store| store.find_sessions(status, schedule.as_deref(), limit))
            .await
    }

    pub async fn list_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.call(move |store| store.list_sessions(limit)).await
    }

    pub async fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        let id = session_id.to_string();
        self.call(move |store| store.session(&id)).await
    }

    pub async fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        let schedule = schedule.to_string();
        self.call(move |store| store.last_scheduled_time(&schedule))
            .await
    }

    // Turns.

    pub async fn record_turn(&self, turn: TurnRecord) -> Result<(), StoreError> {
        let outcome = self.call(move |store| store.record_turn(&turn)).await;
        self.outage.note(&outcome);
        outcome
    }

    pub async fn recent_turns(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<RecentTurns, StoreError> {
        let id = session_id.to_string();
        self.call(move |store| store.recent_turns(&id, limit)).await
    }

    pub async fn last_turn(&self, session_id: &str) -> Result<u32, StoreError> {
        let id = session_id.to_string();
        self.call(move |store| store.last_turn(&id)).await
    }

    // The memory outbox.

    pub async fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let id = session_id.to_string();
        self.call(move |store| store.pending_outbox(&id, limit))
            .await
    }

    pub async fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.call(move |store| store.mark_outbox_delivered(id))
            .await
    }

    pub async fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_string();
        self.call(move |store| store.mark_outbox_abandoned(id, &error))
            .await
    }

    pub async fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: Vec<ServiceCallRecord>,
    ) -> Result<(), StoreError> {
        let id = session_id.to_string();
        self.call(move |store| store.record_service_calls(&id, turn_id, &calls))
            .await
    }

    pub async fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_string();
        self.call(move |store| store.mark_outbox_failed(id, &error))
            .await
    }

    pub async fn sessions_with_pending_outbox(
        &self,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.call(move |store| store.sessions_with_pending_outbox(limit))
            .await
    }

    pub async fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError> {
        let id = session_id.to_string();
        self.call(move |store| store.outbox_counts(&id)).await
    }

    pub async fn pending_outbox_total(&self) -> Result<u64, StoreError> {
        self.call(|store| store.pending_outbox_total()).await
    }

    pub async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        self.call(|store| store.outbox_summary()).await
    }

    // Health events.

    pub async fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let texts = [service, from_state, to_state, reason].map(str::to_string);
        self.call(move |store| {
            let [service, from_state, to_state, reason] = &texts;
            store.record_health_event(service, from_state, to_state, reason)
        })
        .await
    }

    pub async fn health_events(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<HealthEvent>, StoreError> {
        let service = service.map(str::to_string);
        self.call(move |store| store.health_events(service.as_deref()))
            .await
    }

    // Maintenance.

    /// Whether the store can take a run now: `Err` with the reason when
    /// it cannot (a deleted or replaced file, the size cap, or an outage
    /// that a write probe shows is not over). `/readyz` and run admission
    /// ask this; a successful probe ends the outage.
    pub async fn readiness(&self) -> Result<(), String> {
        let in_outage = self.outage.reason().is_some();
        let outcome = self
            .call(move |store| {
                store.check_identity()?;
                store.check_size_cap()?;
                if in_outage {
                    store.probe_write()?;
                }
                Ok(())
            })
            .await;
        self.outage.note(&outcome);
        outcome.map_err(|error| error.to_string())
    }

    /// A small real write, at start: a store that cannot be written stops
    /// the daemon before it says READY.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.call(|store| store.probe_write()).await
    }

    /// Whether the database answers a trivial query; a lost worker counts
    /// as not usable.
    pub async fn is_usable(&self) -> bool {
        self.call(|store| Ok(store.is_usable()))
            .await
            .unwrap_or(false)
    }

    pub async fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        self.call(move |store| store.prune_sessions_before(cutoff, batch))
            .await
    }

    pub async fn compact(&self, pages: u32) -> Result<(), StoreError> {
        self.call(move |store| store.compact(pages)).await
    }

    /// Runs `work` on the blocking pool with this handle's store. Only the
    /// store module uses it, so every caller outside goes through a typed
    /// method that a second backend could implement too.
    pub(super) async fn call<T, Work>(&self, work: Work) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Work: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        blocking(move || work(&store)).await
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
