//! Starting a heist now: `POST /api/v1/runs`, behind the admin token, its
//! body read only once the token is right and checked here before the
//! daemon is asked to start the run.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::authorize_run;
use super::{ApiError, MAX_RUN_BODY_BYTES, MAX_RUN_TURNS};
use crate::daemon::state::{DaemonState, RunRequest};

/// The body of `POST /api/v1/runs`; unknown fields are refused so that a
/// misspelt `turns` is not silently replaced by the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    turns: Option<u32>,
    seed: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(super) struct RunAccepted {
    session_id: String,
}

/// Takes the whole request rather than a body extractor so that the token
/// is checked before the body is read: a caller without the token learns
/// nothing about how bodies are validated and cannot make us buffer one.
pub(super) async fn start_run(
    State(state): State<Arc<DaemonState>>,
    request: Request,
) -> Result<(StatusCode, Json<RunAccepted>), ApiError> {
    authorize_run(&state, &request)?;
    let body = body_bytes(request).await?;
    let run_request = parse_run_body(&body)?;
    let session_id = state.start_run(run_request).await?;
    Ok((StatusCode::ACCEPTED, Json(RunAccepted { session_id })))
}

/// A POST's body, read once its token has been checked, within the
/// route's limit ([`MAX_RUN_BODY_BYTES`]).
pub(super) async fn body_bytes(request: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge {
                limit_bytes: MAX_RUN_BODY_BYTES,
            },
            _ => ApiError::BadRequest(rejection.body_text()),
        })
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
