//! The audit trail's sessions over the admin API: `GET /api/v1/sessions`
//! (filtered by status and schedule, limited) and
//! `GET /api/v1/sessions/{id}`, with the query they read.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, DEFAULT_SESSION_LIMIT, MAX_SESSION_LIMIT};
use crate::daemon::state::DaemonState;
use crate::store::{SessionDetail, SessionRow, SessionStatus};

#[derive(Debug, Serialize)]
pub(super) struct SessionList {
    sessions: Vec<SessionRow>,
}

/// The query of `GET /api/v1/sessions`. Fields stay strings so that a bad
/// value gets our own message rather than serde's; unknown fields are
/// refused so a typo (`?statu=failed`) does not silently list everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionListQuery {
    status: Option<String>,
    schedule: Option<String>,
    limit: Option<String>,
}

pub(super) async fn list_sessions(
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

pub(super) async fn session_detail(
    State(state): State<Arc<DaemonState>>,
    session_id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionDetail>, ApiError> {
    let Path(session_id) =
        session_id.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let detail = state.store.session(&session_id).await?;
    Ok(Json(detail))
}

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
