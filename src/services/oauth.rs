//! The OAuth token service: the client-credentials grant, checked against the
//! configured clients, their secrets and their allowed scopes, answered with
//! a signed, expiring token. Errors follow RFC 6749 (`invalid_client`,
//! `invalid_scope`, ...) as JSON.
//!
//! It must not grant a scope a client is not allowed, nor reveal whether a
//! client id exists.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::token::{unix_now, Claims, SigningKey, ISSUER};
use super::{health_body, JsonBody};
use crate::config::{OAuthClient, OAuthConfig};
use crate::wire::{Companion, HEALTH_PATH, TOKEN_PATH};

#[derive(Clone)]
pub struct OAuthState {
    clients: Arc<Vec<OAuthClient>>,
    key: SigningKey,
    token_ttl_seconds: i64,
}

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub grant_type: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub scope: Option<String>,
}

impl OAuthState {
    /// The clients and token lifetime of `oauth`; tokens signed with `key`.
    pub fn new(oauth: &OAuthConfig, key: SigningKey) -> Self {
        Self {
            clients: Arc::new(oauth.clients.clone()),
            key,
            token_ttl_seconds: oauth.token_ttl_seconds as i64,
        }
    }
}

pub fn router(state: OAuthState) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(issue_token))
        .route(
            HEALTH_PATH,
            get(|| async { health_body(Companion::OAuth.name()) }),
        )
        .with_state(state)
}

async fn issue_token(
    State(state): State<OAuthState>,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Response {
    if request.grant_type != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    // Compare digests of every client's secret so the time taken does not
    // tell an unknown client from a wrong secret.
    let presented = Sha256::digest(request.client_secret.as_bytes());
    let client = state.clients.iter().find(|client| {
        let expected = Sha256::digest(client.client_secret.expose().as_bytes());
        let same_secret = expected
            .iter()
            .zip(presented.iter())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0;
        same_secret & (client.client_id == request.client_id)
    });
    let Some(client) = client else {
        tracing::warn!(client_id = %request.client_id, "token refused: unknown client or wrong secret");
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    let allowed: BTreeSet<&str> = client.scopes.iter().map(String::as_str).collect();
    // Granted in the order asked, each once.
    let mut requested: Vec<&str> = match request.scope.as_deref().map(str::trim) {
        None | Some("") => client.scopes.iter().map(String::as_str).collect(),
        Some(scope) => scope.split_whitespace().collect(),
    };
    let mut seen = BTreeSet::new();
    requested.retain(|scope| seen.insert(*scope));
    if let Some(refused) = requested.iter().find(|scope| !allowed.contains(*scope)) {
        tracing::warn!(client_id = %client.client_id, scope = %refused, "token refused: scope not allowed");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("scope `{refused}` is not allowed for this client"),
        );
    }
    let scope = requested.join(" ");
    let now = unix_now();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: client.client_id.clone(),
        scope: scope.clone(),
        iat: now,
        exp: now + state.token_ttl_seconds,
    };
    let access_token = match state.key.sign(&claims) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(client_id = %client.client_id, %error, "token not issued: signing failed");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be signed",
            );
        }
    };
    let body = serde_json::json!({
        "access_token": access_token,
        "token_type": "bearer",
        "scope": scope,
        "expires_in": state.token_ttl_seconds,
    });
    Json(body).into_response()
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "error_description": description })),
    )
        .into_response()
}
