//! The database tool's pool of query worker processes: each query runs in
//! a worker (`services::query_worker`, the heistd binary re-executed as
//! `heistd services query-worker`), and a worker still busy at the time
//! limit is killed (SIGKILL) and reaped before the tool answers, then
//! replaced.
//!
//! Why processes, not bounded inputs: SQLite's progress callback and
//! `sqlite3_interrupt` act between steps, never inside one function call,
//! and no list of slow inputs can be shown complete (`instr`, `replace`,
//! `like`, `glob`, `hex` over values near `SQLITE_LIMIT_LENGTH`, and ~150
//! such calls fit in a 2,000-character query). A thread cannot be stopped
//! from outside; a process can. So a query's wall time is bounded by the
//! kill, and its CPU time with it: a query runs on one thread, which cannot
//! use more CPU than the wall time it is given. The worker's own
//! `RLIMIT_CPU` is the backstop for when this pool cannot act (stalled, or
//! gone). The cost: a worker is a process of some 20 MB (debug build) that
//! starts in ~30 ms, and a query crosses a pipe (well under a millisecond).
//!
//! Admission, in order: at most three quarters of the pool's workers (at
//! least one) per client (the token's `sub`), refused at once with 429
//! beyond it (as nginx's `limit_conn`), so one client flooding the tool
//! cannot take every worker from the others; then a free worker, waited
//! for no longer than the time limit (503 "busy" after it). The time limit
//! runs from then and covers starting a worker if none is warm. Idle
//! workers are kept (at most [`MAX_IDLE_WORKERS`]) and one spare is started
//! in the background whenever none is idle, so a query rarely waits for a
//! process to start. A dropped request (the client went away) kills its
//! worker too.
//!
//! It must not run SQL itself, and no worker may outlive its query's reply.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::database::QueryError;
use super::query_worker::{QueryRequest, Setup, WorkerReply, BUILD, WORKER_SUBCOMMAND};
use crate::config::DatabaseToolConfig;

/// The program that runs workers when `companions.database_query.worker_program`
/// is not set: this process's own binary, through `/proc/self/exe` (still
/// the running build after a package upgrade replaced the file). Cargo's
/// integration tests and benches run from `target/<profile>/deps/`, with
/// the heistd binary built one level up: that one, for them.
pub fn default_worker_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|running| cargo_binary_beside(&running))
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

fn cargo_binary_beside(running: &Path) -> Option<PathBuf> {
    let deps = running.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    let binary = deps.parent()?.join(env!("CARGO_PKG_NAME"));
    binary.is_file().then_some(binary)
}

/// Idle workers kept warm after a burst (each is a process of some 10-20 MB);
/// more are started when a burst needs them.
pub const MAX_IDLE_WORKERS: usize = 4;

/// Set once a worker's refused limits have been logged: once a process.
static RLIMITS_REFUSED_LOGGED: AtomicBool = AtomicBool::new(false);

pub struct QueryPool {
    /// The heistd binary that runs workers (`companions.database_query.worker_program`).
    program: PathBuf,
    /// The first line every new worker is sent (shift SQL and limits).
    setup_line: Vec<u8>,
    limits: DatabaseToolConfig,
    /// Warm workers waiting for a query.
    idle: Mutex<Vec<Worker>>,
    /// Queries on workers at most (`max_concurrent_queries`).
    permits: Semaphore,
    /// Queries admitted per client, running or waiting for a worker; an
    /// entry goes when its count reaches zero.
    per_client: Mutex<HashMap<String, usize>>,
    /// Set while a spare worker is being started, so only one is.
    warming: AtomicBool,
}

impl QueryPool {
    /// A pool whose workers load `shifts_sql`. Checks only that `program`
    /// exists; workers start on demand (and one in the background at once
    /// when called inside a runtime).
    pub fn new(
        program: PathBuf,
        shifts_sql: &str,
        limits: &DatabaseToolConfig,
    ) -> Result<Arc<Self>, String> {
        if !program.is_file() {
            return Err(format!(
                "the query worker program {} is not a file (companions.database_query.worker_program)",
                program.display()
            ));
        }
        let setup = Setup {
            shifts_sql: shifts_sql.to_string(),
            limits: limits.clone(),
        };
        let mut setup_line = serde_json::to_vec(&setup).map_err(|error| error.to_string())?;
        setup_line.push(b'\n');
        let pool = Arc::new(Self {
            program,
            setup_line,
            limits: limits.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(limits.max_concurrent_queries.max(1)),
            per_client: Mutex::new(HashMap::new()),
            warming: AtomicBool::new(false),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            pool.warm_spare();
        }
        Ok(pool)
    }

    /// Runs `sql` for `client` on a worker, answering within the time limit
    /// (plus the wait for a free worker, itself at most the time limit).
    pub async fn query(
        self: &Arc<Self>,
        client: &str,
        sql: String,
    ) -> Result<serde_json::Value, QueryError> {
        let _share = self.admit(client)?;
        let time_limit = self.time_limit();
        let _permit = tokio::time::timeout(time_limit, self.permits.acquire())
            .await
            .map_err(|_| QueryError::Busy)?
            .map_err(|_| QueryError::Busy)?;
        let deadline = tokio::time::Instant::now() + time_limit;
        let mut worker = match tokio::time::timeout_at(deadline, self.take()).await {
            Ok(taken) => taken?,
            Err(_) => return Err(QueryError::TooSlow(time_limit)),
        };
        match tokio::time::timeout_at(deadline, worker.ask(&sql, self.max_line_bytes())).await {
            Ok(Ok(outcome)) => {
                self.give_back(worker);
                outcome
            }
            Ok(Err(broken)) => {
                let signal = worker.kill().await;
                self.warm_spare();
                Err(match signal {
                    // Its own RLIMIT_CPU stopped it.
                    Some(signal) if signal == nix::sys::signal::Signal::SIGXCPU as i32 => {
                        QueryError::TooSlow(time_limit)
                    }
                    _ => broken,
                })
            }
            Err(_) => {
                // Killed and reaped before the answer: nothing of this query
                // runs on once the client has its reply.
                worker.kill().await;
                self.warm_spare();
                Err(QueryError::TooSlow(time_limit))
            }
        }
    }

    /// The most queries one client may have admitted at once: three
    /// quarters of the workers, so a quarter is always left to the others.
    pub fn per_client_limit(&self) -> usize {
        let workers = self.limits.max_concurrent_queries.max(1);
        workers - workers / 4
    }

    fn time_limit(&self) -> Duration {
        Duration::from_millis(self.limits.time_limit_ms)
    }

    /// The longest line a worker may send: the reply cap, with room for
    /// JSON escapes (`\u0000` is six bytes for one).
    fn max_line_bytes(&self) -> usize {
        self.limits.max_reply_bytes.saturating_mul(6) + 64 * 1024
    }

    fn admit(self: &Arc<Self>, client: &str) -> Result<ClientShare, QueryError> {
        let limit = self.per_client_limit();
        let mut per_client = self.per_client.lock();
        let admitted = per_client.entry(client.to_string()).or_insert(0);
        if *admitted >= limit {
            return Err(QueryError::TooManyForClient(limit));
        }
        *admitted += 1;
        Ok(ClientShare {
            pool: self.clone(),
            client: client.to_string(),
        })
    }

    /// A warm worker, or a new one; starts a spare when none is left idle.
    async fn take(self: &Arc<Self>) -> Result<Worker, QueryError> {
        let (idle, none_left) = {
            let mut idle = self.idle.lock();
            let worker = idle.pop();
            (worker, idle.is_empty())
        };
        if none_left {
            self.warm_spare();
        }
        match idle {
            Some(worker) => Ok(worker),
            None => Worker::start(&self.program, &self.setup_line).await,
        }
    }

    /// Keeps `worker` warm, unless [`MAX_IDLE_WORKERS`] already are (then
    /// dropping it kills it).
    fn give_back(&self, worker: Worker) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_WORKERS {
            idle.push(worker);
        }
    }

    /// Starts one worker in the background for the idle list, unless one is
    /// being started already.
    fn warm_spare(self: &Arc<Self>) {
        if self.warming.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            // Bounded: a worker that never finishes its handshake is dropped
            // (killed with it) rather than leaving `warming` set for good.
            let started = Worker::start(&pool.program, &pool.setup_line);
            match tokio::time::timeout(pool.time_limit().max(SPARE_START_LIMIT), started).await {
                Ok(Ok(worker)) => pool.give_back(worker),
                Ok(Err(error)) => tracing::error!(%error, "cannot start a database query worker"),
                Err(_) => tracing::error!(
                    "a database query worker did not finish starting in time; it was stopped"
                ),
            }
            pool.warming.store(false, Ordering::Release);
        });
    }
}

/// The least time a spare worker gets to start and load the shift data.
const SPARE_START_LIMIT: Duration = Duration::from_secs(5);

/// One client's admitted query; gives its place back when dropped.
struct ClientShare {
    pool: Arc<QueryPool>,
    client: String,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut per_client = self.pool.per_client.lock();
        if let Some(admitted) = per_client.get_mut(&self.client) {
            *admitted = admitted.saturating_sub(1);
            if *admitted == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// A running worker process and its pipes. Dropping it kills the process
/// (`kill_on_drop`): a request dropped mid-query takes its worker with it.
struct Worker {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts `program services query-worker` with an empty environment (a worker
    /// running hostile SQL holds no secret) and waits for its handshake.
    async fn start(program: &Path, setup_line: &[u8]) -> Result<Self, QueryError> {
        let failed = |what: &str, error: &dyn std::fmt::Display| {
            QueryError::WorkerFailed(format!("{what} {}: {error}", program.display()))
        };
        let mut child = Command::new(program)
            .args(["services", WORKER_SUBCOMMAND])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| failed("cannot start", &error))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(failed("no pipes to", &"stdin or stdout missing"));
        };
        let mut worker = Self {
            child,
            input,
            output: BufReader::new(output),
        };
        worker
            .input
            .write_all(setup_line)
            .await
            .map_err(|error| failed("cannot set up", &error))?;
        match worker.read_reply(64 * 1024).await? {
            WorkerReply::Ready { build, rlimits } if build == BUILD => {
                if !rlimits && !RLIMITS_REFUSED_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "database query workers cannot set RLIMIT_CPU (is setrlimit filtered?); \
                         only the kill at the time limit bounds a query"
                    );
                }
                Ok(worker)
            }
            WorkerReply::Ready { build, .. } => Err(failed(
                "refused a worker of another build",
                &format!("{build}, not {BUILD}"),
            )),
            WorkerReply::Failed(error) => Err(error),
            WorkerReply::Rows(_) => Err(failed("out of step:", &"rows before any query")),
        }
    }

    /// Sends one query and reads its answer. Not cancel-safe: a worker
    /// whose `ask` was cut short must be killed.
    async fn ask(
        &mut self,
        sql: &str,
        max_line_bytes: usize,
    ) -> Result<Result<serde_json::Value, QueryError>, QueryError> {
        let mut line = serde_json::to_vec(&QueryRequest { sql: sql.into() })
            .map_err(|error| QueryError::WorkerFailed(error.to_string()))?;
        line.push(b'\n');
        self.input
            .write_all(&line)
            .await
            .map_err(|error| QueryError::WorkerFailed(format!("sending the query: {error}")))?;
        match self.read_reply(max_line_bytes).await? {
            WorkerReply::Rows(rows) => Ok(Ok(rows)),
            WorkerReply::Failed(error) => Ok(Err(error)),
            WorkerReply::Ready { .. } => Err(QueryError::WorkerFailed(
                "out of step: a handshake instead of an answer".into(),
            )),
        }
    }

    /// One line, at most `max_bytes` long, parsed.
    async fn read_reply(&mut self, max_bytes: usize) -> Result<WorkerReply, QueryError> {
        let mut line = Vec::new();
        let read = (&mut self.output)
            .take(max_bytes as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|error| QueryError::WorkerFailed(format!("reading its answer: {error}")))?;
        if read == 0 || line.last() != Some(&b'\n') {
            return Err(QueryError::WorkerFailed(if read == 0 {
                "it exited before answering".into()
            } else {
                format!("an answer over {max_bytes} bytes")
            }));
        }
        serde_json::from_slice(&line).map_err(|error| {
            QueryError::WorkerFailed(format!("an answer that is not JSON: {error}"))
        })
    }

    /// Kills the process and waits for it; the signal that ended it, if one did.
    async fn kill(mut self) -> Option<i32> {
        let _ = self.child.start_kill();
        let status = self.child.wait().await.ok()?;
        std::os::unix::process::ExitStatusExt::signal(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool that never starts a worker: built outside a runtime, and
    /// only admission is asked of it.
    fn pool(max_concurrent_queries: usize) -> Arc<QueryPool> {
        let limits = DatabaseToolConfig {
            max_concurrent_queries,
            ..DatabaseToolConfig::default()
        };
        QueryPool::new(PathBuf::from("/bin/sh"), "", &limits).expect("a pool")
    }

    #[test]
    fn one_client_gets_three_quarters_of_the_workers_and_its_places_come_back() {
        let sizes: Vec<usize> = [1, 2, 4, 16]
            .into_iter()
            .map(|workers| pool(workers).per_client_limit())
            .collect();
        assert_eq!(sizes, vec![1, 2, 3, 12]);

        let pool = pool(16);
        let hacker: Vec<_> = (0..12)
            .map(|_| pool.admit("hacker").expect("within the share"))
            .collect();
        assert_eq!(
            pool.admit("hacker").err(),
            Some(QueryError::TooManyForClient(12))
        );
        assert_eq!(QueryError::TooManyForClient(12).status(), 429);
        let planner = pool.admit("planner").expect("another client's share");
        drop(hacker);
        assert!(
            pool.admit("hacker").is_ok(),
            "places come back when dropped"
        );
        drop(planner);
        assert!(
            pool.per_client.lock().is_empty(),
            "no entry outlives its queries"
        );
    }

    #[test]
    fn a_missing_worker_program_is_named() {
        let limits = DatabaseToolConfig::default();
        let error = QueryPool::new(PathBuf::from("/nonexistent/heistd"), "", &limits)
            .err()
            .expect("refused");
        assert!(
            error.contains("/nonexistent/heistd") && error.contains("worker_program"),
            "{error}"
        );
    }
}
