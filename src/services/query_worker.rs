//! The database tool's worker process (`heistd services query-worker`, not
//! a companion and not listed): it holds its own copy of the shift database
//! and answers one query at a time, as JSON lines on stdin and stdout, for
//! the pool in the services process (`services::query_pool`), which kills
//! it when a query outlives the time limit.
//!
//! The protocol, one JSON object a line: the pool sends a [`Setup`] (the
//! shift SQL and the tool's limits); the worker loads it and answers
//! [`WorkerReply::Ready`] with its build, or `Failed`; then each
//! [`QueryRequest`] gets `Rows` or `Failed`. End of input ends the worker.
//!
//! Before each query the worker sets its own `RLIMIT_CPU` to the CPU it has
//! used plus the time limit, rounded up to the next second (the kernel
//! counts whole seconds): a worker whose pool is gone or stalled still dies
//! of `SIGXCPU` instead of running on. Core dumps are off (`RLIMIT_CORE` 0).
//! A worker that may not set limits (a seccomp filter) says so in its
//! handshake; the pool's kill still bounds its queries. SQLite's heap in a
//! worker is capped (`hard_heap_limit`), so no query grows it without bound.
//!
//! It must not read the config, the environment or any file: all it knows
//! comes down the pipe, and all it says goes back up it (logs to stderr).

use std::io::{BufRead, Write};
use std::time::Duration;

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::time::TimeValLike;
use serde::{Deserialize, Serialize};

use super::database::{QueryError, ShiftDatabase};
use crate::config::DatabaseToolConfig;

/// The name that makes `heistd services` run a worker instead of companions.
pub const WORKER_SUBCOMMAND: &str = "query-worker";

/// Both ends must be the same build: a worker of another version (an
/// upgraded binary on disk) is refused at its handshake.
pub const BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), "/query-protocol-1");

/// SQLite's heap in a worker is capped at 32 values of `max_value_bytes`,
/// and never below this.
pub const MIN_HEAP_BYTES: u64 = 64 * 1024 * 1024;

/// What a worker needs before its first query.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub shifts_sql: String,
    pub limits: DatabaseToolConfig,
}

/// One query.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
}

/// Every line a worker writes.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerReply {
    /// `rlimits`: whether the worker could set its own limits.
    Ready {
        build: String,
        rlimits: bool,
    },
    Rows(serde_json::Value),
    Failed(QueryError),
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("query worker: reading or writing the pipe: {0}")]
    Pipe(#[from] std::io::Error),
    #[error("query worker: a line from the pool is not what it should be: {0}")]
    Protocol(#[from] serde_json::Error),
    #[error("query worker: the pool closed the pipe before the setup")]
    NoSetup,
    #[error("query worker: {0}")]
    Setup(String),
}

/// Serves the pool on `input` and `output` until `input` ends, limiting
/// this process (CPU per query, core dumps, SQLite's heap): only a worker
/// process may call this.
pub fn serve(input: impl BufRead, output: impl Write) -> Result<(), WorkerError> {
    serve_with(input, output, Limits::ThisProcess)
}

/// Whether `serve_with` may set limits on the process it runs in; a unit
/// test's process is shared with other tests and must keep its own.
#[derive(Clone, Copy, PartialEq)]
enum Limits {
    ThisProcess,
    #[cfg_attr(not(test), allow(dead_code))]
    Untouched,
}

fn serve_with(
    mut input: impl BufRead,
    mut output: impl Write,
    limits: Limits,
) -> Result<(), WorkerError> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Err(WorkerError::NoSetup);
    }
    let setup: Setup = serde_json::from_str(&line)?;
    let database = match ShiftDatabase::build(&setup.shifts_sql, &setup.limits) {
        Ok(database) => database,
        Err(message) => {
            reply(
                &mut output,
                &WorkerReply::Failed(QueryError::Sql(message.clone())),
            )?;
            return Err(WorkerError::Setup(message));
        }
    };
    // A worker killed by SIGXCPU must not leave a core file (or wake
    // systemd-coredump) per hostile query. If this is refused (a seccomp
    // filter without setrlimit), so is RLIMIT_CPU: the pool is told once.
    let rlimits = limits == Limits::ThisProcess && setrlimit(Resource::RLIMIT_CORE, 0, 0).is_ok();
    if limits == Limits::ThisProcess {
        // SQLite is this process's only user of memory of any size: its
        // heap is capped, so no query can grow the worker without bound.
        let heap = (setup.limits.max_value_bytes as u64)
            .saturating_mul(32)
            .max(MIN_HEAP_BYTES);
        if let Err(error) = database.limit_process_heap(heap) {
            tracing::warn!(%error, "query worker: cannot cap SQLite's heap");
        }
    }
    let time_limit = Duration::from_millis(setup.limits.time_limit_ms);
    reply(
        &mut output,
        &WorkerReply::Ready {
            build: BUILD.to_string(),
            rlimits,
        },
    )?;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request: QueryRequest = serde_json::from_str(&line)?;
        if rlimits {
            limit_cpu(time_limit);
        }
        let answer = match database.query_within(&request.sql, own_deadline(time_limit)) {
            Ok(rows) => WorkerReply::Rows(rows),
            Err(error) => WorkerReply::Failed(error),
        };
        reply(&mut output, &answer)?;
    }
}

/// The progress callback's deadline inside a worker: a little before the
/// pool kills it, so a runaway loop of cheap steps is answered by a worker
/// that lives on (no respawn), while one slow call is still killed at the
/// limit.
pub fn own_deadline(time_limit: Duration) -> Duration {
    time_limit.saturating_sub((time_limit / 10).min(Duration::from_millis(100)))
}

/// The `RLIMIT_CPU` soft limit (whole seconds) for a query that may use
/// `time_limit` on top of `used` so far.
pub fn cpu_limit_seconds(used: Duration, time_limit: Duration) -> u64 {
    (used + time_limit).as_secs() + 1
}

fn limit_cpu(time_limit: Duration) {
    let used = match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let micros =
                usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
            Duration::from_micros(u64::try_from(micros).unwrap_or(0))
        }
        Err(error) => {
            tracing::warn!(%error, "query worker: cannot read its own CPU time");
            return;
        }
    };
    let soft = cpu_limit_seconds(used, time_limit);
    // Only the soft limit moves: an unprivileged process cannot raise its
    // hard limit again once lowered, and the next query needs a higher one.
    let hard = getrlimit(Resource::RLIMIT_CPU).map_or(soft, |(_, hard)| hard);
    if let Err(error) = setrlimit(Resource::RLIMIT_CPU, soft.min(hard), hard) {
        // The pool's kill at the time limit still holds; this is the
        // backstop for a pool that cannot act.
        tracing::warn!(%error, "query worker: cannot set RLIMIT_CPU");
    }
}

fn reply(output: &mut impl Write, reply: &WorkerReply) -> Result<(), WorkerError> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    output.write_all(&line)?;
    output.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup_line(shifts_sql: &str) -> String {
        let setup = Setup {
            shifts_sql: shifts_sql.to_string(),
            limits: DatabaseToolConfig::default(),
        };
        format!("{}\n", serde_json::to_string(&setup).expect("JSON"))
    }

    fn replies(output: &[u8]) -> Vec<WorkerReply> {
        output
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("a reply per line"))
            .collect()
    }

    #[test]
    fn a_worker_answers_each_query_on_its_own_line_until_its_input_ends() {
        let shifts = &crate::scenario::Scenario::embedded().shifts_sql;
        let mut input = setup_line(shifts);
        for sql in [
            "SELECT 1 AS one",
            "DELETE FROM guards",
            "SELECT 'a\nb' AS two",
        ] {
            input
                .push_str(&serde_json::to_string(&QueryRequest { sql: sql.into() }).expect("JSON"));
            input.push('\n');
        }
        let mut output = Vec::new();
        serve_with(input.as_bytes(), &mut output, Limits::Untouched).expect("served");
        assert_eq!(
            replies(&output),
            vec![
                WorkerReply::Ready {
                    build: BUILD.into(),
                    rlimits: false,
                },
                WorkerReply::Rows(serde_json::json!([{"one": 1}])),
                WorkerReply::Failed(QueryError::NotReadOnly),
                WorkerReply::Rows(serde_json::json!([{"two": "a\nb"}])),
            ]
        );
    }

    #[test]
    fn bad_shift_sql_is_answered_and_ends_the_worker() {
        let mut output = Vec::new();
        let outcome = serve_with(
            setup_line("CREATE TABLE (").as_bytes(),
            &mut output,
            Limits::Untouched,
        );
        assert!(matches!(outcome, Err(WorkerError::Setup(_))), "{outcome:?}");
        assert!(matches!(
            replies(&output).as_slice(),
            [WorkerReply::Failed(QueryError::Sql(message))] if message.contains("shifts.sql")
        ));
        assert!(matches!(
            serve_with(&b""[..], Vec::new(), Limits::Untouched),
            Err(WorkerError::NoSetup)
        ));
    }

    #[test]
    fn the_cpu_limit_is_the_used_time_plus_the_limit_rounded_up() {
        let ms = Duration::from_millis;
        assert_eq!(cpu_limit_seconds(ms(0), ms(2_000)), 3);
        assert_eq!(cpu_limit_seconds(ms(300), ms(2_000)), 3);
        assert_eq!(cpu_limit_seconds(ms(999), ms(1)), 2);
        assert_eq!(cpu_limit_seconds(ms(5_000), ms(300)), 6);
        assert_eq!(own_deadline(ms(2_000)), ms(1_900));
        assert_eq!(own_deadline(ms(300)), ms(270));
    }
}
