//! The admin token: runs always need it as `Authorization: Bearer`, reads
//! when `daemon.read_requires_token` says so. The token is compared in
//! constant time; how a wrong one is answered and logged is `guard`'s.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::guard::{self, AdminGuard};
use super::ApiError;
use crate::daemon::state::DaemonState;

pub(super) async fn require_read_token(
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

/// The admin token must be configured and presented as `Bearer <token>`
/// (scheme case-insensitive, RFC 7235). The right token is always
/// accepted; the guard only decides how a wrong one is answered and logged.
pub(super) fn authorize_run(state: &DaemonState, request: &Request) -> Result<(), ApiError> {
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
