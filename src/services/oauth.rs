//! The OAuth token service: the client-credentials grant, checked against the
//! configured clients, their secrets and their allowed scopes, answered with
//! a signed, expiring token. Errors follow RFC 6749 (`invalid_client`,
//! `invalid_scope`, ...) as JSON.
//!
//! Guessing is slowed down: failed attempts are counted per client id and
//! per source address, and past [`MAX_FAILURES`] in [`FAILURE_WINDOW`] the
//! next attempts get 429 with `Retry-After` until the window ends. Secrets
//! are compared in constant time.
//!
//! It must not grant a scope a client is not allowed, nor reveal whether a
//! client id exists.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::token::{unix_now, Claims, SigningKey, ISSUER};
use super::{health_body, JsonBody};
use crate::config::{OAuthClient, OAuthConfig};
use crate::wire::{loggable, Companion, HEALTH_PATH, TOKEN_PATH};

/// Failed attempts allowed per client id, and per source address, in one window.
pub const MAX_FAILURES: u32 = 10;
/// The window failed attempts are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The longest `/token` request body read: ids, a secret and scopes.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 8 * 1024;
/// Counters kept at most; past it the expired ones go, and if none has
/// expired the table starts afresh, so a flood of ids cannot grow it.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone)]
pub struct OAuthState {
    clients: Arc<Vec<OAuthClient>>,
    key: SigningKey,
    token_ttl_seconds: i64,
    failures: Arc<Mutex<Failures>>,
}

/// Failed attempts by key (`client:<id>` or `address:<ip>`), with the
/// start of each key's window.
#[derive(Default)]
struct Failures {
    counts: HashMap<String, (Instant, u32)>,
}

impl Failures {
    /// How long `key` must wait, if it is over its limit now.
    fn blocked_for(&self, key: &str, now: Instant) -> Option<Duration> {
        let (started, count) = self.counts.get(key)?;
        let elapsed = now.duration_since(*started);
        (*count >= MAX_FAILURES && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    fn record(&mut self, key: String, now: Instant) {
        if self.counts.len() >= MAX_TRACKED && !self.counts.contains_key(&key) {
            self.counts
                .retain(|_, (started, _)| now.duration_since(*started) < FAILURE_WINDOW);
            if self.counts.len() >= MAX_TRACKED {
                self.counts.clear();
            }
        }
        let entry = self.counts.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
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
            token_ttl_seconds: i64::try_from(oauth.token_ttl_seconds).unwrap_or(86_400),
            failures: Arc::new(Mutex::new(Failures::default())),
        }
    }
}

pub fn router(state: OAuthState) -> Router {
    Router::new()
        // The client's credentials are in the body (RFC 6749 2.3.1), so
        // it is read before anyone is known: a few KiB at most.
        .route(
            TOKEN_PATH,
            post(issue_token).layer(DefaultBodyLimit::max(MAX_TOKEN_REQUEST_BYTES)),
        )
        .route(
            HEALTH_PATH,
            get(|| async { health_body(Companion::OAuth.name()) }),
        )
        .with_state(state)
}

/// The keys a request's failures count against: its client id (cut, so a
/// huge id costs no more than a short one) and its source address.
fn failure_keys(client_id: &str, peer: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!("client:{}", loggable(client_id))];
    if let Some(address) = peer {
        keys.push(format!("address:{address}"));
    }
    keys
}

async fn issue_token(
    State(state): State<OAuthState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Response {
    let keys = failure_keys(
        &request.client_id,
        peer.map(|Extension(ConnectInfo(address))| address.ip()),
    );
    let now = Instant::now();
    let blocked = {
        let failures = state.failures.lock();
        keys.iter()
            .filter_map(|key| failures.blocked_for(key, now))
            .max()
    };
    if let Some(wait) = blocked {
        tracing::warn!(client_id = %loggable(&request.client_id), "token refused: too many failed attempts");
        return too_many_attempts(wait);
    }
    let response = grant(&state, request);
    if response.status() == StatusCode::UNAUTHORIZED {
        let mut failures = state.failures.lock();
        for key in keys {
            failures.record(key, now);
        }
    }
    response
}

fn too_many_attempts(wait: Duration) -> Response {
    let seconds = wait.as_secs().max(1);
    let mut response = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        &format!("too many failed attempts; try again in {seconds} s"),
    );
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(seconds));
    response
}

/// Checks the grant, the client's secret and the scopes; signs the token.
fn grant(state: &OAuthState, request: TokenRequest) -> Response {
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
        tracing::warn!(client_id = %loggable(&request.client_id), "token refused: unknown client or wrong secret");
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
        tracing::warn!(client_id = %loggable(&client.client_id), scope = %loggable(refused), "token refused: scope not allowed");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!(
                "scope `{}` is not allowed for this client",
                loggable(refused)
            ),
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
