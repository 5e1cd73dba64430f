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
//!
//! With `companions.memory.path` set, every accepted write is written
//! through to the service's own SQLite file ([`super::memory_file`]) before
//! it is acknowledged, and loaded back at start; without it (the default
//! for `demo` and the tests) everything is in RAM. `GET /health` reports an
//! `instance_id` that changes whenever the service starts empty, and
//! `GET /sessions/{id}/count` (`memory:admin`) a session's count, so heistd
//! can tell what a restart lost and deliver it again.

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

use super::memory_file::{new_instance_id, MemoryFile, StoredWrite};
use super::token::{Claims, SigningKey};
use super::tools::{authenticate, authorize, AuthError};
use super::{error_response, health_body, JsonBody};
use crate::config::MemoryServiceConfig;
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
    /// Changes whenever the service starts empty (kept in its file).
    instance_id: Arc<str>,
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
    /// The file every accepted write goes through to, when persisted.
    file: Option<MemoryFile>,
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
        let memories = load(file, writes, retention_of(&limits));
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

/// Holds `writes` again, dropping the sessions whose last write is past
/// `retention` (from the file too), as the running service would have.
fn load(file: MemoryFile, writes: Vec<StoredWrite>, retention: Duration) -> Memories {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let now = Instant::now();
    let mut last_written: BTreeMap<String, i64> = BTreeMap::new();
    let mut memories = Memories::empty(Some(file));
    for write in writes {
        let last = last_written.entry(write.session_id.clone()).or_default();
        *last = (*last).max(write.written_at_ms);
        let age = Duration::from_millis(now_ms.saturating_sub(write.written_at_ms).max(0) as u64);
        memories.add(write, now.checked_sub(age).unwrap_or(now));
    }
    for (session_id, last) in last_written {
        let age = Duration::from_millis(now_ms.saturating_sub(last).max(0) as u64);
        if age >= retention {
            memories.forget(&session_id);
        }
    }
    memories
}

fn retention_of(limits: &MemoryServiceConfig) -> Duration {
    Duration::from_secs(limits.retention_hours.saturating_mul(3600))
}

impl Memories {
    fn empty(file: Option<MemoryFile>) -> Self {
        Self {
            sessions: BTreeMap::new(),
            total_bytes: 0,
            seen_keys: HashSet::new(),
            key_order: VecDeque::new(),
            last_prune: Instant::now(),
            file,
        }
    }

    /// Holds one accepted write (already checked and, when persisted,
    /// already in the file); returns the agent's count in its session.
    fn add(&mut self, write: StoredWrite, at: Instant) -> usize {
        if let Some(key) = write.idempotency_key {
            remember_key(self, (write.session_id.clone(), key));
        }
        let bytes = write.message.len();
        self.total_bytes += bytes;
        let session = self
            .sessions
            .entry(write.session_id)
            .or_insert_with(|| SessionMemories {
                by_agent: BTreeMap::new(),
                entries: 0,
                bytes: 0,
                last_write: at,
            });
        session.entries += 1;
        session.bytes += bytes;
        session.last_write = session.last_write.max(at);
        let entries = session.by_agent.entry(write.agent_id.clone()).or_default();
        entries.push(MemoryEntry {
            agent_id: write.agent_id,
            turn_id: write.turn_id,
            message: write.message,
        });
        entries.len()
    }

    /// Forgets one session: its memories and its idempotency keys, in the
    /// file too when persisted.
    fn forget(&mut self, session_id: &str) {
        if let Some(session) = self.sessions.remove(session_id) {
            self.total_bytes -= session.bytes;
        }
        self.seen_keys.retain(|(session, _)| session != session_id);
        self.key_order.retain(|(session, _)| session != session_id);
        if let Some(Err(error)) = self.file.as_ref().map(|file| file.forget(session_id)) {
            tracing::error!(%session_id, %error, "cannot forget a session in the memory file");
        }
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
    let key = state.key.clone();
    Router::new()
        .route(STORE_MEMORY_PATH, post(store_memory))
        .route(COMPRESSED_MEMORY_PATH, post(get_compressed_memory))
        .route("/sessions/{session_id}/memories", get(list_memories))
        .route("/sessions/{session_id}/count", get(count_memories))
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
    JsonBody(request): JsonBody<MemoryWrite>,
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
    memories.prune(now, retention_of(&state.limits));
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
    let write = StoredWrite {
        session_id: request.game_session_id,
        agent_id: request.agent_id,
        turn_id: request.turn_id,
        message: request.message,
        idempotency_key,
        written_at_ms: chrono::Utc::now().timestamp_millis(),
    };
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

/// Refuses an empty or oversized write before the store is locked.
fn check_write(request: &MemoryWrite) -> Option<Response> {
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
    request: &MemoryWrite,
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

/// `GET /health`: the common body plus the instance id.
async fn health(State(state): State<MemoryState>) -> Json<serde_json::Value> {
    let Json(mut body) = health_body(Companion::Memory.name());
    body["instance_id"] = serde_json::Value::from(state.instance_id());
    Json(body)
}

/// `GET /sessions/{id}/count` (`memory:admin`): what heistd's
/// reconciliation compares with the store's delivered writes.
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
            if let Some(Err(error)) = memories.file.as_ref().map(MemoryFile::clear) {
                tracing::error!(%error, "cannot clear the memory file");
            }
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::super::token::{unix_now, ISSUER};
    use super::*;

    fn admin(key: &SigningKey) -> String {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "heistd".into(),
            scope: ADMIN_SCOPE.into(),
            iat: now - 10,
            exp: now + 300,
        };
        format!("Bearer {}", key.sign(&claims).expect("signed"))
    }

    async fn call(state: &MemoryState, request: Request<Body>) -> serde_json::Value {
        let response = router(state.clone())
            .oneshot(request)
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        serde_json::from_slice(&body).expect("JSON")
    }

    async fn store(state: &MemoryState, key: &SigningKey, turn_id: i64) -> serde_json::Value {
        let body = serde_json::json!({
            "agent_id": "mole", "turn_id": turn_id, "message": "In.", "game_session_id": "s1",
        });
        let request = Request::post(STORE_MEMORY_PATH)
            .header("authorization", admin(key))
            .header("content-type", "application/json")
            .header(IDEMPOTENCY_KEY_HEADER, format!("s1:{turn_id}"))
            .body(Body::from(body.to_string()))
            .expect("request");
        call(state, request).await
    }

    async fn count(state: &MemoryState, key: &SigningKey) -> u64 {
        let request = Request::get("/sessions/s1/count")
            .header("authorization", admin(key))
            .body(Body::empty())
            .expect("request");
        call(state, request).await["count"].as_u64().expect("count")
    }

    async fn instance(state: &MemoryState) -> String {
        let request = Request::get(HEALTH_PATH)
            .body(Body::empty())
            .expect("request");
        let body = call(state, request).await;
        assert_eq!(body["status"], "healthy");
        body["instance_id"]
            .as_str()
            .expect("instance_id")
            .to_string()
    }

    #[tokio::test]
    async fn a_restart_on_the_same_file_keeps_memories_keys_and_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::random();
        let limits = MemoryServiceConfig {
            path: Some(dir.path().join("memory.db")),
            ..MemoryServiceConfig::default()
        };
        let first = MemoryState::open(key.clone(), limits.clone()).expect("open");
        store(&first, &key, 1).await;
        store(&first, &key, 2).await;
        let id = instance(&first).await;
        drop(first);
        let second = MemoryState::open(key.clone(), limits).expect("reopen");
        assert_eq!(instance(&second).await, id);
        assert_eq!(count(&second, &key).await, 2);
        // The idempotency keys came back too: a retried write counts once.
        assert_eq!(store(&second, &key, 2).await["duplicate"], true);
        assert_eq!(count(&second, &key).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn memories_go_retention_hours_after_the_sessions_last_write() {
        let key = SigningKey::random();
        let limits = MemoryServiceConfig {
            retention_hours: 1,
            ..MemoryServiceConfig::default()
        };
        let state = MemoryState::new(key.clone(), limits);
        let write_elsewhere = |turn_id: i64| {
            let body = serde_json::json!({
                "agent_id": "mole", "turn_id": turn_id, "message": "Out.", "game_session_id": "s2",
            });
            Request::post(STORE_MEMORY_PATH)
                .header("authorization", admin(&key))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .expect("request")
        };
        store(&state, &key, 1).await;
        tokio::time::advance(Duration::from_secs(40 * 60)).await;
        store(&state, &key, 2).await;
        // 70 minutes after the first write, 30 after the last: kept.
        tokio::time::advance(Duration::from_secs(30 * 60)).await;
        call(&state, write_elsewhere(1)).await;
        assert_eq!(count(&state, &key).await, 2);
        // An hour and more after its last write: gone, the other session kept.
        tokio::time::advance(Duration::from_secs(31 * 60)).await;
        call(&state, write_elsewhere(2)).await;
        assert_eq!(count(&state, &key).await, 0);
    }

    #[tokio::test]
    async fn in_memory_services_start_empty_with_a_new_instance() {
        let key = SigningKey::random();
        let first = MemoryState::new(key.clone(), MemoryServiceConfig::default());
        store(&first, &key, 1).await;
        assert_eq!(count(&first, &key).await, 1);
        let second = MemoryState::new(key.clone(), MemoryServiceConfig::default());
        assert_eq!(count(&second, &key).await, 0);
        assert_ne!(instance(&first).await, instance(&second).await);
    }

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
