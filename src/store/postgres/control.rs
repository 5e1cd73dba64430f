//! Control state on PostgreSQL, shared by every node: operators' cancel
//! requests (`session_cancels`: any node records one, the node holding the
//! session's lease acts on it), paused schedules (`schedule_pauses`), and
//! the slots a schedule has sessions for. A queued run is cancelled here at
//! once, in the transaction that takes it out of `run_queue`, so no node
//! can claim it after.
//!
//! It decides nothing: the daemon acts on what is recorded.

use super::PgStore;
use crate::store::{
    timestamp, CancelOutcome, CancelRequest, SchedulePause, SessionStatus, StoreError,
};

impl PgStore {
    /// Cancels a queued session now, records a request for an active one
    /// (a second request keeps the first reason), and reports an ended one.
    pub async fn request_cancel(
        &self,
        session_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<CancelOutcome, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // Locked, so a claim of the queued run waits for this transaction
        // and then finds it no longer queued.
        let status: String = transaction
            .query_opt(
                "SELECT status FROM sessions WHERE session_id = $1 FOR UPDATE",
                &[&session_id],
            )
            .await?
            .map(|row| row.get(0))
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let now = timestamp(chrono::Utc::now());
        let outcome = match SessionStatus::from_text(&status) {
            SessionStatus::Queued => {
                transaction
                    .execute(
                        "DELETE FROM run_queue WHERE session_id = $1",
                        &[&session_id],
                    )
                    .await?;
                transaction
                    .execute(
                        "UPDATE sessions SET status = 'cancelled', end_time = $2, failure_reason = $3
                         WHERE session_id = $1",
                        &[&session_id, &now, &reason],
                    )
                    .await?;
                CancelOutcome::Cancelled
            }
            SessionStatus::Active => {
                transaction
                    .execute(
                        "INSERT INTO session_cancels (session_id, requested_at, reason, requested_by)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (session_id) DO NOTHING",
                        &[&session_id, &now, &reason, &requested_by],
                    )
                    .await?;
                CancelOutcome::Requested
            }
            ended => CancelOutcome::Ended(ended),
        };
        transaction.commit().await?;
        Ok(outcome)
    }

    /// Cancel requests of sessions still active, oldest first.
    pub async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.session_id, c.reason FROM session_cancels c
                 JOIN sessions s ON s.session_id = c.session_id
                 WHERE s.status = 'active' ORDER BY c.requested_at",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| CancelRequest {
                session_id: row.get(0),
                reason: row.get(1),
            })
            .collect())
    }

    pub async fn schedule_pauses(&self) -> Result<Vec<SchedulePause>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT schedule, note, paused_by, paused_at FROM schedule_pauses ORDER BY schedule",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| SchedulePause {
                schedule: row.get(0),
                note: row.get(1),
                paused_by: row.get(2),
                paused_at: row.get(3),
            })
            .collect())
    }

    pub async fn pause_schedule(&self, pause: &SchedulePause) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO schedule_pauses (schedule, note, paused_by, paused_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (schedule) DO UPDATE SET note = excluded.note,
                     paused_by = excluded.paused_by, paused_at = excluded.paused_at",
                &[&pause.schedule, &pause.note, &pause.paused_by, &pause.paused_at],
            )
            .await?;
        Ok(())
    }

    pub async fn resume_schedule(&self, schedule: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM schedule_pauses WHERE schedule = $1",
                &[&schedule],
            )
            .await?;
        Ok(deleted > 0)
    }

    /// The slots of `schedule` in `[from, to]` that have a session.
    pub async fn scheduled_slots(
        &self,
        schedule: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT scheduled_time FROM sessions WHERE schedule = $1
                   AND scheduled_time >= $2 AND scheduled_time <= $3 ORDER BY scheduled_time",
                &[&schedule, &from, &to],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}
