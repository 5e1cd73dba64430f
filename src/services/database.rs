//! The shift database behind the database query tool: the scenario's SQL
//! loaded into a private in-memory SQLite database, served through a small
//! pool of read-only connections that refuse anything but a single `SELECT`
//! (or `WITH ... SELECT`), cannot attach other files, cap every value
//! (`SQLITE_LIMIT_LENGTH`, so `printf`, `randomblob` and `zeroblob` cannot
//! build huge strings, and a query that tries is refused, not answered with
//! NULLs), return at most [`MAX_ROWS`] rows and a bounded
//! number of bytes, and are interrupted from outside when the time limit
//! passes (a timer calls `sqlite3_interrupt`, so one expensive function call
//! cannot outrun it the way it outruns the progress callback).
//!
//! It must not be able to write or read anything but the shift data, and a
//! query must not be able to hold the process's memory or the other
//! queries hostage.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use crate::config::DatabaseToolConfig;

pub const MAX_ROWS: usize = 100;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("query is empty")]
    Empty,
    #[error("only read-only SELECT queries are allowed")]
    NotReadOnly,
    #[error("query took longer than {} ms and was stopped", .0.as_millis())]
    TooSlow(Duration),
    #[error("the reply would be over {0} bytes; select fewer rows or shorter columns")]
    ReplyTooLarge(usize),
    #[error("a value would be over {0} bytes (companions.database_query.max_value_bytes); build shorter strings")]
    ValueTooLarge(usize),
    #[error("every reader is busy; try again")]
    Busy,
    #[error("SQL error: {0}")]
    Sql(String),
}

impl QueryError {
    /// The HTTP status the tool answers with: the caller's query is at
    /// fault (4xx) except when the readers are all busy (503).
    pub fn status(&self) -> u16 {
        match self {
            Self::Busy => 503,
            Self::ReplyTooLarge(_) | Self::ValueTooLarge(_) => 413,
            _ => 400,
        }
    }
}

pub struct ShiftDatabase {
    /// Holds the in-memory database alive; never used after loading.
    _owner: Mutex<Connection>,
    /// Where readers are opened from (a private shared-cache URI).
    uri: String,
    /// Idle read-only connections; one per query in flight is taken out.
    idle: Mutex<Vec<Connection>>,
    /// Queries in flight at most (the pool's size), so slow queries cannot
    /// pile up blocking threads.
    permits: Semaphore,
    limits: DatabaseToolConfig,
}

impl ShiftDatabase {
    /// Loads `shifts_sql` into a fresh private database and opens the first reader.
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
        let database = Self {
            _owner: Mutex::new(owner),
            uri,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(limits.max_concurrent_queries.max(1)),
            limits: limits.clone(),
        };
        let first = database.open_reader().map_err(|error| error.to_string())?;
        database.give_back(first);
        Ok(database)
    }

    /// Runs one read-only query on a pooled reader with the time limit
    /// enforced from outside: when it passes, the query is interrupted.
    /// Waits for a free reader no longer than the time limit.
    pub async fn query_bounded(
        self: &Arc<Self>,
        sql: String,
    ) -> Result<serde_json::Value, QueryError> {
        let time_limit = self.time_limit();
        let _permit = tokio::time::timeout(time_limit, self.permits.acquire())
            .await
            .map_err(|_| QueryError::Busy)?
            .map_err(|_| QueryError::Busy)?;
        let connection = self.take()?;
        let interrupt = connection.get_interrupt_handle();
        let database = self.clone();
        let mut worker = tokio::task::spawn_blocking(move || {
            let outcome = database.query_on(&connection, &sql);
            (connection, outcome)
        });
        let joined = match tokio::time::timeout(time_limit, &mut worker).await {
            Ok(joined) => joined,
            Err(_) => {
                // The worker still owns the connection, so the interrupt can
                // only reach this query, never the next one on the reader.
                interrupt.interrupt();
                worker.await
            }
        };
        let (connection, outcome) =
            joined.map_err(|_| QueryError::Sql("query worker failed".into()))?;
        self.give_back(connection);
        outcome
    }

    /// Runs one read-only query on the calling thread (tests and tools
    /// that are already on a blocking thread); the progress callback's
    /// deadline is its only time limit.
    pub fn query(&self, sql: &str) -> Result<serde_json::Value, QueryError> {
        let connection = self.take()?;
        let outcome = self.query_on(&connection, sql);
        self.give_back(connection);
        outcome
    }

    fn time_limit(&self) -> Duration {
        Duration::from_millis(self.limits.time_limit_ms)
    }

    fn query_on(
        &self,
        connection: &Connection,
        sql: &str,
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
        // The progress callback stops long loops of cheap steps; the outer
        // interrupt stops one expensive step.
        let deadline = Deadline::start(self.time_limit());
        connection.progress_handler(10_000, Some(move || deadline.passed()));
        let outcome = run(connection, sql, self.time_limit(), &self.limits);
        connection.progress_handler(0, None::<fn() -> bool>);
        outcome
    }

    fn open_reader(&self) -> Result<Connection, rusqlite::Error> {
        let reader = Connection::open_with_flags(
            &self.uri,
            OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        reader.pragma_update(None, "query_only", "ON")?;
        // No ATTACH: a query may only see the shift data.
        reader.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        // No value (string or blob) larger than this can be built.
        let max_value = i32::try_from(self.limits.max_value_bytes).unwrap_or(i32::MAX);
        reader.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_value)?;
        reader.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
        install_bounded_printf(&reader, max_value)?;
        Ok(reader)
    }

    /// An idle reader, or a new one when all are in use.
    fn take(&self) -> Result<Connection, QueryError> {
        let idle = self.idle.lock().pop();
        match idle {
            Some(connection) => Ok(connection),
            None => self
                .open_reader()
                .map_err(|error| QueryError::Sql(error.to_string())),
        }
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < self.limits.max_concurrent_queries {
            idle.push(connection);
        }
    }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expensive_call_is_interrupted_and_does_not_queue_the_others() {
        let limits = DatabaseToolConfig {
            time_limit_ms: 300,
            ..DatabaseToolConfig::default()
        };
        let database = Arc::new(
            ShiftDatabase::build(&crate::scenario::Scenario::embedded().shifts_sql, &limits)
                .expect("loads"),
        );
        let slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 40) SELECT sum(length(hex(randomblob(400000)))) FROM n, n AS m, n AS k";
        let runaways: Vec<_> = (0..4)
            .map(|_| {
                let database = database.clone();
                tokio::spawn(async move { database.query_bounded(slow.to_string()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let quick = tokio::time::timeout(
            Duration::from_millis(250),
            database.query_bounded("SELECT 1 AS one".into()),
        )
        .await
        .expect("SELECT 1 is not queued behind the slow ones")
        .expect("answers");
        assert_eq!(quick[0]["one"], 1);
        for runaway in runaways {
            let outcome = runaway.await.expect("joined");
            assert!(
                matches!(outcome, Err(QueryError::TooSlow(_))),
                "{outcome:?}"
            );
        }
    }
}
