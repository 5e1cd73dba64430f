//! The webhook outbox on SQLite: events queued for each `[[notify]]`
//! receiver, claimed for an attempt by moving `next_attempt_at` past the
//! attempt's lease, and marked delivered, failed (with its backoff) or
//! abandoned. What to send and when to give up is `daemon::webhooks`'s.

use rusqlite::params;

use super::Store;
use crate::store::{
    timestamp, NewNotification, NotificationAttempt, NotificationCounts, NotificationEntry,
    StoreError,
};

impl Store {
    /// Queues events; a (receiver, key) pair already queued is skipped.
    pub fn enqueue_notifications(
        &self,
        notifications: &[NewNotification],
    ) -> Result<u64, StoreError> {
        let now = timestamp(chrono::Utc::now());
        let connection = self.lock();
        let transaction = connection.unchecked_transaction()?;
        let mut added = 0;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO notifications (receiver, event_key, event, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (receiver, event_key) DO NOTHING",
            )?;
            for notification in notifications {
                added += insert.execute(params![
                    notification.receiver,
                    notification.event_key,
                    notification.event,
                    notification.payload,
                    now
                ])? as u64;
            }
        }
        transaction.commit()?;
        Ok(added)
    }

    /// Events due now, oldest first, each not due again for `lease`.
    pub fn claim_notifications(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<NotificationEntry>, StoreError> {
        let now = chrono::Utc::now();
        let until = timestamp(now + lease);
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "UPDATE notifications SET next_attempt_at = ?1
             WHERE id IN (SELECT id FROM notifications
                          WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= ?2
                          ORDER BY id LIMIT ?3)
             RETURNING id, receiver, event_key, event, payload, attempts",
        )?;
        let mut entries = statement
            .query_map(params![until, timestamp(now), limit as i64], |row| {
                Ok(NotificationEntry {
                    id: row.get(0)?,
                    receiver: row.get(1)?,
                    event_key: row.get(2)?,
                    event: row.get(3)?,
                    payload: row.get(4)?,
                    attempts: row.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING gives no order: oldest first, as promised.
        entries.sort_by_key(|entry| entry.id);
        Ok(entries)
    }

    pub fn record_notification_attempt(
        &self,
        id: i64,
        attempt: &NotificationAttempt,
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now();
        let connection = self.lock();
        match attempt {
            NotificationAttempt::Delivered => connection.execute(
                "UPDATE notifications SET attempts = attempts + 1, delivered_at = ?2, last_error = NULL WHERE id = ?1",
                params![id, timestamp(now)],
            )?,
            NotificationAttempt::Failed { error, retry_in } => connection.execute(
                "UPDATE notifications SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?1",
                params![id, error, timestamp(now + *retry_in)],
            )?,
            NotificationAttempt::Abandoned { error } => connection.execute(
                "UPDATE notifications SET attempts = attempts + 1, last_error = ?2, abandoned_at = ?3 WHERE id = ?1",
                params![id, error, timestamp(now)],
            )?,
            NotificationAttempt::Postponed { retry_in } => connection.execute(
                "UPDATE notifications SET next_attempt_at = ?2 WHERE id = ?1",
                params![id, timestamp(now + *retry_in)],
            )?,
        };
        Ok(())
    }

    pub fn notification_counts(&self) -> Result<NotificationCounts, StoreError> {
        let counts = self.lock().query_row(
            "SELECT COUNT(*) FILTER (WHERE delivered_at IS NULL AND abandoned_at IS NULL),
                    COUNT(delivered_at), COUNT(abandoned_at)
             FROM notifications",
            [],
            |row| {
                Ok(NotificationCounts {
                    pending: row.get::<_, i64>(0)?.max(0) as u64,
                    delivered: row.get::<_, i64>(1)?.max(0) as u64,
                    abandoned: row.get::<_, i64>(2)?.max(0) as u64,
                })
            },
        )?;
        Ok(counts)
    }
}
