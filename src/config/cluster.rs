//! The settings for running several daemons on one PostgreSQL store: which
//! backend the store uses (`store.backend`), how the PostgreSQL store is
//! reached and authenticated (`store.url`, and its password from a variable
//! or a file, never from the config file), and the `[cluster]` section
//! (node id, heartbeat, lease, the cluster-wide session cap).
//!
//! It validates and resolves; it must not connect to anything.

use serde::{Deserialize, Serialize};

use super::secrets;
use super::StoreConfig;

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

/// `[cluster]`: only meaningful with `store.backend = "postgres"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in the `nodes` table; empty: host, pid and a
    /// random part, so two processes never share one by accident.
    #[serde(default)]
    pub node_id: String,
    /// How often a node says it is alive and renews its sessions' leases.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a session stays a node's without a renewal; after that
    /// another node may take it over. Several heartbeats long, so one slow
    /// heartbeat does not lose a session.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Sessions running at once across every node (0: no cluster cap; each
    /// node still has `daemon.max_concurrent_sessions`).
    #[serde(default)]
    pub max_concurrent_sessions: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            heartbeat_ms: default_heartbeat_ms(),
            lease_ms: default_lease_ms(),
            max_concurrent_sessions: 0,
        }
    }
}

fn default_heartbeat_ms() -> u64 {
    3_000
}

fn default_lease_ms() -> u64 {
    15_000
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.heartbeat_ms < 50 {
            return Err(("cluster.heartbeat_ms".into(), "must be at least 50".into()));
        }
        if self.lease_ms < 2 * self.heartbeat_ms {
            return Err((
                "cluster.lease_ms".into(),
                "must be at least twice cluster.heartbeat_ms, so one late heartbeat does not lose a lease".into(),
            ));
        }
        Ok(())
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
