//! What goes into the audit store and what comes out of it: the records a
//! caller writes (`NewSession`, `TurnRecord`) and the rows a read returns.
//! The rows' serde derives are the admin API's and `sessions export`'s JSON
//! format, so a field renamed or reordered here changes those outputs. This
//! file holds no SQL beyond the column lists both backends' row readers
//! expect (`sqlite::rows`, `postgres::rows`).

use serde::Serialize;

/// How a session ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// A run request waiting in the cluster's run queue for a node with
    /// room (PostgreSQL only; nothing has been played yet).
    Queued,
    Active,
    Completed,
    Failed,
    Interrupted,
    /// Stopped on an operator's request (`POST /api/v1/sessions/{id}/cancel`)
    /// after its current turn, or before it started when still queued.
    Cancelled,
    /// A status text heistd never writes, read from a database another
    /// program wrote; the text itself is kept in [`SessionRow::status_text`].
    /// Reading must not fail on it: such a database is adopted, not refused.
    Unknown,
}

impl SessionStatus {
    /// The statuses heistd writes, in the order it lists them.
    pub const KNOWN: [SessionStatus; 6] = [
        Self::Queued,
        Self::Active,
        Self::Completed,
        Self::Failed,
        Self::Interrupted,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
        }
    }

    /// The status a stored text names; [`Self::Unknown`] for any other text.
    pub fn from_text(text: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|known| known.as_str() == text)
            .unwrap_or(Self::Unknown)
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.pad(self.as_str())
    }
}

/// A session to create. Owned, so it can cross to the store's blocking
/// thread, or into PostgreSQL's async query, without borrowing the caller.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub scenario: String,
    pub seed: u64,
    pub planned_turns: u32,
    /// The schedule that started the run and the slot it was for; together
    /// they identify a run, so a slot is never run twice.
    pub schedule: Option<String>,
    pub scheduled_time: Option<String>,
    /// How a schedule's run was started ([`RunTrigger`]); `None` for a run
    /// no schedule started.
    pub trigger: Option<RunTrigger>,
}

/// How a schedule's run was started, stored as text in `sessions.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunTrigger {
    /// Its slot came due.
    Schedule,
    /// An operator asked for one now (`POST /api/v1/schedules/{name}/trigger`).
    Manual,
    /// An operator asked for a past slot that did not run (`/backfill`).
    Backfill,
}

impl RunTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::Backfill => "backfill",
        }
    }
}

/// What a cancel request found ([`super::StoreHandle::request_cancel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The session was queued and never started: it is `cancelled` now.
    Cancelled,
    /// The session is active: the request is recorded, and the node that
    /// plays it stops it after its current turn.
    Requested,
    /// The session had already ended, with this status.
    Ended(SessionStatus),
}

/// A recorded cancel request of a session still active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub session_id: String,
    pub reason: String,
}

/// A paused schedule, as `schedule_pauses` keeps it: paused on every node
/// and across restarts until resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulePause {
    pub schedule: String,
    /// Why, as the operator said it (may be empty).
    pub note: String,
    /// Who asked: the admin API's caller as it knows it.
    pub paused_by: String,
    /// RFC 3339.
    pub paused_at: String,
}

/// One turn as it is committed: its message and tool calls together.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub session_id: String,
    pub turn_id: u32,
    pub agent_name: String,
    pub agent_role: String,
    /// The agent's reply; empty when the model call failed.
    pub message: String,
    /// Why the turn has no message; the text is never fed back to the model.
    pub error: Option<String>,
    pub tool_calls: Vec<ToolCallRecord>,
    /// The memory-service write for this turn, delivered after the commit.
    pub memory_payload: Option<String>,
    /// Calls of this turn that failed or were retried.
    pub service_calls: Vec<ServiceCallRecord>,
    /// The model server's token counts for this reply (`usage`), when it
    /// gave them.
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// Why the model stopped (`stop`, `tool_calls`; `length`: cut short).
    pub finish_reason: Option<String>,
    /// The prompt was trimmed to fit the model's context window.
    pub trimmed: bool,
    /// The endpoint that answered (its name) and the model it ran; none
    /// when no model answered the turn.
    pub endpoint: Option<String>,
    pub model: Option<String>,
    /// That endpoint is a fallback. Shown live (the run's summary); the
    /// store keeps the endpoint and model, not this flag.
    pub fallback: bool,
    /// What the turn's model call used, added to its session's totals in
    /// the turn's own transaction.
    pub usage: TurnUsage,
}

/// What one turn's model call used, as its session's totals count it: the
/// server's `usage`, or heistd's estimate where the reply had none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The counts (or one of them) are heistd's estimate: the reply had no
    /// `usage`. Counted in the session's `usage_estimated`.
    pub estimated: bool,
    /// What those tokens cost at the configured prices; none when no price
    /// is configured.
    pub cost: Option<f64>,
}

/// Token totals of a set of sessions (those one schedule started on one
/// UTC day, say).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenTotals {
    /// The sessions counted.
    pub sessions: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Turns whose counts are heistd's estimate (no `usage` in the reply).
    pub usage_estimated: u64,
    /// The sessions' cost, where prices were configured; absent when none
    /// of them has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// The token totals of the sessions one schedule (or no schedule: runs
/// started through the API or the command line) started in a period.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleTokens {
    pub schedule: Option<String>,
    pub totals: TokenTotals,
}

/// A call that failed or needed retries, kept so "why was turn 7 slow?"
/// is one query.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCallRecord {
    pub service: String,
    pub operation: String,
    pub attempts: u32,
    /// The resilience stack's outcome label. Text, not a type: that
    /// vocabulary belongs to `resilience`, which sits beside the store and
    /// is not imported by it.
    pub outcome: String,
    pub last_error: Option<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolCallRecord {
    pub tool_name: String,
    pub tool_params: String,
    pub tool_result: String,
    pub success: bool,
    pub error: Option<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub session_id: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub num_turns: i64,
    /// The `status` column exactly as stored. The JSON shows this text, so
    /// a status another program wrote reads back unchanged.
    #[serde(rename = "status")]
    pub status_text: String,
    /// `status_text` typed; [`SessionStatus::Unknown`] for a text heistd
    /// never writes.
    #[serde(skip)]
    pub status: SessionStatus,
    pub seed: Option<i64>,
    pub scenario: Option<String>,
    pub planned_turns: Option<i64>,
    pub failure_reason: Option<String>,
    pub schedule: Option<String>,
    pub scheduled_time: Option<String>,
    /// `schedule`, `manual` or `backfill` for a schedule's run; as stored.
    pub trigger: Option<String>,
    /// The session's tokens so far (the server's `usage`, or heistd's
    /// estimate for turns whose reply had none), kept current with each
    /// turn's commit.
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Turns whose counts are heistd's estimate.
    pub usage_estimated: i64,
    /// What the session's tokens cost at the configured prices; null when
    /// no price was configured.
    pub cost: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub id: i64,
    pub session_id: String,
    pub turn_id: i64,
    pub agent_name: String,
    pub agent_role: String,
    pub message: String,
    pub timestamp: String,
    pub error: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub finish_reason: Option<String>,
    pub trimmed: bool,
    /// The endpoint that answered and the model it ran; null for a turn no
    /// model answered, or one recorded before heistd kept them.
    pub endpoint: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolUsageRow {
    pub id: i64,
    pub session_id: String,
    pub turn_id: i64,
    pub agent_name: String,
    pub tool_name: String,
    pub tool_params: String,
    pub tool_result: String,
    pub timestamp: String,
    pub success: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionDetail {
    pub session: SessionRow,
    pub messages: Vec<MessageRow>,
    pub tool_usage: Vec<ToolUsageRow>,
    pub service_calls: Vec<ServiceCallRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceCallRow {
    pub turn_id: i64,
    #[serde(flatten)]
    pub call: ServiceCallRecord,
    pub timestamp: String,
}

/// The context a turn's prompt is built from: the last successful turns,
/// oldest first, and the tool calls those turns made.
#[derive(Debug, Clone)]
pub struct RecentTurns {
    pub messages: Vec<MessageRow>,
    pub tool_usage: Vec<ToolUsageRow>,
}

/// One committed turn as the admin API's event streams send it: its
/// message, its tool calls (with outcome and duration) and the calls of it
/// that failed or were retried.
#[derive(Debug, Clone)]
pub struct TurnRead {
    pub message: MessageRow,
    pub tool_calls: Vec<ToolCallRecord>,
    pub service_calls: Vec<ServiceCallRecord>,
}

/// A session's row and its turns after a given one (a session's event
/// stream reads both in one trip, so it sees its ending with its turns).
#[derive(Debug, Clone)]
pub struct SessionTurns {
    pub session: SessionRow,
    pub turns: Vec<TurnRead>,
}

/// A memory write waiting for (re)delivery.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub id: i64,
    pub session_id: String,
    pub turn_id: i64,
    pub payload: String,
    pub attempts: i64,
}

/// The whole outbox in three numbers, for the daemon's gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxSummary {
    /// Writes waiting for delivery.
    pub pending: u64,
    /// `created_at` of the oldest waiting write, as stored.
    pub oldest_pending_created_at: Option<String>,
    /// Writes the memory service refused for good: data it never got.
    pub abandoned: u64,
}

/// A session the memory service should hold writes of, and how many the
/// store says it delivered (abandoned ones are not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredCount {
    pub session_id: String,
    pub delivered: u64,
}

/// A service's health changed (written by the health checker).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthEvent {
    pub timestamp: String,
    pub service: String,
    /// The health states as `health` names them. Text, not a type: the
    /// checker sits above the store, which must not import it.
    pub from_state: String,
    pub to_state: String,
    pub reason: String,
}

// The cluster, as a store several daemons share (PostgreSQL) sees it.

/// A node as the `nodes` table has it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeRow {
    pub node_id: String,
    pub host: String,
    pub pid: i64,
    pub started_at: String,
    pub last_heartbeat: String,
    /// Whether it heartbeat within the last lease period and has not
    /// stopped.
    pub alive: bool,
    /// Whether it stopped heartbeating without a clean stop (a crash, a
    /// kill, a partition) within the last hour; a node stopped on purpose
    /// is never lost, and one lost longer ago has been dealt with.
    pub lost: bool,
}

/// What one heartbeat found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeartbeatReport {
    /// Sessions held here whose lease was renewed.
    pub renewed: usize,
    /// Sessions held here that another node now owns (or that ended): they
    /// are no longer held, and their next write will be fenced.
    pub lost: Vec<String>,
}

/// The `sessions` columns every backend's session reader expects, in
/// their order (SQLite's `sqlite::rows::session_row`, PostgreSQL's
/// `postgres::rows::session_row_at`).
pub(crate) const SESSION_COLUMNS: &str =
    "session_id, start_time, end_time, num_turns, status, seed, scenario, planned_turns, failure_reason, schedule, scheduled_time, trigger, prompt_tokens, completion_tokens, usage_estimated, cost";

/// The `messages` read every backend's message reader expects, in its
/// column order.
pub(crate) const MESSAGE_COLUMNS: &str =
    "SELECT id, session_id, turn_id, agent_name, agent_role, message, timestamp, error, prompt_tokens, completion_tokens, finish_reason, trimmed, endpoint, model FROM messages";

/// The `tool_usage` read every backend's tool usage reader expects, in its
/// column order.
pub(crate) const TOOL_USAGE_COLUMNS: &str =
    "SELECT id, session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error FROM tool_usage";

/// The `service_calls` read every backend's service call reader expects,
/// in its column order.
pub(crate) const SERVICE_CALL_COLUMNS: &str =
    "SELECT turn_id, service, operation, attempts, outcome, last_error, duration_ms, timestamp FROM service_calls";

/// The `outbox` read every backend's outbox entry reader expects, in its
/// column order.
pub(crate) const OUTBOX_ENTRY_COLUMNS: &str =
    "SELECT id, session_id, turn_id, payload, attempts FROM outbox";

/// The `health_events` read every backend's health event reader expects,
/// in its column order.
pub(crate) const HEALTH_EVENT_COLUMNS: &str =
    "SELECT timestamp, service, from_state, to_state, reason FROM health_events";

/// A turn's tool calls as the event streams read them, in its reader's
/// column order (the `duration_ms` of a prototype's row is NULL).
pub(crate) const TOOL_CALL_COLUMNS: &str =
    "SELECT tool_name, tool_params, tool_result, success, error, duration_ms FROM tool_usage";
