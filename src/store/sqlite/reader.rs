//! Opening the store to read only (`heistd sessions list|show|export`): the
//! file is opened read-only, never created, never migrated, and its journal
//! mode is left as it is, so reading a database changes no byte of it. An
//! older schema (the prototype's, or an earlier heistd's) is read as it is:
//! the columns and tables it lacks are presented as NULLs and empty tables
//! through TEMP views, which live in the connection's own temporary
//! database, so the readers' SQL is the same for every version.
//!
//! It must not write to the main database.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use super::Store;
use crate::store::{StoreError, SCHEMA_VERSION};

/// The tables heistd reads, in the current schema.
const TABLES: [&str; 6] = [
    "sessions",
    "messages",
    "tool_usage",
    "outbox",
    "service_calls",
    "health_events",
];

impl Store {
    /// Opens an existing store for reading only. A schema newer than this
    /// heistd is refused; an older one is read as it is.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            present_as_current(&connection)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            _writer_lock: None,
            identity: None,
            size_cap: None,
            commits: Default::default(),
            full_sync: false,
            sync_lost: Default::default(),
            connection: Mutex::new(connection),
        })
    }
}

/// Shadows each table that lacks columns (or is missing) with a TEMP view
/// of the current columns: the ones the file has, NULL for the others.
fn present_as_current(connection: &Connection) -> Result<(), StoreError> {
    let current = Connection::open_in_memory()?;
    super::maintenance::migrate(&current)?;
    for table in TABLES {
        let wanted = columns(&current, "main", table)?;
        let present = columns(connection, "main", table)?;
        if !present.is_empty() && wanted.iter().all(|column| present.contains(column)) {
            continue;
        }
        let select: Vec<String> = wanted
            .iter()
            .map(|column| {
                if present.contains(column) {
                    format!("\"{column}\"")
                } else {
                    format!("NULL AS \"{column}\"")
                }
            })
            .collect();
        let source = if present.is_empty() {
            " WHERE 0".to_string()
        } else {
            format!(" FROM main.\"{table}\"")
        };
        connection.execute_batch(&format!(
            "CREATE TEMP VIEW \"{table}\" AS SELECT {}{source};",
            select.join(", ")
        ))?;
    }
    Ok(())
}

fn columns(connection: &Connection, schema: &str, table: &str) -> Result<Vec<String>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT name FROM pragma_table_info('{table}', '{schema}')"
    ))?;
    let names = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(names)
}
