//! Turns, the memory outbox and health events on PostgreSQL. A turn is
//! committed in one transaction that first checks, on the locked session
//! row, that this node still owns the session under the epoch it holds
//! (fencing): a node that was paused past its lease and woke after another
//! took over cannot write a turn. The commit also renews the lease.

use super::rows::{
    health_event, message_row, outbox_entry, tool_usage_row, HEALTH_EVENT_COLUMNS, MESSAGE_COLUMNS,
    OUTBOX_ENTRY_COLUMNS, TOOL_USAGE_COLUMNS,
};
use super::PgStore;
use crate::store::{
    timestamp, DeliveredCount, HealthEvent, OutboxEntry, OutboxSummary, RecentTurns,
    ServiceCallRecord, StoreError, TurnRecord,
};

impl PgStore {
    /// Commits a turn's message, tool calls, service calls and outbox entry
    /// in one transaction, fenced on the session's owner and epoch.
    pub async fn record_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        self.fence(&transaction, &turn.session_id).await?;
        let now = timestamp(chrono::Utc::now());
        let turn_id = turn.turn_id as i64;
        // Every statement of a turn's commit is prepared once per connection
        // (`prepare_cached`): a plain string is parsed by the server on
        // every call, one more round trip each.
        let insert_message = transaction
            .prepare_cached(
                "INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp, error, prompt_tokens, completion_tokens, finish_reason, trimmed, endpoint, model)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .await?;
        transaction
            .execute(
                &insert_message,
                &[
                    &turn.session_id,
                    &turn_id,
                    &turn.agent_name,
                    &turn.agent_role,
                    &turn.message,
                    &now,
                    &turn.error,
                    &turn.prompt_tokens.map(i64::from),
                    &turn.completion_tokens.map(i64::from),
                    &turn.finish_reason,
                    &turn.trimmed,
                    &turn.endpoint,
                    &turn.model,
                ],
            )
            .await?;
        insert_calls(&transaction, turn, &now).await?;
        if let Some(payload) = &turn.memory_payload {
            let insert_outbox = transaction
                .prepare_cached(
                    "INSERT INTO outbox (session_id, turn_id, payload, created_at) VALUES ($1, $2, $3, $4)",
                )
                .await?;
            transaction
                .execute(&insert_outbox, &[&turn.session_id, &turn_id, payload, &now])
                .await?;
        }
        // The session's token totals move with the turn, in its transaction.
        let count_turns = transaction
            .prepare_cached(
                "UPDATE sessions SET num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = $1),
                     lease_expires_at = now() + make_interval(secs => $2::float8 / 1000.0),
                     prompt_tokens = prompt_tokens + $3, completion_tokens = completion_tokens + $4,
                     usage_estimated = usage_estimated + $5,
                     cost = CASE WHEN $6::float8 IS NULL THEN cost ELSE COALESCE(cost, 0) + $6::float8 END
                 WHERE session_id = $1",
            )
            .await?;
        let usage = &turn.usage;
        transaction
            .execute(
                &count_turns,
                &[
                    &turn.session_id,
                    &(self.lease_ms as f64),
                    &i64::from(usage.prompt_tokens),
                    &i64::from(usage.completion_tokens),
                    &i64::from(usage.estimated),
                    &usage.cost,
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Locks the session row and checks that it is active and this node
    /// still owns it under the epoch it holds; otherwise the session is no
    /// longer held here and the write is refused.
    async fn fence(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        session_id: &str,
    ) -> Result<(), StoreError> {
        let lock = transaction
            .prepare_cached(
                "SELECT status, owner_node, lease_epoch FROM sessions WHERE session_id = $1 FOR UPDATE",
            )
            .await?;
        let row = transaction
            .query_opt(&lock, &[&session_id])
            .await?
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let (status, owner, epoch): (String, Option<String>, i64) =
            (row.get(0), row.get(1), row.get(2));
        if status != "active" {
            self.forget(session_id);
            return Err(StoreError::SessionEnded {
                session_id: session_id.to_string(),
                status,
            });
        }
        let held = self.held_epoch(session_id);
        if owner.as_deref() != Some(self.node_id.as_str()) || held != Some(epoch) {
            self.forget(session_id);
            return Err(StoreError::Fenced {
                session_id: session_id.to_string(),
                owner: owner.unwrap_or_else(|| "nobody".into()),
                epoch,
            });
        }
        Ok(())
    }

    /// The last `limit` turns that produced a message, oldest first, with
    /// the tool calls of those turns.
    pub async fn recent_turns(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<RecentTurns, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("{MESSAGE_COLUMNS} WHERE session_id = $1 AND error IS NULL ORDER BY turn_id DESC LIMIT $2"),
                &[&session_id, &(limit as i64)],
            )
            .await?;
        let mut messages: Vec<_> = rows.iter().map(message_row).collect();
        messages.reverse();
        let first_turn = messages.first().map_or(i64::MAX, |message| message.turn_id);
        let tool_usage = client
            .query(
                &format!(
                    "{TOOL_USAGE_COLUMNS} WHERE session_id = $1 AND turn_id >= $2 ORDER BY id"
                ),
                &[&session_id, &first_turn],
            )
            .await?
            .iter()
            .map(tool_usage_row)
            .collect();
        Ok(RecentTurns {
            messages,
            tool_usage,
        })
    }

    /// The highest committed turn of a session (0 when none).
    pub async fn last_turn(&self, session_id: &str) -> Result<u32, StoreError> {
        let client = self.client().await?;
        let turn: i64 = client
            .query_one(
                "SELECT COALESCE(MAX(turn_id), 0)::bigint FROM messages WHERE session_id = $1",
                &[&session_id],
            )
            .await?
            .get(0);
        Ok(turn.max(0) as u32)
    }

    /// Memory writes not yet delivered, oldest first.
    pub async fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("{OUTBOX_ENTRY_COLUMNS}
                 WHERE session_id = $1 AND delivered_at IS NULL AND abandoned_at IS NULL ORDER BY id LIMIT $2"),
                &[&session_id, &(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(outbox_entry).collect())
    }

    /// Marks an outbox entry: `delivered`, `failed` (kept for a retry) or
    /// `abandoned` (refused for good), with the error when there is one.
    pub async fn mark_outbox(
        &self,
        id: i64,
        outcome: OutboxMark,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let now = timestamp(chrono::Utc::now());
        let sql = match outcome {
            OutboxMark::Delivered => {
                "UPDATE outbox SET delivered_at = $2, attempts = attempts + 1, last_error = $3 WHERE id = $1"
            }
            OutboxMark::Abandoned => {
                "UPDATE outbox SET abandoned_at = $2, attempts = attempts + 1, last_error = $3 WHERE id = $1"
            }
            OutboxMark::Failed => {
                "UPDATE outbox SET attempts = attempts + 1, last_error = $3 WHERE id = $1 AND $2::text IS NOT NULL"
            }
        };
        let mark = client.prepare_cached(sql).await?;
        client.execute(&mark, &[&id, &now, &error]).await?;
        Ok(())
    }

    /// Sessions with memory writes still to deliver (any status).
    pub async fn sessions_with_pending_outbox(
        &self,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT session_id FROM outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Sessions still running or ended since `ended_since` whose last
    /// delivered write is no older than `delivered_since`, with their
    /// delivered writes counted.
    pub async fn delivered_counts(
        &self,
        ended_since: chrono::DateTime<chrono::Utc>,
        delivered_since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<DeliveredCount>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT o.session_id, COUNT(o.delivered_at)
             FROM outbox o JOIN sessions s ON s.session_id = o.session_id
             WHERE (s.status = 'active' OR s.end_time >= $1)
             GROUP BY o.session_id
             HAVING MAX(o.delivered_at) >= $2
             ORDER BY o.session_id LIMIT $3",
                &[
                    &timestamp(ended_since),
                    &timestamp(delivered_since),
                    &(limit as i64),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| DeliveredCount {
                session_id: row.get(0),
                delivered: row.get::<_, i64>(1).max(0) as u64,
            })
            .collect())
    }

    /// Marks a session's delivered writes undelivered again (abandoned
    /// ones stay set aside); returns how many.
    pub async fn mark_outbox_undelivered(&self, session_id: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE outbox SET delivered_at = NULL WHERE session_id = $1 AND delivered_at IS NOT NULL AND abandoned_at IS NULL",
                &[&session_id],
            )
            .await?;
        Ok(changed)
    }

    /// The payloads of a session's delivered writes, oldest first.
    pub async fn delivered_payloads(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT payload FROM outbox WHERE session_id = $1 AND delivered_at IS NOT NULL ORDER BY id",
                &[&session_id],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// A session's memory writes: (delivered, all).
    pub async fn outbox_counts(&self, session_id: &str) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(delivered_at), COUNT(*) FROM outbox WHERE session_id = $1",
                &[&session_id],
            )
            .await?;
        let (delivered, all): (i64, i64) = (row.get(0), row.get(1));
        Ok((delivered.max(0) as u64, all.max(0) as u64))
    }

    /// Memory writes waiting for delivery, across all sessions.
    pub async fn pending_outbox_total(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let count: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL",
                &[],
            )
            .await?
            .get(0);
        Ok(count.max(0) as u64)
    }

    pub async fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO health_events (timestamp, service, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5)",
                &[&timestamp(chrono::Utc::now()), &service, &from_state, &to_state, &reason],
            )
            .await?;
        Ok(())
    }

    /// Health events oldest first, optionally of one service.
    pub async fn health_events(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<HealthEvent>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "{HEALTH_EVENT_COLUMNS} WHERE ($1::text IS NULL OR service = $1) ORDER BY id"
                ),
                &[&service],
            )
            .await?;
        Ok(rows.iter().map(health_event).collect())
    }
}

/// A turn's tool calls and service calls, inside its transaction.
async fn insert_calls(
    transaction: &deadpool_postgres::Transaction<'_>,
    turn: &TurnRecord,
    now: &str,
) -> Result<(), StoreError> {
    let turn_id = turn.turn_id as i64;
    let insert_tool = transaction
        .prepare_cached(
            "INSERT INTO tool_usage (session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    for call in &turn.tool_calls {
        transaction
            .execute(
                &insert_tool,
                &[
                    &turn.session_id,
                    &turn_id,
                    &turn.agent_name,
                    &call.tool_name,
                    &call.tool_params,
                    &call.tool_result,
                    &now,
                    &call.success,
                    &call.error,
                    &call.duration_ms,
                ],
            )
            .await?;
    }
    insert_service_calls(
        transaction,
        &turn.session_id,
        turn_id,
        &turn.service_calls,
        now,
    )
    .await
}

/// `service_calls` rows for one turn, inside the caller's transaction: a
/// turn's own calls, or those of delivering its memory write.
async fn insert_service_calls(
    transaction: &deadpool_postgres::Transaction<'_>,
    session_id: &str,
    turn_id: i64,
    calls: &[ServiceCallRecord],
    now: &str,
) -> Result<(), StoreError> {
    let insert = transaction
        .prepare_cached(
            "INSERT INTO service_calls (session_id, turn_id, service, operation, attempts, outcome, last_error, duration_ms, timestamp)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    for call in calls {
        transaction
            .execute(
                &insert,
                &[
                    &session_id,
                    &turn_id,
                    &call.service,
                    &call.operation,
                    &(call.attempts as i64),
                    &call.outcome,
                    &call.last_error,
                    &call.duration_ms,
                    &now,
                ],
            )
            .await?;
    }
    Ok(())
}

/// How an outbox delivery attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum OutboxMark {
    Delivered,
    Failed,
    Abandoned,
}

impl PgStore {
    /// Records the calls that delivering turn `turn_id`'s memory write
    /// retried or failed, beside the turn's own calls in `service_calls`.
    pub async fn record_service_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        calls: &[ServiceCallRecord],
    ) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        let now = timestamp(chrono::Utc::now());
        let turn_id = i64::from(turn_id);
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        insert_service_calls(&transaction, session_id, turn_id, calls, &now).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The outbox at a glance, for the scrape-time gauges.
    pub async fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE delivered_at IS NULL AND abandoned_at IS NULL),
                        MIN(created_at) FILTER (WHERE delivered_at IS NULL AND abandoned_at IS NULL),
                        COUNT(abandoned_at)
                 FROM outbox",
                &[],
            )
            .await?;
        let (pending, abandoned): (i64, i64) = (row.get(0), row.get(2));
        Ok(OutboxSummary {
            pending: pending.max(0) as u64,
            oldest_pending_created_at: row.get(1),
            abandoned: abandoned.max(0) as u64,
        })
    }
}
