//! Sessions: creating one (the audit row that makes a run exist), ending
//! it once, and reading sessions back (lists, filters, the full detail with
//! messages, tool usage and service calls). It never writes a turn.

use rusqlite::{params, OptionalExtension};

use super::rows::{
    message_row, session_row, tool_usage_row, MESSAGE_COLUMNS, SERVICE_CALL_COLUMNS,
    SESSION_COLUMNS, TOOL_USAGE_COLUMNS,
};
use super::Store;
use crate::store::{
    new_session_id, timestamp, NewSession, ScheduleTokens, ServiceCallRecord, ServiceCallRow,
    SessionDetail, SessionRow, SessionStatus, StoreError, TokenTotals,
};

impl Store {
    /// Starts a session with a fresh id `heist_YYYYMMDD_HHMMSS_<suffix>`,
    /// unique even when many start in the same second.
    pub fn create_session(&self, new: &NewSession) -> Result<String, StoreError> {
        // A run is refused here, before it makes any service call, when the
        // store could not take its turns.
        self.check_identity()?;
        self.check_size_cap()?;
        let connection = self.lock();
        let now = chrono::Utc::now();
        loop {
            let session_id = new_session_id(now);
            let inserted = connection.execute(
                "INSERT INTO sessions (session_id, start_time, num_turns, status, seed, scenario, planned_turns, schedule, scheduled_time, trigger)
                 VALUES (?1, ?2, 0, 'active', ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (session_id) DO NOTHING",
                params![
                    session_id,
                    timestamp(now),
                    new.seed as i64,
                    new.scenario,
                    new.planned_turns,
                    new.schedule,
                    new.scheduled_time,
                    new.trigger.map(|trigger| trigger.as_str())
                ],
            );
            match inserted {
                Ok(1) => return Ok(session_id),
                Ok(_) => continue,
                Err(rusqlite::Error::SqliteFailure(failure, _))
                    if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(StoreError::DuplicateRun {
                        schedule: new.schedule.clone().unwrap_or_default(),
                        scheduled_time: new.scheduled_time.clone().unwrap_or_default(),
                    })
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Ends an `active` session; `false` when it had already ended, which
    /// keeps its first ending: a late "interrupted" never overwrites
    /// "completed".
    pub fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.check_identity()?;
        let connection = self.lock();
        let changed = connection.execute(
            "UPDATE sessions SET status = ?2, end_time = ?3, failure_reason = ?4,
                 num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = ?1)
             WHERE session_id = ?1 AND status = 'active'",
            params![
                session_id,
                status.as_str(),
                timestamp(chrono::Utc::now()),
                reason
            ],
        )?;
        if changed == 0 {
            let exists: bool = connection
                .query_row(
                    "SELECT 1 FROM sessions WHERE session_id = ?1",
                    params![session_id],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !exists {
                return Err(StoreError::SessionNotFound(session_id.to_string()));
            }
        }
        Ok(changed > 0)
    }

    #[cfg(test)]
    pub fn list_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.find_sessions(None, None, limit)
    }

    /// Sessions newest first, optionally only those with `status` and/or
    /// started by `schedule`.
    pub fn find_sessions(
        &self,
        status: Option<SessionStatus>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR schedule = ?2)
             ORDER BY start_time DESC, session_id DESC LIMIT ?3"
        ))?;
        let rows = statement
            .query_map(
                params![status.map(SessionStatus::as_str), schedule, limit as i64],
                session_row,
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A session with everything recorded for it.
    pub fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        let connection = self.lock();
        let session = connection
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
                params![session_id],
                session_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let messages = connection
            .prepare_cached(&format!(
                "{MESSAGE_COLUMNS} WHERE session_id = ?1 ORDER BY turn_id"
            ))?
            .query_map(params![session_id], message_row)?
            .collect::<Result<_, _>>()?;
        let tool_usage = connection
            .prepare_cached(&format!(
                "{TOOL_USAGE_COLUMNS} WHERE session_id = ?1 ORDER BY id"
            ))?
            .query_map(params![session_id], tool_usage_row)?
            .collect::<Result<_, _>>()?;
        let service_calls = connection
            .prepare_cached(&format!(
                "{SERVICE_CALL_COLUMNS} WHERE session_id = ?1 ORDER BY id"
            ))?
            .query_map(params![session_id], |row| {
                Ok(ServiceCallRow {
                    turn_id: row.get(0)?,
                    call: ServiceCallRecord {
                        service: row.get(1)?,
                        operation: row.get(2)?,
                        attempts: row.get(3)?,
                        outcome: row.get(4)?,
                        last_error: row.get(5)?,
                        duration_ms: row.get(6)?,
                    },
                    timestamp: row.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(SessionDetail {
            session,
            messages,
            tool_usage,
            service_calls,
        })
    }

    /// The latest slot a schedule has a session for (RFC 3339), if any.
    pub fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        let value = self
            .lock()
            .query_row(
                "SELECT MAX(scheduled_time) FROM sessions WHERE schedule = ?1",
                params![schedule],
                |row| row.get(0),
            )
            .optional()?;
        Ok(value.flatten())
    }

    /// The token totals of the sessions started at or after `since`, per
    /// schedule (a range read on the `sessions_start_time` index).
    pub fn token_totals_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ScheduleTokens>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT schedule, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
                    COALESCE(SUM(usage_estimated), 0), SUM(cost)
             FROM sessions WHERE start_time >= ?1 GROUP BY schedule ORDER BY schedule NULLS FIRST",
        )?;
        let rows = statement
            .query_map(params![timestamp(since)], |row| {
                Ok(ScheduleTokens {
                    schedule: row.get(0)?,
                    totals: TokenTotals {
                        sessions: row.get::<_, i64>(1)?.max(0) as u64,
                        prompt_tokens: row.get::<_, i64>(2)?.max(0) as u64,
                        completion_tokens: row.get::<_, i64>(3)?.max(0) as u64,
                        usage_estimated: row.get::<_, i64>(4)?.max(0) as u64,
                        cost: row.get(5)?,
                    },
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The tokens of the sessions started in `[from, to)`, of `schedule`
    /// or of all (a range read on the `sessions_start_time` index).
    pub fn tokens_used_between(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        schedule: Option<&str>,
    ) -> Result<u64, StoreError> {
        let connection = self.lock();
        let used: i64 = connection
            .prepare_cached(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM sessions
                 WHERE start_time >= ?1 AND start_time < ?2 AND (?3 IS NULL OR schedule = ?3)",
            )?
            .query_row(params![timestamp(from), timestamp(to), schedule], |row| {
                row.get(0)
            })?;
        Ok(used.max(0) as u64)
    }
}
