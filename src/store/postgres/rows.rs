//! PostgreSQL rows into the store's row types (the same ones the SQLite
//! backend returns, so the admin API's JSON is the same on both). The
//! column lists they read are the shared ones in `store::rows`.

use tokio_postgres::Row;

pub(super) use crate::store::rows::{
    HEALTH_EVENT_COLUMNS, MESSAGE_COLUMNS, OUTBOX_ENTRY_COLUMNS, SERVICE_CALL_COLUMNS,
    SESSION_COLUMNS, TOOL_USAGE_COLUMNS,
};
use crate::store::{
    HealthEvent, MessageRow, OutboxEntry, ServiceCallRecord, ServiceCallRow, SessionRow,
    SessionStatus, ToolUsageRow,
};

pub(super) fn session_row(row: &Row) -> SessionRow {
    session_row_at(row, 0)
}

/// A session row whose columns start at `offset` (after `RETURNING x, ...`).
pub(super) fn session_row_at(row: &Row, offset: usize) -> SessionRow {
    let status_text: String = row.get(offset + 4);
    SessionRow {
        session_id: row.get(offset),
        start_time: row.get(offset + 1),
        end_time: row.get(offset + 2),
        num_turns: row.get(offset + 3),
        status: SessionStatus::from_text(&status_text),
        status_text,
        seed: row.get(offset + 5),
        scenario: row.get(offset + 6),
        planned_turns: row.get(offset + 7),
        failure_reason: row.get(offset + 8),
        schedule: row.get(offset + 9),
        scheduled_time: row.get(offset + 10),
        trigger: row.get(offset + 11),
        prompt_tokens: row.get(offset + 12),
        completion_tokens: row.get(offset + 13),
        usage_estimated: row.get(offset + 14),
        cost: row.get(offset + 15),
    }
}

pub(super) fn message_row(row: &Row) -> MessageRow {
    MessageRow {
        id: row.get(0),
        session_id: row.get(1),
        turn_id: row.get(2),
        agent_name: row.get(3),
        agent_role: row.get(4),
        message: row.get(5),
        timestamp: row.get(6),
        error: row.get(7),
        prompt_tokens: row.get(8),
        completion_tokens: row.get(9),
        finish_reason: row.get(10),
        trimmed: row.get(11),
        endpoint: row.get(12),
        model: row.get(13),
    }
}

pub(super) fn tool_usage_row(row: &Row) -> ToolUsageRow {
    ToolUsageRow {
        id: row.get(0),
        session_id: row.get(1),
        turn_id: row.get(2),
        agent_name: row.get(3),
        tool_name: row.get(4),
        tool_params: row.get(5),
        tool_result: row.get(6),
        timestamp: row.get(7),
        success: row.get(8),
        error: row.get(9),
    }
}

pub(super) fn service_call_row(row: &Row) -> ServiceCallRow {
    ServiceCallRow {
        turn_id: row.get(0),
        call: ServiceCallRecord {
            service: row.get(1),
            operation: row.get(2),
            attempts: row.get::<_, i64>(3).max(0) as u32,
            outcome: row.get(4),
            last_error: row.get(5),
            duration_ms: row.get(6),
        },
        timestamp: row.get(7),
    }
}

pub(super) fn outbox_entry(row: &Row) -> OutboxEntry {
    OutboxEntry {
        id: row.get(0),
        session_id: row.get(1),
        turn_id: row.get(2),
        payload: row.get(3),
        attempts: row.get(4),
    }
}

pub(super) fn health_event(row: &Row) -> HealthEvent {
    HealthEvent {
        timestamp: row.get(0),
        service: row.get(1),
        from_state: row.get(2),
        to_state: row.get(3),
        reason: row.get(4),
    }
}
