//! What each subcommand does. `main.rs` parses the command line and calls
//! these; they print for people and return errors that carry an exit code.
//! [`LocalStack`] (every companion in-process on ephemeral loopback ports,
//! and a config pointing at them) serves `demo`, the tests and the bench.
//! `run` and the readers (`sessions`) have files of their own, and `quit`
//! is what a second Ctrl-C does to a one-shot heist. The commands that
//! speak to a running daemon go through `remote`: `status`, and `watch`
//! (`sessions watch`, `runs start`); `manual` writes the completions, the
//! man page and `version`.
//!
//! It must not hold business logic of its own: it wires and presents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod args;
#[macro_use]
pub mod output;
mod check;
mod demo;
pub mod logging;
mod manual;
mod query_worker;
mod quit;
mod reload;
pub mod remote;
mod run;
mod sessions;
mod status;
mod steer;
mod watch;
pub use check::check;
pub use demo::{demo, DemoOptions};
pub use manual::{completions, man, version};
use query_worker::query_worker;
pub use quit::{Interrupts, QUIT_WITHIN};
pub use reload::reload;
pub use run::run;
pub(crate) use run::{
    completed, preflight, print_notice, print_turn, print_turn_of, summary, TurnHeading,
};
pub use sessions::{export_json, export_markdown, sessions, sessions_list};
pub use status::{json, status};
pub use steer::schedules;
pub use watch::{runs, watch};

use crate::app::{App, AppError, DaemonOptions};
use crate::clients::{ClientBuildError, Clients};
use crate::config::{self, Config, ConfigError};
use crate::heist::{HeistError, HeistRunner};
use crate::scenario::{Scenario, ScenarioError};
use crate::services::{self, token::SigningKey, CompanionContext, Companions, ServiceError};
use crate::store::{StoreError, StoreHandle};
use crate::wire::{Companion, COMPANION_NAMES, REHEARSAL_MODEL_ID};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config, the scenario, the store, the clients or the daemon
    /// failed: `AppError` wraps each of those once, for every command.
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Heist(#[from] HeistError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unhealthy(String),
    /// The daemon could not be signalled or did not answer in time.
    #[error("{0}")]
    ReloadFailed(String),
    /// The daemon's admin API could not be reached, or failed.
    #[error("{0}")]
    Remote(String),
    /// The daemon refused the new config and kept the running one.
    #[error("reload refused, still running the previous config: {0}")]
    ReloadRefused(String),
    /// A second Ctrl-C: what became of the session in play.
    #[error("{0}")]
    Quit(String),
    #[error("session {session_id} ended {status}: {reason}")]
    NotCompleted {
        session_id: String,
        status: &'static str,
        reason: String,
    },
}

impl CliError {
    /// 1 for anything the user can fix by changing input or config, 2 when
    /// a service or the store failed at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Unhealthy(_) | Self::ReloadRefused(_) => 1,
            Self::ReloadFailed(_) | Self::Remote(_) => 2,
            Self::NotCompleted { .. } => 3,
            // As a shell reports a process ended by SIGINT.
            Self::Quit(_) => 130,
            Self::App(AppError::Store(error)) => store_exit_code(error),
            Self::App(AppError::Config(_) | AppError::Scenario(_)) => 1,
            Self::Service(_) | Self::Heist(_) => 2,
            Self::App(_) | Self::Runtime(_) => 2,
        }
    }
}

// The errors `AppError` wraps reach a command through it, so each is
// wrapped once and `?` works on them in commands as before.
impl From<ConfigError> for CliError {
    fn from(error: ConfigError) -> Self {
        Self::App(error.into())
    }
}

impl From<ScenarioError> for CliError {
    fn from(error: ScenarioError) -> Self {
        Self::App(error.into())
    }
}

impl From<StoreError> for CliError {
    fn from(error: StoreError) -> Self {
        Self::App(error.into())
    }
}

impl From<ClientBuildError> for CliError {
    fn from(error: ClientBuildError) -> Self {
        Self::App(error.into())
    }
}

/// One code for a store error whichever command met it: 1 for what the
/// user can fix (the store is in use, a session that does not exist, the
/// size cap), 2 for the store failing.
fn store_exit_code(error: &StoreError) -> u8 {
    match error {
        StoreError::InUse { .. }
        | StoreError::SessionNotFound(_)
        | StoreError::OverSizeCap { .. } => 1,
        _ => 2,
    }
}

/// Loads the config from `--config`, else `/etc/heistd/heistd.toml` if it
/// exists, else built-in defaults; environment overrides apply to all three.
pub fn load_config(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let chosen = config_file(path);
    let loaded = config::load(chosen.as_deref(), config::process_environment())?;
    Ok((loaded, chosen))
}

/// The config file a command reads: `--config`, else
/// `/etc/heistd/heistd.toml` if it exists, else none (built-in defaults).
fn config_file(path: Option<&Path>) -> Option<PathBuf> {
    path.map(Path::to_path_buf).or_else(|| {
        let system = PathBuf::from(config::SYSTEM_CONFIG_PATH);
        system.is_file().then_some(system)
    })
}

/// `heistd config ...`.
pub fn config(action: args::ConfigAction) -> Result<String, CliError> {
    match action {
        args::ConfigAction::Check { config, quiet } => {
            let report = config_check(config.as_deref())?;
            Ok(if quiet { String::new() } else { report })
        }
        args::ConfigAction::Defaults => Ok(format!(
            "# heistd's built-in defaults (secrets redacted); a config file sets only what differs\n{}",
            Config::builtin().redacted_toml()
        )),
    }
}

/// `heistd config check`: the resolved config with secrets redacted.
pub fn config_check(path: Option<&Path>) -> Result<String, CliError> {
    let (config, chosen) = load_config(path)?;
    Scenario::from_config(config.heist.scenario.as_deref())?;
    let source = chosen.map_or("built-in defaults".to_string(), |path| {
        path.display().to_string()
    });
    let overrides: Vec<String> = config::process_environment()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with(config::ENV_PREFIX) && name.contains(config::ENV_SEPARATOR))
        .collect();
    let overrides = if overrides.is_empty() {
        "no environment overrides".to_string()
    } else {
        format!("overridden by {}", overrides.join(", "))
    };
    let warnings: String = config
        .warnings()
        .iter()
        .map(|warning| format!("# WARNING: {warning}\n"))
        .collect();
    for warning in config.warnings() {
        output::write_stderr(format_args!("heistd: warning: {warning}\n"));
    }
    Ok(format!(
        "# config OK: {source}; {overrides}\n{warnings}{}",
        config.redacted_toml()
    ))
}

/// Every companion in this process on ephemeral loopback ports, and a
/// config whose services point at them.
pub struct LocalStack {
    pub companions: Companions,
    pub config: Arc<Config>,
    pub scenario: Arc<Scenario>,
}

impl LocalStack {
    /// Starts the companions for `base`; with `llm` set, the heist talks to
    /// that OpenAI-compatible server instead of the rehearsal model.
    pub async fn start(mut base: Config, llm: Option<(String, String)>) -> Result<Self, CliError> {
        let scenario = Arc::new(Scenario::from_config(base.heist.scenario.as_deref())?);
        let context = CompanionContext {
            scenario: scenario.clone(),
            signing_key: SigningKey::random(),
            settings: Arc::new(base.companions_settings()),
        };
        let companions = services::start(
            &COMPANION_NAMES,
            &context,
            "127.0.0.1",
            &BTreeMap::new(),
            true,
        )
        .await?;
        let url = |companion: Companion| companions.url(companion.name()).unwrap_or_default();
        base.services.oauth.base_url = url(Companion::OAuth);
        base.services.memory.base_url = url(Companion::Memory);
        base.services.calculator.base_url = url(Companion::Calculator);
        base.services.file_reader.base_url = url(Companion::FileReader);
        base.services.database_query.base_url = url(Companion::DatabaseQuery);
        match llm {
            Some((base_url, model)) => {
                base.llm.base_url = base_url;
                base.llm.model = model;
            }
            None => {
                base.llm.base_url = url(Companion::Rehearsal);
                base.llm.model = REHEARSAL_MODEL_ID.into();
            }
        }
        Ok(Self {
            companions,
            config: Arc::new(base),
            scenario,
        })
    }

    /// A runner over this stack writing to `store`.
    pub fn runner(&self, store: StoreHandle) -> Result<HeistRunner, CliError> {
        Ok(HeistRunner::new(
            self.config.clone(),
            self.scenario.clone(),
            Clients::from_config(&self.config)?,
            store,
        ))
    }
}

/// `heistd daemon`: builds the daemon from the config at `path` and runs
/// it until `shutdown`; each message on `reload` re-reads the config.
pub async fn daemon(
    path: Option<&Path>,
    shutdown: impl std::future::Future<Output = ()>,
    reload: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), CliError> {
    let (config, config_path) = load_config(path)?;
    // The first line: which file and which store, before either is used (a
    // wrong one is the likeliest surprise).
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path
            .as_deref()
            .map_or("built-in defaults".into(), |path| path.display().to_string()),
        store = %store_named(&config.store),
        "heistd starting"
    );
    // The admin API's connections, the store, the clients' pool and logs.
    crate::http::raise_open_files_limit(config.http.max_connections as u64 + 256);
    let options = DaemonOptions {
        config,
        config_path,
        systemd: config::systemd_environment(),
    };
    App::build(options).await?.run(shutdown, reload).await?;
    Ok(())
}

/// The store a config names: the SQLite file, or the PostgreSQL URL (which
/// validation keeps free of a password).
fn store_named(store: &config::StoreConfig) -> String {
    match store.backend {
        config::StoreBackend::Sqlite => store.path.display().to_string(),
        config::StoreBackend::Postgres => store.url.clone(),
    }
}

/// `heistd services`: run companions, on the config at `path`, until
/// `shutdown` resolves.
pub async fn services(
    path: Option<PathBuf>,
    names: &[String],
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    // Not a companion: a database query worker, which one starts (hidden).
    if names == [services::query_worker::WORKER_SUBCOMMAND] {
        return query_worker().await;
    }
    let (config, _) = load_config(path.as_deref())?;
    let scenario = Arc::new(Scenario::from_config(config.heist.scenario.as_deref())?);
    let all = names.is_empty() || names.iter().any(|name| name == "all");
    let chosen: Vec<&str> = if all {
        COMPANION_NAMES.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    // Named before anything else is checked: a typo is the likelier fault.
    if let Some(unknown) = chosen.iter().find(|name| Companion::parse(name).is_none()) {
        return Err(CliError::Usage(format!(
            "unknown service `{unknown}` (known: all, {})",
            COMPANION_NAMES.join(", ")
        )));
    }
    // Only the rehearsal model checks no token: alone, it needs no shared key.
    let verifies_tokens = chosen
        .iter()
        .any(|name| *name != Companion::Rehearsal.name());
    let signing_key = match &config.oauth.signing_key {
        Some(key) => SigningKey::from_bytes(key.expose().as_bytes().to_vec())
            .map_err(|error| CliError::Usage(format!("{}: {error}", config.oauth.signing_key_env)))?,
        None if all || !verifies_tokens => SigningKey::random(),
        None => {
            return Err(CliError::Usage(format!(
                "companions in separate processes must share a token key: set {} (32+ bytes), or run `heistd services all`",
                config.oauth.signing_key_env
            )))
        }
    };
    // Client secrets are checked by the OAuth service only.
    if chosen.contains(&Companion::OAuth.name()) {
        refuse_builtin_secrets_off_loopback(&config)?;
    }
    crate::http::raise_open_files_limit((config.http.max_connections * chosen.len()) as u64 + 256);
    let fault_injection = config.companions.fault_injection;
    let host = config.companions.host.clone();
    let ports = config.companions.ports.clone();
    let context = CompanionContext {
        scenario,
        signing_key,
        settings: Arc::new(config.companions_settings()),
    };
    let companions = services::start(&chosen, &context, &host, &ports, fault_injection).await?;
    // The one line a person reads per companion (its log line is debug).
    for service in &companions.services {
        out!("{:<15} listening on {}", service.name, service.base_url());
    }
    shutdown.await;
    companions.shutdown().await;
    Ok(())
}

/// Like Redis's protected mode: companions that anyone on the network can
/// reach must not accept the secrets printed in heistd's source.
fn refuse_builtin_secrets_off_loopback(config: &Config) -> Result<(), CliError> {
    let builtin = config.builtin_secrets_in_use();
    if builtin.is_empty() || config::is_loopback_address(&config.companions.host) {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "refusing to serve on {} with the built-in rehearsal secrets of {}: anyone who can reach the port could get tokens. \
         Give each of these clients its own secret (client_secret_file, e.g. a systemd credential, or client_secret_env) in [[oauth.clients]], \
         or listen on loopback (companions.host = \"127.0.0.1\")",
        config.companions.host,
        builtin.join(", ")
    )))
}

/// `heistd store ...`.
pub async fn store(action: args::StoreAction) -> Result<String, CliError> {
    let args::StoreAction::Migrate { to, from, config } = action;
    let (config, _) = load_config(config.as_deref())?;
    let target = config::StoreConfig {
        backend: config::StoreBackend::Postgres,
        url: to,
        ..config.store.clone()
    };
    target
        .validate()
        .map_err(|(_, message)| CliError::Usage(format!("--to: {message}")))?;
    let source_config = config::StoreConfig {
        backend: config::StoreBackend::Sqlite,
        path: from.unwrap_or_else(|| config.store.path.clone()),
        max_size_mb: 0,
        ..config.store.clone()
    };
    if !source_config.path.is_file() {
        return Err(CliError::Usage(format!(
            "no audit database at {}",
            source_config.path.display()
        )));
    }
    // As a writer: refused while a daemon still writes the source.
    let source = StoreHandle::open_configured(&source_config, &config.cluster).await?;
    let handle = StoreHandle::open_configured(&target, &config.cluster).await?;
    let report = handle.import_sqlite(&source).await;
    // The copy registered a node; it is not one that will heartbeat.
    let _ = handle.stop_node().await;
    let report = report?;
    let mut text = format!(
        "{} sessions in {}: {} copied, {} already there; {} health events copied\n",
        report.sessions_in_source,
        source_config.path.display(),
        report.sessions_copied,
        report.sessions_already_there,
        report.health_events_copied
    );
    for (table, source, target) in &report.counts {
        text.push_str(&format!(
            "{table:<14} sqlite {source:>8}  postgres {target:>8}\n"
        ));
    }
    if !report.counts_match() {
        return Err(CliError::Unhealthy(format!(
            "{text}count check failed: the stores differ"
        )));
    }
    text.push_str("count check: equal\n");
    Ok(text)
}

/// `run`, `demo` and `sessions` work on a SQLite file: a one-shot run keeps
/// no lease heartbeat (so a daemon would take its session over mid-run),
/// and the readers open the file read-only. With PostgreSQL, heists start
/// on a daemon and sessions are read through its admin API.
pub(crate) fn sqlite_only(config: &Config, command: &str) -> Result<(), CliError> {
    if config.store.backend == config::StoreBackend::Sqlite {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "{command} works on a SQLite store; with store.backend = \"postgres\", start heists on a \
         daemon (POST /api/v1/runs) and read sessions with GET /api/v1/sessions"
    )))
}
