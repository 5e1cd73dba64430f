//! Turns: committing one (message, tool calls, service calls, the
//! memory outbox entry and the session's token totals in one transaction) and reading back what the next
//! prompt needs. It never creates or ends a session.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{message_row, tool_usage_row, MESSAGE_COLUMNS, TOOL_USAGE_COLUMNS};
use super::Store;
use crate::store::{
    timestamp, MessageRow, RecentTurns, ServiceCallRecord, StoreError, ToolUsageRow, TurnRecord,
};

impl Store {
    /// Commits a turn's message, tool calls and outbox entry in one
    /// transaction, and counts it in the session's `num_turns`; returns once
    /// that transaction is durable. Turns of other sessions that arrive
    /// meanwhile share it (`group_commit`).
    #[cfg(test)]
    pub fn record_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
        self.commit_turn(turn.clone(), 0).map(drop)
    }

    /// The last `limit` turns that produced a message, oldest first, with
    /// their tool results; failed turns are left out so an error text is
    /// never fed back to the model as if an agent had said it.
    pub fn recent_messages(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            &format!("{MESSAGE_COLUMNS} WHERE session_id = ?1 AND error IS NULL ORDER BY turn_id DESC LIMIT ?2"),
        )?;
        let mut rows: Vec<MessageRow> = statement
            .query_map(params![session_id, limit as i64], message_row)?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    pub fn tool_usage_for_turns(
        &self,
        session_id: &str,
        first_turn: i64,
    ) -> Result<Vec<ToolUsageRow>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "{TOOL_USAGE_COLUMNS} WHERE session_id = ?1 AND turn_id >= ?2 ORDER BY id"
        ))?;
        let rows = statement
            .query_map(params![session_id, first_turn], tool_usage_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// [`Self::recent_messages`] and the tool calls of those turns: what a
    /// prompt is built from, read in one trip to the store.
    pub fn recent_turns(&self, session_id: &str, limit: usize) -> Result<RecentTurns, StoreError> {
        let messages = self.recent_messages(session_id, limit)?;
        let first_turn = messages.first().map_or(i64::MAX, |message| message.turn_id);
        let tool_usage = self.tool_usage_for_turns(session_id, first_turn)?;
        Ok(RecentTurns {
            messages,
            tool_usage,
        })
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
}

/// Writes a turn's rows (message, tool calls, service calls, outbox entry)
/// and its session's `num_turns` inside the caller's transaction.
pub(super) fn insert_turn(connection: &Connection, turn: &TurnRecord) -> Result<(), StoreError> {
    // A turn that finishes after its session was ended (the daemon's
    // grace period ran out mid-turn) is not recorded.
    ensure_session_active(connection, &turn.session_id)?;
    let now = timestamp(chrono::Utc::now());
    // Every statement of a turn's commit is prepared once per connection
    // (`prepare_cached`): parsing SQL was a fifth of the daemon's
    // instructions per turn under load (BENCHMARKS.md).
    connection.prepare_cached(
        "INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp, error, prompt_tokens, completion_tokens, finish_reason, trimmed, endpoint, model)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?.execute(params![turn.session_id, turn.turn_id, turn.agent_name, turn.agent_role, turn.message, now, turn.error, turn.prompt_tokens, turn.completion_tokens, turn.finish_reason, turn.trimmed, turn.endpoint, turn.model],
    )?;
    insert_tool_calls(connection, turn, &now)?;
    insert_service_calls(
        connection,
        &turn.session_id,
        turn.turn_id,
        &turn.service_calls,
        &now,
    )?;
    if let Some(payload) = &turn.memory_payload {
        connection
            .prepare_cached(
                "INSERT INTO outbox (session_id, turn_id, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![turn.session_id, turn.turn_id, payload, now])?;
    }
    // The session's token totals move with the turn, in its transaction.
    let usage = &turn.usage;
    connection
        .prepare_cached(
            "UPDATE sessions SET num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = ?1),
                 prompt_tokens = prompt_tokens + ?2, completion_tokens = completion_tokens + ?3,
                 usage_estimated = usage_estimated + ?4,
                 cost = CASE WHEN ?5 IS NULL THEN cost ELSE COALESCE(cost, 0) + ?5 END
             WHERE session_id = ?1",
        )?
        .execute(params![
            turn.session_id,
            usage.prompt_tokens,
            usage.completion_tokens,
            i64::from(usage.estimated),
            usage.cost
        ])?;
    Ok(())
}

/// Refuses a turn for a session that is missing or no longer `active`.
fn ensure_session_active(connection: &Connection, session_id: &str) -> Result<(), StoreError> {
    let status: Option<String> = connection
        .prepare_cached("SELECT status FROM sessions WHERE session_id = ?1")?
        .query_row(params![session_id], |row| row.get(0))
        .optional()?;
    match status.as_deref() {
        Some("active") => Ok(()),
        Some(status) => Err(StoreError::SessionEnded {
            session_id: session_id.to_string(),
            status: status.to_string(),
        }),
        None => Err(StoreError::SessionNotFound(session_id.to_string())),
    }
}

/// One `tool_usage` row per tool call of the turn, stamped `now`.
fn insert_tool_calls(
    connection: &Connection,
    turn: &TurnRecord,
    now: &str,
) -> Result<(), StoreError> {
    let mut insert_tool = connection.prepare_cached(
        "INSERT INTO tool_usage (session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for call in &turn.tool_calls {
        insert_tool.execute(params![
            turn.session_id,
            turn.turn_id,
            turn.agent_name,
            call.tool_name,
            call.tool_params,
            call.tool_result,
            now,
            call.success,
            call.error,
            call.duration_ms
        ])?;
    }
    Ok(())
}

/// One `service_calls` row per journaled call of a turn, stamped `now`.
pub(super) fn insert_service_calls(
    connection: &Connection,
    session_id: &str,
    turn_id: u32,
    calls: &[ServiceCallRecord],
    now: &str,
) -> Result<(), StoreError> {
    let mut insert_call = connection.prepare_cached(
        "INSERT INTO service_calls (session_id, turn_id, service, operation, attempts, outcome, last_error, duration_ms, timestamp)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for call in calls {
        insert_call.execute(params![
            session_id,
            turn_id,
            call.service,
            call.operation,
            call.attempts,
            call.outcome,
            call.last_error,
            call.duration_ms,
            now
        ])?;
    }
    Ok(())
}
