//! What the admin API's event streams read, on PostgreSQL: a session's
//! turns after a given turn with the session's row, every session's turns
//! after a given `messages.id`, and the highest id. Each read is one trip
//! for the messages and one for their calls, whatever the page's size.
//! Reads only; any node answers for any session.

use std::collections::HashMap;

use super::rows::{message_row, session_row, MESSAGE_COLUMNS, SESSION_COLUMNS};
use super::PgStore;
use crate::store::{
    MessageRow, ServiceCallRecord, SessionTurns, StoreError, ToolCallRecord, TurnRead,
};

impl PgStore {
    /// `session_id`'s row and its turns after `after_turn`, oldest first.
    pub async fn session_turns_after(
        &self,
        session_id: &str,
        after_turn: i64,
        limit: usize,
    ) -> Result<SessionTurns, StoreError> {
        let client = self.client().await?;
        let session = client
            .query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"),
                &[&session_id],
            )
            .await?
            .map(|row| session_row(&row))
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let messages: Vec<MessageRow> = client
            .query(
                &format!(
                    "{MESSAGE_COLUMNS} WHERE session_id = $1 AND turn_id > $2 ORDER BY turn_id LIMIT $3"
                ),
                &[&session_id, &after_turn, &(limit as i64)],
            )
            .await?
            .iter()
            .map(message_row)
            .collect();
        drop(client);
        let turns = self.with_calls(messages).await?;
        Ok(SessionTurns { session, turns })
    }

    /// Every session's turns after `messages.id` `after_id`, in id order.
    pub async fn turns_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<TurnRead>, StoreError> {
        let client = self.client().await?;
        let messages: Vec<MessageRow> = client
            .query(
                &format!("{MESSAGE_COLUMNS} WHERE id > $1 ORDER BY id LIMIT $2"),
                &[&after_id, &(limit as i64)],
            )
            .await?
            .iter()
            .map(message_row)
            .collect();
        drop(client);
        self.with_calls(messages).await
    }

    /// The highest `messages.id`, 0 with no turn.
    pub async fn last_message_id(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COALESCE(MAX(id), 0)::bigint FROM messages", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Each message with its turn's tool calls and service calls, read for
    /// the whole page at once.
    async fn with_calls(&self, messages: Vec<MessageRow>) -> Result<Vec<TurnRead>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let sessions: Vec<&str> = messages.iter().map(|m| m.session_id.as_str()).collect();
        let turn_ids: Vec<i64> = messages.iter().map(|m| m.turn_id).collect();
        let page = "JOIN unnest($1::text[], $2::bigint[]) AS page(s, t) ON session_id = page.s AND turn_id = page.t";
        let client = self.client().await?;
        let tool_rows = client
            .query(
                &format!(
                    "SELECT session_id, turn_id, tool_name, tool_params, tool_result, success, error, duration_ms \
                     FROM tool_usage {page} ORDER BY id"
                ),
                &[&sessions, &turn_ids],
            )
            .await?;
        let call_rows = client
            .query(
                &format!(
                    "SELECT session_id, turn_id, service, operation, attempts, outcome, last_error, duration_ms \
                     FROM service_calls {page} ORDER BY id"
                ),
                &[&sessions, &turn_ids],
            )
            .await?;
        let mut tools: HashMap<(String, i64), Vec<ToolCallRecord>> = HashMap::new();
        for row in &tool_rows {
            tools
                .entry((row.get(0), row.get(1)))
                .or_default()
                .push(ToolCallRecord {
                    tool_name: row.get(2),
                    tool_params: row.get(3),
                    tool_result: row.get(4),
                    success: row.get(5),
                    error: row.get(6),
                    duration_ms: row.get::<_, Option<f64>>(7).unwrap_or(0.0),
                });
        }
        let mut calls: HashMap<(String, i64), Vec<ServiceCallRecord>> = HashMap::new();
        for row in &call_rows {
            calls
                .entry((row.get(0), row.get(1)))
                .or_default()
                .push(ServiceCallRecord {
                    service: row.get(2),
                    operation: row.get(3),
                    attempts: row.get::<_, i64>(4).max(0) as u32,
                    outcome: row.get(5),
                    last_error: row.get(6),
                    duration_ms: row.get(7),
                });
        }
        Ok(messages
            .into_iter()
            .map(|message| {
                let key = (message.session_id.clone(), message.turn_id);
                TurnRead {
                    tool_calls: tools.remove(&key).unwrap_or_default(),
                    service_calls: calls.remove(&key).unwrap_or_default(),
                    message,
                }
            })
            .collect())
    }
}
