//! What a copy between backends carries (`store migrate`): one session
//! with every row that belongs to it, in the shape both backends read and
//! write, and the tables the copy's count check compares. Neutral ground,
//! so neither backend imports the other's types or the migrate command's.

use super::{MessageRow, ServiceCallRow, SessionRow};

/// One session and every row that belongs to it, as SQLite holds them.
#[derive(Debug, Clone)]
pub(crate) struct SessionBundle {
    pub session: SessionRow,
    pub messages: Vec<MessageRow>,
    pub tool_usage: Vec<ToolUsageExport>,
    pub service_calls: Vec<ServiceCallRow>,
    pub outbox: Vec<OutboxExport>,
}

/// A `tool_usage` row with the columns the API's row leaves out.
#[derive(Debug, Clone)]
pub(crate) struct ToolUsageExport {
    pub turn_id: i64,
    pub agent_name: String,
    pub tool_name: String,
    pub tool_params: String,
    pub tool_result: String,
    pub timestamp: String,
    pub success: bool,
    pub error: Option<String>,
    pub duration_ms: Option<f64>,
}

/// An `outbox` row, delivery state included.
#[derive(Debug, Clone)]
pub(crate) struct OutboxExport {
    pub turn_id: i64,
    pub payload: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub abandoned_at: Option<String>,
}

/// The tables the count check compares, by session.
pub(crate) const COUNTED_TABLES: [&str; 5] = [
    "sessions",
    "messages",
    "tool_usage",
    "service_calls",
    "outbox",
];
