//! The memory service's own SQLite file (`companions.memory.path`): every
//! accepted write is written through to it before it is acknowledged, and
//! forgetting (a session's retention, `DELETE /clear`) deletes from it too,
//! so a restarted service holds what it held. It also keeps the service's
//! instance id: a file created empty gets a new random id, which is how
//! heistd tells a memory service that lost everything from one that did
//! not. This is the only SQL in `services` beside the database tool; it
//! knows nothing of quotas or tokens (that is `memory`).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection, OptionalExtension};

use crate::wire::MemoryWrite;

/// One stored write, as the file keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWrite {
    pub session_id: String,
    pub agent_id: String,
    pub turn_id: i64,
    pub message: String,
    pub idempotency_key: Option<String>,
    /// The authenticated client (token `sub`) that wrote it; idempotency
    /// keys and shares are per client. Files from before it was kept read
    /// back with "" (no client).
    pub client_id: String,
    /// Whether that client wrote with `memory:admin` (heistd's own writes,
    /// which no agent's share counts).
    pub by_admin: bool,
    /// SHA-256 (hex) of the content (`MemoryWrite::content_hash`); computed
    /// again at load for rows that lack it.
    pub content_hash: String,
    /// Wall-clock milliseconds of the write, so retention survives a restart.
    pub written_at_ms: i64,
}

/// The open file. Guarded by the service's lock like the rest of its state.
pub struct MemoryFile {
    connection: Connection,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS memories (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        turn_id INTEGER NOT NULL,
        message TEXT NOT NULL,
        idempotency_key TEXT,
        written_at_ms INTEGER NOT NULL,
        client_id TEXT,
        by_admin INTEGER NOT NULL DEFAULT 0,
        content_hash TEXT
    );
    CREATE INDEX IF NOT EXISTS memories_session ON memories(session_id);
";

/// Columns added since the first files were written: added to a file
/// that lacks them when it is opened.
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("client_id", "client_id TEXT"),
    ("by_admin", "by_admin INTEGER NOT NULL DEFAULT 0"),
    ("content_hash", "content_hash TEXT"),
];

/// A new random instance id (128 bits, hex).
pub fn new_instance_id() -> String {
    let mut rng = StdRng::from_os_rng();
    format!("{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>())
}

fn sql_error(error: rusqlite::Error) -> String {
    error.to_string()
}

impl StoredWrite {
    /// The write as it came over the wire (what the content hash covers).
    pub fn content(&self) -> MemoryWrite {
        MemoryWrite {
            agent_id: self.agent_id.clone(),
            turn_id: self.turn_id,
            message: self.message.clone(),
            game_session_id: self.session_id.clone(),
        }
    }
}

fn add_missing_columns(connection: &Connection) -> Result<(), String> {
    let mut statement = connection
        .prepare("SELECT name FROM pragma_table_info('memories')")
        .map_err(sql_error)?;
    let present: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .map_err(sql_error)?
        .collect::<Result<_, _>>()
        .map_err(sql_error)?;
    for (name, definition) in ADDED_COLUMNS {
        if !present.iter().any(|column| column == name) {
            connection
                .execute_batch(&format!("ALTER TABLE memories ADD COLUMN {definition}"))
                .map_err(sql_error)?;
        }
    }
    Ok(())
}

impl MemoryFile {
    /// Opens (or creates) the file: returns it, its instance id (created
    /// with the file) and every write it holds, oldest first.
    pub fn open(path: &Path) -> Result<(Self, String, Vec<StoredWrite>), String> {
        let connection = Connection::open(path).map_err(sql_error)?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(sql_error)?;
        connection.execute_batch(SCHEMA).map_err(sql_error)?;
        add_missing_columns(&connection)?;
        let existing: Option<String> = connection
            .query_row(
                "SELECT value FROM meta WHERE key = 'instance_id'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql_error)?;
        let instance_id = match existing {
            Some(id) => id,
            None => {
                let id = new_instance_id();
                connection
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('instance_id', ?1)",
                        params![id],
                    )
                    .map_err(sql_error)?;
                id
            }
        };
        let file = Self { connection };
        let writes = file.load()?;
        Ok((file, instance_id, writes))
    }

    fn load(&self) -> Result<Vec<StoredWrite>, String> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT session_id, agent_id, turn_id, message, idempotency_key, written_at_ms,
                        COALESCE(client_id, ''), by_admin, content_hash
                 FROM memories ORDER BY id",
            )
            .map_err(sql_error)?;
        let rows = statement
            .query_map([], |row| {
                let mut write = StoredWrite {
                    session_id: row.get(0)?,
                    agent_id: row.get(1)?,
                    turn_id: row.get(2)?,
                    message: row.get(3)?,
                    idempotency_key: row.get(4)?,
                    written_at_ms: row.get(5)?,
                    client_id: row.get(6)?,
                    by_admin: row.get(7)?,
                    content_hash: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
                };
                if write.content_hash.is_empty() {
                    write.content_hash = write.content().content_hash();
                }
                Ok(write)
            })
            .map_err(sql_error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_error)?;
        Ok(rows)
    }

    /// Writes one accepted write through; the caller acknowledges only
    /// after this succeeded.
    pub fn insert(&self, write: &StoredWrite) -> Result<(), String> {
        self.connection
            .prepare_cached(
                "INSERT INTO memories (session_id, agent_id, turn_id, message, idempotency_key, written_at_ms,
                                       client_id, by_admin, content_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    write.session_id,
                    write.agent_id,
                    write.turn_id,
                    write.message,
                    write.idempotency_key,
                    write.written_at_ms,
                    write.client_id,
                    write.by_admin,
                    write.content_hash
                ])
            })
            .map(|_| ())
            .map_err(sql_error)
    }

    /// Deletes one session's writes.
    pub fn forget(&self, session_id: &str) -> Result<(), String> {
        self.connection
            .execute(
                "DELETE FROM memories WHERE session_id = ?1",
                params![session_id],
            )
            .map(|_| ())
            .map_err(sql_error)
    }

    /// Deletes every write (the instance id stays: the file is the same).
    pub fn clear(&self) -> Result<(), String> {
        self.connection
            .execute("DELETE FROM memories", [])
            .map(|_| ())
            .map_err(sql_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(turn_id: i64) -> StoredWrite {
        let mut write = StoredWrite {
            session_id: "s1".into(),
            agent_id: "mole".into(),
            turn_id,
            message: format!("turn {turn_id}"),
            idempotency_key: Some(format!("s1:{turn_id}")),
            client_id: "heistd".into(),
            by_admin: true,
            content_hash: String::new(),
            written_at_ms: 1_000 + turn_id,
        };
        write.content_hash = write.content().content_hash();
        write
    }

    #[test]
    fn reopening_keeps_writes_and_the_instance_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.db");
        let (file, first_id, writes) = MemoryFile::open(&path).expect("open");
        assert!(writes.is_empty());
        file.insert(&write(1)).expect("insert");
        file.insert(&write(2)).expect("insert");
        drop(file);
        let (file, second_id, writes) = MemoryFile::open(&path).expect("reopen");
        assert_eq!(first_id, second_id);
        assert_eq!(writes, vec![write(1), write(2)]);
        file.forget("s1").expect("forget");
        drop(file);
        let (_, _, writes) = MemoryFile::open(&path).expect("reopen");
        assert!(writes.is_empty());
    }

    #[test]
    fn a_file_from_before_clients_were_kept_gains_the_columns_and_hashes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).expect("open");
        old.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE memories (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL,
                 agent_id TEXT NOT NULL, turn_id INTEGER NOT NULL, message TEXT NOT NULL,
                 idempotency_key TEXT, written_at_ms INTEGER NOT NULL);
             INSERT INTO memories (session_id, agent_id, turn_id, message, idempotency_key, written_at_ms)
                 VALUES ('s1', 'mole', 1, 'turn 1', 's1:1', 1001);",
        )
        .expect("old schema");
        drop(old);
        let (_, _, writes) = MemoryFile::open(&path).expect("open");
        let expected = StoredWrite {
            client_id: String::new(),
            by_admin: false,
            ..write(1)
        };
        assert_eq!(writes, vec![expected]);
    }

    #[test]
    fn a_new_file_is_a_new_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, first, _) = MemoryFile::open(&dir.path().join("a.db")).expect("open");
        let (_, second, _) = MemoryFile::open(&dir.path().join("b.db")).expect("open");
        assert_ne!(first, second);
        assert_eq!(first.len(), 32);
    }
}
