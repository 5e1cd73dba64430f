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
    /// URL is refused). An `sslmode` in it must be `disable`, `require` or
    /// `verify-full` and agree with `store.tls` when both are set.
    #[serde(default)]
    pub url: String,
    /// With `postgres`: `disable` (plain TCP), `require` (encrypted, the
    /// server's certificate not checked, as libpq's `sslmode=require`) or
    /// `verify-full` (encrypted, the certificate's chain checked against
    /// the system's CA store and `store.ca_file`, and its name against the
    /// URL's host). Unset: the URL's `sslmode`, else `require` for a server
    /// off this machine and `disable` on loopback or a Unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StoreTls>,
    /// With `store.tls = "verify-full"`: a PEM file of the CA
    /// certificate(s) that signed the server's (a managed service's CA, or
    /// your own), trusted besides the system's CA store; a relative path is
    /// relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
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

/// How the PostgreSQL store's connections are protected (`store.tls`),
/// with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreTls {
    /// Plain TCP: loopback, a Unix socket, or a network you trust.
    Disable,
    /// Encrypted; the server's certificate is not checked (a server that
    /// can be impersonated still can be).
    Require,
    /// Encrypted; the certificate's chain and host name are checked.
    VerifyFull,
}

impl StoreTls {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
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
            tls: None,
            ca_file: None,
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
        let tls = self.tls_mode()?;
        if let Some(path) = &self.ca_file {
            if tls != StoreTls::VerifyFull {
                return Err((
                    "store.ca_file".into(),
                    format!(
                        "is only used with store.tls = \"verify-full\" (the connection is \"{}\", which checks no certificate)",
                        tls.as_str()
                    ),
                ));
            }
            super::tls::read_ca_file(path)
                .map_err(|message| ("store.ca_file".to_string(), message))?;
        }
        if self.pool_size == 0 {
            return Err(("store.pool_size".into(), "must be at least 1".into()));
        }
        Ok(())
    }

    /// The PostgreSQL connection's TLS: `store.tls`, else the URL's
    /// `sslmode`, else `require` off this machine and `disable` on
    /// loopback or a Unix socket. The two set to different modes is an
    /// error naming both; so is an `sslmode` heistd does not offer
    /// (`prefer` and `allow` fall back to plain text without a word,
    /// `verify-ca` checks no host name).
    pub fn tls_mode(&self) -> Result<StoreTls, (String, String)> {
        let url = reqwest::Url::parse(&self.url).map_err(|error| {
            (
                "store.url".to_string(),
                format!("`{}` is not a URL: {error}", self.url),
            )
        })?;
        let mut in_url = None;
        let mut socket_directory = false;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => in_url = Some(url_sslmode(&value)?),
                "host" => socket_directory = value.starts_with('/'),
                _ => {}
            }
        }
        match (self.tls, in_url) {
            (Some(tls), Some(url_tls)) if tls != url_tls => Err((
                "store.tls".into(),
                format!(
                    "store.tls = \"{}\" contradicts sslmode={} in store.url: set one of them, or both alike",
                    tls.as_str(),
                    url_tls.as_str()
                ),
            )),
            (Some(tls), _) | (None, Some(tls)) => Ok(tls),
            (None, None) => {
                let host = url.host_str().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let local = socket_directory
                    || host.is_empty()
                    || host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                Ok(if local { StoreTls::Disable } else { StoreTls::Require })
            }
        }
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

/// An `sslmode` of `store.url` as a [`StoreTls`]; one heistd does not
/// offer is an error saying what to set instead.
fn url_sslmode(value: &str) -> Result<StoreTls, (String, String)> {
    match value {
        "disable" => Ok(StoreTls::Disable),
        "require" => Ok(StoreTls::Require),
        "verify-full" => Ok(StoreTls::VerifyFull),
        other => Err((
            "store.url".into(),
            format!(
                "sslmode={other} is not offered: use store.tls = \"disable\", \"require\" or \"verify-full\" (prefer and allow fall back to plain text unannounced; verify-ca checks no host name)"
            ),
        )),
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
