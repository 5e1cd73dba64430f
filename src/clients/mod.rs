//! Typed clients for every service heistd calls: OAuth, memory, the three
//! tools and the LLM. Each call goes through [`ServiceClient`], which runs it
//! inside the resilience stack, classifies failures into [`CallError`] and
//! records metrics and per-service statistics.
//!
//! Here: [`Clients`], every client built once from the config over one
//! shared connection pool. `service` holds `ServiceClient` and its
//! request/reply plumbing (`stats` its counts), `error` holds `CallError`
//! and how failures are classified, `sse` reads event streams; `oauth`,
//! `memory`, `tools` and `llm` are the typed clients.
//!
//! Clients know the wire formats; they must not decide on retries (that is
//! `resilience`) nor write to the store.

mod error;
mod llm;
mod memory;
mod oauth;
#[cfg(test)]
mod reply_cap_tests;
mod service;
mod sse;
mod stats;
mod tools;

use std::time::Duration;

use error::{error_chain, error_message, too_large};
pub use error::{CallError, ContextOverflow};
pub use llm::{
    ChatMessage, ChatRequest, EndpointKnowledge, LlmClient, ModelReply, RatioSource, ToolSpec,
    WindowSource,
};
pub use memory::{MemoryClient, MemoryWrite};
pub use oauth::{AccessToken, OAuthClient, TokenCache};
pub use service::{ServiceClient, Streamed, DEFAULT_MAX_REPLY_BYTES, PROBE_TIMEOUT};
pub use stats::{ServiceStats, StatsSnapshot};
pub use tools::ToolClient;

use crate::config::{Config, ServiceConfig};

/// The shared HTTP client could not be built (e.g. no TLS backend).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {message}")]
pub struct ClientBuildError {
    message: String,
}

/// Every client a heist needs, built once from the config.
#[derive(Clone)]
pub struct Clients {
    pub oauth: OAuthClient,
    pub memory: MemoryClient,
    pub tools: ToolClient,
    pub llm: LlmClient,
}

impl Clients {
    pub fn from_config(config: &Config) -> Result<Self, ClientBuildError> {
        let http = http_client()?;
        let service = |name: &str, service: &ServiceConfig| {
            ServiceClient::from_config(name, service, http.clone())
        };
        let oauth = OAuthClient::new(service("oauth", &config.services.oauth));
        let mut memory = MemoryClient::new(service("memory", &config.services.memory));
        let own_id = &config.oauth.memory_client_id;
        if let Some(secret) = config.client_secret(own_id) {
            memory = memory.with_credentials(oauth.clone(), own_id, secret);
        }
        Ok(Self {
            oauth,
            memory,
            tools: ToolClient::new(
                service("calculator", &config.services.calculator),
                service("file_reader", &config.services.file_reader),
                service("database_query", &config.services.database_query),
            ),
            llm: LlmClient::from_config(&config.llm, http),
        })
    }

    /// The companion services' clients (every one but the model's).
    pub fn companions(&self) -> Vec<&ServiceClient> {
        let mut companions = vec![&self.oauth.service, &self.memory.service];
        companions.extend(self.tools.services());
        companions
    }

    /// Every service client, for health checks and summaries.
    pub fn all(&self) -> Vec<&ServiceClient> {
        let mut all = vec![&self.oauth.service, &self.memory.service];
        all.extend(self.tools.services());
        all.push(&self.llm.service);
        all
    }
}

/// One connection pool shared by every client. Fails where reqwest cannot
/// set up its TLS backend or resolver, where `reqwest::Client::new()` would
/// panic.
pub fn http_client() -> Result<reqwest::Client, ClientBuildError> {
    reqwest::Client::builder()
        .user_agent(concat!("heistd/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| ClientBuildError {
            message: error_chain(&error),
        })
}
