//! The memory service: per agent and session, the turns an agent has said,
//! returned as a compressed memory (recent turns verbatim, older ones cut to
//! their first sentence) within a token budget. It is a cache that heistd
//! fills from the audit store's outbox, so a write carrying an
//! `Idempotency-Key` that was already seen is acknowledged and not stored
//! again.
//!
//! Every endpoint but `/health` needs a bearer token. A token with
//! `memory:write` / `memory:read` writes and reads only the memories whose
//! `agent_id` is its own client id (`sub`); other agents' memories,
//! `/sessions/{id}/memories`, `/stats` and `DELETE /clear` need
//! `memory:admin`. It is bounded: per session in entries and bytes (413
//! `quota_exceeded`, permanent), in total bytes (507, transient), and in
//! time (a session's memories go `retention_hours` after its last write).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::token::{Claims, SigningKey};
use super::tools::{authenticate, authorize, AuthError};
use super::{error_response, health_body, JsonBody};
use crate::config::MemoryServiceConfig;
use crate::wire::{
    Companion, COMPRESSED_MEMORY_PATH, HEALTH_PATH, IDEMPOTENCY_KEY_HEADER, STORE_MEMORY_PATH,
};

/// Reads and writes any agent's memories, lists, counts and clears them.
pub const ADMIN_SCOPE: &str = "memory:admin";
/// Writes the token's own agent's memories.
pub const WRITE_SCOPE: &str = "memory:write";
/// Reads the token's own agent's memories.
pub const READ_SCOPE: &str = "memory:read";
/// Idempotency keys remembered at most: retries come within seconds, so
/// the newest 100,000 writes are plenty to recognise one.
pub const MAX_REMEMBERED_KEYS: usize = 100_000;
/// Messages longer than this are refused rather than silently cut.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Identifiers (agent, session) longer than this are refused.
pub const MAX_ID_BYTES: usize = 256;
/// Expired sessions are looked for at most this often, so a burst of
/// writes does not walk every session each time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct MemoryState {
    inner: Arc<Mutex<Memories>>,
    key: SigningKey,
    limits: MemoryServiceConfig,
}

#[derive(Debug, Deserialize)]
pub struct StoreRequest {
    pub agent_id: String,
    pub turn_id: i64,
    pub message: String,
    pub game_session_id: String,
}

#[derive(Debug, Deserialize)]
pub struct CompressedRequest {
    pub agent_id: String,
    pub game_session_id: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_recent_count")]
    pub recent_count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryEntry {
    pub agent_id: String,
    pub turn_id: i64,
    pub message: String,
}

/// One session's memories and what they cost.
struct SessionMemories {
    /// Agent to the agent's turns in arrival order.
    by_agent: BTreeMap<String, Vec<MemoryEntry>>,
    entries: usize,
    bytes: usize,
    /// Retention counts from here.
    last_write: Instant,
}

struct Memories {
    sessions: BTreeMap<String, SessionMemories>,
    /// Message bytes held across all sessions, for `max_bytes`.
    total_bytes: usize,
    /// Idempotency keys seen, per session, so clearing a session forgets
    /// its keys too.
    seen_keys: HashSet<(String, String)>,
    /// The keys in arrival order, so the oldest are forgotten past
    /// [`MAX_REMEMBERED_KEYS`] and a long-running service stays bounded.
    key_order: VecDeque<(String, String)>,
    last_prune: Instant,
}

impl MemoryState {
    pub fn new(key: SigningKey, limits: MemoryServiceConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Memories {
                sessions: BTreeMap::new(),
                total_bytes: 0,
                seen_keys: HashSet::new(),
                key_order: VecDeque::new(),
                last_prune: Instant::now(),
            })),
            key,
            limits,
        }
    }
}

impl Memories {
    /// Forgets one session: its memories and its idempotency keys.
    fn forget(&mut self, session_id: &str) {
        if let Some(session) = self.sessions.remove(session_id) {
            self.total_bytes -= session.bytes;
        }
        self.seen_keys.retain(|(session, _)| session != session_id);
        self.key_order.retain(|(session, _)| session != session_id);
    }

    /// Drops sessions whose last write is older than `retention`.
    fn prune(&mut self, now: Instant, retention: Duration) {
        if now.duration_since(self.last_prune) < PRUNE_EVERY.min(retention) {
            return;
        }
        self.last_prune = now;
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, session)| now.duration_since(session.last_write) >= retention)
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in expired {
            self.forget(&session_id);
        }
    }

    fn total_entries(&self) -> usize {
        self.sessions.values().map(|session| session.entries).sum()
    }
}

pub fn router(state: MemoryState) -> Router {
    Router::new()
        .route(STORE_MEMORY_PATH, post(store_memory))
        .route(COMPRESSED_MEMORY_PATH, post(get_compressed_memory))
        .route("/sessions/{session_id}/memories", get(list_memories))
        .route("/stats", get(stats))
        .route("/clear", delete(clear))
        .route(
            HEALTH_PATH,
            get(|| async { health_body(Companion::Memory.name()) }),
        )
        .with_state(state)
}

/// Checks the token before anything else is looked at: `memory:admin`
/// may touch any agent's memories; `own_scope` only the token's own.
fn authorize_agent(
    headers: &HeaderMap,
    key: &SigningKey,
    agent_id: Option<&str>,
    own_scope: &str,
) -> Result<Claims, AuthError> {
    let claims = authenticate(headers, key)?;
    if claims.has_scope(ADMIN_SCOPE) {
        return Ok(claims);
    }
    if !claims.has_scope(own_scope) {
        return Err(AuthError::Forbidden(format!(
            "token lacks scope `{own_scope}` (or `{ADMIN_SCOPE}`)"
        )));
    }
    match agent_id {
        Some(agent_id) if agent_id == claims.sub => Ok(claims),
        Some(_) => Err(AuthError::Forbidden(format!(
            "a `{own_scope}` token reaches only its own agent's memories; another agent's need `{ADMIN_SCOPE}`"
        ))),
        None => Ok(claims),
    }
}

/// Builds the compressed memory of `entries` (oldest first): the last
/// `recent_count` verbatim, older ones as first sentences, newest kept first
/// when the budget (about four characters a token) runs out.
pub fn compress(
    entries: &[MemoryEntry],
    max_tokens: usize,
    recent_count: usize,
) -> (String, usize) {
    let budget_chars = max_tokens.saturating_mul(4);
    let split = entries.len().saturating_sub(recent_count);
    let mut recent_lines: Vec<String> = Vec::new();
    let mut used = 0;
    for entry in entries[split..].iter().rev() {
        let line = format!("Turn {}: {}", entry.turn_id, entry.message.trim());
        if used + line.len() > budget_chars {
            break;
        }
        used += line.len();
        recent_lines.push(line);
    }
    recent_lines.reverse();
    let mut older_lines: Vec<String> = Vec::new();
    let mut compressed_count = 0;
    for entry in entries[..split].iter().rev() {
        let line = format!(
            "Turn {}: {}",
            entry.turn_id,
            first_sentence(&entry.message, 120)
        );
        if used + line.len() > budget_chars {
            break;
        }
        used += line.len();
        older_lines.push(line);
        compressed_count += 1;
    }
    older_lines.reverse();
    let mut summary = String::new();
    if !older_lines.is_empty() {
        summary.push_str("Earlier (compressed):\n");
        summary.push_str(&older_lines.join("\n"));
        summary.push('\n');
    }
    if !recent_lines.is_empty() {
        summary.push_str("Recent:\n");
        summary.push_str(&recent_lines.join("\n"));
    }
    (summary.trim_end().to_string(), compressed_count)
}

async fn store_memory(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<StoreRequest>,
) -> Response {
    if let Err(refusal) =
        authorize_agent(&headers, &state.key, Some(&request.agent_id), WRITE_SCOPE)
    {
        return refusal.into_response();
    }
    if let Some(refusal) = check_write(&request) {
        return refusal;
    }
    let idempotency_key = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let mut memories = state.inner.lock();
    let now = Instant::now();
    memories.prune(
        now,
        Duration::from_secs(state.limits.retention_hours.saturating_mul(3600)),
    );
    if let Some(key) = &idempotency_key {
        if memories
            .seen_keys
            .contains(&(request.game_session_id.clone(), key.clone()))
        {
            return Json(serde_json::json!({ "status": "success", "duplicate": true }))
                .into_response();
        }
    }
    if let Some(refusal) = check_quota(&memories, &state.limits, &request) {
        return refusal;
    }
    if let Some(key) = idempotency_key {
        remember_key(&mut memories, (request.game_session_id.clone(), key));
    }
    let bytes = request.message.len();
    memories.total_bytes += bytes;
    let session = memories
        .sessions
        .entry(request.game_session_id)
        .or_insert_with(|| SessionMemories {
            by_agent: BTreeMap::new(),
            entries: 0,
            bytes: 0,
            last_write: now,
        });
    session.entries += 1;
    session.bytes += bytes;
    session.last_write = now;
    let entries = session
        .by_agent
        .entry(request.agent_id.clone())
        .or_default();
    entries.push(MemoryEntry {
        agent_id: request.agent_id,
        turn_id: request.turn_id,
        message: request.message,
    });
    let count = entries.len();
    Json(serde_json::json!({ "status": "success", "duplicate": false, "memories_count": count }))
        .into_response()
}

/// Refuses an empty or oversized write before the store is locked.
fn check_write(request: &StoreRequest) -> Option<Response> {
    if request.agent_id.is_empty() || request.game_session_id.is_empty() {
        return Some(error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent_id and game_session_id must not be empty",
        ));
    }
    if request.agent_id.len() > MAX_ID_BYTES || request.game_session_id.len() > MAX_ID_BYTES {
        return Some(error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("agent_id and game_session_id must be at most {MAX_ID_BYTES} bytes"),
        ));
    }
    if request.message.len() > MAX_MESSAGE_BYTES {
        return Some(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message is over {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    None
}

/// 413 `quota_exceeded` past a session's quota (it will never fit), 507
/// past the service's total (room may free up: retention, `/clear`).
fn check_quota(
    memories: &Memories,
    limits: &MemoryServiceConfig,
    request: &StoreRequest,
) -> Option<Response> {
    let bytes = request.message.len();
    let (entries, held) = memories
        .sessions
        .get(&request.game_session_id)
        .map_or((0, 0), |session| (session.entries, session.bytes));
    if entries + 1 > limits.max_entries_per_session || held + bytes > limits.max_bytes_per_session {
        return Some(quota_refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "session quota exceeded: at most {} entries and {} bytes per session",
                limits.max_entries_per_session, limits.max_bytes_per_session
            ),
        ));
    }
    if memories.total_bytes + bytes > limits.max_bytes {
        return Some(quota_refusal(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the memory service holds its maximum of {} bytes",
                limits.max_bytes
            ),
        ));
    }
    None
}

fn quota_refusal(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({
        "success": false,
        "result": null,
        "status": "error",
        "error": "quota_exceeded",
        "error_description": message,
    });
    (status, Json(body)).into_response()
}

fn remember_key(memories: &mut Memories, remembered: (String, String)) {
    memories.seen_keys.insert(remembered.clone());
    memories.key_order.push_back(remembered);
    while memories.key_order.len() > MAX_REMEMBERED_KEYS {
        if let Some(oldest) = memories.key_order.pop_front() {
            memories.seen_keys.remove(&oldest);
        }
    }
}

async fn get_compressed_memory(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CompressedRequest>,
) -> Response {
    if let Err(refusal) = authorize_agent(&headers, &state.key, Some(&request.agent_id), READ_SCOPE)
    {
        return refusal.into_response();
    }
    let memories = state.inner.lock();
    let entries = memories
        .sessions
        .get(&request.game_session_id)
        .and_then(|session| session.by_agent.get(&request.agent_id))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (summary, compressed_count) = compress(entries, request.max_tokens, request.recent_count);
    let estimated_tokens = summary.len().div_ceil(4);
    Json(serde_json::json!({
        "status": "success",
        "agent_id": request.agent_id,
        "game_session_id": request.game_session_id,
        // The prototype's client reads `compressed_summary`; newer ones `summary`.
        "summary": summary,
        "compressed_summary": summary,
        "memories_count": entries.len(),
        "compressed_count": compressed_count,
        "estimated_tokens": estimated_tokens,
    }))
    .into_response()
}

async fn list_memories(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
) -> Response {
    if let Err(refusal) = authorize(&headers, &state.key, ADMIN_SCOPE) {
        return refusal.into_response();
    }
    let memories = state.inner.lock();
    let mut entries: Vec<&MemoryEntry> = memories
        .sessions
        .get(&session_id)
        .map(|session| session.by_agent.values().flatten().collect())
        .unwrap_or_default();
    entries.sort_by_key(|entry| entry.turn_id);
    Json(
        serde_json::json!({ "status": "success", "game_session_id": session_id, "memories": entries }),
    )
    .into_response()
}

async fn stats(State(state): State<MemoryState>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorize(&headers, &state.key, ADMIN_SCOPE) {
        return refusal.into_response();
    }
    let memories = state.inner.lock();
    let agents: HashSet<&String> = memories
        .sessions
        .values()
        .flat_map(|session| session.by_agent.keys())
        .collect();
    Json(serde_json::json!({
        "status": "success",
        "total_memories": memories.total_entries(),
        "sessions": memories.sessions.len(),
        "agents": agents.len(),
        "total_bytes": memories.total_bytes,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct ClearQuery {
    game_session_id: Option<String>,
}

async fn clear(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    Query(query): Query<ClearQuery>,
) -> Response {
    if let Err(refusal) = authorize(&headers, &state.key, ADMIN_SCOPE) {
        return refusal.into_response();
    }
    let mut memories = state.inner.lock();
    let before = memories.total_entries();
    match &query.game_session_id {
        Some(session_id) => memories.forget(session_id),
        None => {
            memories.sessions.clear();
            memories.total_bytes = 0;
            memories.seen_keys.clear();
            memories.key_order.clear();
        }
    }
    let after = memories.total_entries();
    Json(serde_json::json!({ "status": "success", "cleared": before - after })).into_response()
}

fn first_sentence(message: &str, max_chars: usize) -> String {
    let trimmed = message.trim();
    let end = trimmed
        .find(['.', '!', '?'])
        .map_or(trimmed.len(), |index| index + 1);
    let sentence = &trimmed[..end];
    if sentence.chars().count() <= max_chars {
        sentence.to_string()
    } else {
        format!(
            "{}...",
            sentence.chars().take(max_chars).collect::<String>()
        )
    }
}

fn default_max_tokens() -> usize {
    500
}

fn default_recent_count() -> usize {
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: i64) -> Vec<MemoryEntry> {
        (1..=count)
            .map(|turn_id| MemoryEntry {
                agent_id: "mole".into(),
                turn_id,
                message: format!("Point {turn_id} about the vault. And a long tail that compression drops entirely."),
            })
            .collect()
    }

    #[test]
    fn recent_verbatim_older_compressed() {
        let (summary, compressed) = compress(&entries(5), 1000, 2);
        assert_eq!(compressed, 3);
        assert!(summary.contains("Turn 5: Point 5 about the vault. And a long tail"));
        assert!(summary.contains("Turn 1: Point 1 about the vault.\n"));
        assert!(!summary.contains("Turn 1: Point 1 about the vault. And"));
    }

    #[test]
    fn budget_is_respected() {
        for max_tokens in [0, 10, 30, 80] {
            let (summary, _) = compress(&entries(20), max_tokens, 3);
            let body_chars: usize = summary
                .lines()
                .filter(|line| line.starts_with("Turn"))
                .map(str::len)
                .sum();
            assert!(body_chars <= max_tokens * 4, "{max_tokens}: {summary}");
        }
    }
}
