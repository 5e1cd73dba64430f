//! The admin HTTP API of `heistd daemon`: liveness and readiness probes,
//! `/metrics` for Prometheus, the daemon's status, the audit trail's sessions,
//! and `POST /api/v1/runs` to start a heist now. This module owns the routes,
//! the admin JSON shapes (only it knows them) and `ApiError`, the one place
//! where failures become HTTP replies: always JSON `{"error": "..."}`, with a
//! useful message and no internals. Here: the router and `ApiError`; the
//! handlers and their JSON shapes by resource in `status` (probes, metrics,
//! the daemon's status), `sessions`, `runs`, `steer` (cancel, and the
//! schedules: list, pause, resume, trigger, backfill) and `events` (the
//! live event streams); the admin token in `auth` and `guard`; the web
//! console's static files at `/` in `console`.
//!
//! It only reads what `DaemonState` publishes and asks it to start runs; it
//! must not run heists or health checks itself, nor hold state of its own
//! beyond `guard`'s counts of wrong admin tokens, which only shape refusals.

mod auth;
mod console;
mod events;
mod guard;
mod runs;
mod sessions;
mod status;
mod steer;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::daemon::state::{DaemonState, StartRunError};
use crate::store::StoreError;
pub use console::CONTENT_SECURITY_POLICY;
use guard::AdminGuard;
pub use status::{breaker_states, config_status};

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
    /// 404: an unknown session, schedule or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request no longer applies (cancelling an ended session).
    #[error("{0}")]
    Conflict(String),
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
    /// 429 with `Retry-After` (seconds to the next UTC day): a daily token
    /// budget is spent; the message names its key and figures.
    #[error("{reason}")]
    BudgetSpent {
        reason: String,
        retry_after_seconds: u64,
    },
    /// 503: heistd is stopping and starts nothing new.
    #[error("heistd is shutting down and starts no new runs")]
    ShuttingDown,
    /// 503: the audit store cannot take a run (full, read-only, deleted).
    #[error("the audit store cannot take new runs: {0}")]
    StoreUnavailable(String),
    /// 503: `events.max_streams` event streams are open.
    #[error(
        "{max} event streams are open, the limit events.max_streams; try again when one closes"
    )]
    TooManyStreams { max: u32 },
    /// 500: something on our side; the detail goes to the log, not the client.
    #[error("{public_message}; the daemon's log has the reason")]
    Internal {
        public_message: &'static str,
        detail: String,
    },
}

/// The admin API's routes over the daemon's shared state.
pub fn router(state: Arc<DaemonState>) -> Router {
    // Reads behind the admin token when `daemon.read_requires_token` says
    // so (by default: when the API listens beyond loopback); the probes
    // and /metrics stay open for load balancers and Prometheus.
    let reads = Router::new()
        .route("/api/v1/status", get(status::daemon_status))
        .route("/api/v1/sessions", get(sessions::list_sessions))
        .route(
            "/api/v1/sessions/{session_id}",
            get(sessions::session_detail),
        )
        .route("/api/v1/schedules", get(steer::list_schedules))
        .route("/api/v1/events", get(events::all_events))
        .route(
            "/api/v1/sessions/{session_id}/events",
            get(events::session_events),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_read_token,
        ));
    Router::new()
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        .route("/healthz", get(status::liveness))
        .route("/readyz", get(status::readiness))
        .route("/metrics", get(status::prometheus_metrics))
        .merge(reads)
        .route(
            "/api/v1/runs",
            post(runs::start_run).layer(DefaultBodyLimit::max(MAX_RUN_BODY_BYTES)),
        )
        .merge(steering_routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(AdminGuard::new()))
        .with_state(state)
}

/// The steering POSTs (`steer`), each behind the admin token, with the
/// run request's body limit.
fn steering_routes() -> Router<Arc<DaemonState>> {
    let limit = || DefaultBodyLimit::max(MAX_RUN_BODY_BYTES);
    Router::new()
        .route(
            "/api/v1/sessions/{session_id}/cancel",
            post(steer::cancel_session).layer(limit()),
        )
        .route(
            "/api/v1/schedules/{name}/pause",
            post(steer::pause_schedule).layer(limit()),
        )
        .route(
            "/api/v1/schedules/{name}/resume",
            post(steer::resume_schedule).layer(limit()),
        )
        .route(
            "/api/v1/schedules/{name}/trigger",
            post(steer::trigger_schedule).layer(limit()),
        )
        .route(
            "/api/v1/schedules/{name}/backfill",
            post(steer::backfill_schedule).layer(limit()),
        )
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::WrongToken | Self::RunsDisabled { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::AtCapacity { .. }
            | Self::QueueFull { .. }
            | Self::TooManyWrongTokens { .. }
            | Self::BudgetSpent { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown | Self::StoreUnavailable(_) | Self::TooManyStreams { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        }
        | Self::BudgetSpent {
            retry_after_seconds,
            ..
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
            StartRunError::BudgetSpent {
                reason,
                retry_after_seconds,
            } => Self::BudgetSpent {
                reason,
                retry_after_seconds,
            },
            StartRunError::ShuttingDown => Self::ShuttingDown,
            StartRunError::StoreUnavailable(reason) => Self::StoreUnavailable(reason),
            StartRunError::Failed(reason) => Self::Internal {
                public_message: "cannot start the session",
                detail: reason,
            },
        }
    }
}

/// The body of every refusal: `{"error": "..."}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
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

#[cfg(test)]
mod tests;
