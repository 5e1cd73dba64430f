//! [`PgStore`] as the store's [`Backend`], every operation in this one
//! file: each delegates to the `PgStore` method that holds its SQL
//! (`sessions`, `turns`, `queue`, `cluster`). Unlike SQLite it overrides
//! the cluster's operations: several daemons share this store, so leases,
//! heartbeats, the run queue and outbox claims are real here.
//!
//! It adds no SQL and no policy.

use std::path::Path;

use async_trait::async_trait;

use super::{OutboxMark, PgStore};
use crate::store::backend::{Backend, Owed};
use crate::store::{
    CancelOutcome, CancelRequest, DeliveredCount, HealthEvent, HeartbeatReport, NewNotification,
    NewSession, NodeRow, NotificationAttempt, NotificationCounts, NotificationEntry, OutboxEntry,
    OutboxSummary, RecentTurns, SchedulePause, ScheduleTokens, ServiceCallRecord, SessionDetail,
    SessionRow, SessionStatus, SessionTurns, StoreError, TurnRead, TurnRecord,
};

#[async_trait]
impl Backend for PgStore {
    fn path(&self) -> &Path {
        self.display()
    }

    // Sessions.

    async fn create_session(&self, new: NewSession) -> Result<String, StoreError> {
        PgStore::create_session(self, &new).await
    }

    async fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        PgStore::finish_session(self, session_id, status, reason).await
    }

    async fn find_sessions(
        &self,
        status: Option<SessionStatus>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        PgStore::find_sessions(self, status, schedule, limit).await
    }

    async fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        PgStore::session(self, session_id).await
    }

    async fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        PgStore::last_scheduled_time(self, schedule).await
    }

    async fn token_totals_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ScheduleTokens>, StoreError> {
        PgStore::token_totals_since(self, since).await
    }

    async fn tokens_used_between(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        schedule: Option<&str>,
    ) -> Result<u64, StoreError> {
        PgStore::tokens_used_between(self, from, to, schedule).await
    }

    async fn scheduled_slots(
        &self,
        schedule: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, StoreError> {
        PgStore::scheduled_slots(self, schedule, from, to).await
    }

    // Control state.

    async fn request_cancel(
        &self,
        session_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<CancelOutcome, StoreError> {
        PgStore::request_cancel(self, session_id, reason, requested_by).await
    }

    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        PgStore::cancel_requests(self).await
    }

    async fn schedule_pauses(&self) -> Result<Vec<SchedulePause>, StoreError> {
        PgStore::schedule_pauses(self).await
    }

    async fn pause_schedule(&self, pause: SchedulePause) -> Result<(), StoreError> {
        PgStore::pause_schedule(self, &pause).await
    }

    async fn resume_schedule(&self, schedule: &str) -> Result<bool, StoreError> {
        PgStore::resume_schedule(self, schedule).await
    }

    // Turns.

    /// Fenced on this node's lease, so a session taken over elsewhere fails
    /// with [`StoreError::Fenced`]. Its writes are claimed, not read back:
    /// another node may be delivering them.
    async fn record_turn(&self, turn: TurnRecord, _limit: usize) -> Result<Owed, StoreError> {
        PgStore::record_turn(self, &turn).await?;
        Ok(Owed::ClaimFirst)
    }

    async fn recent_turns(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<RecentTurns, StoreError> {
        PgStore::recent_turns(self, session_id, limit).await
    }

    async fn last_turn(&self, session_id: &str) -> Result<u32, StoreError> {
        PgStore::last_turn(self, session_id).await
    }

    async fn session_turns_after(
        &self,
        session_id: &str,
        after_turn: i64,
        limit: usize,
    ) -> Result<SessionTurns, StoreError> {
        PgStore::session_turns_after(self, session_id, after_turn, limit).await
    }

    async fn turns_after(&self, after_id: i64, limit: usize) -> Result<Vec<TurnRead>, StoreError> {
        PgStore::turns_after(self, after_id, limit).await
    }

    async fn last_message_id(&self) -> Result<i64, StoreError> {
        PgStore::last_message_id(self).await
    }

    // The memory outbox.

    async fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        PgStore::pending_outbox(self, session_id, limit).await
    }

    async fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.mark_outbox(id, OutboxMark::Delivered, None).await
    }

    async fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.mark_outbox(id, OutboxMark::Abandoned, Some(error))
            .await
    }

    async fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.mark_outbox(id, OutboxMark::Failed, Some(error)).await
    }

    async fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: Vec<ServiceCallRecord>,
    ) -> Result<(), StoreError> {
        PgStore::record_service_calls(self, session_id, turn_id, &calls).await
    }

    async fn sessions_with_pending_outbox(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        PgStore::sessions_with_pending_outbox(self, limit).await
    }

    async fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError> {
        PgStore::outbox_counts(self, session_id).await
    }

    async fn delivered_counts(
        &self,
        ended_since: chrono::DateTime<chrono::Utc>,
        delivered_since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveredCount>, StoreError> {
        PgStore::delivered_counts(self, ended_since, delivered_since, limit).await
    }

    async fn mark_outbox_undelivered(&self, session_id: &str) -> Result<u64, StoreError> {
        PgStore::mark_outbox_undelivered(self, session_id).await
    }

    async fn delivered_payloads(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        PgStore::delivered_payloads(self, session_id).await
    }

    async fn pending_outbox_total(&self) -> Result<u64, StoreError> {
        PgStore::pending_outbox_total(self).await
    }

    async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        PgStore::outbox_summary(self).await
    }

    // The webhook outbox.

    async fn enqueue_notifications(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<u64, StoreError> {
        PgStore::enqueue_notifications(self, &notifications).await
    }

    async fn claim_notifications(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<NotificationEntry>, StoreError> {
        PgStore::claim_notifications(self, limit, lease).await
    }

    async fn record_notification_attempt(
        &self,
        id: i64,
        attempt: NotificationAttempt,
    ) -> Result<(), StoreError> {
        PgStore::record_notification_attempt(self, id, &attempt).await
    }

    async fn notification_counts(&self) -> Result<NotificationCounts, StoreError> {
        PgStore::notification_counts(self).await
    }

    // Health events.

    async fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        PgStore::record_health_event(self, service, from_state, to_state, reason).await
    }

    async fn health_events(&self, service: Option<&str>) -> Result<Vec<HealthEvent>, StoreError> {
        PgStore::health_events(self, service).await
    }

    // Maintenance.

    /// A writing round trip, in or out of an outage.
    async fn readiness(&self, _in_outage: bool) -> Result<(), StoreError> {
        self.probe().await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        self.probe().await
    }

    async fn is_usable(&self) -> bool {
        PgStore::is_usable(self).await
    }

    /// One node prunes at a time; the others prune nothing.
    async fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        PgStore::prune_sessions_before(self, cutoff, batch).await
    }

    // The cluster.

    fn is_shared(&self) -> bool {
        true
    }

    fn node_id(&self) -> Option<&str> {
        Some(PgStore::node_id(self))
    }

    async fn heartbeat(&self) -> Result<HeartbeatReport, StoreError> {
        PgStore::heartbeat(self).await
    }

    /// Those whose lease ran out, each taken over under a new lease epoch.
    async fn claim_orphaned_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.claim_expired_sessions(limit).await
    }

    fn release(&self, session_id: &str) {
        self.forget(session_id);
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        PgStore::nodes(self).await
    }

    async fn session_owners(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        PgStore::session_owners(self).await
    }

    async fn enqueue_run(&self, new: NewSession, max_queued: u32) -> Result<String, StoreError> {
        PgStore::enqueue_run(self, &new, max_queued).await
    }

    async fn claim_queued_runs(
        &self,
        scenario: &str,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        PgStore::claim_queued_runs(self, scenario, limit).await
    }

    async fn queued_runs(&self) -> Result<u64, StoreError> {
        PgStore::queued_runs(self).await
    }

    /// Claimed (`FOR UPDATE SKIP LOCKED`) among the sessions no other live
    /// node is delivering or playing.
    async fn claim_outbox_sessions(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        PgStore::claim_outbox_sessions(self, limit).await
    }

    /// Empty when another live node is delivering them.
    async fn claim_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        PgStore::claim_outbox(self, session_id, limit).await
    }

    async fn release_outbox(&self, session_id: &str) -> Result<(), StoreError> {
        PgStore::release_outbox(self, session_id).await
    }

    async fn stop_node(&self) -> Result<(), StoreError> {
        PgStore::stop_node(self).await
    }
}
