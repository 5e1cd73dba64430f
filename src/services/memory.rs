//! The memory service: per agent and session, the turns an agent has said,
//! returned as a compressed memory (recent turns verbatim, older ones cut to
//! their first sentence) within a token budget. It is a cache that heistd
//! fills from the audit store's outbox, so a write carrying an
//! `Idempotency-Key` that was already seen is acknowledged and not stored
//! again.
//!
//! It must not let anyone without a `memory:admin` token clear it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::token::SigningKey;
use super::tools::authorize;
use super::{error_response, health_body, JsonBody};
use crate::wire::{
    Companion, COMPRESSED_MEMORY_PATH, HEALTH_PATH, IDEMPOTENCY_KEY_HEADER, STORE_MEMORY_PATH,
};

/// The scope that may `DELETE /clear`.
pub const ADMIN_SCOPE: &str = "memory:admin";
/// Idempotency keys remembered at most: retries come within seconds, so
/// the newest 100,000 writes are plenty to recognise one.
pub const MAX_REMEMBERED_KEYS: usize = 100_000;
/// Messages longer than this are refused rather than silently cut.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct MemoryState {
    inner: Arc<Mutex<Memories>>,
    key: SigningKey,
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

#[derive(Default)]
struct Memories {
    /// (session, agent) to the agent's turns in arrival order.
    by_session_agent: BTreeMap<(String, String), Vec<MemoryEntry>>,
    /// Idempotency keys seen, per session, so clearing a session forgets
    /// its keys too.
    seen_keys: HashSet<(String, String)>,
    /// The keys in arrival order, so the oldest are forgotten past
    /// [`MAX_REMEMBERED_KEYS`] and a long-running service stays bounded.
    key_order: std::collections::VecDeque<(String, String)>,
}

impl MemoryState {
    pub fn new(key: SigningKey) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Memories::default())),
            key,
        }
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
    if request.agent_id.is_empty() || request.game_session_id.is_empty() {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent_id and game_session_id must not be empty",
        );
    }
    if request.message.len() > MAX_MESSAGE_BYTES {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message is over {MAX_MESSAGE_BYTES} bytes"),
        );
    }
    let idempotency_key = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let mut memories = state.inner.lock();
    if let Some(key) = &idempotency_key {
        let remembered = (request.game_session_id.clone(), key.clone());
        if !memories.seen_keys.insert(remembered.clone()) {
            return Json(serde_json::json!({ "status": "success", "duplicate": true }))
                .into_response();
        }
        memories.key_order.push_back(remembered);
        while memories.key_order.len() > MAX_REMEMBERED_KEYS {
            if let Some(oldest) = memories.key_order.pop_front() {
                memories.seen_keys.remove(&oldest);
            }
        }
    }
    let entries = memories
        .by_session_agent
        .entry((request.game_session_id, request.agent_id.clone()))
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

async fn get_compressed_memory(
    State(state): State<MemoryState>,
    JsonBody(request): JsonBody<CompressedRequest>,
) -> Response {
    let memories = state.inner.lock();
    let entries = memories
        .by_session_agent
        .get(&(request.game_session_id.clone(), request.agent_id.clone()))
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
    Path(session_id): Path<String>,
) -> Json<serde_json::Value> {
    let memories = state.inner.lock();
    let mut entries: Vec<&MemoryEntry> = memories
        .by_session_agent
        .iter()
        .filter(|((session, _), _)| *session == session_id)
        .flat_map(|(_, entries)| entries.iter())
        .collect();
    entries.sort_by_key(|entry| entry.turn_id);
    Json(
        serde_json::json!({ "status": "success", "game_session_id": session_id, "memories": entries }),
    )
}

async fn stats(State(state): State<MemoryState>) -> Json<serde_json::Value> {
    let memories = state.inner.lock();
    let sessions: HashSet<&String> = memories
        .by_session_agent
        .keys()
        .map(|(session, _)| session)
        .collect();
    let agents: HashSet<&String> = memories
        .by_session_agent
        .keys()
        .map(|(_, agent)| agent)
        .collect();
    let total: usize = memories.by_session_agent.values().map(Vec::len).sum();
    Json(serde_json::json!({
        "status": "success",
        "total_memories": total,
        "sessions": sessions.len(),
        "agents": agents.len(),
    }))
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
    let before: usize = memories.by_session_agent.values().map(Vec::len).sum();
    match &query.game_session_id {
        Some(session_id) => {
            memories
                .by_session_agent
                .retain(|(session, _), _| session != session_id);
            memories
                .seen_keys
                .retain(|(session, _)| session != session_id);
            memories
                .key_order
                .retain(|(session, _)| session != session_id);
        }
        None => {
            memories.by_session_agent.clear();
            memories.seen_keys.clear();
            memories.key_order.clear();
        }
    }
    let after: usize = memories.by_session_agent.values().map(Vec::len).sum();
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
