//! SQLite rows into the store's row types (the same ones the PostgreSQL
//! backend returns, so the admin API's JSON is the same on both). The
//! column lists they read are the shared ones in `store::rows`.

pub(super) use crate::store::rows::{
    HEALTH_EVENT_COLUMNS, MESSAGE_COLUMNS, OUTBOX_ENTRY_COLUMNS, SERVICE_CALL_COLUMNS,
    SESSION_COLUMNS, TOOL_USAGE_COLUMNS,
};
use crate::store::{MessageRow, SessionRow, SessionStatus, ToolUsageRow};

pub(super) fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    let status_text: String = row.get(4)?;
    Ok(SessionRow {
        session_id: row.get(0)?,
        start_time: row.get(1)?,
        end_time: row.get(2)?,
        num_turns: row.get(3)?,
        status: SessionStatus::from_text(&status_text),
        status_text,
        seed: row.get(5)?,
        scenario: row.get(6)?,
        planned_turns: row.get(7)?,
        failure_reason: row.get(8)?,
        schedule: row.get(9)?,
        scheduled_time: row.get(10)?,
        trigger: row.get(11)?,
        // NULL where an older schema has no such column (read as it is).
        prompt_tokens: row.get::<_, Option<i64>>(12)?.unwrap_or(0),
        completion_tokens: row.get::<_, Option<i64>>(13)?.unwrap_or(0),
        usage_estimated: row.get::<_, Option<i64>>(14)?.unwrap_or(0),
        cost: row.get(15)?,
    })
}

pub(super) fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: row.get(0)?,
        session_id: row.get(1)?,
        turn_id: row.get(2)?,
        agent_name: row.get(3)?,
        agent_role: row.get(4)?,
        message: row.get(5)?,
        timestamp: row.get(6)?,
        error: row.get(7)?,
        prompt_tokens: row.get(8)?,
        completion_tokens: row.get(9)?,
        finish_reason: row.get(10)?,
        // NULL where an older schema has no such column (read as it is).
        trimmed: row.get::<_, Option<bool>>(11)?.unwrap_or(false),
        endpoint: row.get(12)?,
        model: row.get(13)?,
    })
}

pub(super) fn tool_usage_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ToolUsageRow> {
    Ok(ToolUsageRow {
        id: row.get(0)?,
        session_id: row.get(1)?,
        turn_id: row.get(2)?,
        agent_name: row.get(3)?,
        tool_name: row.get(4)?,
        tool_params: row.get(5)?,
        tool_result: row.get(6)?,
        timestamp: row.get(7)?,
        success: row.get(8)?,
        error: row.get(9)?,
    })
}
