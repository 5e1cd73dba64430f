//! The shift database behind the database query tool: the scenario's SQL
//! loaded into a private in-memory SQLite database, served through a
//! read-only connection that also refuses anything but a single `SELECT`
//! (or `WITH ... SELECT`), cannot attach other files, returns at most
//! [`MAX_ROWS`] rows and is interrupted after [`TIME_LIMIT`].
//!
//! It must not be able to write or read anything but the shift data.

use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

pub const MAX_ROWS: usize = 100;
pub const TIME_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("query is empty")]
    Empty,
    #[error("only read-only SELECT queries are allowed")]
    NotReadOnly,
    #[error("query took longer than {} s and was stopped", TIME_LIMIT.as_secs())]
    TooSlow,
    #[error("SQL error: {0}")]
    Sql(String),
}

pub struct ShiftDatabase {
    /// Holds the in-memory database alive; never used after loading.
    _owner: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl ShiftDatabase {
    /// Loads `shifts_sql` into a fresh private database and opens the reader.
    pub fn build(shifts_sql: &str) -> Result<Self, String> {
        let name: u64 = rand::rng().random();
        let uri = format!("file:heistd-shifts-{name:016x}?mode=memory&cache=shared");
        let flags = OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let owner = Connection::open_with_flags(
            &uri,
            flags | OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|error| error.to_string())?;
        owner
            .execute_batch(shifts_sql)
            .map_err(|error| format!("loading the scenario's shifts.sql: {error}"))?;
        let reader = Connection::open_with_flags(&uri, flags | OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|error| error.to_string())?;
        reader
            .pragma_update(None, "query_only", "ON")
            .map_err(|error| error.to_string())?;
        // No ATTACH: a query may only see the shift data.
        let _ = reader.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0);
        Ok(Self {
            _owner: Mutex::new(owner),
            reader: Mutex::new(reader),
        })
    }

    /// Runs one read-only query; rows come back as JSON objects.
    pub fn query(&self, sql: &str) -> Result<serde_json::Value, QueryError> {
        let sql = sql.trim().trim_end_matches(';').trim();
        if sql.is_empty() {
            return Err(QueryError::Empty);
        }
        let first_word = sql
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if first_word != "SELECT" && first_word != "WITH" {
            return Err(QueryError::NotReadOnly);
        }
        let connection = self.reader.lock();
        let deadline = Deadline::start();
        connection.progress_handler(10_000, Some(move || deadline.passed()));
        let outcome = run(&connection, sql);
        connection.progress_handler(0, None::<fn() -> bool>);
        outcome
    }
}

fn run(connection: &Connection, sql: &str) -> Result<serde_json::Value, QueryError> {
    let to_error = |error: rusqlite::Error| match error {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            QueryError::TooSlow
        }
        other => QueryError::Sql(other.to_string()),
    };
    let mut statement = connection.prepare(sql).map_err(to_error)?;
    if !statement.readonly() {
        return Err(QueryError::NotReadOnly);
    }
    let columns: Vec<String> = statement
        .column_names()
        .iter()
        .map(|name| name.to_string())
        .collect();
    let mut rows = statement.query([]).map_err(to_error)?;
    let mut output = Vec::new();
    while let Some(row) = rows.next().map_err(to_error)? {
        if output.len() == MAX_ROWS {
            break;
        }
        let mut object = serde_json::Map::new();
        for (index, column) in columns.iter().enumerate() {
            let value = match row.get_ref(index).map_err(to_error)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(integer) => serde_json::Value::from(integer),
                ValueRef::Real(real) => serde_json::Value::from(real),
                ValueRef::Text(text) => {
                    serde_json::Value::String(String::from_utf8_lossy(text).into_owned())
                }
                ValueRef::Blob(blob) => {
                    serde_json::Value::String(format!("<{} bytes>", blob.len()))
                }
            };
            object.insert(column.clone(), value);
        }
        output.push(serde_json::Value::Object(object));
    }
    Ok(serde_json::Value::Array(output))
}

/// Wall-clock deadline for SQLite's progress callback, which runs on a
/// blocking thread inside SQLite where tokio's clock cannot reach.
#[derive(Clone, Copy)]
#[allow(clippy::disallowed_types)]
struct Deadline(std::time::Instant);

impl Deadline {
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    fn start() -> Self {
        Self(std::time::Instant::now() + TIME_LIMIT)
    }

    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    fn passed(&self) -> bool {
        std::time::Instant::now() >= self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> ShiftDatabase {
        ShiftDatabase::build(&crate::scenario::Scenario::embedded().shifts_sql).expect("loads")
    }

    #[test]
    fn reads_work_and_writes_are_refused() {
        let database = database();
        let rows = database
            .query("SELECT name, access_level FROM guards ORDER BY id LIMIT 2")
            .expect("select");
        assert_eq!(rows.as_array().map(Vec::len), Some(2));
        let cases: &[(&str, QueryError)] = &[
            ("", QueryError::Empty),
            ("DELETE FROM guards", QueryError::NotReadOnly),
            (
                "UPDATE guards SET access_level = 5",
                QueryError::NotReadOnly,
            ),
            ("DROP TABLE guards", QueryError::NotReadOnly),
            (
                "INSERT INTO guards VALUES (99, 'x', 1, 1)",
                QueryError::NotReadOnly,
            ),
            ("PRAGMA query_only = OFF", QueryError::NotReadOnly),
            (
                "ATTACH DATABASE '/tmp/x.db' AS other",
                QueryError::NotReadOnly,
            ),
            (
                "WITH gone AS (DELETE FROM guards) SELECT 1",
                QueryError::Sql(String::new()),
            ),
        ];
        for (sql, expected) in cases {
            let error = database.query(sql).expect_err(sql);
            assert_eq!(
                std::mem::discriminant(&error),
                std::mem::discriminant(expected),
                "{sql}: {error}"
            );
        }
        assert!(
            matches!(database.query("SELECT * FROM vaults"), Err(QueryError::Sql(message)) if message.contains("no such table"))
        );
        assert!(matches!(
            database.query("SELECT 1; DROP TABLE guards"),
            Err(QueryError::Sql(_))
        ));
        let count = database
            .query("SELECT COUNT(*) AS n FROM guards")
            .expect("count");
        assert!(
            count[0]["n"].as_i64().unwrap_or(0) > 0,
            "writes must not have landed"
        );
    }

    #[test]
    fn rows_are_capped_and_runaway_queries_stopped() {
        let database = database();
        let many = database
            .query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 1000) SELECT i FROM n")
            .expect("select");
        assert_eq!(many.as_array().map(Vec::len), Some(MAX_ROWS));
        let endless = database.query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n");
        assert_eq!(endless, Err(QueryError::TooSlow));
    }
}
