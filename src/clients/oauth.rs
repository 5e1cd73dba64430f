//! The OAuth client and the per-agent token cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{CallError, ServiceClient};
use crate::wire::TOKEN_PATH;

/// A token is renewed this long before it expires, so a call never starts
/// with a token that dies in flight.
pub const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct OAuthClient {
    pub service: ServiceClient,
}

#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: String,
    pub scope: String,
    pub renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    scope: String,
    /// The prototype's service sends no expiry; its tokens are treated as
    /// good for an hour.
    #[serde(default)]
    expires_in: Option<u64>,
}

impl OAuthClient {
    pub fn new(service: ServiceClient) -> Self {
        Self { service }
    }

    pub async fn token(
        &self,
        client_id: &str,
        client_secret: &str,
        scopes: &[String],
    ) -> Result<AccessToken, CallError> {
        let body = serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": scopes.join(" "),
        });
        let reply: TokenReply = self.service.post_json(TOKEN_PATH, &body, &[]).await?;
        let lifetime = Duration::from_secs(reply.expires_in.unwrap_or(3600));
        Ok(AccessToken {
            value: reply.access_token,
            scope: reply.scope,
            renew_at: Instant::now() + lifetime.saturating_sub(RENEW_BEFORE_EXPIRY),
        })
    }
}

/// Tokens by client id, fetched on first use and renewed shortly before
/// they expire.
#[derive(Clone, Default)]
pub struct TokenCache {
    tokens: Arc<Mutex<HashMap<String, AccessToken>>>,
}

impl TokenCache {
    /// Forgets a client's token, so the next `get` asks OAuth again.
    pub async fn evict(&self, client_id: &str) {
        self.tokens.lock().await.remove(client_id);
    }

    pub async fn get(
        &self,
        oauth: &OAuthClient,
        client_id: &str,
        client_secret: &str,
        scopes: &[String],
    ) -> Result<AccessToken, CallError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(token) = tokens.get(client_id) {
            if Instant::now() < token.renew_at {
                return Ok(token.clone());
            }
        }
        let token = oauth.token(client_id, client_secret, scopes).await?;
        tokens.insert(client_id.to_string(), token.clone());
        Ok(token)
    }
}
