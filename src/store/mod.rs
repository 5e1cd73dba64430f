//! The audit store: the SQLite file that is the source of truth for every
//! session, message, tool call and memory outbox entry. It keeps the
//! prototype's `sessions`, `messages` and `tool_usage` tables and column
//! names so the prototype's SQL still works, and adds columns and tables
//! under a versioned schema migrated at open.
//!
//! Only this module contains SQL for the audit trail. It owns the one
//! connection (one writer); callers on the async runtime reach it through
//! `spawn_blocking`. It must not call services.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rand::Rng;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::config::Synchronous;

mod daemon;
mod schema;
pub use daemon::HealthEvent;

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
    #[error("audit store worker failed: {0}")]
    Worker(String),
    #[error("audit store: schedule {schedule} already ran for {scheduled_time}")]
    DuplicateRun {
        schedule: String,
        scheduled_time: String,
    },
}

/// How a session ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Active,
    Completed,
    Failed,
    Interrupted,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub scenario: &'a str,
    pub seed: u64,
    pub planned_turns: u32,
    /// The schedule that started the run and the slot it was for; together
    /// they identify a run, so a slot is never run twice.
    pub schedule: Option<&'a str>,
    pub scheduled_time: Option<&'a str>,
}

/// One turn as it is committed: its message and tool calls together.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub session_id: String,
    pub turn_id: u32,
    pub agent_name: String,
    pub agent_role: String,
    /// The agent's reply; empty when the model call failed.
    pub message: String,
    /// Why the turn has no message; the text is never fed back to the model.
    pub error: Option<String>,
    pub tool_calls: Vec<ToolCallRecord>,
    /// The memory-service write for this turn, delivered after the commit.
    pub memory_payload: Option<String>,
    /// Calls of this turn that failed or were retried.
    pub service_calls: Vec<ServiceCallRecord>,
}

/// A call that failed or needed retries, kept so "why was turn 7 slow?"
/// is one query.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCallRecord {
    pub service: String,
    pub operation: String,
    pub attempts: u32,
    pub outcome: String,
    pub last_error: Option<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolCallRecord {
    pub tool_name: String,
    pub tool_params: String,
    pub tool_result: String,
    pub success: bool,
    pub error: Option<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub session_id: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub num_turns: i64,
    pub status: String,
    pub seed: Option<i64>,
    pub scenario: Option<String>,
    pub planned_turns: Option<i64>,
    pub failure_reason: Option<String>,
    pub schedule: Option<String>,
    pub scheduled_time: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub id: i64,
    pub session_id: String,
    pub turn_id: i64,
    pub agent_name: String,
    pub agent_role: String,
    pub message: String,
    pub timestamp: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolUsageRow {
    pub id: i64,
    pub session_id: String,
    pub turn_id: i64,
    pub agent_name: String,
    pub tool_name: String,
    pub tool_params: String,
    pub tool_result: String,
    pub timestamp: String,
    pub success: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionDetail {
    pub session: SessionRow,
    pub messages: Vec<MessageRow>,
    pub tool_usage: Vec<ToolUsageRow>,
    pub service_calls: Vec<ServiceCallRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceCallRow {
    pub turn_id: i64,
    #[serde(flatten)]
    pub call: ServiceCallRecord,
    pub timestamp: String,
}

/// A memory write waiting for (re)delivery.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub id: i64,
    pub session_id: String,
    pub turn_id: i64,
    pub payload: String,
    pub attempts: i64,
}

pub struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
    /// Held by a writing process (`run`, `demo`, `daemon`) for as long as
    /// the store is open, so two never write one store: a session found
    /// `active` then really was left by a process that died.
    _writer_lock: Option<std::fs::File>,
}

impl Store {
    /// Opens (creating if needed) the store, sets WAL mode and migrates.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let connection = Connection::open(path).map_err(open_error)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        let synchronous = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        connection
            .pragma_update(None, "synchronous", synchronous)
            .map_err(open_error)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        migrate(&connection)?;
        Ok(Self {
            path: path.to_path_buf(),
            _writer_lock: None,
            connection: Mutex::new(connection),
        })
    }

    /// Opens the store as `[store]` configures it, size cap included, as
    /// its one writing process: a second writer is refused with a clear
    /// error rather than fighting over SQLite's write lock.
    pub fn open_configured(config: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        let lock_path = lock_path(&config.path);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::LockFile {
                path: lock_path.display().to_string(),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::InUse {
                path: config.path.display().to_string(),
            });
        }
        let mut store = Self::open(&config.path, config.synchronous)?;
        store._writer_lock = Some(lock);
        if config.max_size_mb > 0 {
            let cap = config.max_size_mb.saturating_mul(1024 * 1024);
            let granted = store.limit_size(cap)?;
            // SQLite never shrinks below the current size: a database
            // already over the cap would fail every write.
            if granted > cap {
                return Err(StoreError::OverSizeCap {
                    size_mb: granted.div_ceil(1024 * 1024),
                    cap_mb: config.max_size_mb,
                });
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a session with a fresh id `heist_YYYYMMDD_HHMMSS_<suffix>`,
    /// unique even when many start in the same second.
    pub fn create_session(&self, new: &NewSession<'_>) -> Result<String, StoreError> {
        let connection = self.lock();
        let now = chrono::Utc::now();
        loop {
            let suffix: u32 = rand::rng().random();
            let session_id = format!("heist_{}_{suffix:08x}", now.format("%Y%m%d_%H%M%S"));
            let inserted = connection.execute(
                "INSERT INTO sessions (session_id, start_time, num_turns, status, seed, scenario, planned_turns, schedule, scheduled_time)
                 VALUES (?1, ?2, 0, 'active', ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (session_id) DO NOTHING",
                params![
                    session_id,
                    timestamp(now),
                    new.seed as i64,
                    new.scenario,
                    new.planned_turns,
                    new.schedule,
                    new.scheduled_time
                ],
            );
            match inserted {
                Ok(1) => return Ok(session_id),
                Ok(_) => continue,
                Err(rusqlite::Error::SqliteFailure(failure, _))
                    if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(StoreError::DuplicateRun {
                        schedule: new.schedule.unwrap_or_default().to_string(),
                        scheduled_time: new.scheduled_time.unwrap_or_default().to_string(),
                    })
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Commits a turn's message, tool calls and outbox entry in one
    /// transaction, and counts it in the session's `num_turns`.
    pub fn record_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // A turn that finishes after its session was ended (the daemon's
        // grace period ran out mid-turn) is not recorded.
        let status: Option<String> = transaction
            .query_row(
                "SELECT status FROM sessions WHERE session_id = ?1",
                params![turn.session_id],
                |row| row.get(0),
            )
            .optional()?;
        match status.as_deref() {
            Some("active") => {}
            Some(status) => {
                return Err(StoreError::SessionEnded {
                    session_id: turn.session_id.clone(),
                    status: status.to_string(),
                })
            }
            None => return Err(StoreError::SessionNotFound(turn.session_id.clone())),
        }
        let now = timestamp(chrono::Utc::now());
        transaction.execute(
            "INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![turn.session_id, turn.turn_id, turn.agent_name, turn.agent_role, turn.message, now, turn.error],
        )?;
        {
            let mut insert_tool = transaction.prepare_cached(
                "INSERT INTO tool_usage (session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for call in &turn.tool_calls {
                insert_tool.execute(params![
                    turn.session_id,
                    turn.turn_id,
                    turn.agent_name,
                    call.tool_name,
                    call.tool_params,
                    call.tool_result,
                    now,
                    call.success,
                    call.error,
                    call.duration_ms
                ])?;
            }
        }
        {
            let mut insert_call = transaction.prepare_cached(
                "INSERT INTO service_calls (session_id, turn_id, service, operation, attempts, outcome, last_error, duration_ms, timestamp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for call in &turn.service_calls {
                insert_call.execute(params![
                    turn.session_id,
                    turn.turn_id,
                    call.service,
                    call.operation,
                    call.attempts,
                    call.outcome,
                    call.last_error,
                    call.duration_ms,
                    now
                ])?;
            }
        }
        if let Some(payload) = &turn.memory_payload {
            transaction.execute(
                "INSERT INTO outbox (session_id, turn_id, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![turn.session_id, turn.turn_id, payload, now],
            )?;
        }
        transaction.execute(
            "UPDATE sessions SET num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = ?1) WHERE session_id = ?1",
            params![turn.session_id],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// Ends an `active` session; `false` when it had already ended, which
    /// keeps its first ending: a late "interrupted" never overwrites
    /// "completed".
    pub fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let connection = self.lock();
        let changed = connection.execute(
            "UPDATE sessions SET status = ?2, end_time = ?3, failure_reason = ?4,
                 num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = ?1)
             WHERE session_id = ?1 AND status = 'active'",
            params![
                session_id,
                status.as_str(),
                timestamp(chrono::Utc::now()),
                reason
            ],
        )?;
        if changed == 0 {
            let exists: bool = connection
                .query_row(
                    "SELECT 1 FROM sessions WHERE session_id = ?1",
                    params![session_id],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !exists {
                return Err(StoreError::SessionNotFound(session_id.to_string()));
            }
        }
        Ok(changed > 0)
    }

    /// The last `limit` turns that produced a message, oldest first, with
    /// their tool results; failed turns are left out so an error text is
    /// never fed back to the model as if an agent had said it.
    pub fn recent_messages(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            &format!("{MESSAGE_COLUMNS} WHERE session_id = ?1 AND error IS NULL ORDER BY turn_id DESC LIMIT ?2"),
        )?;
        let mut rows: Vec<MessageRow> = statement
            .query_map(params![session_id, limit as i64], message_row)?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    pub fn tool_usage_for_turns(
        &self,
        session_id: &str,
        first_turn: i64,
    ) -> Result<Vec<ToolUsageRow>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "{TOOL_USAGE_COLUMNS} WHERE session_id = ?1 AND turn_id >= ?2 ORDER BY id"
        ))?;
        let rows = statement
            .query_map(params![session_id, first_turn], tool_usage_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Memory writes not yet delivered, oldest first.
    pub fn pending_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT id, session_id, turn_id, payload, attempts FROM outbox
             WHERE session_id = ?1 AND delivered_at IS NULL AND abandoned_at IS NULL ORDER BY id LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![session_id, limit as i64], |row| {
                Ok(OutboxEntry {
                    id: row.get(0)?,
                    session_id: row.get(1)?,
                    turn_id: row.get(2)?,
                    payload: row.get(3)?,
                    attempts: row.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn mark_outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
            params![id, timestamp(chrono::Utc::now())],
        )?;
        Ok(())
    }

    /// Sets aside a write the memory service will never accept.
    pub fn mark_outbox_abandoned(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, abandoned_at = ?3 WHERE id = ?1",
            params![id, error, timestamp(chrono::Utc::now())],
        )?;
        Ok(())
    }

    /// Sessions with memory writes still to deliver (any status).
    pub fn sessions_with_pending_outbox(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT DISTINCT session_id FROM outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL LIMIT ?1",
        )?;
        let rows = statement
            .query_map(params![limit as i64], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    pub fn list_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        self.find_sessions(None, None, limit)
    }

    /// Sessions newest first, optionally only those with `status` and/or
    /// started by `schedule`.
    pub fn find_sessions(
        &self,
        status: Option<&str>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "{SESSION_COLUMNS} WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR schedule = ?2)
             ORDER BY start_time DESC, session_id DESC LIMIT ?3"
        ))?;
        let rows = statement
            .query_map(params![status, schedule, limit as i64], session_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        let connection = self.lock();
        let session = connection
            .query_row(
                &format!("{SESSION_COLUMNS} WHERE session_id = ?1"),
                params![session_id],
                session_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let messages = connection
            .prepare_cached(&format!(
                "{MESSAGE_COLUMNS} WHERE session_id = ?1 ORDER BY turn_id"
            ))?
            .query_map(params![session_id], message_row)?
            .collect::<Result<_, _>>()?;
        let tool_usage = connection
            .prepare_cached(&format!(
                "{TOOL_USAGE_COLUMNS} WHERE session_id = ?1 ORDER BY id"
            ))?
            .query_map(params![session_id], tool_usage_row)?
            .collect::<Result<_, _>>()?;
        let service_calls = connection
            .prepare_cached(
                "SELECT turn_id, service, operation, attempts, outcome, last_error, duration_ms, timestamp
                 FROM service_calls WHERE session_id = ?1 ORDER BY id",
            )?
            .query_map(params![session_id], |row| {
                Ok(ServiceCallRow {
                    turn_id: row.get(0)?,
                    call: ServiceCallRecord {
                        service: row.get(1)?,
                        operation: row.get(2)?,
                        attempts: row.get(3)?,
                        outcome: row.get(4)?,
                        last_error: row.get(5)?,
                        duration_ms: row.get(6)?,
                    },
                    timestamp: row.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(SessionDetail {
            session,
            messages,
            tool_usage,
            service_calls,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction
        // committed (rusqlite rolls back on drop), so a poisoned lock is safe.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `heistd.db` → `heistd.db.lock`, beside the database.
fn lock_path(database: &Path) -> PathBuf {
    let mut name = database
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    database.with_file_name(name)
}

/// RFC 3339 in UTC with microseconds, like the prototype's `isoformat()`.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The columns `message_row` reads, in its order.
const MESSAGE_COLUMNS: &str =
    "SELECT id, session_id, turn_id, agent_name, agent_role, message, timestamp, error FROM messages";

/// The columns `tool_usage_row` reads, in its order.
const TOOL_USAGE_COLUMNS: &str =
    "SELECT id, session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error FROM tool_usage";

const SESSION_COLUMNS: &str =
    "SELECT session_id, start_time, end_time, num_turns, status, seed, scenario, planned_turns, failure_reason, schedule, scheduled_time FROM sessions";

fn migrate(connection: &Connection) -> Result<(), StoreError> {
    let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == 0 {
        // Only settable before the first table exists: lets retention give
        // pages back with `incremental_vacuum` instead of a full VACUUM.
        connection.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        schema::adopt_prototype_tables(connection)?;
    }
    for (index, migration) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE; {migration} PRAGMA user_version = {version}; COMMIT;"
        ))?;
    }
    Ok(())
}

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        session_id: row.get(0)?,
        start_time: row.get(1)?,
        end_time: row.get(2)?,
        num_turns: row.get(3)?,
        status: row.get(4)?,
        seed: row.get(5)?,
        scenario: row.get(6)?,
        planned_turns: row.get(7)?,
        failure_reason: row.get(8)?,
        schedule: row.get(9)?,
        scheduled_time: row.get(10)?,
    })
}

fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: row.get(0)?,
        session_id: row.get(1)?,
        turn_id: row.get(2)?,
        agent_name: row.get(3)?,
        agent_role: row.get(4)?,
        message: row.get(5)?,
        timestamp: row.get(6)?,
        error: row.get(7)?,
    })
}

fn tool_usage_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ToolUsageRow> {
    Ok(ToolUsageRow {
        id: row.get(0)?,
        session_id: row.get(1)?,
        turn_id: row.get(2)?,
        agent_name: row.get(3)?,
        tool_name: row.get(4)?,
        tool_params: row.get(5)?,
        tool_result: row.get(6)?,
        timestamp: row.get(7)?,
        success: row.get(8)?,
        error: row.get(9)?,
    })
}

#[cfg(test)]
mod tests;
