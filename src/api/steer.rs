//! Steering over the admin API: `POST /api/v1/sessions/{id}/cancel`,
//! `GET /api/v1/schedules` and `POST /api/v1/schedules/{name}/pause`,
//! `/resume`, `/trigger` and `/backfill`. Every POST needs the admin token,
//! checked before its body is read; bodies are optional JSON objects with
//! no unknown fields. What a request means is `daemon::control`'s; here are
//! the routes, the bodies and the answers.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::authorize_run;
use super::guard;
use super::ApiError;
use crate::daemon::control::{BackfillAnswer, CancelAnswer, ScheduleView, SteerError, Steering};
use crate::daemon::state::DaemonState;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    note: Option<String>,
}

/// Both bounds are required: a backfill of "everything" is not a request
/// an operator means.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    from: Option<String>,
    to: Option<String>,
}

/// Trigger takes no options; an empty object is accepted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

#[derive(Debug, Serialize)]
pub(super) struct ScheduleList {
    schedules: Vec<ScheduleView>,
}

#[derive(Debug, Serialize)]
pub(super) struct PauseAnswer {
    schedule: String,
    paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_at: Option<String>,
    /// For `/resume`: whether it was paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    was_paused: Option<bool>,
}

#[derive(Debug, Serialize)]
pub(super) struct TriggerAnswer {
    schedule: String,
    session_id: String,
    trigger: &'static str,
}

pub(super) async fn cancel_session(
    State(state): State<Arc<DaemonState>>,
    Path(session_id): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<CancelAnswer>), ApiError> {
    let (steering, who) = authorize(&state, &request)?;
    let body: CancelBody = read_body(request).await?;
    let answer = steering.cancel(&session_id, body.reason, &who).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

pub(super) async fn list_schedules(
    State(state): State<Arc<DaemonState>>,
) -> Result<Json<ScheduleList>, ApiError> {
    let steering = steering(&state)?;
    let schedules = steering.schedules(&state).await?;
    Ok(Json(ScheduleList { schedules }))
}

pub(super) async fn pause_schedule(
    State(state): State<Arc<DaemonState>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Json<PauseAnswer>, ApiError> {
    let (steering, who) = authorize(&state, &request)?;
    let body: PauseBody = read_body(request).await?;
    let pause = steering.pause(&name, body.note, &who).await?;
    Ok(Json(PauseAnswer {
        schedule: pause.schedule,
        paused: true,
        note: Some(pause.note),
        paused_by: Some(pause.paused_by),
        paused_at: Some(pause.paused_at),
        was_paused: None,
    }))
}

pub(super) async fn resume_schedule(
    State(state): State<Arc<DaemonState>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Json<PauseAnswer>, ApiError> {
    let (steering, _) = authorize(&state, &request)?;
    let _: EmptyBody = read_body(request).await?;
    let was_paused = steering.resume(&name).await?;
    Ok(Json(PauseAnswer {
        schedule: name,
        paused: false,
        note: None,
        paused_by: None,
        paused_at: None,
        was_paused: Some(was_paused),
    }))
}

pub(super) async fn trigger_schedule(
    State(state): State<Arc<DaemonState>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<TriggerAnswer>), ApiError> {
    let (steering, _) = authorize(&state, &request)?;
    let _: EmptyBody = read_body(request).await?;
    let session_id = steering.trigger(&name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TriggerAnswer {
            schedule: name,
            session_id,
            trigger: "manual",
        }),
    ))
}

pub(super) async fn backfill_schedule(
    State(state): State<Arc<DaemonState>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<BackfillAnswer>), ApiError> {
    let (steering, _) = authorize(&state, &request)?;
    let body: BackfillBody = read_body(request).await?;
    let from = parse_time(body.from.as_deref(), "from")?;
    let to = parse_time(body.to.as_deref(), "to")?;
    let answer = steering.backfill(&name, from, to).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// The admin token, then the steering and who asked (the token's holder
/// from the caller's address: the API has no identities).
fn authorize(state: &DaemonState, request: &Request) -> Result<(Arc<Steering>, String), ApiError> {
    authorize_run(state, request)?;
    let who = match guard::peer_of(request) {
        Some(address) => format!("admin token from {address}"),
        None => "admin token".to_string(),
    };
    Ok((steering(state)?, who))
}

fn steering(state: &DaemonState) -> Result<Arc<Steering>, ApiError> {
    state.steering().ok_or(ApiError::Internal {
        public_message: "steering is not available",
        detail: "the daemon state has no steering".into(),
    })
}

/// An empty body is the defaults; otherwise a JSON object of the route's
/// fields, no others.
async fn read_body<Body: Default + DeserializeOwned>(request: Request) -> Result<Body, ApiError> {
    let body = super::runs::body_bytes(request).await?;
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    match first {
        None => Ok(Body::default()),
        Some(b'{') => serde_json::from_slice(&body)
            .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}"))),
        Some(_) => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

fn parse_time(text: Option<&str>, field: &str) -> Result<DateTime<Utc>, ApiError> {
    let text = text.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "`{field}` is required (RFC 3339, e.g. 2026-12-01T02:00:00Z)"
        ))
    })?;
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| {
            ApiError::BadRequest(format!(
                "`{field}` = `{text}` is not an RFC 3339 time: {error}"
            ))
        })
}

impl From<SteerError> for ApiError {
    fn from(error: SteerError) -> Self {
        match error {
            SteerError::UnknownSession(_) | SteerError::UnknownSchedule(_) => {
                Self::NotFound(error.to_string())
            }
            SteerError::Ended { .. } => Self::Conflict(error.to_string()),
            SteerError::BadRequest(message) => Self::BadRequest(message),
            SteerError::ShuttingDown => Self::ShuttingDown,
            SteerError::Start(error) => error.into(),
            SteerError::Store(error) => error.into(),
        }
    }
}
