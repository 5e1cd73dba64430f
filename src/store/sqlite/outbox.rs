//! The memory outbox: writes a committed turn owes the memory service,
//! read oldest first and marked delivered, failed (kept for a retry) or
//! abandoned (refused for good). Entries are only ever added by
//! `record_turn`, in the turn's transaction; this file never adds one.

use rusqlite::params;

use super::rows::OUTBOX_ENTRY_COLUMNS;
use super::Store;
use crate::store::{
    timestamp, DeliveredCount, OutboxEntry, OutboxSummary, ServiceCallRecord, StoreError,
};

impl Store {
    /// Memory writes not yet delivered, oldest first.
    pub fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        pending_entries(&self.lock(), session_id, limit)
    }

    #[cfg(test)]
    pub fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        let now = timestamp(chrono::Utc::now());
        self.without_fsync(|connection| mark_delivered(connection, id, &now))
    }

    /// Notes that write `id` was delivered, to be written by the next
    /// transaction on the connection: a turn's commit (inside it, free) or
    /// any other use of the store (first thing, see `Store::lock`). Under
    /// load the mark so rides with another session's commit instead of
    /// taking the connection and a transaction of its own. A mark lost to a
    /// crash only means its write is sent again under its idempotency key,
    /// as with a mark lost to power loss (`without_fsync`).
    pub fn queue_delivered(&self, id: i64) {
        let now = timestamp(chrono::Utc::now());
        self.commits.delivered.lock().push((id, now));
    }

    /// Writes the queued delivered marks now, if a transaction on the
    /// connection has not taken them already.
    pub fn flush_delivered(&self) {
        drop(self.lock());
    }

    /// Whether the connection is in use now; its user then writes the
    /// queued marks (a commit) or the next user does (any other call).
    pub(super) fn connection_busy(&self) -> bool {
        self.connection.is_locked()
    }

    /// Writes queued delivered marks on `connection`, which the caller
    /// holds, relaxing `synchronous` for them like every mark. Marks it
    /// cannot write (the store failing, a transaction left open) stay
    /// queued for the next use of the connection.
    pub(super) fn write_queued_marks(&self, connection: &rusqlite::Connection) {
        if !connection.is_autocommit() {
            return;
        }
        let marks = self.take_marks();
        if marks.is_empty() {
            return;
        }
        let outcome = self.relaxed(connection, |connection| {
            let transaction = connection.unchecked_transaction()?;
            write_marks(&transaction, &marks)?;
            transaction.commit()?;
            Ok(())
        });
        if let Err(error) = outcome {
            tracing::debug!(%error, marks = marks.len(), "delivered marks stay queued");
            self.requeue_marks(marks);
        }
    }

    /// Sets aside a write the memory service will never accept.
    pub fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.without_fsync(|connection| {
            connection.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, abandoned_at = ?3 WHERE id = ?1",
            )?.execute(params![id, error, timestamp(chrono::Utc::now())])?;
            Ok(())
        })
    }

    /// Records the calls that delivering turn `turn_id`'s memory write
    /// retried or failed, beside the turn's own calls in `service_calls`.
    pub fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: &[ServiceCallRecord],
    ) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        let now = timestamp(chrono::Utc::now());
        super::turns::insert_service_calls(&self.lock(), session_id, turn_id, calls, &now)
    }

    pub fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.without_fsync(|connection| {
            connection
                .prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                )?
                .execute(params![id, error])?;
            Ok(())
        })
    }

    /// Runs one outbox mark with `synchronous = NORMAL` when the store is
    /// `FULL`: a mark is not fsynced on its own but by the next commit that
    /// is (WAL frames are synced in order), and it survives a crash of the
    /// process either way. A mark lost to power loss only means the write
    /// is delivered again with its idempotency key, which the memory
    /// service stores once; so a turn needs one fsync, not two, and the
    /// marks do not hold the store's connection through one.
    fn without_fsync(
        &self,
        mark: impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.relaxed(&self.lock(), mark)
    }

    /// [`Self::without_fsync`] on a connection the caller holds.
    fn relaxed(
        &self,
        connection: &rusqlite::Connection,
        mark: impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if !self.full_sync {
            return mark(connection);
        }
        connection
            .prepare_cached("PRAGMA synchronous = NORMAL")?
            .execute([])?;
        let outcome = mark(connection);
        // The level turns need is restored before the connection is let go;
        // if even that failed, no turn may commit on it.
        if let Err(error) = connection
            .prepare_cached("PRAGMA synchronous = FULL")
            .and_then(|mut statement| statement.execute([]))
        {
            self.sync_lost
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(error.into());
        }
        outcome
    }

    /// Sessions with memory writes still to deliver (any status).
    pub fn sessions_with_pending_outbox(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT DISTINCT session_id FROM outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL LIMIT ?1",
        )?;
        let rows = statement
            .query_map(params![limit as i64], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
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

    /// The outbox as the daemon's gauges show it: writes waiting, when the
    /// oldest of them was created, and writes set aside for good.
    pub fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FILTER (WHERE delivered_at IS NULL AND abandoned_at IS NULL),
                        MIN(created_at) FILTER (WHERE delivered_at IS NULL AND abandoned_at IS NULL),
                        COUNT(abandoned_at)
                 FROM outbox",
                [],
                |row| {
                    Ok(OutboxSummary {
                        pending: row.get::<_, i64>(0)?.max(0) as u64,
                        oldest_pending_created_at: row.get(1)?,
                        abandoned: row.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
            .map_err(StoreError::from)
    }

    /// Sessions still running or ended since `ended_since` whose last
    /// delivered write is no older than `delivered_since` (the memory
    /// service's retention), with their delivered writes counted.
    pub fn delivered_counts(
        &self,
        ended_since: chrono::DateTime<chrono::Utc>,
        delivered_since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveredCount>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT o.session_id, COUNT(o.delivered_at)
             FROM outbox o JOIN sessions s ON s.session_id = o.session_id
             WHERE (s.status = 'active' OR s.end_time >= ?1)
             GROUP BY o.session_id
             HAVING MAX(o.delivered_at) >= ?2
             ORDER BY o.session_id LIMIT ?3",
        )?;
        let rows = statement
            .query_map(
                params![
                    timestamp(ended_since),
                    timestamp(delivered_since),
                    limit as i64
                ],
                |row| {
                    Ok(DeliveredCount {
                        session_id: row.get(0)?,
                        delivered: row.get::<_, i64>(1)?.max(0) as u64,
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Marks a session's delivered writes undelivered again, so the normal
    /// delivery sends them once more with their idempotency keys (the
    /// memory service lost them). Abandoned writes stay set aside.
    /// Returns how many were marked.
    pub fn mark_outbox_undelivered(&self, session_id: &str) -> Result<u64, StoreError> {
        let changed = self.lock().prepare_cached(
            "UPDATE outbox SET delivered_at = NULL WHERE session_id = ?1 AND delivered_at IS NOT NULL AND abandoned_at IS NULL",
        )?.execute(params![session_id])?;
        Ok(changed as u64)
    }

    /// The payloads of a session's delivered writes, oldest first.
    pub fn delivered_payloads(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT payload FROM outbox WHERE session_id = ?1 AND delivered_at IS NOT NULL ORDER BY id",
        )?;
        let rows = statement
            .query_map(params![session_id], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

/// A session's first `limit` pending memory writes, oldest first, on a
/// connection (or transaction) the caller holds.
pub(super) fn pending_entries(
    connection: &rusqlite::Connection,
    session_id: &str,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut statement = connection.prepare_cached(&format!(
        "{OUTBOX_ENTRY_COLUMNS}
         WHERE session_id = ?1 AND delivered_at IS NULL AND abandoned_at IS NULL ORDER BY id LIMIT ?2"
    ))?;
    let rows = statement
        .query_map(params![session_id, limit as i64], |row| {
            Ok(OutboxEntry {
                id: row.get(0)?,
                session_id: row.get(1)?,
                turn_id: row.get(2)?,
                payload: row.get(3)?,
                attempts: row.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Marks write `id` delivered at `at` on a connection the caller holds.
pub(super) fn mark_delivered(
    connection: &rusqlite::Connection,
    id: i64,
    at: &str,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
        )?
        .execute(params![id, at])?;
    Ok(())
}

/// Writes delivered marks inside the caller's transaction.
pub(super) fn write_marks(
    connection: &rusqlite::Connection,
    marks: &[(i64, String)],
) -> Result<(), StoreError> {
    for (id, at) in marks {
        mark_delivered(connection, *id, at)?;
    }
    Ok(())
}
