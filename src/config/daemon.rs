//! The `[daemon]` section: the daemon's own settings: the admin API and its
//! token, the session cap, the cluster's run queue, shutdown and crash
//! recovery. (Retention, the outbox's reconciliation, the health checks and
//! the `[[schedule]]` entries have their own files.)
//!
//! This is only configuration; `daemon` acts on it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// The largest `daemon.max_queued_runs`: a queue is for bursts, not a
/// backlog of days.
pub const MAX_QUEUED_RUNS: u32 = 100_000;

/// The largest `daemon.max_backfill_slots`: one request is for catching up
/// an outage, not a year.
pub const MAX_BACKFILL_SLOTS: u32 = 10_000;

/// `[daemon]`: the admin API, the session cap, shutdown and crash recovery.
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
    /// `GET /api/v1/status` and `/api/v1/sessions...` need the admin token
    /// too; unset: true exactly when `admin_address` is not on loopback.
    /// `/healthz`, `/readyz` and `/metrics` stay open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_requires_token: Option<bool>,
    /// Heists running at once on this node, across all schedules and API
    /// requests.
    pub max_concurrent_sessions: u32,
    /// With a shared store (PostgreSQL), run requests waiting in the
    /// cluster's run queue for a node with room; `POST /api/v1/runs`
    /// answers 429 once the queue holds this many (1 to 100000). Unused on
    /// SQLite, where a run starts at once or is refused at the session cap.
    pub max_queued_runs: u32,
    /// Tokens all runs (scheduled and requested) may use per UTC day,
    /// counted from the store over the sessions started that day (so on
    /// PostgreSQL across the cluster); 0: no limit. Once reached, slots are
    /// skipped and `POST /api/v1/runs` answers 429 until the next UTC day,
    /// and running sessions end `failed` after their current turn.
    #[serde(default)]
    pub max_tokens_per_day: u64,
    /// The most slots one backfill request may name
    /// (`POST /api/v1/schedules/{name}/backfill`, 1 to 10000); a longer
    /// range is refused with 400, naming this key.
    pub max_backfill_slots: u32,
    /// On SIGTERM, turns in flight get this long to finish.
    pub shutdown_grace_ms: u64,
    /// What to do at start with sessions a crash left `active`: `resume`
    /// them or `interrupt` them.
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
            max_tokens_per_day: 0,
            max_backfill_slots: 100,
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

    /// Checks the values; the error is (key, why).
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
        if !(1..=MAX_BACKFILL_SLOTS).contains(&self.max_backfill_slots) {
            return Err((
                "daemon.max_backfill_slots".into(),
                format!("must be between 1 and {MAX_BACKFILL_SLOTS}"),
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
