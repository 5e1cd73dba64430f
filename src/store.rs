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

/// Bumped with every migration appended to [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = 1;

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
            connection: Mutex::new(connection),
        })
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
                "INSERT OR IGNORE INTO sessions (session_id, start_time, num_turns, status, seed, scenario, planned_turns)
                 VALUES (?1, ?2, 0, 'active', ?3, ?4, ?5)",
                params![session_id, timestamp(now), new.seed as i64, new.scenario, new.planned_turns],
            )?;
            if inserted == 1 {
                return Ok(session_id);
            }
        }
    }

    /// Commits a turn's message, tool calls and outbox entry in one
    /// transaction, and counts it in the session's `num_turns`.
    pub fn record_turn(&self, turn: &TurnRecord) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
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

    pub fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let changed = self.lock().execute(
            "UPDATE sessions SET status = ?2, end_time = ?3, failure_reason = ?4,
                 num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = ?1)
             WHERE session_id = ?1",
            params![
                session_id,
                status.as_str(),
                timestamp(chrono::Utc::now()),
                reason
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::SessionNotFound(session_id.to_string()));
        }
        Ok(())
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
            "SELECT id, session_id, turn_id, agent_name, agent_role, message, timestamp, error FROM messages
             WHERE session_id = ?1 AND error IS NULL ORDER BY turn_id DESC LIMIT ?2",
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
        let mut statement = connection.prepare_cached(
            "SELECT id, session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error
             FROM tool_usage WHERE session_id = ?1 AND turn_id >= ?2 ORDER BY id",
        )?;
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
             WHERE session_id = ?1 AND delivered_at IS NULL ORDER BY id LIMIT ?2",
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

    pub fn mark_outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    pub fn list_sessions(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "{SESSION_COLUMNS} ORDER BY start_time DESC, session_id DESC LIMIT ?1"
        ))?;
        let rows = statement
            .query_map(params![limit as i64], session_row)?
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
            .prepare_cached(
                "SELECT id, session_id, turn_id, agent_name, agent_role, message, timestamp, error FROM messages
                 WHERE session_id = ?1 ORDER BY turn_id",
            )?
            .query_map(params![session_id], message_row)?
            .collect::<Result<_, _>>()?;
        let tool_usage = connection
            .prepare_cached(
                "SELECT id, session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error
                 FROM tool_usage WHERE session_id = ?1 ORDER BY id",
            )?
            .query_map(params![session_id], tool_usage_row)?
            .collect::<Result<_, _>>()?;
        Ok(SessionDetail {
            session,
            messages,
            tool_usage,
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

/// RFC 3339 in UTC with microseconds, like the prototype's `isoformat()`.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

const SESSION_COLUMNS: &str =
    "SELECT session_id, start_time, end_time, num_turns, status, seed, scenario, planned_turns, failure_reason FROM sessions";

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: [&str; 1] = [r#"
    CREATE TABLE IF NOT EXISTS sessions (
        session_id TEXT PRIMARY KEY,
        start_time TEXT NOT NULL,
        end_time TEXT,
        num_turns INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        seed INTEGER,
        scenario TEXT,
        planned_turns INTEGER,
        failure_reason TEXT
    );
    CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(session_id),
        turn_id INTEGER NOT NULL,
        agent_name TEXT NOT NULL,
        agent_role TEXT NOT NULL,
        message TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        error TEXT
    );
    CREATE UNIQUE INDEX IF NOT EXISTS messages_session_turn ON messages(session_id, turn_id);
    CREATE TABLE IF NOT EXISTS tool_usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(session_id),
        turn_id INTEGER NOT NULL,
        agent_name TEXT NOT NULL,
        tool_name TEXT NOT NULL,
        tool_params TEXT NOT NULL,
        tool_result TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        success INTEGER NOT NULL,
        error TEXT,
        duration_ms REAL
    );
    CREATE INDEX IF NOT EXISTS tool_usage_session_turn ON tool_usage(session_id, turn_id);
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(session_id),
        turn_id INTEGER NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        delivered_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(session_id) WHERE delivered_at IS NULL;
"#];

fn migrate(connection: &Connection) -> Result<(), StoreError> {
    let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
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
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let directory = tempfile::tempdir().expect("temp dir");
        let store =
            Store::open(&directory.path().join("audit.db"), Synchronous::Normal).expect("open");
        (directory, store)
    }

    fn turn(session_id: &str, turn_id: u32) -> TurnRecord {
        TurnRecord {
            session_id: session_id.into(),
            turn_id,
            agent_name: "hacker".into(),
            agent_role: "Hacker".into(),
            message: format!("message {turn_id}"),
            error: None,
            tool_calls: vec![ToolCallRecord {
                tool_name: "calculator".into(),
                tool_params: "1+1".into(),
                tool_result: "2".into(),
                success: true,
                error: None,
                duration_ms: 1.0,
            }],
            memory_payload: Some("{}".into()),
        }
    }

    #[test]
    fn session_ids_are_unique_within_one_second() {
        let (_directory, store) = open();
        let new = NewSession {
            scenario: "bank",
            seed: 1,
            planned_turns: 3,
        };
        let ids: std::collections::HashSet<String> = (0..200)
            .map(|_| store.create_session(&new).expect("create"))
            .collect();
        assert_eq!(ids.len(), 200);
        assert!(ids.iter().all(
            |id| id.starts_with("heist_") && id.len() == "heist_20260101_000000_00000000".len()
        ));
    }

    #[test]
    fn a_turn_commits_whole_or_not_at_all() {
        let (_directory, store) = open();
        let session_id = store
            .create_session(&NewSession {
                scenario: "bank",
                seed: 1,
                planned_turns: 3,
            })
            .expect("create");
        store.record_turn(&turn(&session_id, 1)).expect("first");
        // Recording turn 1 again violates the unique (session, turn) index
        // after its message insert; nothing of the second attempt may remain.
        assert!(store.record_turn(&turn(&session_id, 1)).is_err());
        let detail = store.session(&session_id).expect("detail");
        assert_eq!(detail.messages.len(), 1);
        assert_eq!(detail.tool_usage.len(), 1);
        assert_eq!(
            store.pending_outbox(&session_id, 10).expect("outbox").len(),
            1
        );
        assert_eq!(detail.session.num_turns, 1);
    }

    #[test]
    fn reopening_keeps_data_and_schema_version() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("audit.db");
        let session_id = {
            let store = Store::open(&path, Synchronous::Full).expect("open");
            let id = store
                .create_session(&NewSession {
                    scenario: "bank",
                    seed: 9,
                    planned_turns: 1,
                })
                .expect("create");
            store.record_turn(&turn(&id, 1)).expect("turn");
            store
                .finish_session(&id, SessionStatus::Completed, None)
                .expect("finish");
            id
        };
        let store = Store::open(&path, Synchronous::Full).expect("reopen");
        let detail = store.session(&session_id).expect("detail");
        assert_eq!(detail.session.status, "completed");
        assert!(detail.session.end_time.is_some());
        let version: i64 = store
            .lock()
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn failed_turns_are_not_context() {
        let (_directory, store) = open();
        let session_id = store
            .create_session(&NewSession {
                scenario: "bank",
                seed: 1,
                planned_turns: 3,
            })
            .expect("create");
        store.record_turn(&turn(&session_id, 1)).expect("turn 1");
        let mut failed = turn(&session_id, 2);
        failed.message = String::new();
        failed.error = Some("llm: timed out".into());
        store.record_turn(&failed).expect("turn 2");
        let context = store.recent_messages(&session_id, 5).expect("context");
        assert_eq!(
            context.iter().map(|row| row.turn_id).collect::<Vec<_>>(),
            [1]
        );
    }

    #[test]
    fn unknown_session_is_an_error() {
        let (_directory, store) = open();
        assert!(matches!(
            store.session("heist_nope"),
            Err(StoreError::SessionNotFound(_))
        ));
        assert!(matches!(
            store.finish_session("heist_nope", SessionStatus::Failed, None),
            Err(StoreError::SessionNotFound(_))
        ));
    }
}
