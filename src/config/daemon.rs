//! The daemon's own settings: the admin API, the session cap, shutdown and
//! crash recovery, retention, the outbox's reconciliation, and each service's periodic health check.
//! (The `[[schedule]]` entries that start heists are `config::schedule`'s.)
//!
//! This is only configuration; `daemon` and `health` act on it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// The largest `daemon.max_queued_runs`: a queue is for bursts, not a
/// backlog of days.
pub const MAX_QUEUED_RUNS: u32 = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where the admin API (status, sessions, runs, /metrics) listens.
    pub admin_address: String,
    /// The environment variable holding the bearer token that
    /// `POST /api/v1/runs` demands. Unset: starting runs over the API is off.
    pub admin_token_env: String,
    /// A file holding the admin token (wins over `admin_token_env`); a
    /// relative path names a systemd credential in `$CREDENTIALS_DIRECTORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// The token, read once at load; never written out.
    #[serde(skip)]
    pub admin_token: Option<Secret>,
    /// The sessions and status endpoints need the admin token too; unset:
    /// true exactly when `admin_address` is not on loopback. `/healthz`,
    /// `/readyz` and `/metrics` stay open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_requires_token: Option<bool>,
    /// Heists running at once, across all schedules and API requests.
    pub max_concurrent_sessions: u32,
    /// With a shared store (PostgreSQL), run requests waiting in the
    /// cluster's run queue for a node with room; `POST /api/v1/runs`
    /// answers 429 once the queue holds this many. Unused on SQLite, where
    /// a run starts at once or is refused at the session cap.
    pub max_queued_runs: u32,
    /// On SIGTERM, in-flight turns get this long to finish.
    pub shutdown_grace_ms: u64,
    /// What to do at start with sessions a crash left `active`.
    pub recovery: Recovery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Continue from the last committed turn, same seed and agent order.
    Resume,
    /// Mark them `interrupted` and leave them.
    Interrupt,
}

impl Recovery {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resume => "resume",
            Self::Interrupt => "interrupt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Each check waits up to this much more, so checks do not align.
    pub jitter_ms: u64,
    /// Consecutive failed checks that mark an up service down.
    pub unhealthy_threshold: u32,
    /// Consecutive good checks that mark a down service up.
    pub healthy_threshold: u32,
    /// A service marked down makes its circuit breaker reject at once.
    pub breaker_follows_health: bool,
    /// `/readyz` is false while a required service is down.
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Off by default: the audit trail is kept forever.
    pub enabled: bool,
    /// Sessions that ended longer ago than this are pruned with their rows.
    pub max_age_days: u32,
    /// Sessions deleted per transaction, so pruning never holds the writer long.
    pub batch_size: u32,
    pub interval_ms: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            admin_address: "127.0.0.1:9750".into(),
            admin_token_env: "HEISTD_ADMIN_TOKEN".into(),
            admin_token_file: None,
            admin_token: None,
            read_requires_token: None,
            max_concurrent_sessions: 2,
            max_queued_runs: 100,
            shutdown_grace_ms: 30_000,
            recovery: Recovery::Resume,
        }
    }
}

impl DaemonConfig {
    /// Whether reads (sessions, status) need the admin token: as set, else
    /// when the admin API listens beyond loopback.
    pub fn reads_need_token(&self) -> bool {
        self.read_requires_token
            .unwrap_or_else(|| !super::secrets::is_loopback_address(&self.admin_address))
    }
}

/// The memory outbox's reconciliation (`[outbox]`): how often heistd
/// compares the memory service's counts with the writes the store says
/// were delivered, and how far back it looks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Counts are compared this often, and at once when the memory
    /// service reports a new instance id (it restarted empty).
    pub reconcile_interval_ms: u64,
    /// Sessions still running, or ended within this many hours, are compared.
    pub reconcile_window_hours: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            reconcile_interval_ms: 60_000,
            reconcile_window_hours: 24,
        }
    }
}

impl OutboxConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.reconcile_interval_ms < 100 {
            return Err((
                "outbox.reconcile_interval_ms".into(),
                "must be at least 100".into(),
            ));
        }
        if self.reconcile_window_hours == 0 {
            return Err((
                "outbox.reconcile_window_hours".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_age_days: 90,
            batch_size: 200,
            interval_ms: 3_600_000,
        }
    }
}

impl HealthCheckConfig {
    pub fn quick_service() -> Self {
        Self {
            interval_ms: 10_000,
            timeout_ms: 2_000,
            jitter_ms: 1_000,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            breaker_follows_health: true,
            required: true,
        }
    }

    /// The model is probed less often and given longer to answer.
    pub fn language_model() -> Self {
        Self {
            interval_ms: 30_000,
            timeout_ms: 5_000,
            jitter_ms: 3_000,
            ..Self::quick_service()
        }
    }

    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let fail = |key: &str, message: &str| Err((format!("{prefix}.{key}"), message.to_string()));
        if self.interval_ms < 100 {
            return fail("interval_ms", "must be at least 100");
        }
        if self.timeout_ms == 0 {
            return fail("timeout_ms", "must be at least 1");
        }
        if self.unhealthy_threshold == 0 {
            return fail("unhealthy_threshold", "must be at least 1");
        }
        if self.healthy_threshold == 0 {
            return fail("healthy_threshold", "must be at least 1");
        }
        Ok(())
    }
}

impl DaemonConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.admin_address.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "daemon.admin_address".into(),
                format!(
                    "`{}` is not an address like 127.0.0.1:9750",
                    self.admin_address
                ),
            ));
        }
        if self.max_concurrent_sessions == 0 {
            return Err((
                "daemon.max_concurrent_sessions".into(),
                "must be at least 1".into(),
            ));
        }
        if !(1..=MAX_QUEUED_RUNS).contains(&self.max_queued_runs) {
            return Err((
                "daemon.max_queued_runs".into(),
                format!("must be between 1 and {MAX_QUEUED_RUNS}"),
            ));
        }
        Ok(())
    }
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.enabled && self.max_age_days == 0 {
            return Err(("retention.max_age_days".into(), "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(("retention.batch_size".into(), "must be at least 1".into()));
        }
        if self.interval_ms < 1_000 {
            return Err((
                "retention.interval_ms".into(),
                "must be at least 1000".into(),
            ));
        }
        Ok(())
    }
}
