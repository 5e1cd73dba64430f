//! The OAuth token service: the client-credentials grant, checked against the
//! configured clients, their secrets and their allowed scopes, answered with
//! a signed, expiring token. Errors follow RFC 6749 (`invalid_client`,
//! `invalid_scope`, ...) as JSON.
//!
//! Guessing (issue 20): a correct secret always gets its token, whatever
//! anyone else has failed, from wherever: the secret is checked first (in
//! constant time) and the limits only decide how a *failure* is answered.
//! Failures are counted per source address (an IPv6 /64) and per client id,
//! in two tables: the sources' holds at most [`MAX_TRACKED_SOURCES`] and
//! evicts one-off junk before sources over their limit; the clients' holds
//! the configured client ids and nothing else, so no flood of unknown ids
//! can reset a client's count (an unknown id counts against its source
//! only). Past [`MAX_FAILURES`] in [`FAILURE_WINDOW`] for its source or its
//! client, a failure is answered 429 with `Retry-After` instead of 401: the
//! guesser is slowed, per source and per client across sources, and the
//! client that knows its secret never is. Secrets read from files or
//! credentials are high-entropy, so a lockout would buy nothing but a
//! denial of service. Refusals are logged once per source per interval in
//! full, and summarised after (`http::limiter::RefusalLog`).
//!
//! It must not grant a scope a client is not allowed, nor reveal whether a
//! client id exists.

use std::collections::BTreeSet;
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
use crate::http::limiter::{source_of, FailureWindows, RefusalLog, REFUSAL_SUMMARY_INTERVAL};
use crate::wire::{loggable, Companion, HEALTH_PATH, TOKEN_PATH};

/// Failed attempts answered 401 per source address, and per configured
/// client id across sources, in one window; the next ones get 429.
pub const MAX_FAILURES: u32 = 10;
/// The window failed attempts are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses whose failures are counted at most. Past it the
/// expired windows go, then the sources with the fewest failures: junk
/// from many addresses evicts junk (`http::limiter::FailureWindows`).
pub const MAX_TRACKED_SOURCES: usize = 10_000;
/// The longest `/token` request body read: ids, a secret and scopes.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 8 * 1024;

#[derive(Clone)]
pub struct OAuthState {
    clients: Arc<Vec<OAuthClient>>,
    key: SigningKey,
    token_ttl_seconds: i64,
    failures: Arc<Mutex<Failures>>,
    refusals: Arc<RefusalLog>,
}

/// Failed attempts, kept apart per source and per client so that neither
/// table's churn can reset the other's counts.
struct Failures {
    by_source: FailureWindows<IpAddr>,
    /// Only the configured client ids: fixed, cannot be flushed.
    by_client: FailureWindows<String>,
}

impl Failures {
    /// Counts a failure; when its source or its client is over the limit,
    /// how long until the later of their windows ends.
    fn record(
        &mut self,
        source: Option<IpAddr>,
        client_id: &str,
        now: Instant,
    ) -> Option<Duration> {
        let by_source = source.and_then(|source| self.by_source.record(&source, now));
        let by_client = self.by_client.record(client_id, now);
        by_source.max(by_client)
    }
}

/// Why a token request was refused.
enum Refusal {
    UnsupportedGrant,
    WrongSecret,
    ScopeNotAllowed(String),
    SigningFailed,
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
        let client_ids = oauth.clients.iter().map(|client| client.client_id.clone());
        let refusals = RefusalLog::new("token refused", REFUSAL_SUMMARY_INTERVAL);
        RefusalLog::spawn_flusher(&refusals);
        Self {
            clients: Arc::new(oauth.clients.clone()),
            key,
            token_ttl_seconds: i64::try_from(oauth.token_ttl_seconds).unwrap_or(86_400),
            failures: Arc::new(Mutex::new(Failures {
                by_source: FailureWindows::new(MAX_FAILURES, FAILURE_WINDOW, MAX_TRACKED_SOURCES),
                by_client: FailureWindows::for_keys(client_ids, MAX_FAILURES, FAILURE_WINDOW),
            })),
            refusals,
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

async fn issue_token(
    State(state): State<OAuthState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Response {
    let refusal = match grant(&state, &request) {
        Ok(granted) => return granted,
        Err(refusal) => refusal,
    };
    let source = peer.map(|Extension(ConnectInfo(address))| source_of(address.ip()));
    let now = Instant::now();
    let (reason, response) = match refusal {
        Refusal::UnsupportedGrant => (
            "unsupported grant type",
            oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            ),
        ),
        Refusal::WrongSecret => {
            let over_limit = state
                .failures
                .lock()
                .record(source, &request.client_id, now);
            match over_limit {
                Some(wait) => ("too many failed attempts", too_many_attempts(wait)),
                None => (
                    "unknown client or wrong secret",
                    oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "unknown client or wrong secret",
                    ),
                ),
            }
        }
        Refusal::ScopeNotAllowed(refused) => (
            "scope not allowed",
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!(
                    "scope `{}` is not allowed for this client",
                    loggable(&refused)
                ),
            ),
        ),
        Refusal::SigningFailed => {
            // Not the client's doing: always logged, never summarised.
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be signed",
            );
        }
    };
    if state.refusals.refused(source, reason, now) {
        let source = source.map_or_else(|| "unknown".to_string(), |source| source.to_string());
        tracing::warn!(client_id = %loggable(&request.client_id), %source, "token refused: {reason}");
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
/// Nothing but the request decides: the limits only shape a refusal.
fn grant(state: &OAuthState, request: &TokenRequest) -> Result<Response, Refusal> {
    if request.grant_type != "client_credentials" {
        return Err(Refusal::UnsupportedGrant);
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
        return Err(Refusal::WrongSecret);
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
        return Err(Refusal::ScopeNotAllowed((*refused).to_string()));
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
            return Err(Refusal::SigningFailed);
        }
    };
    let body = serde_json::json!({
        "access_token": access_token,
        "token_type": "bearer",
        "scope": scope,
        "expires_in": state.token_ttl_seconds,
    });
    Ok(Json(body).into_response())
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn ask(router: &Router, from: [u8; 4], client_id: &str, secret: &str) -> StatusCode {
        let body = serde_json::json!({
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        });
        let mut request = Request::post(TOKEN_PATH)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((from, 40_000))));
        router
            .clone()
            .oneshot(request)
            .await
            .expect("answered")
            .status()
    }

    #[tokio::test(start_paused = true)]
    async fn a_clients_failures_across_sources_get_429_until_the_window_ends_and_its_secret_always_works(
    ) {
        let config = crate::config::load(None, Vec::new()).expect("defaults");
        let router = router(OAuthState::new(&config.oauth, SigningKey::random()));
        let secret = config.client_secret("hacker").expect("hacker").to_string();
        // One failure from each of ten addresses: no address is over its
        // limit, the client is at its.
        for source in 1..=10 {
            assert_eq!(
                ask(&router, [127, 0, 0, source], "hacker", "wrong").await,
                401
            );
        }
        assert_eq!(
            ask(&router, [127, 0, 1, 1], "hacker", "wrong").await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(ask(&router, [127, 0, 1, 1], "hacker", &secret).await, 200);
        // An unknown id counts only against its address.
        assert_eq!(ask(&router, [127, 0, 1, 2], "nobody", "wrong").await, 401);
        tokio::time::advance(FAILURE_WINDOW).await;
        assert_eq!(ask(&router, [127, 0, 1, 3], "hacker", "wrong").await, 401);
    }
}
