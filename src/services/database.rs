//! The shift database behind the database query tool: the scenario's SQL
//! loaded into a private in-memory SQLite database and queried through a
//! read-only connection that refuses anything but a single `SELECT` (or
//! `WITH ... SELECT`), cannot attach other files, caps every value
//! (`SQLITE_LIMIT_LENGTH`, so `printf`, `randomblob` and `zeroblob` cannot
//! build huge strings, and a query that tries is refused, not answered with
//! NULLs), returns at most [`MAX_ROWS`] rows and a bounded number of bytes,
//! and is stopped by SQLite's progress callback when its deadline passes.
//!
//! This is the engine only. It runs inside a query worker process
//! (`services::query_worker`), never in the services process: the progress
//! callback and `sqlite3_interrupt` act between SQLite's steps, so one slow
//! call (`instr` over two 1 MB strings) outran them by seconds; only killing
//! the process stops it. `services::query_pool` runs the workers, kills one
//! at the time limit and answers for it.
//!
//! It must not be able to write or read anything but the shift data.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::config::DatabaseToolConfig;

pub const MAX_ROWS: usize = 100;

/// Why a query got no rows. It crosses the pipe from a worker to the pool,
/// hence serde.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Serialize, Deserialize)]
pub enum QueryError {
    #[error("query is empty")]
    Empty,
    #[error("only read-only SELECT queries are allowed")]
    NotReadOnly,
    #[error("query exceeded its time limit of {} ms (companions.database_query.time_limit_ms) and was stopped", .0.as_millis())]
    TooSlow(Duration),
    #[error("the reply would be over {0} bytes; select fewer rows or shorter columns")]
    ReplyTooLarge(usize),
    #[error("a value would be over {0} bytes (companions.database_query.max_value_bytes); build shorter strings")]
    ValueTooLarge(usize),
    #[error("every reader is busy; try again")]
    Busy,
    #[error("this client already has {0} queries in flight; wait for one to finish")]
    TooManyForClient(usize),
    #[error("the query worker failed: {0}")]
    WorkerFailed(String),
    #[error("SQL error: {0}")]
    Sql(String),
}

impl QueryError {
    /// The HTTP status the tool answers with: the caller's query is at
    /// fault (4xx; a query stopped at its time limit is a 400, not a 408,
    /// which clients retry) except when every reader is busy (503) or the
    /// worker broke (500).
    pub fn status(&self) -> u16 {
        match self {
            Self::Busy => 503,
            Self::TooManyForClient(_) => 429,
            Self::WorkerFailed(_) => 500,
            Self::ReplyTooLarge(_) | Self::ValueTooLarge(_) => 413,
            _ => 400,
        }
    }
}

pub struct ShiftDatabase {
    /// Holds the in-memory database alive; used after loading only to set
    /// the process's heap limit.
    owner: Mutex<Connection>,
    /// The one read-only connection queries run on.
    reader: Mutex<Connection>,
    limits: DatabaseToolConfig,
}

impl ShiftDatabase {
    /// Loads `shifts_sql` into a fresh private database and opens its reader.
    pub fn build(shifts_sql: &str, limits: &DatabaseToolConfig) -> Result<Self, String> {
        let name: u64 = rand::rng().random();
        let uri = format!("file:heistd-shifts-{name:016x}?mode=memory&cache=shared");
        let owner = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|error| error.to_string())?;
        owner
            .execute_batch(shifts_sql)
            .map_err(|error| format!("loading the scenario's shifts.sql: {error}"))?;
        let reader = open_reader(&uri, limits).map_err(|error| error.to_string())?;
        Ok(Self {
            owner: Mutex::new(owner),
            reader: Mutex::new(reader),
            limits: limits.clone(),
        })
    }

    /// Runs one read-only query on the calling thread, stopped by the
    /// progress callback at the time limit.
    pub fn query(&self, sql: &str) -> Result<serde_json::Value, QueryError> {
        self.query_within(sql, self.time_limit())
    }

    /// Runs one read-only query, stopped by the progress callback after
    /// `deadline` (a query worker gives itself a little less than the time
    /// limit, so a runaway loop is answered by the worker rather than
    /// killed). A stopped query is `TooSlow` with the configured limit.
    pub fn query_within(
        &self,
        sql: &str,
        deadline: Duration,
    ) -> Result<serde_json::Value, QueryError> {
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
        // Stops long loops of cheap steps; one expensive step is the
        // worker's to die of.
        let deadline = Deadline::start(deadline);
        connection.progress_handler(10_000, Some(move || deadline.passed()));
        let outcome = run(&connection, sql, self.time_limit(), &self.limits);
        connection.progress_handler(0, None::<fn() -> bool>);
        outcome
    }

    /// Caps the memory SQLite may hold in this whole process (`PRAGMA
    /// hard_heap_limit`; past it, allocations fail and the query with
    /// them). Process-wide: only a query worker, whose only SQLite this
    /// is, may call it.
    pub fn limit_process_heap(&self, bytes: u64) -> Result<(), String> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.owner
            .lock()
            .pragma_update(None, "hard_heap_limit", bytes)
            .map_err(|error| error.to_string())
    }

    fn time_limit(&self) -> Duration {
        Duration::from_millis(self.limits.time_limit_ms)
    }
}

fn open_reader(uri: &str, limits: &DatabaseToolConfig) -> Result<Connection, rusqlite::Error> {
    let reader = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    reader.pragma_update(None, "query_only", "ON")?;
    // No ATTACH: a query may only see the shift data.
    reader.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    // No value (string or blob) larger than this can be built.
    let max_value = i32::try_from(limits.max_value_bytes).unwrap_or(i32::MAX);
    reader.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_value)?;
    reader.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
    install_bounded_printf(&reader, max_value)?;
    Ok(reader)
}

/// SQLite's own `printf()` (and its alias `format()`) answers NULL, not an
/// error, when its result would pass `SQLITE_LIMIT_LENGTH`: a query asking
/// for a 20 MB string gets rows of NULL and never learns why. These
/// replacements run the built-in on a private in-memory connection with the
/// same limit, and turn that NULL (for a format that is not NULL) into the
/// "too big" error every other function gives.
fn install_bounded_printf(reader: &Connection, max_value: i32) -> rusqlite::Result<()> {
    let formatter = Connection::open_in_memory()?;
    formatter.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_value)?;
    let formatter = Arc::new(Mutex::new(formatter));
    for name in ["printf", "format"] {
        let formatter = formatter.clone();
        reader.create_scalar_function(
            name,
            -1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            move |context| bounded_printf(&formatter.lock(), name, context),
        )?;
    }
    Ok(())
}

fn bounded_printf(
    formatter: &Connection,
    name: &str,
    context: &Context<'_>,
) -> rusqlite::Result<Value> {
    if context.is_empty() {
        return Ok(Value::Null);
    }
    let placeholders: Vec<String> = (1..=context.len())
        .map(|index| format!("?{index}"))
        .collect();
    let mut statement =
        formatter.prepare_cached(&format!("SELECT {name}({})", placeholders.join(", ")))?;
    // Bound as they came (blobs, and text that is not UTF-8, included) and
    // read back raw: converting either through `Value` would panic on
    // bytes that are not UTF-8.
    let arguments = (0..context.len())
        .map(|index| rusqlite::types::ToSqlOutput::Borrowed(context.get_raw(index)));
    let result = statement.query_row(rusqlite::params_from_iter(arguments), |row| {
        Ok(match row.get_ref(0)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(integer) => Value::Integer(integer),
            ValueRef::Real(real) => Value::Real(real),
            ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
            ValueRef::Blob(blob) => Value::Blob(blob.to_vec()),
        })
    })?;
    if result == Value::Null && context.get_raw(0) != ValueRef::Null {
        // No message: SQLite's sqlite3_result_error() would turn the code
        // into a plain SQLITE_ERROR.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
            None,
        ));
    }
    Ok(result)
}

fn run(
    connection: &Connection,
    sql: &str,
    time_limit: Duration,
    limits: &DatabaseToolConfig,
) -> Result<serde_json::Value, QueryError> {
    let max_reply_bytes = limits.max_reply_bytes;
    let to_error = |error: rusqlite::Error| match error {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            QueryError::TooSlow(time_limit)
        }
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == rusqlite::ErrorCode::TooBig =>
        {
            QueryError::ValueTooLarge(limits.max_value_bytes)
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
    // The reply's size as JSON, roughly: values, column names and quotes.
    let mut reply_bytes = 2;
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
            reply_bytes += column.len() + json_size(&value) + 6;
            if reply_bytes > max_reply_bytes {
                return Err(QueryError::ReplyTooLarge(max_reply_bytes));
            }
            object.insert(column.clone(), value);
        }
        output.push(serde_json::Value::Object(object));
    }
    Ok(serde_json::Value::Array(output))
}

/// About how many bytes `value` takes as JSON, without rendering it.
fn json_size(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(text) => text.len() + 2,
        serde_json::Value::Null => 4,
        _ => 24,
    }
}

/// Wall-clock deadline for SQLite's progress callback, which runs on a
/// blocking thread inside SQLite where tokio's clock cannot reach.
#[derive(Clone, Copy)]
#[allow(clippy::disallowed_types)]
struct Deadline(std::time::Instant);

impl Deadline {
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    fn start(limit: Duration) -> Self {
        Self(std::time::Instant::now() + limit)
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
        ShiftDatabase::build(
            &crate::scenario::Scenario::embedded().shifts_sql,
            &DatabaseToolConfig::default(),
        )
        .expect("loads")
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
        assert!(
            matches!(endless, Err(QueryError::TooSlow(_))),
            "{endless:?}"
        );
    }

    #[test]
    fn huge_values_and_replies_are_refused() {
        let database = database();
        for sql in [
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) SELECT printf('%.*c', 20000000, 'x') FROM n",
            "SELECT length(hex(randomblob(100000000)))",
            "SELECT zeroblob(100000000)",
        ] {
            // Refused, not answered with NULLs: nothing large is built.
            assert_eq!(
                database.query(sql),
                Err(QueryError::ValueTooLarge(1024 * 1024)),
                "{sql}"
            );
        }
        // Blobs and text that is not UTF-8 are formatted, not a panic.
        for sql in [
            "SELECT printf('%s', x'ff') AS a",
            "SELECT printf(x'ff') AS a",
            "SELECT format(CAST(x'c3' AS TEXT)) AS a",
        ] {
            let rows = database
                .query(sql)
                .unwrap_or_else(|error| panic!("{sql}: {error}"));
            assert_eq!(rows, serde_json::json!([{"a": "\u{fffd}"}]), "{sql}");
        }
        // Small results and a NULL format still work as SQLite's own printf.
        assert_eq!(
            database.query(
                "SELECT printf('%d-%s', 7, 'x') AS a, format('%5.1f', 2.5) AS b, printf(NULL) AS c"
            ),
            Ok(serde_json::json!([{"a": "7-x", "b": "  2.5", "c": null}]))
        );
        let wide = database.query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) SELECT printf('%.*c', 500000, 'x') FROM n",
        );
        assert_eq!(wide, Err(QueryError::ReplyTooLarge(256 * 1024)));
    }
}
