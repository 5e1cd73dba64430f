//! Control state on SQLite: operators' cancel requests (`session_cancels`)
//! and paused schedules (`schedule_pauses`), and the slots a schedule has
//! sessions for (what a backfill leaves out). One process owns the file,
//! so nothing is queued here: a session is active or it has ended.
//!
//! It decides nothing: the daemon acts on what is recorded.

use rusqlite::{params, OptionalExtension};

use super::Store;
use crate::store::{
    timestamp, CancelOutcome, CancelRequest, SchedulePause, SessionStatus, StoreError,
};

impl Store {
    /// Records a cancel request of an active session (a second request
    /// keeps the first reason); an ended session is reported as such.
    pub fn request_cancel(
        &self,
        session_id: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<CancelOutcome, StoreError> {
        self.check_identity()?;
        let mut connection = self.lock();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let status: String = transaction
            .query_row(
                "SELECT status FROM sessions WHERE session_id = ?1",
                params![session_id],
                |row| row.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let status = SessionStatus::from_text(&status);
        if status != SessionStatus::Active {
            return Ok(CancelOutcome::Ended(status));
        }
        transaction.execute(
            "INSERT INTO session_cancels (session_id, requested_at, reason, requested_by)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (session_id) DO NOTHING",
            params![
                session_id,
                timestamp(chrono::Utc::now()),
                reason,
                requested_by
            ],
        )?;
        transaction.commit()?;
        Ok(CancelOutcome::Requested)
    }

    /// Cancel requests of sessions still active, oldest first.
    pub fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT c.session_id, c.reason FROM session_cancels c
             JOIN sessions s ON s.session_id = c.session_id
             WHERE s.status = 'active' ORDER BY c.requested_at",
        )?;
        let rows = statement
            .query_map([], |row| {
                Ok(CancelRequest {
                    session_id: row.get(0)?,
                    reason: row.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn schedule_pauses(&self) -> Result<Vec<SchedulePause>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT schedule, note, paused_by, paused_at FROM schedule_pauses ORDER BY schedule",
        )?;
        let rows = statement
            .query_map([], |row| {
                Ok(SchedulePause {
                    schedule: row.get(0)?,
                    note: row.get(1)?,
                    paused_by: row.get(2)?,
                    paused_at: row.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn pause_schedule(&self, pause: &SchedulePause) -> Result<(), StoreError> {
        self.check_identity()?;
        self.lock().execute(
            "INSERT INTO schedule_pauses (schedule, note, paused_by, paused_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (schedule) DO UPDATE SET note = excluded.note,
                 paused_by = excluded.paused_by, paused_at = excluded.paused_at",
            params![pause.schedule, pause.note, pause.paused_by, pause.paused_at],
        )?;
        Ok(())
    }

    pub fn resume_schedule(&self, schedule: &str) -> Result<bool, StoreError> {
        self.check_identity()?;
        let deleted = self.lock().execute(
            "DELETE FROM schedule_pauses WHERE schedule = ?1",
            params![schedule],
        )?;
        Ok(deleted > 0)
    }

    /// The slots of `schedule` in `[from, to]` that have a session.
    pub fn scheduled_slots(
        &self,
        schedule: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT scheduled_time FROM sessions WHERE schedule = ?1
               AND scheduled_time >= ?2 AND scheduled_time <= ?3 ORDER BY scheduled_time",
        )?;
        let rows = statement
            .query_map(params![schedule, from, to], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
