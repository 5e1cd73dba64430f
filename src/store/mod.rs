//! The audit store: the source of truth for every session, message, tool
//! call and memory outbox entry, in one of two backends behind one trait.
//! It keeps the prototype's `sessions`, `messages` and `tool_usage` tables
//! and column names so the prototype's SQL still works, and adds columns
//! and tables under a versioned schema migrated at open.
//!
//! Only this module contains SQL for the audit trail. It must not call
//! services. Its map:
//! - `backend`: the [`backend::Backend`] trait, the store's operations
//!   written once, with single-node defaults for the cluster's;
//! - `sqlite`: the SQLite backend (one file, one writing process), its
//!   synchronous `Store` split by concern, run on the blocking pool by
//!   `SqliteBackend`;
//! - `postgres`: the PostgreSQL backend (several daemons share one
//!   database and take over each other's sessions);
//! - `handle`: [`StoreHandle`], the one door for async code, holding the
//!   configured backend and the backend-neutral state: the outage rule's
//!   (`outage`) and the outbox deliveries in progress;
//! - `rows`: the records written and rows read, and the column lists both
//!   backends select; `bundle`: what `store migrate` (`migrate`) copies.
//!
//! A handle's methods are typed (owned arguments, rows out, no driver type
//! and no closure over a connection), so the surface cannot grow by the
//! back door.

mod backend;
mod bundle;
#[cfg(test)]
pub(crate) mod fixtures;
mod handle;
mod migrate;
mod outage;
mod postgres;
mod rows;
mod sqlite;

pub use backend::{InPlay, Owed};
pub use handle::{DeliveryGuard, StoreHandle};
pub use migrate::MigrationReport;
pub use rows::{
    CancelOutcome, CancelRequest, DeliveredCount, HealthEvent, HeartbeatReport, MessageRow,
    NewNotification, NewSession, NodeRow, NotificationAttempt, NotificationCounts,
    NotificationEntry, OutboxEntry, OutboxSummary, RecentTurns, RunTrigger, SchedulePause,
    ScheduleTokens, ServiceCallRecord, ServiceCallRow, SessionDetail, SessionRow, SessionStatus,
    SessionTurns, TokenTotals, ToolCallRecord, ToolUsageRow, TurnRead, TurnRecord, TurnUsage,
};

/// The SQLite schema's version, bumped with every migration appended to
/// its `MIGRATIONS`.
pub const SCHEMA_VERSION: i64 = sqlite::schema::MIGRATIONS.len() as i64;

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
    #[error("audit store {path} is in use by another heistd (a daemon, run or demo); start heists on a running daemon with POST /api/v1/runs, or give `run` or `demo` another --db")]
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
