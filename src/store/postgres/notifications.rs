//! The webhook outbox on PostgreSQL: the same rows as on SQLite, with the
//! claim taken under `FOR UPDATE SKIP LOCKED` on the database's clock, so
//! two nodes never claim one event for the same attempt. What to send and
//! when to give up is `daemon::webhooks`'s.

use super::PgStore;
use crate::store::{
    timestamp, NewNotification, NotificationAttempt, NotificationCounts, NotificationEntry,
    StoreError,
};

/// A `Duration` as PostgreSQL's interval arithmetic reads it, in seconds.
fn seconds(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64()
}

impl PgStore {
    pub async fn enqueue_notifications(
        &self,
        notifications: &[NewNotification],
    ) -> Result<u64, StoreError> {
        let now = timestamp(chrono::Utc::now());
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let insert = transaction
            .prepare_cached(
                "INSERT INTO notifications (receiver, event_key, event, payload, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (receiver, event_key) DO NOTHING",
            )
            .await?;
        let mut added = 0;
        for notification in notifications {
            added += transaction
                .execute(
                    &insert,
                    &[
                        &notification.receiver,
                        &notification.event_key,
                        &notification.event,
                        &notification.payload,
                        &now,
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(added)
    }

    pub async fn claim_notifications(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<NotificationEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE notifications SET next_attempt_at = now() + make_interval(secs => $1)
                 WHERE id IN (SELECT id FROM notifications
                              WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= now()
                              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, receiver, event_key, event, payload, attempts",
                &[&seconds(lease), &(limit as i64)],
            )
            .await?;
        let mut entries: Vec<NotificationEntry> = rows
            .iter()
            .map(|row| NotificationEntry {
                id: row.get(0),
                receiver: row.get(1),
                event_key: row.get(2),
                event: row.get(3),
                payload: row.get(4),
                attempts: row.get(5),
            })
            .collect();
        entries.sort_by_key(|entry| entry.id);
        Ok(entries)
    }

    pub async fn record_notification_attempt(
        &self,
        id: i64,
        attempt: &NotificationAttempt,
    ) -> Result<(), StoreError> {
        let now = timestamp(chrono::Utc::now());
        let client = self.client().await?;
        match attempt {
            NotificationAttempt::Delivered => client.execute(
                "UPDATE notifications SET attempts = attempts + 1, delivered_at = $2, last_error = NULL WHERE id = $1",
                &[&id, &now],
            ).await?,
            NotificationAttempt::Failed { error, retry_in } => client.execute(
                "UPDATE notifications SET attempts = attempts + 1, last_error = $2,
                     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                &[&id, error, &seconds(*retry_in)],
            ).await?,
            NotificationAttempt::Abandoned { error } => client.execute(
                "UPDATE notifications SET attempts = attempts + 1, last_error = $2, abandoned_at = $3 WHERE id = $1",
                &[&id, error, &now],
            ).await?,
            NotificationAttempt::Postponed { retry_in } => client.execute(
                "UPDATE notifications SET next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1",
                &[&id, &seconds(*retry_in)],
            ).await?,
        };
        Ok(())
    }

    pub async fn notification_counts(&self) -> Result<NotificationCounts, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE delivered_at IS NULL AND abandoned_at IS NULL),
                        COUNT(delivered_at), COUNT(abandoned_at)
                 FROM notifications",
                &[],
            )
            .await?;
        let count = |index: usize| row.get::<_, i64>(index).max(0) as u64;
        Ok(NotificationCounts {
            pending: count(0),
            delivered: count(1),
            abandoned: count(2),
        })
    }
}
