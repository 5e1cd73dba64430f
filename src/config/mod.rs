//! Configuration: the one place that reads the TOML file and the
//! `HEISTD_<SECTION>__<KEY>` environment overrides, validates them, and hands
//! out a typed [`Config`]. Layers, lowest first: built-in defaults (serde
//! field defaults), the file, the environment.
//!
//! It must not reach the network or open the store, and it imports nothing
//! from the crate but `wire`; everything that needs a setting receives it
//! from here, explicitly. Secrets (client secrets, the admin token, the
//! token signing key, the LLM API key) are resolved once, at load, into
//! [`Secret`]s that never print themselves; [`Config::redacted_toml`]
//! replaces them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod cluster;
mod companions;
mod daemon;
mod defaults;
mod http;
mod policy;
mod problems;
mod schedule;
mod secrets;
pub use cluster::{ClusterConfig, StoreBackend};
pub use companions::{
    CompanionsConfig, CompanionsSettings, DatabaseToolConfig, Fault, MemoryServiceConfig,
};
pub use daemon::{DaemonConfig, HealthCheckConfig, OutboxConfig, Recovery, RetentionConfig};
use defaults::*;
pub use http::HttpConfig;
pub use policy::{BreakerConfig, PolicyConfig, WindowKind};
pub use schedule::{Missed, Overlap, ScheduleConfig, ScheduleFields, Trigger, TriggerError};
pub use secrets::{is_loopback_address, Secret, CREDENTIALS_DIRECTORY, REDACTED};

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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} not found")]
    FileNotFound { path: String },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error(
        "unknown key `{key}` in {origin}{}",
        problems::suggestion_text(suggestion)
    )]
    UnknownKey {
        key: String,
        origin: String,
        /// The known key that was probably meant.
        suggestion: Option<String>,
    },
    #[error("key `{key}` in {origin}: {message}")]
    InvalidValue {
        key: String,
        origin: String,
        message: String,
    },
    /// Every problem one read found, each on its own line.
    #[error("{count} problems in the config:{problems}")]
    Several { count: usize, problems: String },
}

/// The whole resolved configuration. Deliberately has no `Default`: a config
/// only comes from [`load`], so every value has been through validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub heist: HeistConfig,
    #[serde(default)]
    pub llm: LlmConfig,
    #[serde(default)]
    pub services: ServicesConfig,
    #[serde(default)]
    pub oauth: OAuthConfig,
    #[serde(default)]
    pub companions: CompanionsConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
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
    /// Heists the daemon starts on its own (`[[schedule]]` entries). Read
    /// by `load` after the rest, entry by entry, so that a trigger that
    /// does not parse is named by its key (`schedule[2].cron`).
    #[serde(default, skip_deserializing)]
    pub schedule: Vec<ScheduleConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (one file, one node) or `postgres` (shared by several
    /// daemons).
    #[serde(default)]
    pub backend: StoreBackend,
    /// The SQLite audit database; created with its schema on first open.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// `full` makes every committed turn survive power loss; `normal` only
    /// survives a crash of the process, and is faster on slow disks.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// SQLite: turns of several sessions that are ready while a commit is
    /// in flight share the next transaction (one fsync); each session still
    /// goes on only once its turn is durable. `false`: one transaction per
    /// turn.
    #[serde(default = "default_group_commit")]
    pub group_commit: bool,
    /// SQLite, with `group_commit`: how long a commit may wait for the
    /// turns of other sessions in play, so that one transaction (one
    /// fsync) holds more of them; it goes at once when every session in
    /// play has a turn queued, or only one plays. 0: never waits.
    #[serde(default = "default_commit_delay_ms")]
    pub commit_delay_ms: u64,
    /// Caps the database's size, its write-ahead log included (0: no
    /// cap). At the cap new runs are refused before any service call, and
    /// a commit that does not fit is a store outage, like a full disk.
    #[serde(default)]
    pub max_size_mb: u64,
    /// How long a session waits, paused, for an unusable store (full,
    /// read-only, deleted) before it ends `failed`, or is left for crash
    /// recovery when even that cannot be recorded.
    #[serde(default = "default_max_outage_ms")]
    pub max_outage_ms: u64,
    /// The PostgreSQL server and database (`postgres://user@host:port/db`),
    /// without a password.
    #[serde(default)]
    pub url: String,
    /// The variable holding the PostgreSQL password (empty: none).
    #[serde(default)]
    pub password_env: String,
    /// A file holding the PostgreSQL password; relative to
    /// `$CREDENTIALS_DIRECTORY` when systemd provides credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Connections the PostgreSQL store keeps open.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Resolved at load from `password_env` or `password_file`.
    #[serde(skip)]
    pub password: Option<Secret>,
}

fn default_group_commit() -> bool {
    true
}

fn default_commit_delay_ms() -> u64 {
    2
}

fn default_max_outage_ms() -> u64 {
    300_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeistConfig {
    /// Turns in one heist when the command line does not say.
    #[serde(default = "default_turns")]
    pub turns: u32,
    /// A scenario directory holding `scenario.toml`, `documents/` and
    /// `shifts.sql`; empty means the bank scenario built into the binary.
    #[serde(default)]
    pub scenario: Option<PathBuf>,
    /// Fixes the agent order and the rehearsal transcript; random when unset.
    #[serde(default)]
    pub seed: Option<u64>,
    /// How many earlier messages each prompt carries verbatim.
    #[serde(default = "default_context_messages")]
    pub context_messages: usize,
    /// Tool requests beyond this in one reply are recorded as refused, so a
    /// chatty model cannot turn one turn into a storm of calls.
    #[serde(default = "default_max_tool_calls")]
    pub max_tool_calls_per_turn: usize,
    /// The token budget asked of the memory service's compressed summary.
    #[serde(default = "default_memory_max_tokens")]
    pub memory_max_tokens: u32,
    /// How long a session waits for an unavailable model (refused
    /// connections, timeouts, 5xx, an open breaker) before it ends
    /// `failed` with the last real error; turns are not spent meanwhile.
    #[serde(default = "default_max_model_outage_ms")]
    pub max_model_outage_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// OpenAI-compatible base URL, up to and including `/v1`.
    #[serde(default = "default_llm_url")]
    pub base_url: String,
    #[serde(default = "default_llm_model")]
    pub model: String,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// The name of the environment variable that holds the API key; the key
    /// itself never lives in the file.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// A file holding the API key (wins over `api_key_env`); a relative
    /// path names a systemd credential in `$CREDENTIALS_DIRECTORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// The key, read once at load; never written out.
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// A reply body larger than this is refused, not read into memory.
    #[serde(default = "default_llm_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// Per-attempt timeout: a local model may need a minute for a reply.
    /// Streaming, it caps the wait for the reply's first piece only.
    #[serde(default = "default_llm_timeout_ms")]
    pub timeout_ms: u64,
    /// Ask for the reply as server-sent events (`stream: true`), so a slow
    /// model that keeps producing is not cut at `timeout_ms`; false for a
    /// server that streams badly.
    #[serde(default = "default_true")]
    pub stream: bool,
    /// Streaming, the longest gap between a reply's pieces before the
    /// attempt is cut: a model that stops producing is cut this soon.
    #[serde(default = "default_llm_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How agents ask for tools: `text` (the prototype's
    /// `[TOOL:name:parameter]` in the reply, which any model can do) or
    /// `native` (OpenAI function calling, for models that support it).
    #[serde(default)]
    pub tool_calling: ToolCalling,
    /// The model's context window in tokens; 0 learns it from the server
    /// (its context-length error, or its model list).
    #[serde(default)]
    pub context_tokens: u32,
    /// A prompt that does not fit is trimmed, and as a last step the reply's
    /// `max_tokens` is lowered, but not below this.
    #[serde(default = "default_min_completion_tokens")]
    pub min_completion_tokens: u32,
    #[serde(default = "PolicyConfig::language_model")]
    pub policy: PolicyConfig,
    #[serde(default = "HealthCheckConfig::language_model")]
    pub health: HealthCheckConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCalling {
    #[default]
    Text,
    Native,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    #[serde(default = "default_oauth_service")]
    pub oauth: ServiceConfig,
    #[serde(default = "default_memory_service")]
    pub memory: ServiceConfig,
    #[serde(default = "default_calculator_service")]
    pub calculator: ServiceConfig,
    #[serde(default = "default_file_reader_service")]
    pub file_reader: ServiceConfig,
    #[serde(default = "default_database_query_service")]
    pub database_query: ServiceConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub base_url: String,
    /// Per-attempt timeout for calls to this service.
    #[serde(default = "default_service_timeout_ms")]
    pub timeout_ms: u64,
    /// A reply body larger than this is refused, not read into memory.
    #[serde(default = "default_service_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// Deadline, retries, budget, breaker and bulkhead.
    #[serde(default = "PolicyConfig::quick_service")]
    pub policy: PolicyConfig,
    /// The daemon's periodic check of this service.
    #[serde(default = "HealthCheckConfig::quick_service")]
    pub health: HealthCheckConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The clients the OAuth service knows, and the secrets the heist runner
    /// presents for each agent (an agent's client id is its name).
    #[serde(
        default = "default_oauth_clients",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub clients: Vec<OAuthClient>,
    /// The environment variable holding the HS256 signing key shared by the
    /// OAuth and tool services. Unset: a random key per process, which is
    /// right when all companions run in one process (`services all`, `demo`).
    #[serde(default = "default_signing_key_env")]
    pub signing_key_env: String,
    /// A file holding the signing key (wins over `signing_key_env`); a
    /// relative path names a systemd credential in `$CREDENTIALS_DIRECTORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// The key, read once at load; never written out.
    #[serde(skip)]
    pub signing_key: Option<Secret>,
    /// Token lifetime, 60 to 86400 seconds.
    #[serde(default = "default_token_ttl_seconds")]
    pub token_ttl_seconds: u64,
    /// The client heistd itself is to the memory service (its outbox
    /// deliveries and memory reads); it needs `memory:admin`. When no
    /// client of that id is configured, memory calls carry no token.
    #[serde(default = "default_memory_client_id")]
    pub memory_client_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub client_id: String,
    /// The secret itself; better from `client_secret_env` or
    /// `client_secret_file`, so the config file holds none.
    #[serde(default, skip_serializing_if = "is_unset")]
    pub client_secret: Secret,
    /// An environment variable holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// A file holding the secret; relative: a systemd credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes this client may be granted; asking for more is `invalid_scope`.
    pub scopes: Vec<String>,
}

impl ServicesConfig {
    /// The configured services by name, in [`SERVICE_NAMES`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ServiceConfig)> {
        [
            &self.oauth,
            &self.memory,
            &self.calculator,
            &self.file_reader,
            &self.database_query,
        ]
        .into_iter()
        .enumerate()
        .map(|(index, service)| (SERVICE_NAMES[index], service))
    }
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
            schedule: Vec::new(),
        }
    }

    /// The clients whose secret is the built-in rehearsal one, which
    /// anyone who has read the source knows.
    pub fn builtin_secrets_in_use(&self) -> Vec<String> {
        self.oauth
            .clients
            .iter()
            .filter(|client| {
                client.client_secret.expose()
                    == format!("{}{}", client.client_id, secrets::BUILTIN_SECRET_SUFFIX)
            })
            .map(|client| client.client_id.clone())
            .collect()
    }

    /// Warnings `config check` prints: settings that work but are unsafe.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let builtin = self.builtin_secrets_in_use();
        if !builtin.is_empty() {
            warnings.push(format!(
                "clients {} use the built-in rehearsal secrets, which anyone can read in heistd's source; \
                 give each a client_secret_file (or client_secret_env) before the companions listen beyond loopback",
                builtin.join(", ")
            ));
        }
        if !secrets::is_loopback_address(&self.daemon.admin_address)
            && !self.daemon.reads_need_token()
        {
            warnings.push(format!(
                "daemon.admin_address {} is not loopback and daemon.read_requires_token is false: anyone who reaches it reads the sessions",
                self.daemon.admin_address
            ));
        }
        warnings
    }

    /// The resolved config as TOML with every secret replaced.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for client in &mut shown.oauth.clients {
            // A secret read from a file or a variable shows where it comes
            // from; one written in the file shows as REDACTED, which a
            // config made from this output is refused for.
            let from_elsewhere =
                client.client_secret_file.is_some() || client.client_secret_env.is_some();
            client.client_secret = if from_elsewhere {
                Secret::default()
            } else {
                Secret::new(REDACTED)
            };
        }
        // The built-in clients are what no [[oauth.clients]] means: leave
        // them out, so the output loads back as the same config.
        let builtin_only = !self.oauth.clients.is_empty()
            && self.builtin_secrets_in_use().len() == self.oauth.clients.len();
        if builtin_only {
            shown.oauth.clients.clear();
        }
        let mut text = toml::to_string_pretty(&shown)
            .unwrap_or_else(|error| format!("# cannot render config: {error}\n"));
        if builtin_only {
            text.push_str(
                "\n# [[oauth.clients]]: none listed, so the built-in rehearsal clients (their secrets are in\n\
                 # heistd's source); list your own, each with client_secret_file or client_secret_env.\n",
            );
        }
        text
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

    /// Reads the secrets from the variables and files the config names;
    /// returns every one that could not be read, as (key, why).
    fn resolve_secrets(&mut self, environment: &[(String, String)]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut read = |key: &str, variable: &str, file: Option<&Path>| {
            secrets::resolve(environment, variable, file)
                .map_err(|message| problems.push((key.to_string(), message)))
                .ok()
                .flatten()
        };
        self.daemon.admin_token = read(
            "daemon.admin_token_file",
            &self.daemon.admin_token_env,
            self.daemon.admin_token_file.as_deref(),
        );
        self.llm.api_key = read(
            "llm.api_key_file",
            &self.llm.api_key_env,
            self.llm.api_key_file.as_deref(),
        );
        self.oauth.signing_key = read(
            "oauth.signing_key_file",
            &self.oauth.signing_key_env,
            self.oauth.signing_key_file.as_deref(),
        );
        for (index, client) in self.oauth.clients.iter_mut().enumerate() {
            if let Err(problem) = resolve_client_secret(environment, index, client) {
                problems.push(problem);
            }
        }
        problems
    }
}

/// A client's secret from exactly one of its three sources.
fn resolve_client_secret(
    environment: &[(String, String)],
    index: usize,
    client: &mut OAuthClient,
) -> Result<(), (String, String)> {
    let key = format!("oauth.clients[{index}]");
    let sources = [
        !client.client_secret.expose().is_empty(),
        client.client_secret_env.is_some(),
        client.client_secret_file.is_some(),
    ];
    if sources.iter().filter(|given| **given).count() != 1 {
        return Err((
            key,
            "give exactly one of client_secret, client_secret_env, client_secret_file".into(),
        ));
    }
    if client.client_secret_env.is_none() && client.client_secret_file.is_none() {
        return Ok(());
    }
    let variable = client.client_secret_env.clone().unwrap_or_default();
    let resolved = secrets::resolve(environment, &variable, client.client_secret_file.as_deref())
        .map_err(|message| (format!("{key}.client_secret_file"), message))?;
    client.client_secret = resolved.ok_or_else(|| {
        (
            format!("{key}.client_secret_env"),
            format!("variable {variable} is not set"),
        )
    })?;
    Ok(())
}

/// Loads the config: defaults, then `path` (if given; a given file must
/// exist), then the `HEISTD_*__*` variables among `environment`.
///
/// The layers are merged here as TOML values rather than with the `config`
/// crate, because that crate coerces types (`timeout_ms = true` became 1,
/// `turns = "5"` became 5) and a wrong type must be an error that names
/// the key. Environment values, which are always strings, take the type of
/// the default they override.
pub fn load(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    load_with(path, environment, true)
}

/// As [`load`], every key read and checked, but no secret read (each is
/// left unset): for commands that only read the store (`heistd
/// sessions`), which a missing credential they never use must not stop.
pub fn load_without_secrets(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    load_with(path, environment, false)
}

fn load_with(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
    read_secrets: bool,
) -> Result<Config, ConfigError> {
    let environment = secrets::with_credentials_beside(environment.into_iter().collect(), path);
    let mut merged =
        toml::Value::try_from(Config::builtin()).unwrap_or(toml::Value::Table(Default::default()));
    if let Some(path) = path {
        merge(&mut merged, toml::Value::Table(read_file(path)?));
    }
    let origins = Origins {
        file: path.map(|path| path.display().to_string()),
        environment_keys: apply_environment(&mut merged, &environment),
    };
    let schedules = match &mut merged {
        toml::Value::Table(table) => table.remove("schedule"),
        _ => None,
    };
    let mut config = read_every_problem(merged, &origins)?;
    config.schedule = read_schedules(schedules, &origins)?;
    let invalid = |(key, message): (String, String)| ConfigError::InvalidValue {
        origin: origins.of(&key),
        key,
        message,
    };
    // Unreadable secrets and the store password are reported beside the
    // other problems, all at once, not one per try.
    let (secrets, password) = if read_secrets {
        let secrets = config.resolve_secrets(&environment);
        (secrets, config.store.resolve_password(&environment).err())
    } else {
        (Vec::new(), None)
    };
    // A client whose secret could not be read is not also "too short".
    let unread = |key: &str| {
        secrets.iter().any(|(failed, _)| {
            failed
                .find(']')
                .is_some_and(|end| key.starts_with(&failed[..=end]))
        })
    };
    // Unread, a client's secret from a file or variable is empty: not a
    // problem to report.
    let checks: Vec<(String, String)> = validate(&config)
        .into_iter()
        .filter(|(key, _)| !unread(key) && (read_secrets || !key.ends_with(".client_secret")))
        .collect();
    let problems: Vec<ConfigError> = secrets
        .into_iter()
        .chain(password)
        .chain(checks)
        .map(invalid)
        .collect();
    if !problems.is_empty() {
        return Err(problems::combined(problems));
    }
    Ok(config)
}

/// Deserialises the merged layers; on errors, reads again past each one
/// (`problems`), so the error lists every key at fault, not the first.
fn read_every_problem(merged: toml::Value, origins: &Origins) -> Result<Config, ConfigError> {
    let defaults =
        toml::Value::try_from(Config::builtin()).unwrap_or(toml::Value::Table(Default::default()));
    let mut current = merged;
    let mut found = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, Config>(current.clone()) {
            Ok(config) if found.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(error) => deserialize_error(&error, "", origins),
        };
        let can_go_on = problems::step_past(&mut current, &defaults, &error);
        found.push(error);
        if !can_go_on || !problems::room_for_more(&found) {
            break;
        }
    }
    Err(problems::combined(found))
}

/// Where a running daemon's admin API most likely listens: the file's
/// `daemon.admin_address`, overridden by `HEISTD_DAEMON__ADMIN_ADDRESS`,
/// else the default. Read leniently, ignoring every other key, because
/// `heistd reload` must reach the daemon to hear it refuse an invalid file.
pub fn admin_address_hint(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
) -> String {
    let variable = format!("{ENV_PREFIX}DAEMON{ENV_SEPARATOR}ADMIN_ADDRESS");
    if let Some((_, value)) = environment.into_iter().find(|(name, _)| *name == variable) {
        return value;
    }
    path.and_then(|path| read_file(path).ok())
        .and_then(|table| {
            table
                .get("daemon")?
                .get("admin_address")?
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| Config::builtin().daemon.admin_address)
}

/// Where each value came from, so an error can name the file or variable.
struct Origins {
    /// The config file, if one was given.
    file: Option<String>,
    /// (key, variable) for every override, in the order applied.
    environment_keys: Vec<(String, String)>,
}

impl Origins {
    /// The variable that set `key` (or a table holding it, or a key inside
    /// it), else the file, else the defaults. Keys are compared segment by
    /// segment: `llm.timeout` does not hold `llm.timeout_ms`.
    fn of(&self, key: &str) -> String {
        let from_environment = self.environment_keys.iter().find(|(environment_key, _)| {
            is_same_or_below(key, environment_key) || is_same_or_below(environment_key, key)
        });
        match from_environment {
            Some((_, name)) => format!("environment variable {name}"),
            None => self
                .file
                .clone()
                .unwrap_or_else(|| "built-in defaults".into()),
        }
    }
}

/// Whether `key` is `ancestor` or a key inside it (`a.b` or `a[0]` in `a`).
fn is_same_or_below(key: &str, ancestor: &str) -> bool {
    match key.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::FileNotFound {
            path: path.display().to_string(),
        });
    }
    let syntax = |message: String| ConfigError::Syntax {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|error| syntax(error.to_string()))?;
    toml::from_str(&text).map_err(|error| syntax(error.to_string()))
}

/// Overlays the `HEISTD_*__*` variables on `merged`; returns (key,
/// variable) for each one applied.
fn apply_environment(
    merged: &mut toml::Value,
    environment: &[(String, String)],
) -> Vec<(String, String)> {
    let mut environment_keys = Vec::new();
    for (name, value) in environment {
        let Some(key) = environment_key(name) else {
            continue;
        };
        let path: Vec<&str> = key.split('.').collect();
        let mut overlay = typed_like(lookup(merged, &path), value);
        for segment in path.iter().rev() {
            let mut table = toml::Table::new();
            table.insert(segment.to_string(), overlay);
            overlay = toml::Value::Table(table);
        }
        merge(merged, overlay);
        environment_keys.push((key, name.clone()));
    }
    environment_keys
}

/// The `[[schedule]]` entries, each deserialised and its trigger parsed; an
/// error names the entry (`schedule[2]`) and the field at fault.
fn read_schedules(
    schedules: Option<toml::Value>,
    origins: &Origins,
) -> Result<Vec<ScheduleConfig>, ConfigError> {
    let entries = match schedules {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(entries)) => entries,
        Some(other) => {
            return Err(ConfigError::InvalidValue {
                origin: origins.of("schedule"),
                key: "schedule".into(),
                message: format!(
                    "must be an array of tables (`[[schedule]]`), not a {}",
                    other.type_str()
                ),
            })
        }
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let prefix = format!("schedule[{index}]");
            let fields: ScheduleFields = serde_path_to_error::deserialize(entry)
                .map_err(|error| deserialize_error(&error, &prefix, origins))?;
            ScheduleConfig::try_from(fields).map_err(|error| {
                let key = format!("{prefix}.{}", error.field);
                ConfigError::InvalidValue {
                    origin: origins.of(&key),
                    key,
                    message: error.message,
                }
            })
        })
        .collect()
}

/// A deserialisation error as a [`ConfigError`] that names the full key;
/// `prefix` is where the deserialised value sits (`schedule[2]`), or empty.
fn deserialize_error(
    error: &serde_path_to_error::Error<toml::de::Error>,
    prefix: &str,
    origins: &Origins,
) -> ConfigError {
    let path = error.path().to_string();
    let key = match (prefix.is_empty(), path.as_str()) {
        (true, _) => path,
        (false, "." | "") => prefix.to_string(),
        (false, _) => format!("{prefix}.{path}"),
    };
    // toml appends its own "in `key`" line; the key is ours to say.
    let message = error
        .inner()
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    if let Some(field) = unknown_field_name(&message) {
        let full_key = if key == "." || key.is_empty() {
            field
        } else if key == field || key.ends_with(&format!(".{field}")) {
            key
        } else {
            format!("{key}.{field}")
        };
        let suggestion =
            problems::did_you_mean(full_key.rsplit('.').next().unwrap_or_default(), &message).map(
                |field| match full_key.rsplit_once('.') {
                    Some((table, _)) => format!("{table}.{field}"),
                    None => field,
                },
            );
        return ConfigError::UnknownKey {
            origin: origins.of(&full_key),
            key: full_key,
            suggestion,
        };
    }
    ConfigError::InvalidValue {
        origin: origins.of(&key),
        key,
        message,
    }
}

/// Overlays `top` on `base`: tables merge key by key, anything else
/// (including arrays of tables) replaces.
fn merge(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(base), toml::Value::Table(top)) => {
            for (key, value) in top {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, top) => *base = top,
    }
}

fn lookup<'a>(value: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    path.iter()
        .try_fold(value, |value, segment| value.get(segment))
}

/// An environment string as the type of the value it overrides; with no
/// default to go by, as whatever TOML literal it spells, else a string.
fn typed_like(default: Option<&toml::Value>, text: &str) -> toml::Value {
    let string = || toml::Value::String(text.to_string());
    match default {
        Some(toml::Value::String(_)) => string(),
        Some(toml::Value::Integer(_)) => text
            .trim()
            .parse()
            .map(toml::Value::Integer)
            .unwrap_or_else(|_| string()),
        Some(toml::Value::Float(_)) => text
            .trim()
            .parse()
            .map(toml::Value::Float)
            .unwrap_or_else(|_| string()),
        Some(toml::Value::Boolean(_)) => text
            .trim()
            .parse()
            .map(toml::Value::Boolean)
            .unwrap_or_else(|_| string()),
        _ => toml::from_str::<toml::Table>(&format!("value = {text}"))
            .ok()
            .and_then(|mut table| table.remove("value"))
            .unwrap_or_else(string),
    }
}

/// The variables a process should pass to [`load`]: the real environment.
pub fn process_environment() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// What systemd tells a service through its environment.
#[derive(Debug, Clone, Default)]
pub struct SystemdEnvironment {
    /// The datagram socket for `READY=1` and friends (`NOTIFY_SOCKET`).
    pub notify_socket: Option<String>,
    /// Microseconds within which systemd expects `WATCHDOG=1`.
    pub watchdog_usec: Option<String>,
    /// The process the watchdog setting is meant for.
    pub watchdog_pid: Option<String>,
}

/// Reads [`SystemdEnvironment`] from the process environment.
pub fn systemd_environment() -> SystemdEnvironment {
    SystemdEnvironment {
        notify_socket: std::env::var("NOTIFY_SOCKET").ok(),
        watchdog_usec: std::env::var("WATCHDOG_USEC").ok(),
        watchdog_pid: std::env::var("WATCHDOG_PID").ok(),
    }
}

fn environment_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if !rest.contains(ENV_SEPARATOR) {
        // HEISTD_LLM_API_KEY and friends are values, not config overrides.
        return None;
    }
    Some(rest.to_ascii_lowercase().replace(ENV_SEPARATOR, "."))
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// A check of one part of the config: the key at fault and why.
type Check = fn(&Config) -> Result<(), (String, String)>;

/// Every part's check, so one load reports each part's problem at once.
const CHECKS: [Check; 13] = [
    validate_heist,
    validate_llm,
    |config| config.llm.policy.validate("llm.policy"),
    |config| config.llm.health.validate("llm.health"),
    |config| config.daemon.validate(),
    |config| config.retention.validate(),
    |config| config.outbox.validate(),
    |config| config.store.validate(),
    |config| config.cluster.validate(),
    |config| schedule::validate_schedules(&config.schedule),
    validate_services,
    validate_oauth,
    |config| {
        config
            .companions
            .validate()
            .and_then(|()| config.http.validate())
    },
];

/// The first problem of each part of the config (none: valid).
fn validate(config: &Config) -> Vec<(String, String)> {
    CHECKS
        .iter()
        .filter_map(|check| check(config).err())
        .collect()
}

fn validate_heist(config: &Config) -> Result<(), (String, String)> {
    let fail = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
    if !(1..=MAX_TURNS).contains(&config.heist.turns) {
        return Err((
            "heist.turns".into(),
            format!("must be from 1 to {MAX_TURNS}"),
        ));
    }
    if config.heist.context_messages > 100 {
        return fail("heist.context_messages", "must be at most 100");
    }
    Ok(())
}

fn validate_llm(config: &Config) -> Result<(), (String, String)> {
    let fail = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
    if !(0.0..=2.0).contains(&config.llm.temperature) {
        return fail("llm.temperature", "must be between 0 and 2");
    }
    if config.llm.max_tokens == 0 {
        return fail("llm.max_tokens", "must be at least 1");
    }
    if config.llm.min_completion_tokens == 0
        || config.llm.min_completion_tokens > config.llm.max_tokens
    {
        return fail(
            "llm.min_completion_tokens",
            "must be at least 1 and at most llm.max_tokens",
        );
    }
    check_url("llm.base_url", &config.llm.base_url)?;
    if config.llm.max_reply_bytes == 0 {
        return fail("llm.max_reply_bytes", "must be at least 1");
    }
    if config.llm.timeout_ms == 0 {
        return fail("llm.timeout_ms", "must be at least 1");
    }
    if config.llm.idle_timeout_ms == 0 {
        return fail("llm.idle_timeout_ms", "must be at least 1");
    }
    // At or past the call's deadline the idle cut could never fire, and a
    // stalled stream would hold the call for the whole deadline.
    if config.llm.stream && config.llm.idle_timeout_ms >= config.llm.policy.deadline_ms {
        return Err((
            "llm.idle_timeout_ms".into(),
            format!(
                "must be below llm.policy.deadline_ms ({} ms), or a stalled stream is only cut at the deadline",
                config.llm.policy.deadline_ms
            ),
        ));
    }
    Ok(())
}

fn validate_services(config: &Config) -> Result<(), (String, String)> {
    for (name, service) in config.services.iter() {
        check_url(&format!("services.{name}.base_url"), &service.base_url)?;
        service
            .policy
            .validate(&format!("services.{name}.policy"))?;
        if service.max_reply_bytes == 0 {
            return Err((
                format!("services.{name}.max_reply_bytes"),
                "must be at least 1".into(),
            ));
        }
        if service.timeout_ms == 0 {
            return Err((
                format!("services.{name}.timeout_ms"),
                "must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

fn validate_oauth(config: &Config) -> Result<(), (String, String)> {
    for (index, client) in config.oauth.clients.iter().enumerate() {
        if client.client_id.is_empty() {
            return Err((
                format!("oauth.clients[{index}].client_id"),
                "must not be empty".into(),
            ));
        }
        // `config defaults` and `config check` print every secret as this;
        // a file made from their output must not use it as the secret.
        if client.client_secret.expose() == secrets::REDACTED {
            return Err((
                format!("oauth.clients[{index}].client_secret"),
                format!(
                    "is `{}`, as `config defaults` prints it, not a secret: give client_secret_file or client_secret_env (or leave [[oauth.clients]] out to use the built-in rehearsal clients)",
                    secrets::REDACTED
                ),
            ));
        }
        if client.client_secret.expose().len() < 8 {
            return Err((
                format!("oauth.clients[{index}].client_secret"),
                "must be at least 8 characters".into(),
            ));
        }
    }
    if !(60..=86_400).contains(&config.oauth.token_ttl_seconds) {
        return Err((
            "oauth.token_ttl_seconds".into(),
            "must be between 60 and 86400".into(),
        ));
    }
    Ok(())
}

/// Client secrets given in no form are skipped when serialising, so the
/// merged layers do not invent an empty one.
fn is_unset(secret: &Secret) -> bool {
    secret.expose().is_empty()
}

fn check_url(key: &str, value: &str) -> Result<(), (String, String)> {
    match reqwest::Url::parse(value) {
        Ok(url) if url.scheme() == "http" => Ok(()),
        Ok(url) if url.scheme() == "https" && cfg!(feature = "tls") => Ok(()),
        Ok(url) if url.scheme() == "https" => Err((
            key.to_string(),
            "https needs a heistd built with TLS: cargo build --release --features tls".to_string(),
        )),
        Ok(url) => Err((
            key.to_string(),
            format!("scheme `{}` is not http or https", url.scheme()),
        )),
        Err(error) => Err((key.to_string(), format!("`{value}` is not a URL: {error}"))),
    }
}

#[cfg(test)]
mod tests;
