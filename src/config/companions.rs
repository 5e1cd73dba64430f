//! The companion services' settings: where they listen, whether `POST /fault`
//! is on, the faults they start with (`[companions.faults.<name>]`, the same
//! [`Fault`] that `POST /fault` takes) and the rehearsal model's seed; and
//! [`CompanionsSettings`], the slice of the whole config the companions are
//! given.
//!
//! This is only configuration: `services` reads it and injects the faults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Config, HttpConfig, OAuthConfig};
use crate::wire::{Companion, COMPANION_NAMES};

/// `[companions]`: the companion services as `heistd services` runs them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompanionsConfig {
    /// The address `heistd services` listens on.
    #[serde(default = "default_companion_host")]
    pub host: String,
    /// The port of each companion by name (the rehearsal model included).
    #[serde(default = "default_companion_ports")]
    pub ports: BTreeMap<String, u16>,
    /// Enables `POST /fault` on every companion service (tests and demos).
    #[serde(default)]
    pub fault_injection: bool,
    /// Seeds the rehearsal model when a request carries no seed.
    #[serde(default)]
    pub rehearsal_seed: u64,
    /// Faults each companion starts with, by name (`[companions.faults.memory]`
    /// `latency_ms = 200`, ...), the same settings `POST /fault` takes; none
    /// by default.
    #[serde(default)]
    pub faults: BTreeMap<String, Fault>,
    /// The database query tool's bounds (`[companions.database_query]`).
    #[serde(default)]
    pub database_query: DatabaseToolConfig,
    /// The memory service's quotas and retention (`[companions.memory]`).
    #[serde(default)]
    pub memory: MemoryServiceConfig,
}

/// `[companions.database_query]`: bounds on the database query tool, so one
/// query cannot take the process's memory, outrun its time limit or queue
/// the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseToolConfig {
    /// The largest value (string or blob) SQLite may build
    /// (`SQLITE_LIMIT_LENGTH`): a query that tries (`printf`, `randomblob`,
    /// `zeroblob`, `hex`, ...) is refused with 413.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// A reply larger than this (as JSON) is refused with 413.
    #[serde(default = "default_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// A query's wall-clock and CPU time: its worker process is killed
    /// when it passes.
    #[serde(default = "default_time_limit_ms")]
    pub time_limit_ms: u64,
    /// Worker processes, and so queries running at once; one client may
    /// hold three quarters of them (429 beyond).
    #[serde(default = "default_max_concurrent_queries")]
    pub max_concurrent_queries: usize,
    /// The heistd binary that runs query workers (`heistd services
    /// query-worker`); unset: this very binary (`/proc/self/exe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_program: Option<std::path::PathBuf>,
}

/// `[companions.memory]`: bounds on the memory service, and the file it
/// persists to (if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryServiceConfig {
    /// Entries one client (a token's `sub`) may hold in one session; past
    /// it, its writes get 413 `quota_exceeded` (the outbox sets the write
    /// aside). Per client, so an agent filling a session does not refuse
    /// heistd's writes to it.
    #[serde(default = "default_max_entries_per_session")]
    pub max_entries_per_session: usize,
    /// Bytes one client may hold in one session; past it, 413
    /// `quota_exceeded`. Every
    /// stored byte counts: the message, the agent and session ids, the
    /// `Idempotency-Key`, the writing client's id and a fixed overhead per
    /// entry (for its bookkeeping), so empty messages are not free.
    #[serde(default = "default_max_bytes_per_session")]
    pub max_bytes_per_session: usize,
    /// Bytes the whole service may hold, counted as for
    /// `max_bytes_per_session`; past it, 507 (transient: retention or
    /// `DELETE /clear` frees room, so a retry may succeed). The process's
    /// memory stays under this plus a fixed overhead.
    #[serde(default = "default_memory_max_bytes")]
    pub max_bytes: usize,
    /// Bytes all agents' own writes (tokens with `memory:write` but not
    /// `memory:admin`) may hold together; past it, their writes get 507.
    /// The rest of `max_bytes` is kept for heistd's writes (`memory:admin`),
    /// which agents' data therefore never refuses. Unset: half of
    /// `max_bytes`. Must be below `max_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_agents: Option<usize>,
    /// Bytes one agent client (a token's `sub` without `memory:admin`) may
    /// hold across all sessions; past it, its writes get 507 and no other
    /// client's do. heistd's own writes have no share: they are bounded by
    /// `max_bytes` only.
    #[serde(default = "default_max_bytes_per_client")]
    pub max_bytes_per_client: usize,
    /// A session's memories are dropped this long after its last write.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// The memory service's own SQLite file; every accepted write goes
    /// through to it and is loaded back at start, and the instance id is
    /// kept in it. Unset: RAM only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
}

impl MemoryServiceConfig {
    /// What all agents' writes may hold together: `max_bytes_agents`, or
    /// half of `max_bytes`.
    pub fn agents_max_bytes(&self) -> usize {
        self.max_bytes_agents.unwrap_or(self.max_bytes / 2)
    }
}

impl Default for DatabaseToolConfig {
    fn default() -> Self {
        Self {
            max_value_bytes: default_max_value_bytes(),
            max_reply_bytes: default_max_reply_bytes(),
            time_limit_ms: default_time_limit_ms(),
            max_concurrent_queries: default_max_concurrent_queries(),
            worker_program: None,
        }
    }
}

impl Default for MemoryServiceConfig {
    fn default() -> Self {
        Self {
            max_entries_per_session: default_max_entries_per_session(),
            max_bytes_per_session: default_max_bytes_per_session(),
            max_bytes: default_memory_max_bytes(),
            max_bytes_agents: None,
            max_bytes_per_client: default_max_bytes_per_client(),
            retention_hours: default_retention_hours(),
            path: None,
        }
    }
}

fn default_companion_host() -> String {
    "127.0.0.1".into()
}

fn default_companion_ports() -> BTreeMap<String, u16> {
    [
        (Companion::OAuth, 8001),
        (Companion::Calculator, 8002),
        (Companion::FileReader, 8003),
        (Companion::DatabaseQuery, 8004),
        (Companion::Memory, 8005),
        (Companion::Rehearsal, 8006),
    ]
    .into_iter()
    .map(|(companion, port)| (companion.name().to_string(), port))
    .collect()
}

fn default_max_value_bytes() -> usize {
    1024 * 1024
}
fn default_max_reply_bytes() -> usize {
    256 * 1024
}
fn default_time_limit_ms() -> u64 {
    2_000
}
fn default_max_concurrent_queries() -> usize {
    16
}
fn default_max_entries_per_session() -> usize {
    10_000
}
fn default_max_bytes_per_session() -> usize {
    8 * 1024 * 1024
}
fn default_memory_max_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_max_bytes_per_client() -> usize {
    16 * 1024 * 1024
}
fn default_retention_hours() -> u64 {
    168
}

/// `[companions.faults.<name>]`: one fault setting, as `POST /fault` takes
/// it; all fields default to "no fault".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Added before every request is handled.
    #[serde(default)]
    pub latency_ms: u64,
    /// Fraction (0..=1) of requests answered with `error_status`.
    #[serde(default)]
    pub error_rate: f64,
    /// The HTTP status of injected errors.
    #[serde(default = "default_error_status")]
    pub error_status: u16,
    /// Sent as `Retry-After` with injected errors.
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    /// Requests never get an answer.
    #[serde(default)]
    pub hang: bool,
    /// New connections are closed at once, like a service that is down.
    #[serde(default)]
    pub refuse: bool,
    /// The next N requests get `error_status`, whatever `error_rate` says;
    /// counts down to 0. Deterministic, for tests of retries.
    #[serde(default)]
    pub fail_next: u32,
    /// Injected errors replace the reply *after* the request was handled,
    /// like a reply lost on the way back: the write happened, the caller
    /// does not know it.
    #[serde(default)]
    pub after_handling: bool,
    /// Seeds the draws of `error_rate`, so a sequence of requests meets the
    /// same errors every time; random when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// What the companions need of the config, and nothing more: a companion
/// must not depend on the daemon's, the store's or the LLM's settings.
#[derive(Debug, Clone)]
pub struct CompanionsSettings {
    /// The OAuth service's clients, their secrets and scopes, and the
    /// lifetime of the tokens it issues.
    pub oauth: OAuthConfig,
    /// The fault each named companion starts with.
    pub faults: BTreeMap<String, Fault>,
    /// Seeds the rehearsal model when a request carries no seed.
    pub rehearsal_seed: u64,
    /// The database query tool's bounds.
    pub database_query: DatabaseToolConfig,
    /// The memory service's quotas and retention.
    pub memory: MemoryServiceConfig,
    /// Timeouts and the connection cap of every companion's listener.
    pub http: HttpConfig,
}

impl CompanionsSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            oauth: config.oauth.clone(),
            faults: config.companions.faults.clone(),
            rehearsal_seed: config.companions.rehearsal_seed,
            database_query: config.companions.database_query.clone(),
            memory: config.companions.memory.clone(),
            http: config.http.clone(),
        }
    }
}

impl Default for CompanionsConfig {
    fn default() -> Self {
        Self {
            host: default_companion_host(),
            ports: default_companion_ports(),
            fault_injection: false,
            rehearsal_seed: 0,
            faults: BTreeMap::new(),
            database_query: DatabaseToolConfig::default(),
            memory: MemoryServiceConfig::default(),
        }
    }
}

impl Fault {
    /// Checks the values a caller may get wrong; the error says which.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("error_rate must be between 0 and 1".into());
        }
        if reqwest::StatusCode::from_u16(self.error_status).is_err() {
            return Err("error_status is not an HTTP status".into());
        }
        Ok(())
    }
}

impl CompanionsConfig {
    /// Checks the faults and ports; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, fault) in &self.faults {
            if !COMPANION_NAMES.contains(&name.as_str()) {
                return Err((
                    format!("companions.faults.{name}"),
                    "unknown service".into(),
                ));
            }
            if let Err(message) = fault.validate() {
                return Err((format!("companions.faults.{name}"), message));
            }
            if fault.refuse {
                return Err((
                    format!("companions.faults.{name}.refuse"),
                    "a service that refuses from the start refuses `DELETE /fault` too; leave it out of `heistd services` instead".into(),
                ));
            }
        }
        let database = &self.database_query;
        let positive = [
            (
                "database_query.max_value_bytes",
                database.max_value_bytes as u64,
            ),
            (
                "database_query.max_reply_bytes",
                database.max_reply_bytes as u64,
            ),
            ("database_query.time_limit_ms", database.time_limit_ms),
            (
                "database_query.max_concurrent_queries",
                database.max_concurrent_queries as u64,
            ),
            (
                "memory.max_entries_per_session",
                self.memory.max_entries_per_session as u64,
            ),
            (
                "memory.max_bytes_per_session",
                self.memory.max_bytes_per_session as u64,
            ),
            ("memory.max_bytes", self.memory.max_bytes as u64),
            (
                "memory.max_bytes_per_client",
                self.memory.max_bytes_per_client as u64,
            ),
            ("memory.retention_hours", self.memory.retention_hours),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err((format!("companions.{key}"), "must be at least 1".into()));
        }
        if self.memory.agents_max_bytes() >= self.memory.max_bytes {
            return Err((
                "companions.memory.max_bytes_agents".into(),
                "must be below companions.memory.max_bytes, so heistd's own writes keep room"
                    .into(),
            ));
        }
        if database.max_value_bytes > i32::MAX as usize {
            return Err((
                "companions.database_query.max_value_bytes".into(),
                format!("must be at most {}", i32::MAX),
            ));
        }
        for name in self.ports.keys() {
            if !COMPANION_NAMES.contains(&name.as_str()) {
                return Err((
                    format!("companions.ports.{name}"),
                    format!(
                        "unknown service; expected one of {}",
                        COMPANION_NAMES.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn default_error_status() -> u16 {
    503
}
