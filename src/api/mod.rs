//! The admin HTTP API of `heistd daemon`: liveness and readiness probes,
//! `/metrics` for Prometheus, the daemon's status, the audit trail's sessions,
//! and `POST /api/v1/runs` to start a heist now. This module owns the routes,
//! the admin JSON shapes (only it knows them) and `ApiError`, the one place
//! where failures become HTTP replies: always JSON `{"error": "..."}`, with a
//! useful message and no internals.
//!
//! It only reads what `DaemonState` publishes and asks it to start runs; it
//! must not run heists or health checks itself, nor hold state of its own
//! beyond `guard`'s counts of wrong admin tokens, which only shape refusals.

mod guard;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::daemon::state::{
    ConfigStatus, DaemonState, Readiness, RunRequest, RunningSession, ScheduleStatus, StartRunError,
};
use crate::health::ServiceHealth;
use crate::store::{NodeRow, SessionDetail, SessionRow, SessionStatus, StoreError};
use guard::AdminGuard;

/// `GET /api/v1/sessions` returns this many sessions when no `limit` is given.
pub const DEFAULT_SESSION_LIMIT: usize = 50;
/// The largest `limit` accepted, so one request cannot read the whole trail.
pub const MAX_SESSION_LIMIT: usize = 1000;
/// The most turns `POST /api/v1/runs` may ask for.
pub const MAX_RUN_TURNS: u32 = crate::config::MAX_TURNS;
/// A run request is a few dozen bytes; anything much larger is a mistake.
pub const MAX_RUN_BODY_BYTES: usize = 16 * 1024;
/// The Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every way an admin request can fail, each with its HTTP status. The
/// message (`Display`) is what the client sees; `Internal` keeps its detail
/// for the log only.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a bad query string, path, body or value.
    #[error("{0}")]
    BadRequest(String),
    /// 401 with `WWW-Authenticate: Bearer`: no usable bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a bearer token that is not the admin token.
    #[error("the bearer token is not the admin token")]
    WrongToken,
    /// 429 with `Retry-After`: a wrong token from an address that sent too
    /// many; the right token is still accepted from it.
    #[error("the bearer token is not the admin token, and too many wrong ones came from this address; try again in {retry_after_seconds} s")]
    TooManyWrongTokens { retry_after_seconds: u64 },
    /// 403: no admin token is configured, so nobody may start runs.
    #[error(
        "starting runs over the admin API is disabled; set the environment variable \
         {token_variable} for heistd to enable it"
    )]
    RunsDisabled { token_variable: String },
    /// 404: an unknown session or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: a known path with the wrong method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    /// 413: a request body over the route's limit.
    #[error("the request body is larger than {limit_bytes} bytes")]
    BodyTooLarge { limit_bytes: usize },
    /// 429 (not 409): the cap is a transient limit, and a client should try
    /// again once a running session ends, which is what 429 means.
    #[error("{running} sessions are running, the configured maximum; try again when one ends")]
    AtCapacity { running: usize },
    /// 429: the cluster's run queue is full; try again once nodes have
    /// taken some of it.
    #[error("the run queue holds {queued} requests waiting for a node, the limit daemon.max_queued_runs = {max_queued}; try again when it drains")]
    QueueFull { queued: u64, max_queued: u32 },
    /// 503: heistd is stopping and starts nothing new.
    #[error("heistd is shutting down and starts no new runs")]
    ShuttingDown,
    /// 503: the audit store cannot take a run (full, read-only, deleted).
    #[error("the audit store cannot take new runs: {0}")]
    StoreUnavailable(String),
    /// 500: something on our side; the detail goes to the log, not the client.
    #[error("{public_message}; the daemon's log has the reason")]
    Internal {
        public_message: &'static str,
        detail: String,
    },
}

/// Each service's breaker state as a running daemon reports it in
/// `GET /api/v1/status`, if one answers at `address` within a moment (for
/// `heistd check`; this module owns the status shape it reads).
pub async fn breaker_states(address: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .ok()?;
    let status: serde_json::Value = client
        .get(format!("http://{address}/api/v1/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let services = status["services"].as_array()?;
    Some(
        services
            .iter()
            .filter_map(|service| {
                Some((
                    service["service"].as_str()?.to_string(),
                    service["breaker"].as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// The running daemon's pid and config status from `GET /api/v1/status`
/// at `address` (for `heistd reload`, which signals that pid and waits for
/// the reload count to move). The error says why the daemon could not be
/// read.
pub async fn config_status(address: &str) -> Result<(u32, ConfigStatus), String> {
    #[derive(Deserialize)]
    struct Wanted {
        pid: u32,
        config: ConfigStatus,
    }
    let url = format!("http://{address}/api/v1/status");
    let unreachable = |error: reqwest::Error| format!("no heistd answers at {url}: {error}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let wanted: Wanted = response.json().await.map_err(unreachable)?;
    Ok((wanted.pid, wanted.config))
}

/// The admin API's routes over the daemon's shared state.
pub fn router(state: Arc<DaemonState>) -> Router {
    // Reads behind the admin token when `daemon.read_requires_token` says
    // so (by default: when the API listens beyond loopback); the probes
    // and /metrics stay open for load balancers and Prometheus.
    let reads = Router::new()
        .route("/api/v1/status", get(daemon_status))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{session_id}", get(session_detail))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_read_token,
        ));
    Router::new()
        .route("/healthz", get(liveness))
        .route("/readyz", get(readiness))
        .route("/metrics", get(prometheus_metrics))
        .merge(reads)
        .route(
            "/api/v1/runs",
            post(start_run).layer(DefaultBodyLimit::max(MAX_RUN_BODY_BYTES)),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(AdminGuard::new()))
        .with_state(state)
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::WrongToken | Self::RunsDisabled { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::AtCapacity { .. } | Self::QueueFull { .. } | Self::TooManyWrongTokens { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::ShuttingDown | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal { detail, .. } = &self {
            tracing::error!(%detail, "admin API request failed");
        }
        let status = self.status();
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme the client should use.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::TooManyWrongTokens {
            retry_after_seconds,
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::SessionNotFound(session_id) => {
                Self::NotFound(format!("no session with id `{session_id}`"))
            }
            StoreError::Worker(detail) => Self::Internal {
                public_message: "the audit store query did not finish",
                detail,
            },
            other => Self::Internal {
                public_message: "the audit store failed",
                detail: other.to_string(),
            },
        }
    }
}

impl From<StartRunError> for ApiError {
    fn from(error: StartRunError) -> Self {
        match error {
            StartRunError::AtCapacity { running } => Self::AtCapacity { running },
            StartRunError::QueueFull { queued, max_queued } => {
                Self::QueueFull { queued, max_queued }
            }
            StartRunError::ShuttingDown => Self::ShuttingDown,
            StartRunError::StoreUnavailable(reason) => Self::StoreUnavailable(reason),
            StartRunError::Failed(reason) => Self::Internal {
                public_message: "cannot start the session",
                detail: reason,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// The admin JSON shapes. Types other modules publish (`ServiceHealth`,
// `ScheduleStatus`, `RunningSession`, `Readiness`, the store's rows) are
// embedded as they serialize; the envelopes around them live here.

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

#[derive(Debug, Serialize)]
struct Liveness {
    status: &'static str,
}

#[derive(Debug, Serialize)]
struct DaemonStatus {
    version: &'static str,
    /// The daemon's process id, which `heistd reload` signals.
    pid: u32,
    started_at: DateTime<Utc>,
    uptime_seconds: u64,
    /// The config file the daemon reads (again on reload); null: built-in
    /// defaults and the environment only.
    config_path: Option<String>,
    /// The audit store: the SQLite file, or the PostgreSQL URL without its
    /// password.
    store: String,
    /// Each service's health and circuit breaker state.
    services: Vec<ServiceHealth>,
    schedules: Vec<ScheduleStatus>,
    running_sessions: Vec<RunningSession>,
    max_concurrent_sessions: u32,
    /// The applied config's generation and the last reload's outcome,
    /// which `heistd reload` waits on.
    config: ConfigStatus,
    /// The nodes sharing the store and who plays what (one node, no
    /// owners, on SQLite).
    cluster: ClusterStatus,
}

#[derive(Debug, Serialize)]
struct ClusterStatus {
    backend: &'static str,
    /// This daemon's node id; null on SQLite.
    node_id: Option<String>,
    nodes: Vec<NodeRow>,
    /// Every active session and the node that holds its lease.
    session_owners: Vec<SessionOwner>,
    max_concurrent_sessions: u32,
    /// Run requests waiting in the cluster's run queue (always 0 on
    /// SQLite, which has none).
    queued_runs: u64,
    /// Each configured schedule as the whole cluster sees it: the last
    /// slot any node claimed (from the store) and the next slot due.
    schedules: Vec<ClusterSchedule>,
}

#[derive(Debug, Serialize)]
struct ClusterSchedule {
    name: String,
    enabled: bool,
    /// The latest slot a session was created for, by any node.
    last_slot: Option<DateTime<Utc>>,
    /// The first slot after now and after `last_slot`; null when disabled
    /// or when the trigger never fires again.
    next_slot: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct SessionOwner {
    session_id: String,
    owner_node: Option<String>,
}

#[derive(Debug, Serialize)]
struct SessionList {
    sessions: Vec<SessionRow>,
}

/// The query of `GET /api/v1/sessions`. Fields stay strings so that a bad
/// value gets our own message rather than serde's; unknown fields are
/// refused so a typo (`?statu=failed`) does not silently list everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionListQuery {
    status: Option<String>,
    schedule: Option<String>,
    limit: Option<String>,
}

/// The body of `POST /api/v1/runs`; unknown fields are refused so that a
/// misspelt `turns` is not silently replaced by the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    turns: Option<u32>,
    seed: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RunAccepted {
    session_id: String,
}

// ---------------------------------------------------------------------------
// Handlers.

/// The process is up and its runtime answers; nothing else is checked, so
/// an orchestrator restarts heistd only when it is truly stuck.
async fn liveness() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
}

/// 503 while a required service is not up; the body says which.
async fn readiness(State(state): State<Arc<DaemonState>>) -> (StatusCode, Json<Readiness>) {
    let readiness = state.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

async fn prometheus_metrics(State(state): State<Arc<DaemonState>>) -> Response {
    crate::daemon::telemetry::refresh_scrape_gauges(&state).await;
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn daemon_status(State(state): State<Arc<DaemonState>>) -> Json<DaemonStatus> {
    Json(DaemonStatus {
        version: state.version,
        pid: std::process::id(),
        started_at: state.started_at,
        uptime_seconds: state.uptime().as_secs(),
        config_path: state.config_path().map(|path| path.display().to_string()),
        store: state.store.path().display().to_string(),
        services: state.health.snapshot(),
        schedules: state.schedules(),
        running_sessions: state.running_sessions(),
        max_concurrent_sessions: state.config().daemon.max_concurrent_sessions,
        config: state.config_status(),
        cluster: cluster_status(&state).await,
    })
}

/// What the store says about the cluster; a store that cannot answer
/// shows no nodes rather than failing the whole status.
async fn cluster_status(state: &DaemonState) -> ClusterStatus {
    let config = state.config();
    let nodes = state.store.nodes().await.unwrap_or_default();
    let session_owners = state
        .store
        .session_owners()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(session_id, owner_node)| SessionOwner {
            session_id,
            owner_node,
        })
        .collect();
    ClusterStatus {
        backend: config.store.backend.as_str(),
        node_id: state.store.node_id().map(str::to_string),
        nodes,
        session_owners,
        max_concurrent_sessions: config.cluster.max_concurrent_sessions,
        queued_runs: state.store.queued_runs().await.unwrap_or_default(),
        schedules: cluster_schedules(state, &config).await,
    }
}

/// Every schedule's next slot from its trigger and the last slot claimed
/// in the store, so each node shows the same (a node's own scheduler may
/// be waiting out jitter, or not running the schedule at all).
async fn cluster_schedules(
    state: &DaemonState,
    config: &crate::config::Config,
) -> Vec<ClusterSchedule> {
    use crate::scheduler::Slots as _;
    let now = Utc::now();
    let mut schedules = Vec::with_capacity(config.schedule.len());
    for schedule in &config.schedule {
        let last_slot = state
            .store
            .last_scheduled_time(&schedule.name)
            .await
            .ok()
            .flatten()
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|slot| slot.with_timezone(&Utc));
        let after = last_slot.map_or(now, |last| last.max(now));
        let next_slot = schedule
            .enabled
            .then(|| schedule.trigger().next_after(after))
            .flatten();
        schedules.push(ClusterSchedule {
            name: schedule.name.clone(),
            enabled: schedule.enabled,
            last_slot,
            next_slot,
        });
    }
    schedules
}

async fn list_sessions(
    State(state): State<Arc<DaemonState>>,
    query: Result<Query<SessionListQuery>, QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let status = parse_status_filter(query.status.as_deref())?;
    let schedule = query.schedule.filter(|schedule| !schedule.is_empty());
    let limit = parse_session_limit(query.limit.as_deref())?;
    let sessions = state
        .store
        .find_sessions(status, schedule.as_deref(), limit)
        .await?;
    Ok(Json(SessionList { sessions }))
}

async fn session_detail(
    State(state): State<Arc<DaemonState>>,
    session_id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionDetail>, ApiError> {
    let Path(session_id) =
        session_id.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let detail = state.store.session(&session_id).await?;
    Ok(Json(detail))
}

/// Takes the whole request rather than a body extractor so that the token
/// is checked before the body is read: a caller without the token learns
/// nothing about how bodies are validated and cannot make us buffer one.
async fn start_run(
    State(state): State<Arc<DaemonState>>,
    request: Request,
) -> Result<(StatusCode, Json<RunAccepted>), ApiError> {
    authorize_run(&state, &request)?;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge {
                limit_bytes: MAX_RUN_BODY_BYTES,
            },
            _ => ApiError::BadRequest(rejection.body_text()),
        })?;
    let run_request = parse_run_body(&body)?;
    let session_id = state.start_run(run_request).await?;
    Ok((StatusCode::ACCEPTED, Json(RunAccepted { session_id })))
}

async fn require_read_token(
    State(state): State<Arc<DaemonState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if state.config().daemon.reads_need_token() {
        if let Err(refusal) = authorize_run(&state, &request) {
            return refusal.into_response();
        }
    }
    next.run(request).await
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_string(),
    }
}

// ---------------------------------------------------------------------------
// Helpers.

/// An empty `status=` means no filter, as an HTML form would send it.
fn parse_status_filter(status: Option<&str>) -> Result<Option<SessionStatus>, ApiError> {
    let Some(status) = status.filter(|status| !status.is_empty()) else {
        return Ok(None);
    };
    SessionStatus::KNOWN
        .into_iter()
        .find(|known| known.as_str() == status)
        .map(Some)
        .ok_or_else(|| {
            let names: Vec<&str> = SessionStatus::KNOWN
                .iter()
                .map(|known| known.as_str())
                .collect();
            ApiError::BadRequest(format!(
                "status `{status}` is not one of {}",
                names.join(", ")
            ))
        })
}

fn parse_session_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(limit) = limit.filter(|limit| !limit.is_empty()) else {
        return Ok(DEFAULT_SESSION_LIMIT);
    };
    limit
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=MAX_SESSION_LIMIT).contains(limit))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "limit `{limit}` must be a whole number from 1 to {MAX_SESSION_LIMIT}"
            ))
        })
}

/// The admin token must be configured and presented as `Bearer <token>`
/// (scheme case-insensitive, RFC 7235). The right token is always
/// accepted; the guard only decides how a wrong one is answered and logged.
fn authorize_run(state: &DaemonState, request: &Request) -> Result<(), ApiError> {
    let Some(admin_token) = state.admin_token() else {
        return Err(ApiError::RunsDisabled {
            token_variable: state.config().daemon.admin_token_env.clone(),
        });
    };
    let presented = bearer_token(request.headers())?;
    if tokens_match(presented, &admin_token) {
        return Ok(());
    }
    match request.extensions().get::<Arc<AdminGuard>>() {
        Some(guard) => Err(guard.wrong_token(guard::peer_of(request))),
        None => {
            tracing::warn!("admin API refused a request: wrong bearer token");
            Err(ApiError::WrongToken)
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthenticated(
            "missing `Authorization: Bearer <admin token>` header".into(),
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthenticated("the authorization header is not a bearer token".into())
        })
}

/// Compares SHA-256 digests byte by byte without stopping at the first
/// difference, so neither the token's content nor its length leaks through
/// how long the comparison takes.
fn tokens_match(presented: &str, expected: &str) -> bool {
    let presented_digest = Sha256::digest(presented.as_bytes());
    let expected_digest = Sha256::digest(expected.as_bytes());
    presented_digest
        .iter()
        .zip(expected_digest.iter())
        .fold(0u8, |difference, (left, right)| difference | (left ^ right))
        == 0
}

/// An empty body means "all defaults", so `curl -X POST` is enough. The
/// content type is not checked: the body is a JSON object or nothing (an
/// array would otherwise be read field by field: `[1,2]` as turns 1, seed 2).
fn parse_run_body(body: &[u8]) -> Result<RunRequest, ApiError> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    let run_body: RunBody = if first.is_none() {
        RunBody::default()
    } else if first != Some(&b'{') {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object such as {\"turns\": 12, \"seed\": 7}".into(),
        ));
    } else {
        serde_json::from_slice(body)
            .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}")))?
    };
    if let Some(turns) = run_body.turns {
        if !(1..=MAX_RUN_TURNS).contains(&turns) {
            return Err(ApiError::BadRequest(format!(
                "turns must be from 1 to {MAX_RUN_TURNS}, got {turns}"
            )));
        }
    }
    Ok(RunRequest {
        turns: run_body.turns,
        seed: run_body.seed,
    })
}

#[cfg(test)]
mod tests;
