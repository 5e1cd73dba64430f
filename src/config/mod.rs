//! Configuration: the one place that reads the TOML file and the
//! `HEISTD_<SECTION>__<KEY>` environment overrides, validates them, and hands
//! out a typed [`Config`]. Layers, lowest first: built-in defaults (serde
//! field defaults), the file, the environment.
//!
//! Each section lives in one file with its struct, its defaults and its
//! check (`store.rs` is `[store]`, `llm.rs` is `[llm]`, ...); `load.rs`
//! merges the layers and collects every problem; `report.rs` prints a
//! config back. The field docs are the reference: `docs/configuration.md`
//! is generated from them, and a test fails when it drifts.
//!
//! It must not reach the network or open the store, and it imports nothing
//! from the crate but `wire` and `http`; everything that needs a setting
//! receives it from here, explicitly. Secrets (client secrets, the admin
//! token, the token signing key, the LLM API key) are resolved once, at
//! load, into [`Secret`]s that never print themselves;
//! [`Config::redacted_toml`] replaces them.

use serde::{Deserialize, Serialize};

mod cluster;
mod companions;
mod daemon;
mod endpoints;
mod error;
mod events;
mod health;
mod heist;
mod http;
mod llm;
mod load;
mod oauth;
mod outbox;
mod policy;
mod problems;
mod report;
mod retention;
mod schedule;
mod secrets;
mod services;
mod store;
pub use cluster::ClusterConfig;
pub use companions::{
    CompanionsConfig, CompanionsSettings, DatabaseToolConfig, Fault, MemoryServiceConfig,
};
pub use daemon::{DaemonConfig, Recovery};
pub use endpoints::{endpoint_label, ModelEndpointConfig, OutlierConfig, MAX_EJECTION_MS};
pub use error::ConfigError;
pub use events::EventsConfig;
pub use health::HealthCheckConfig;
pub use heist::HeistConfig;
pub use http::HttpConfig;
pub use llm::{LlmConfig, Prices, TokenCounting, ToolCalling};
pub use load::{
    admin_address_hint, load, load_without_secrets, process_environment, systemd_environment,
    SystemdEnvironment,
};
pub use oauth::{OAuthClient, OAuthConfig};
pub use outbox::OutboxConfig;
pub use policy::{BreakerConfig, PolicyConfig, WindowKind};
pub use retention::RetentionConfig;
pub use schedule::{Missed, Overlap, ScheduleConfig, ScheduleFields, Trigger, TriggerError};
pub use secrets::{is_loopback_address, Secret, CREDENTIALS_DIRECTORY, REDACTED};
pub use services::{ServiceConfig, ServicesConfig};
pub use store::{StoreBackend, StoreConfig, Synchronous};

use crate::wire::Companion;

/// The prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "HEISTD_";
/// Separates the section from the key in an override (`HEISTD_LLM__BASE_URL`).
pub const ENV_SEPARATOR: &str = "__";
/// Where a packaged daemon looks for its config when no `--config` is given.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/heistd/heistd.toml";
/// One rule for a heist's length everywhere: the config, schedules, the
/// command line and `POST /api/v1/runs` all take 1 to this many turns.
pub const MAX_TURNS: u32 = 1000;
/// The model server's name as a service: its metric label, its health
/// checker's name, and the `[llm]` section's client.
pub const LLM_SERVICE: &str = "llm";
/// The companion services every heist needs, in the order they are checked.
pub const SERVICE_NAMES: [&str; 5] = [
    Companion::OAuth.name(),
    Companion::Memory.name(),
    Companion::Calculator.name(),
    Companion::FileReader.name(),
    Companion::DatabaseQuery.name(),
];

/// The whole resolved configuration. Deliberately has no `Default`: a config
/// only comes from [`load`], so every value has been through validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The audit trail: SQLite or PostgreSQL.
    #[serde(default)]
    pub store: StoreConfig,
    /// One heist's defaults and bounds.
    #[serde(default)]
    pub heist: HeistConfig,
    /// The model server the agents talk to.
    #[serde(default)]
    pub llm: LlmConfig,
    /// The companion services heistd calls.
    #[serde(default)]
    pub services: ServicesConfig,
    /// The OAuth clients, the signing key and the tokens' lifetime.
    #[serde(default)]
    pub oauth: OAuthConfig,
    /// The companion services as `heistd services` runs them.
    #[serde(default)]
    pub companions: CompanionsConfig,
    /// The admin API, the session cap, shutdown and crash recovery.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Pruning old sessions from the audit trail.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Reconciling the memory service with the store's outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Several daemons on one PostgreSQL store.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Limits of every HTTP listener: the companions and the admin API.
    #[serde(default)]
    pub http: HttpConfig,
    /// The admin API's event streams (watching sessions live).
    #[serde(default)]
    pub events: EventsConfig,
    /// Heists the daemon starts on its own (`[[schedule]]` entries). Read
    /// by `load` after the rest, entry by entry, so that a trigger that
    /// does not parse is named by its key (`schedule[2].cron`). Not written
    /// when empty, so a `[[schedule]]` appended to printed output loads.
    #[serde(default, skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<ScheduleConfig>,
}

impl Config {
    /// Built-in defaults only: what `load(None, no env)` gives.
    pub fn builtin() -> Self {
        Self {
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
            heist: HeistConfig::default(),
            llm: LlmConfig::default(),
            services: ServicesConfig::default(),
            oauth: OAuthConfig::default(),
            companions: CompanionsConfig::default(),
            daemon: DaemonConfig::default(),
            retention: RetentionConfig::default(),
            outbox: OutboxConfig::default(),
            http: HttpConfig::default(),
            events: EventsConfig::default(),
            schedule: Vec::new(),
        }
    }

    /// A service's health-check settings by its client name (`llm` is the
    /// model server; an unknown name gets the quick defaults).
    pub fn health_check(&self, service: &str) -> HealthCheckConfig {
        if service == LLM_SERVICE {
            return self.llm.health.clone();
        }
        self.services
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, settings)| settings.health.clone())
            .unwrap_or_else(HealthCheckConfig::quick_service)
    }

    /// The secret an agent presents to the OAuth service.
    pub fn client_secret(&self, client_id: &str) -> Option<&str> {
        self.oauth
            .clients
            .iter()
            .find(|client| client.client_id == client_id)
            .map(|client| client.client_secret.expose())
    }

    /// What the companions are given of the config.
    pub fn companions_settings(&self) -> CompanionsSettings {
        CompanionsSettings::from_config(self)
    }
}

#[cfg(test)]
pub mod test_kit;
#[cfg(test)]
mod tests;
