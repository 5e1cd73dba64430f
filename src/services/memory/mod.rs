//! The memory service: per agent and session, the turns an agent has said,
//! returned as a compressed memory (recent turns verbatim, older ones cut to
//! their first sentence) within a token budget. It is a cache that heistd
//! fills from the audit store's outbox, so a write carrying an
//! `Idempotency-Key` that its client already used for the same agent and
//! session is acknowledged and not stored again, when its body is the same
//! (same content hash); with another body it is refused, 409, naming the
//! key. Keys are scoped by the authenticated client: an agent that knows
//! heistd's keys (`session:turn`) cannot pre-empt heistd's writes.
//!
//! Every endpoint but `/health` needs a bearer token. A token with
//! `memory:write` / `memory:read` writes and reads only the memories whose
//! `agent_id` is its own client id (`sub`); other agents' memories,
//! `/sessions/{id}/memories`, `/sessions/{id}/count`,
//! `/sessions/{id}/digest`, `/stats` and `DELETE /clear` need
//! `memory:admin`. It is bounded ([`held`]): every stored byte is charged
//! (message, ids, key, client, a fixed overhead per entry), and ids and
//! keys have length limits (413 naming the limit); per client in a session
//! in entries and bytes (413 `quota_exceeded`, permanent); per agent client
//! (`max_bytes_per_client`) and for all agents together
//! (`max_bytes_agents`), so an agent cannot fill the room heistd's own
//! writes (`memory:admin`) need (507); in total bytes (507, transient); and
//! in time (a session's memories go `retention_hours` after its last
//! write).
//!
//! With `companions.memory.path` set, every accepted write is written
//! through to the service's own SQLite file ([`super::memory_file`]) before
//! it is acknowledged, and loaded back at start; without it (the default
//! for `demo` and the tests) everything is in RAM. `GET /health` reports an
//! `instance_id` that changes whenever the service starts empty, and
//! `GET /sessions/{id}/digest` (`memory:admin`) the calling client's
//! entries of a session with their content hashes, so heistd can tell what
//! a restart lost (or what it holds differently) and deliver it again.

mod compress;
mod held;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::time::Instant;

pub use compress::compress;
use held::{Memories, Refusal, Seen, SessionMemories};
pub use held::{MemoryEntry, ENTRY_OVERHEAD_BYTES};

use super::memory_file::{new_instance_id, MemoryFile, StoredWrite};
use super::token::{Claims, SigningKey};
use super::tools::{authenticate, authorize, AuthError};
use super::{error_response, health_body, JsonBody};
use crate::config::MemoryServiceConfig;
use crate::wire::memory::{EntryDigest, SessionDigestReply};
use crate::wire::{
    Companion, CompressedMemoryReply, CompressedMemoryRequest, CompressedSummary, MemoryWrite,
    SessionCountReply, COMPRESSED_MEMORY_PATH, HEALTH_PATH, IDEMPOTENCY_KEY_HEADER,
    STORE_MEMORY_PATH,
};

/// Reads and writes any agent's memories, lists, counts and clears them.
pub const ADMIN_SCOPE: &str = "memory:admin";
/// Writes the token's own agent's memories.
pub const WRITE_SCOPE: &str = "memory:write";
/// Reads the token's own agent's memories.
pub const READ_SCOPE: &str = "memory:read";
/// Messages longer than this are refused rather than silently cut.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Agent ids longer than this are refused (413).
pub const MAX_AGENT_ID_BYTES: usize = 128;
/// Session ids longer than this are refused (413).
pub const MAX_SESSION_ID_BYTES: usize = 256;
/// `Idempotency-Key`s longer than this are refused (413): heistd's are
/// `session:turn`, well under it.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

#[derive(Clone)]
pub struct MemoryState {
    inner: Arc<Mutex<Memories>>,
    key: SigningKey,
    limits: MemoryServiceConfig,
    /// Changes whenever the service starts empty (kept in its file).
    instance_id: Arc<str>,
}

impl MemoryState {
    /// A service that keeps everything in RAM, with a new instance id.
    pub fn new(key: SigningKey, limits: MemoryServiceConfig) -> Self {
        Self::with(key, limits, Memories::empty(None), new_instance_id())
    }

    /// The service `limits` configures: in RAM, or persisted in
    /// `limits.path` (created if missing) with what it held loaded back.
    pub fn open(key: SigningKey, limits: MemoryServiceConfig) -> Result<Self, String> {
        let Some(path) = limits.path.clone() else {
            return Ok(Self::new(key, limits));
        };
        let (file, instance_id, writes) =
            MemoryFile::open(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        let memories = Memories::load(file, writes, retention_of(&limits));
        tracing::info!(path = %path.display(), entries = memories.total_entries(), %instance_id, "memory service loaded its file");
        Ok(Self::with(key, limits, memories, instance_id))
    }

    fn with(
        key: SigningKey,
        limits: MemoryServiceConfig,
        memories: Memories,
        instance_id: String,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(memories)),
            key,
            limits,
            instance_id: instance_id.into(),
        }
    }

    /// Changes whenever the service starts empty.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

fn retention_of(limits: &MemoryServiceConfig) -> Duration {
    Duration::from_secs(limits.retention_hours.saturating_mul(3600))
}

pub fn router(state: MemoryState) -> Router {
    let key = state.key.clone();
    Router::new()
        .route(STORE_MEMORY_PATH, post(store_memory))
        .route(COMPRESSED_MEMORY_PATH, post(get_compressed_memory))
        .route("/sessions/{session_id}/memories", get(list_memories))
        .route("/sessions/{session_id}/count", get(count_memories))
        .route("/sessions/{session_id}/digest", get(digest_memories))
        .route("/stats", get(stats))
        .route("/clear", delete(clear))
        // Every route above needs a token, checked before the body is
        // read: an anonymous client cannot make the service hold its body.
        .route_layer(axum::middleware::from_fn_with_state(key, require_token))
        .route(HEALTH_PATH, get(health))
        .with_state(state)
}

async fn require_token(
    State(key): State<SigningKey>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authenticate(request.headers(), &key) {
        Ok(_) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
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

async fn store_memory(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<MemoryWrite>,
) -> Response {
    let claims = match authorize_agent(&headers, &state.key, Some(&request.agent_id), WRITE_SCOPE) {
        Ok(claims) => claims,
        Err(refusal) => return refusal.into_response(),
    };
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) => Some(key.to_string()),
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be visible ASCII",
                )
            }
        },
    };
    if let Some(refusal) = check_write(&request, idempotency_key.as_deref()) {
        return refusal;
    }
    let content_hash = request.content_hash();
    let by_admin = claims.has_scope(ADMIN_SCOPE);
    let write = StoredWrite {
        session_id: request.game_session_id,
        agent_id: request.agent_id,
        turn_id: request.turn_id,
        message: request.message,
        idempotency_key,
        client_id: claims.sub,
        by_admin,
        content_hash,
        written_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let now = Instant::now();
    let mut memories = state.inner.lock();
    let expired = memories.prune(now, retention_of(&state.limits));
    let answer = store_locked(&mut memories, &state.limits, write, now);
    drop(memories);
    // What retention took is freed here, outside the lock.
    drop(expired);
    answer
}

/// The write's fate once the lock is held: a duplicate, a conflict, a
/// refusal for room, or stored (through the file first when persisted).
fn store_locked(
    memories: &mut Memories,
    limits: &MemoryServiceConfig,
    write: StoredWrite,
    now: Instant,
) -> Response {
    match memories.seen(&write) {
        Seen::New => {}
        Seen::Duplicate => {
            return Json(serde_json::json!({ "status": "success", "duplicate": true }))
                .into_response()
        }
        Seen::Conflict => {
            let key = write.idempotency_key.unwrap_or_default();
            return error_response(
                StatusCode::CONFLICT,
                format!("Idempotency-Key {key} was used with a different body"),
            );
        }
    }
    if let Some(refusal) = memories.check(limits, &write) {
        return quota_refusal(refusal, limits);
    }
    // Written through before it is acknowledged: a write the file did not
    // take is not held at all, and the caller retries it.
    if let Some(Err(error)) = memories.file.as_ref().map(|file| file.insert(&write)) {
        tracing::error!(%error, "cannot write a memory to the memory file");
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the memory service cannot write its file",
        );
    }
    let count = memories.add(write, now);
    Json(serde_json::json!({ "status": "success", "duplicate": false, "memories_count": count }))
        .into_response()
}

/// Refuses an empty or oversized write before the store is locked; the
/// answer names the limit.
fn check_write(request: &MemoryWrite, idempotency_key: Option<&str>) -> Option<Response> {
    if request.agent_id.is_empty() || request.game_session_id.is_empty() {
        return Some(error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent_id and game_session_id must not be empty",
        ));
    }
    let too_long = [
        ("agent_id", request.agent_id.len(), MAX_AGENT_ID_BYTES),
        (
            "game_session_id",
            request.game_session_id.len(),
            MAX_SESSION_ID_BYTES,
        ),
        (
            "Idempotency-Key",
            idempotency_key.map_or(0, str::len),
            MAX_IDEMPOTENCY_KEY_BYTES,
        ),
        ("message", request.message.len(), MAX_MESSAGE_BYTES),
    ];
    too_long
        .into_iter()
        .find(|(_, length, limit)| length > limit)
        .map(|(name, _, limit)| {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{name} is over {limit} bytes"),
            )
        })
}

/// 413 `quota_exceeded` past a session's quota (it will never fit), 507
/// past a share or the service's total (room may free up: retention,
/// `/clear`).
fn quota_refusal(refusal: Refusal, limits: &MemoryServiceConfig) -> Response {
    let (status, message) = match refusal {
        Refusal::Session => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "session quota exceeded: at most {} entries and {} bytes per session",
                limits.max_entries_per_session, limits.max_bytes_per_session
            ),
        ),
        Refusal::ClientShare => (
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "this client holds its share of {} bytes (max_bytes_per_client)",
                limits.max_bytes_per_client
            ),
        ),
        Refusal::AgentsShare => (
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "agents hold their share of {} bytes (max_bytes_agents)",
                limits.agents_max_bytes()
            ),
        ),
        Refusal::Total => (
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the memory service holds its maximum of {} bytes",
                limits.max_bytes
            ),
        ),
    };
    let body = serde_json::json!({
        "success": false,
        "result": null,
        "status": "error",
        "error": "quota_exceeded",
        "error_description": message,
    });
    (status, Json(body)).into_response()
}

async fn get_compressed_memory(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CompressedMemoryRequest>,
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
    let memories_count = entries.len();
    drop(memories);
    Json(CompressedMemoryReply {
        status: "success".into(),
        agent_id: request.agent_id,
        game_session_id: request.game_session_id,
        // The prototype's client reads `compressed_summary`; newer ones `summary`.
        summary: CompressedSummary::new(summary),
        memories_count,
        compressed_count,
        estimated_tokens,
    })
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
    let mut entries: Vec<MemoryEntry> = state
        .inner
        .lock()
        .sessions
        .get(&session_id)
        .map(|session| session.by_agent.values().flatten().cloned().collect())
        .unwrap_or_default();
    entries.sort_by_key(|entry| entry.turn_id);
    Json(
        serde_json::json!({ "status": "success", "game_session_id": session_id, "memories": entries }),
    )
    .into_response()
}

/// `GET /health`: the common body plus the instance id.
async fn health(State(state): State<MemoryState>) -> Json<serde_json::Value> {
    let Json(mut body) = health_body(Companion::Memory.name());
    body["instance_id"] = serde_json::Value::from(state.instance_id());
    Json(body)
}

/// `GET /sessions/{id}/count` (`memory:admin`): every client's entries of a
/// session (heistd now reconciles with `/digest`, which counts only its own).
async fn count_memories(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
) -> Response {
    if let Err(refusal) = authorize(&headers, &state.key, ADMIN_SCOPE) {
        return refusal.into_response();
    }
    let count = state
        .inner
        .lock()
        .sessions
        .get(&session_id)
        .map_or(0, |session| session.entries) as u64;
    Json(SessionCountReply {
        status: "success".into(),
        game_session_id: session_id,
        count,
    })
    .into_response()
}

/// `GET /sessions/{id}/digest` (`memory:admin`): the calling client's
/// entries of a session with their content hashes, sorted; what heistd's
/// reconciliation compares with the writes its store delivered. Other
/// clients' entries (an agent's own writes) are not in it.
async fn digest_memories(
    State(state): State<MemoryState>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
) -> Response {
    let claims = match authorize(&headers, &state.key, ADMIN_SCOPE) {
        Ok(claims) => claims,
        Err(refusal) => return refusal.into_response(),
    };
    let mut entries: Vec<EntryDigest> = state
        .inner
        .lock()
        .sessions
        .get(&session_id)
        .map(|session| {
            session
                .by_agent
                .values()
                .flatten()
                .filter(|entry| entry.client_id == claims.sub)
                .map(|entry| EntryDigest {
                    agent_id: entry.agent_id.clone(),
                    turn_id: entry.turn_id,
                    hash: entry.content_hash.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    Json(SessionDigestReply {
        status: "success".into(),
        game_session_id: session_id,
        client_id: claims.sub,
        entries,
    })
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
        "agents_bytes": memories.agents_bytes,
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
    let forgotten: Vec<SessionMemories> = match &query.game_session_id {
        Some(session_id) => memories.forget(session_id).into_iter().collect(),
        None => memories.clear().into_values().collect(),
    };
    drop(memories);
    // Freed here, outside the lock.
    let cleared: usize = forgotten.iter().map(|session| session.entries).sum();
    Json(serde_json::json!({ "status": "success", "cleared": cleared })).into_response()
}
