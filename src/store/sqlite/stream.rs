//! What the admin API's event streams read: a session's turns after a
//! given turn (with the session's row, so a stream sees the ending with the
//! turns before it), every session's turns after a given `messages.id`, and
//! the highest id, where a stream of new turns begins. Reads only.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{
    message_row, session_row, MESSAGE_COLUMNS, SERVICE_CALL_COLUMNS, SESSION_COLUMNS,
};
use super::Store;
use crate::store::rows::TOOL_CALL_COLUMNS;
use crate::store::{
    MessageRow, ServiceCallRecord, SessionTurns, StoreError, ToolCallRecord, TurnRead,
};

impl Store {
    /// `session_id`'s row and its turns after `after_turn`, oldest first,
    /// at most `limit`.
    pub fn session_turns_after(
        &self,
        session_id: &str,
        after_turn: i64,
        limit: usize,
    ) -> Result<SessionTurns, StoreError> {
        let connection = self.lock();
        let session = connection
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
                params![session_id],
                session_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let messages: Vec<MessageRow> = connection
            .prepare_cached(&format!(
                "{MESSAGE_COLUMNS} WHERE session_id = ?1 AND turn_id > ?2 ORDER BY turn_id LIMIT ?3"
            ))?
            .query_map(params![session_id, after_turn, limit as i64], message_row)?
            .collect::<Result<_, _>>()?;
        let turns = with_calls(&connection, messages)?;
        Ok(SessionTurns { session, turns })
    }

    /// Every session's turns after `messages.id` `after_id`, in id order,
    /// at most `limit`.
    pub fn turns_after(&self, after_id: i64, limit: usize) -> Result<Vec<TurnRead>, StoreError> {
        let connection = self.lock();
        let messages: Vec<MessageRow> = connection
            .prepare_cached(&format!(
                "{MESSAGE_COLUMNS} WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(params![after_id, limit as i64], message_row)?
            .collect::<Result<_, _>>()?;
        with_calls(&connection, messages)
    }

    /// The highest `messages.id`, 0 when there is no turn.
    pub fn last_message_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |row| {
                row.get(0)
            })?)
    }
}

/// Each message with its turn's tool calls and service calls.
fn with_calls(
    connection: &Connection,
    messages: Vec<MessageRow>,
) -> Result<Vec<TurnRead>, StoreError> {
    let mut tools = connection.prepare_cached(&format!(
        "{TOOL_CALL_COLUMNS} WHERE session_id = ?1 AND turn_id = ?2 ORDER BY id"
    ))?;
    let mut calls = connection.prepare_cached(&format!(
        "{SERVICE_CALL_COLUMNS} WHERE session_id = ?1 AND turn_id = ?2 ORDER BY id"
    ))?;
    let mut turns = Vec::with_capacity(messages.len());
    for message in messages {
        let key = params![message.session_id, message.turn_id];
        let tool_calls = tools
            .query_map(key, |row| {
                Ok(ToolCallRecord {
                    tool_name: row.get(0)?,
                    tool_params: row.get(1)?,
                    tool_result: row.get(2)?,
                    success: row.get(3)?,
                    error: row.get(4)?,
                    duration_ms: row.get::<_, Option<f64>>(5)?.unwrap_or(0.0),
                })
            })?
            .collect::<Result<_, _>>()?;
        let service_calls = calls
            .query_map(key, |row| {
                Ok(ServiceCallRecord {
                    service: row.get(1)?,
                    operation: row.get(2)?,
                    attempts: row.get(3)?,
                    outcome: row.get(4)?,
                    last_error: row.get(5)?,
                    duration_ms: row.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        turns.push(TurnRead {
            message,
            tool_calls,
            service_calls,
        });
    }
    Ok(turns)
}
