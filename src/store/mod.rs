//! The audit store: the SQLite file that is the source of truth for every
//! session, message, tool call and memory outbox entry. It keeps the
//! prototype's `sessions`, `messages` and `tool_usage` tables and column
//! names so the prototype's SQL still works, and adds columns and tables
//! under a versioned schema migrated at open.
//!
//! Only this module contains SQL for the audit trail. It must not call
//! services. It owns the one connection (one writer) in [`Store`], whose
//! methods are synchronous and split by concern: `sessions`, `turns`,
//! `outbox`, `health` (events), `maintenance` (open, size cap, prune,
//! compact) with the migrations in `schema`, and the records and rows in
//! `rows`. Async code reaches it only through [`StoreHandle`] (`handle`),
//! which runs each call on the blocking pool and maps a lost worker to
//! [`StoreError::Worker`] in one place.
//!
//! The second backend, PostgreSQL (`postgres`, so several daemons can
//! share schedules and take over each other's sessions), comes in behind
//! the handle, not behind a trait on `Store`: the handle's typed async
//! methods are the store's surface (owned arguments, rows out, no driver
//! type and no closure over a connection), and dispatch to either backend.
//! The generic `StoreHandle::call` stays private to this module so that
//! surface cannot grow by the back door. The synchronous `Store` remains
//! for the `sessions` subcommand and tests.

use std::path::PathBuf;

use parking_lot::{Mutex, MutexGuard};
use rusqlite::Connection;

mod collisions;
mod group_commit;
mod handle;
mod health;
mod identity;
mod maintenance;
mod migrate;
mod outage;
mod outbox;
mod postgres;
mod reader;
mod rows;
mod schema;
mod sessions;
mod turns;

pub use group_commit::InPlay;
pub use handle::{DeliveryGuard, StoreHandle};
pub use migrate::MigrationReport;
pub use postgres::{HeartbeatReport, NodeRow};
pub use rows::{
    DeliveredCount, HealthEvent, MessageRow, NewSession, OutboxEntry, OutboxSummary, RecentTurns,
    ServiceCallRecord, ServiceCallRow, SessionDetail, SessionRow, SessionStatus, ToolCallRecord,
    ToolUsageRow, TurnRecord,
};

/// Bumped with every migration appended to [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = schema::MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("audit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "audit store schema version {found} is newer than this heistd understands ({supported})"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("audit store: session {0} not found")]
    SessionNotFound(String),
    #[error("audit store: session {session_id} has already ended ({status})")]
    SessionEnded { session_id: String, status: String },
    #[error(
        "audit store is {size_mb} MiB, over store.max_size_mb = {cap_mb}: raise the cap or prune"
    )]
    OverSizeCap { size_mb: u64, cap_mb: u64 },
    #[error("audit store {path} is in use by another heistd (a daemon, run or demo); start heists on a running daemon with POST /api/v1/runs")]
    InUse { path: String },
    #[error("audit store lock file {path}: {source}")]
    LockFile {
        path: String,
        source: std::io::Error,
    },
    #[error("audit store {path} is unusable: {reason}")]
    Unavailable { path: String, reason: String },
    #[error("audit store worker failed: {0}")]
    Worker(String),
    #[error("audit store: schedule {schedule} already ran for {scheduled_time}")]
    DuplicateRun {
        schedule: String,
        scheduled_time: String,
    },
    #[error("audit store {url}: {source}")]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("audit store: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("audit store: no connection: {0}")]
    Pool(String),
    /// Another node took the session over (its lease ran out here): this
    /// node must stop playing it and write nothing more for it.
    #[error("audit store: session {session_id} is now owned by {owner} (lease epoch {epoch}); this node stops playing it")]
    Fenced {
        session_id: String,
        owner: String,
        epoch: i64,
    },
    #[error("audit store: {running} sessions are running across the cluster, cluster.max_concurrent_sessions")]
    ClusterFull { running: u64 },
    /// The cluster's run queue holds `max_queued` requests already.
    #[error("the run queue holds {queued} requests waiting for a node, daemon.max_queued_runs = {max_queued}")]
    QueueFull { queued: u64, max_queued: u32 },
    /// Asked of a store that one process owns (SQLite) what only a store
    /// several daemons share can do.
    #[error("audit store: {0} needs a store several daemons share (store.backend = \"postgres\")")]
    NotShared(&'static str),
}

/// The audit store's connection and the lock that makes its process the
/// one writer. Its methods live beside their concern (`sessions`, `turns`,
/// `outbox`, `health`, `maintenance`); async code uses [`StoreHandle`].
pub struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
    /// Held by a writing process (`run`, `demo`, `daemon`) for as long as
    /// the store is open, so two never write one store: a session found
    /// `active` then really was left by a process that died.
    _writer_lock: Option<std::fs::File>,
    /// The file as opened, so a deleted or replaced database is noticed
    /// before a commit goes into it (none for read-only stores).
    identity: Option<identity::FileIdentity>,
    /// `store.max_size_mb` in bytes, counted with the WAL.
    size_cap: Option<u64>,
    /// Turns waiting for the next commit (`group_commit`).
    commits: group_commit::CommitQueue,
    /// `synchronous = full`: outbox marks then relax it for themselves.
    full_sync: bool,
    /// Set if `synchronous = FULL` could not be restored after a mark:
    /// turns are then refused rather than committed without an fsync.
    sync_lost: std::sync::atomic::AtomicBool,
}

impl StoreError {
    /// Whether this is the store being unusable (full, read-only, deleted,
    /// failing I/O) rather than a request it refuses: an outage is waited
    /// out by pausing, a refusal is not.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Sqlite(error) => !matches!(
                error.sqlite_error_code(),
                Some(rusqlite::ErrorCode::ConstraintViolation)
            ),
            Self::Open { .. }
            | Self::Unavailable { .. }
            | Self::OverSizeCap { .. }
            | Self::Worker(_)
            | Self::Connect { .. }
            | Self::Pool(_) => true,
            Self::Postgres(error) => postgres_outage(error),
            _ => false,
        }
    }
}

/// What the server said (its message and SQLSTATE), or the client's error
/// with its causes: tokio-postgres's own text is only "db error".
fn postgres_message(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A PostgreSQL error that says the server is unusable now (gone, starting,
/// shutting down, out of resources, or a read-only standby after a
/// failover), not that it refuses this request: a closed connection has no
/// SQLSTATE; classes 08 (connection), 53 (resources) and 57 (operator
/// intervention: 57P*, e.g. admin shutdown, not a cancelled query) and 25006 (read-only transaction) are
/// outages; a constraint violation or a fenced lease is not.
fn postgres_outage(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        // No SQLSTATE: the connection closed or its socket failed (a
        // client-side conversion error has none either, and is no outage).
        None => {
            error.is_closed()
                || std::error::Error::source(error)
                    .is_some_and(|cause| cause.is::<std::io::Error>())
        }
        Some(state) => {
            let code = state.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "25006"
        }
    }
}

impl Store {
    /// The connection, with the delivered marks queued so far written
    /// first, so what is read or written next sees them.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        // The lock does not poison: a panic while holding it cannot leave a
        // half-done transaction committed (rusqlite rolls back on drop).
        let connection = self.connection.lock();
        self.write_queued_marks(&connection);
        connection
    }
}

impl Drop for Store {
    /// A clean close writes the marks still queued, so a restart does not
    /// send their writes again.
    fn drop(&mut self) {
        self.flush_delivered();
    }
}

/// A fresh session id `heist_YYYYMMDD_HHMMSS_<suffix>`; the random suffix
/// keeps ids unique when many start in the same second.
pub(crate) fn new_session_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix: u32 = rand::Rng::random(&mut rand::rng());
    format!("heist_{}_{suffix:08x}", now.format("%Y%m%d_%H%M%S"))
}

/// RFC 3339 in UTC with microseconds, like the prototype's `isoformat()`.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[cfg(test)]
mod commit_delay_tests;
#[cfg(test)]
mod tests;
