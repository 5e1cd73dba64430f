//! The `[store]` section: where the audit trail lives (`store.backend`),
//! how SQLite writes it (path, durability, group commit, size cap, outage
//! wait) and how the PostgreSQL store is reached and authenticated
//! (`store.url`, its password from a variable or a file, never from the
//! config file).
//!
//! It validates and resolves; it must not open the store.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{secrets, Secret};

/// `[store]`: the audit trail every turn is committed to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (the file at `store.path`, one daemon) or `postgres`
    /// (several daemons share schedules and sessions).
    #[serde(default)]
    pub backend: StoreBackend,
    /// The SQLite audit database, created with its schema on first open
    /// (the install config sets `/var/lib/heistd/heistd.db`); a relative
    /// path is relative to the working directory, not to the config file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// `full`: every committed turn survives power loss; `normal`: it
    /// survives a crash of heistd only, and is faster on slow disks.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// SQLite: turns of several sessions that are ready while a commit is
    /// in flight share the next transaction (one fsync); each session still
    /// goes on only once its own turn is durable, and a turn the store
    /// refuses fails alone. `false`: one transaction per turn.
    #[serde(default = "default_group_commit")]
    pub group_commit: bool,
    /// SQLite, with `group_commit`: how long a commit may wait for the
    /// turns of the other sessions in play, so that one transaction (one
    /// fsync) holds more of them; it goes at once when every session in
    /// play has a turn queued, or only one plays, so a lone session never
    /// waits. At most 100; 0: never waits. Read at start.
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
    /// With `postgres`: the server and database
    /// (`postgres://user@host:port/db`), without a password (one in the
    /// URL is refused); `sslmode` must be `disable` or `prefer`.
    #[serde(default)]
    pub url: String,
    /// The variable holding the PostgreSQL password (empty: none); it must
    /// be set when named.
    #[serde(default)]
    pub password_env: String,
    /// A file holding the PostgreSQL password (wins over `password_env`);
    /// a relative path is a systemd credential in `$CREDENTIALS_DIRECTORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Connections the PostgreSQL store keeps open.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Resolved at load from `password_env` or `password_file`.
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// Where the audit trail lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One file beside the daemon: one node, nothing to set up.
    #[default]
    Sqlite,
    /// A shared server, so several daemons can share schedules and take
    /// over each other's sessions.
    Postgres,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            synchronous: Synchronous::Full,
            group_commit: default_group_commit(),
            commit_delay_ms: default_commit_delay_ms(),
            max_size_mb: 0,
            max_outage_ms: default_max_outage_ms(),
            backend: StoreBackend::Sqlite,
            url: String::new(),
            password_env: String::new(),
            password_file: None,
            pool_size: default_pool_size(),
            password: None,
        }
    }
}

/// `store.commit_delay_ms` at most: past this a delay is a stall.
const MAX_COMMIT_DELAY_MS: u64 = 100;

impl StoreConfig {
    /// Checks the commit delay, and the PostgreSQL settings when that
    /// backend is chosen.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.commit_delay_ms > MAX_COMMIT_DELAY_MS {
            return Err((
                "store.commit_delay_ms".into(),
                format!("must be at most {MAX_COMMIT_DELAY_MS} (a commit waits that long for other sessions' turns; a few ms is enough)"),
            ));
        }
        if self.backend != StoreBackend::Postgres {
            return Ok(());
        }
        let fail = |message: String| Err(("store.url".to_string(), message));
        let url = match reqwest::Url::parse(&self.url) {
            Ok(url) => url,
            Err(error) if self.url.is_empty() => {
                return fail(format!(
                    "store.backend = \"postgres\" needs a postgres:// URL ({error})"
                ))
            }
            Err(error) => return fail(format!("`{}` is not a URL: {error}", self.url)),
        };
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return fail(format!("scheme `{}` is not postgres", url.scheme()));
        }
        if url.password().is_some() {
            return fail(
                "must not hold a password: use store.password_env or store.password_file"
                    .to_string(),
            );
        }
        for (key, value) in url.query_pairs() {
            if key == "sslmode" && !matches!(value.as_ref(), "disable" | "prefer") {
                return fail(format!(
                    "sslmode={value} needs TLS, which this heistd does not speak to PostgreSQL; use sslmode=disable on loopback or a private network"
                ));
            }
        }
        if self.pool_size == 0 {
            return Err(("store.pool_size".into(), "must be at least 1".into()));
        }
        Ok(())
    }

    /// Reads the PostgreSQL password as every other secret is read
    /// (`config::secrets`): `password_file` wins (relative: a systemd
    /// credential), else the variable `password_env` names, which must then
    /// be set. Only the PostgreSQL backend has one.
    pub(super) fn resolve_password(
        &mut self,
        environment: &[(String, String)],
    ) -> Result<(), (String, String)> {
        if self.backend != StoreBackend::Postgres {
            return Ok(());
        }
        if self.password_env.is_empty() && self.password_file.is_none() {
            return Ok(());
        }
        let key = if self.password_file.is_some() {
            "store.password_file"
        } else {
            "store.password_env"
        };
        let resolved = secrets::resolve(
            environment,
            &self.password_env,
            self.password_file.as_deref(),
        )
        .map_err(|message| (key.to_string(), message))?;
        match resolved {
            Some(password) => {
                self.password = Some(password);
                Ok(())
            }
            None => Err((
                key.to_string(),
                format!("variable {} is not set", self.password_env),
            )),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("heistd.db")
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

fn default_pool_size() -> u32 {
    8
}
