//! The memory-service client. heistd reads and writes every agent's
//! memories as a client of its own (`oauth.memory_client_id`, which needs
//! `memory:admin`), with a token it fetches from OAuth and keeps until
//! shortly before it expires.

use serde::Deserialize;

use super::{CallError, OAuthClient, ServiceClient, TokenCache};
use crate::wire::memory::{EntryDigest, SessionDigestReply};
/// One `store_memory` body (defined in `wire`, shared with the service).
pub use crate::wire::MemoryWrite;
use crate::wire::{
    CompressedMemoryRequest, CompressedSummary, SessionCountReply, COMPRESSED_MEMORY_PATH,
    HEALTH_PATH, IDEMPOTENCY_KEY_HEADER, STORE_MEMORY_PATH,
};

#[derive(Clone)]
pub struct MemoryClient {
    pub service: ServiceClient,
    /// Who heistd is to the memory service; none: calls carry no token
    /// (a memory service that asks for none, such as the prototype's).
    credentials: Option<MemoryCredentials>,
}

#[derive(Clone)]
struct MemoryCredentials {
    oauth: OAuthClient,
    client_id: String,
    client_secret: String,
    tokens: TokenCache,
}

#[derive(Deserialize)]
struct HealthReply {
    #[serde(default)]
    instance_id: Option<String>,
}

impl MemoryClient {
    pub fn new(service: ServiceClient) -> Self {
        Self {
            service,
            credentials: None,
        }
    }

    /// Calls carry a bearer token of `client_id`, fetched from `oauth`.
    pub fn with_credentials(
        mut self,
        oauth: OAuthClient,
        client_id: &str,
        client_secret: &str,
    ) -> Self {
        self.credentials = Some(MemoryCredentials {
            oauth,
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            tokens: TokenCache::default(),
        });
        self
    }

    /// The `Authorization` header for the next call, if heistd has credentials.
    async fn authorization(&self) -> Result<Vec<(&'static str, String)>, CallError> {
        let Some(credentials) = &self.credentials else {
            return Ok(Vec::new());
        };
        let token = credentials
            .tokens
            .get(
                &credentials.oauth,
                &credentials.client_id,
                &credentials.client_secret,
                &[],
            )
            .await?;
        Ok(vec![("authorization", format!("Bearer {}", token.value))])
    }

    /// A 401 means the token is no longer good (a restarted service with
    /// a new key): forget it so the next call fetches another.
    async fn forget_token_after(&self, error: &CallError) {
        if let (Some(credentials), CallError::Status { status: 401, .. }) =
            (&self.credentials, error)
        {
            credentials.tokens.evict(&credentials.client_id).await;
        }
    }

    /// Stores one turn; `idempotency_key` makes a retried write count once.
    pub async fn store(&self, write: &MemoryWrite, idempotency_key: &str) -> Result<(), CallError> {
        let mut headers = self.authorization().await?;
        headers.push((IDEMPOTENCY_KEY_HEADER, idempotency_key.to_string()));
        let stored: Result<serde_json::Value, CallError> = self
            .service
            .post_json(STORE_MEMORY_PATH, write, &headers)
            .await;
        if let Err(error) = &stored {
            self.forget_token_after(error).await;
        }
        stored.map(|_| ())
    }

    pub async fn compressed(
        &self,
        agent_id: &str,
        session_id: &str,
        max_tokens: u32,
        recent_count: u32,
    ) -> Result<String, CallError> {
        let body = CompressedMemoryRequest {
            agent_id: agent_id.to_string(),
            game_session_id: session_id.to_string(),
            max_tokens: max_tokens as usize,
            recent_count: recent_count as usize,
        };
        let headers = self.authorization().await?;
        // Only the summary is read: the rest of the reply is the service's.
        let reply: Result<CompressedSummary, CallError> = self
            .service
            .post_json(COMPRESSED_MEMORY_PATH, &body, &headers)
            .await;
        if let Err(error) = &reply {
            self.forget_token_after(error).await;
        }
        Ok(reply?.into_text())
    }

    /// The service's instance id from `GET /health` (it changes whenever
    /// the service starts empty); None from a service that reports none.
    pub async fn instance_id(&self) -> Result<Option<String>, CallError> {
        let reply: HealthReply = self.service.probe_json(HEALTH_PATH).await?;
        Ok(reply.instance_id)
    }

    /// How many writes the service holds for `session_id` (`memory:admin`).
    pub async fn session_count(&self, session_id: &str) -> Result<u64, CallError> {
        let headers = self.authorization().await?;
        let path = format!("/sessions/{session_id}/count");
        let reply: Result<SessionCountReply, CallError> = self
            .service
            .get_json_as("sessions/count", &path, &headers)
            .await;
        if let Err(error) = &reply {
            self.forget_token_after(error).await;
        }
        Ok(reply?.count)
    }

    /// heistd's own entries of `session_id` with their content hashes
    /// (`GET /sessions/{id}/digest`, `memory:admin`), sorted; None from a
    /// service without the endpoint (404), which heistd then compares by
    /// count.
    pub async fn session_digest(
        &self,
        session_id: &str,
    ) -> Result<Option<Vec<EntryDigest>>, CallError> {
        let headers = self.authorization().await?;
        let path = format!("/sessions/{session_id}/digest");
        let reply: Result<SessionDigestReply, CallError> = self
            .service
            .get_json_as("sessions/digest", &path, &headers)
            .await;
        match reply {
            Ok(reply) => Ok(Some(reply.entries)),
            Err(CallError::Status { status: 404, .. }) => Ok(None),
            Err(error) => {
                self.forget_token_after(&error).await;
                Err(error)
            }
        }
    }
}
