//! What the daemon asks of the store beyond one heist: scheduled runs,
//! health events, crash recovery and retention.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{timestamp, Store, StoreError};

/// A service's health changed (written by the health checker).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthEvent {
    pub timestamp: String,
    pub service: String,
    pub from_state: String,
    pub to_state: String,
    pub reason: String,
}

impl Store {
    /// Caps the database at about `max_bytes` (SQLite's `max_page_count`);
    /// a write past it fails with "database or disk is full", which is
    /// handled like a real full disk. Returns the cap in bytes.
    pub fn limit_size(&self, max_bytes: u64) -> Result<u64, StoreError> {
        let connection = self.lock();
        let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let pages = (max_bytes / page_size.max(1) as u64).max(1);
        let granted: i64 =
            connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| {
                row.get(0)
            })?;
        Ok(granted as u64 * page_size as u64)
    }

    /// A session's memory writes: (delivered, all), abandoned ones included
    /// in `all`.
    pub fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError> {
        let counts = self.lock().query_row(
            "SELECT COUNT(delivered_at), COUNT(*) FROM outbox WHERE session_id = ?1",
            params![session_id],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
        )?;
        Ok((counts.0.max(0) as u64, counts.1.max(0) as u64))
    }

    /// Memory writes waiting for delivery, across all sessions.
    pub fn pending_outbox_total(&self) -> Result<u64, StoreError> {
        let count: i64 = self.lock().query_row(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL",
            [],
            |row| row.get(0),
        )?;
        Ok(count.max(0) as u64)
    }

    /// Whether the database answers a trivial query (for `/readyz`).
    pub fn is_usable(&self) -> bool {
        self.lock()
            .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
            .is_ok()
    }

    pub fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO health_events (timestamp, service, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![timestamp(chrono::Utc::now()), service, from_state, to_state, reason],
        )?;
        Ok(())
    }

    /// Health events oldest first, optionally of one service.
    pub fn health_events(&self, service: Option<&str>) -> Result<Vec<HealthEvent>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT timestamp, service, from_state, to_state, reason FROM health_events
             WHERE (?1 IS NULL OR service = ?1) ORDER BY id",
        )?;
        let rows = statement
            .query_map(params![service], |row| {
                Ok(HealthEvent {
                    timestamp: row.get(0)?,
                    service: row.get(1)?,
                    from_state: row.get(2)?,
                    to_state: row.get(3)?,
                    reason: row.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
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

    /// The highest committed turn of a session (0 when none).
    pub fn last_turn(&self, session_id: &str) -> Result<u32, StoreError> {
        let turn: i64 = self.lock().query_row(
            "SELECT COALESCE(MAX(turn_id), 0) FROM messages WHERE session_id = ?1",
            params![session_id],
            |row| row.get(0),
        )?;
        Ok(turn.max(0) as u32)
    }

    /// Deletes up to `batch` sessions that ended before `cutoff`, with all
    /// their rows, in one transaction; returns how many went.
    pub fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        let mut connection = self.lock();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ids: Vec<String> = {
            let mut statement = transaction.prepare_cached(
                "SELECT session_id FROM sessions WHERE status != 'active' AND end_time IS NOT NULL AND end_time < ?1
                 ORDER BY end_time LIMIT ?2",
            )?;
            let rows = statement.query_map(params![timestamp(cutoff), batch], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for id in &ids {
            for table in [
                "service_calls",
                "outbox",
                "tool_usage",
                "messages",
                "sessions",
            ] {
                transaction.execute(
                    &format!("DELETE FROM {table} WHERE session_id = ?1"),
                    params![id],
                )?;
            }
        }
        transaction.commit()?;
        Ok(ids.len())
    }

    /// Hands free pages back and folds the WAL into the database, a little
    /// at a time, so maintenance never stalls a turn for long.
    pub fn compact(&self, pages: u32) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute_batch(&format!("PRAGMA incremental_vacuum({pages});"))?;
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }
}
