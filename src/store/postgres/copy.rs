//! The PostgreSQL side of `store migrate`: one session with all its rows in
//! one transaction, only when the session is not there yet (so a rerun is a
//! no-op), health events matched on their columns, and the counts the
//! check compares. Copied sessions carry no lease: an active one is
//! resumed by the first node with room.

use super::PgStore;
use crate::store::bundle::{SessionBundle, COUNTED_TABLES};
use crate::store::{HealthEvent, StoreError};

impl PgStore {
    /// Copies one session; `false` when it was already there.
    pub(crate) async fn import_session(&self, bundle: &SessionBundle) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let session = &bundle.session;
        let inserted = transaction
            .execute(
                "INSERT INTO sessions (session_id, start_time, end_time, num_turns, status, seed, scenario,
                     planned_turns, failure_reason, schedule, scheduled_time, trigger,
                     prompt_tokens, completion_tokens, usage_estimated, cost)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                 ON CONFLICT (session_id) DO NOTHING",
                &[
                    &session.session_id,
                    &session.start_time,
                    &session.end_time,
                    &session.num_turns,
                    &session.status_text,
                    &session.seed,
                    &session.scenario,
                    &session.planned_turns,
                    &session.failure_reason,
                    &session.schedule,
                    &session.scheduled_time,
                    &session.trigger,
                    &session.prompt_tokens,
                    &session.completion_tokens,
                    &session.usage_estimated,
                    &session.cost,
                ],
            )
            .await?;
        if inserted == 0 {
            return Ok(false);
        }
        let id = &session.session_id;
        for message in &bundle.messages {
            transaction
                .execute(
                    "INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp, error, prompt_tokens, completion_tokens, finish_reason, trimmed, endpoint, model)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    &[id, &message.turn_id, &message.agent_name, &message.agent_role, &message.message, &message.timestamp, &message.error, &message.prompt_tokens, &message.completion_tokens, &message.finish_reason, &message.trimmed, &message.endpoint, &message.model],
                )
                .await?;
        }
        for tool in &bundle.tool_usage {
            transaction
                .execute(
                    "INSERT INTO tool_usage (session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error, duration_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[id, &tool.turn_id, &tool.agent_name, &tool.tool_name, &tool.tool_params, &tool.tool_result, &tool.timestamp, &tool.success, &tool.error, &tool.duration_ms],
                )
                .await?;
        }
        for call in &bundle.service_calls {
            transaction
                .execute(
                    "INSERT INTO service_calls (session_id, turn_id, service, operation, attempts, outcome, last_error, duration_ms, timestamp)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[id, &call.turn_id, &call.call.service, &call.call.operation, &(call.call.attempts as i64), &call.call.outcome, &call.call.last_error, &call.call.duration_ms, &call.timestamp],
                )
                .await?;
        }
        for entry in &bundle.outbox {
            transaction
                .execute(
                    "INSERT INTO outbox (session_id, turn_id, payload, created_at, delivered_at, attempts, last_error, abandoned_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[id, &entry.turn_id, &entry.payload, &entry.created_at, &entry.delivered_at, &entry.attempts, &entry.last_error, &entry.abandoned_at],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(true)
    }

    /// Copies the health events the target lacks; returns how many.
    pub(crate) async fn import_health_events(
        &self,
        events: &[HealthEvent],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let mut copied = 0;
        for event in events {
            copied += client
                .execute(
                    "INSERT INTO health_events (timestamp, service, from_state, to_state, reason)
                     SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (
                         SELECT 1 FROM health_events WHERE timestamp = $1 AND service = $2
                             AND from_state = $3 AND to_state = $4 AND reason = $5)",
                    &[
                        &event.timestamp,
                        &event.service,
                        &event.from_state,
                        &event.to_state,
                        &event.reason,
                    ],
                )
                .await?;
        }
        Ok(copied)
    }

    /// Rows of each counted table that belong to `ids`.
    pub(crate) async fn counts_for_sessions(&self, ids: &[String]) -> Result<Vec<u64>, StoreError> {
        let client = self.client().await?;
        let mut counts = Vec::new();
        for table in COUNTED_TABLES {
            let count: i64 = client
                .query_one(
                    &format!("SELECT COUNT(*) FROM {table} WHERE session_id = ANY($1)"),
                    &[&ids],
                )
                .await?
                .get(0);
            counts.push(count.max(0) as u64);
        }
        Ok(counts)
    }
}
