//! Load as an operator runs it: `heistd services all` and `heistd daemon`
//! as separate processes started from the built binary, the rehearsal
//! model answering at once, durable commits, and N sessions of T turns
//! started through the daemon's admission path (`POST /api/v1/runs` with
//! the admin token). In the same run and at the same concurrency it
//! measures the floor: the HTTP calls a turn makes (model, one tool, memory
//! write) with a bare reqwest client, plus one commit of the same rows
//! (message, tool call, outbox entry) to a SQLite file with the same
//! `synchronous`.
//!
//! Run: `cargo bench --bench load`; options after `--` (or as variables):
//! `--sessions 1,10,100` (`LOAD_SESSIONS`), `--turns 50` (`LOAD_TURNS`),
//! `--synchronous full|normal` (`LOAD_SYNCHRONOUS`), `--store
//! postgres://user@host/db` (`LOAD_STORE`; default `sqlite`) and `--nodes
//! 3` (`LOAD_NODES`, PostgreSQL only; default 1) and `--endpoints 3`
//! (`LOAD_ENDPOINTS`, 1 to 16; default 1). With `--endpoints` above 1 the
//! daemon gets that many `[[llm.endpoints]]` (`m1`, `m2`, ...) instead of
//! `llm.base_url`, all naming the one rehearsal model, so the figures
//! show what picking among several endpoints costs the daemon. With
//! PostgreSQL each N gets a fresh database (`CREATE DATABASE` on the
//! server the URL names, dropped afterwards) and `nodes` daemons on it,
//! each with room for N / nodes sessions; the runs are posted to the nodes in turn and go
//! through the cluster's run queue. The floor stays the SQLite one. The
//! daemon's CPU is then the nodes' sum and its RSS the largest node's. The daemon's turn
//! times come from its own audit trail (each turn's commit timestamp
//! minus the previous one's), its CPU from `/proc/PID/stat` and its peak
//! RSS from `VmHWM`; a fresh daemon and database serve each N. The last
//! `LOAD_DAEMON_WRAPPER="valgrind --tool=callgrind"` runs the daemon under
//! a profiler (its figures are then the profiler's). The last line is the
//! last N's summary:
//! `load: sessions=N turns_per_s=X floor_turns_per_s=Y ratio=R p50_ms=A
//! floor_p50_ms=B p99_ms=C rss_mb=D cpu_ms_per_turn=E`.

// A benchmark prints its figures; there is no heist to keep going.
#![allow(clippy::disallowed_macros)]

use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use heistd::scenario::Scenario;
use heistd::wire::{self, Tool};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags};
use serde_json::{json, Value};
use tokio::time::Instant;

const ADMIN_TOKEN: &str = "load-bench-admin-token-0123456789abcdef";
/// The floor's sessions speak as the planner, whose token carries every
/// tool's scope, so each floor turn can make the one tool call it asks for.
const FLOOR_AGENT: &str = "planner";
/// Turns of the recent transcript the floor sends to the model, as
/// `heist.context_messages` does by default.
const FLOOR_CONTEXT_TURNS: usize = 5;
/// How long one N may take before the bench gives up.
const RUN_LIMIT: Duration = Duration::from_secs(600);

struct Options {
    sessions: Vec<u32>,
    turns: u32,
    synchronous: String,
    /// `None`: SQLite (the default); else the PostgreSQL server's URL, on
    /// which each N gets a database of its own.
    postgres: Option<String>,
    /// Daemons sharing the PostgreSQL database.
    nodes: u32,
    /// Model endpoints in the daemon's `[llm]`; 1 is the `base_url`
    /// shorthand.
    endpoints: u32,
}

/// Per-turn times and throughput of one side (daemon or floor).
struct Measured {
    samples_ms: Vec<f64>,
    wall_seconds: f64,
}

/// The daemon's side of one N: its turn times and what it cost.
struct DaemonMeasured {
    measured: Measured,
    peak_rss_mb: f64,
    cpu_ms: f64,
    companions_cpu_ms: f64,
}

fn main() -> Result<()> {
    let options = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: Options) -> Result<()> {
    let binary = heistd_binary()?;
    let directory = tempfile::tempdir()?;
    let mut companions = start_companions(&binary, directory.path())?;
    let urls = companions.urls.clone();
    println!(
        "load: {} turns per session, synchronous = {}, heistd at {}; load average before: {}",
        options.turns,
        options.synchronous,
        binary.display(),
        load_average()
    );
    if options.endpoints > 1 {
        println!(
            "model: {} [[llm.endpoints]], all on the one rehearsal model",
            options.endpoints
        );
    }
    if let Some(url) = &options.postgres {
        println!(
            "store: PostgreSQL at {url}, {} node(s); a fresh database per N",
            options.nodes
        );
    }
    let mut summaries = Vec::new();
    for &sessions in &options.sessions {
        let floor = floor_run(&urls, directory.path(), sessions, &options).await?;
        let daemon = daemon_run(
            &binary,
            &urls,
            directory.path(),
            sessions,
            &options,
            &companions,
        )
        .await?;
        summaries.push(report(sessions, options.turns, &floor, &daemon));
    }
    companions.stop();
    println!("load average after: {}", load_average());
    for summary in summaries {
        println!("{summary}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Options and processes.

fn options() -> Result<Options> {
    let mut sessions = std::env::var("LOAD_SESSIONS").unwrap_or_else(|_| "1,10,100".into());
    let mut turns = std::env::var("LOAD_TURNS").unwrap_or_else(|_| "50".into());
    let mut synchronous = std::env::var("LOAD_SYNCHRONOUS").unwrap_or_else(|_| "full".into());
    let mut store = std::env::var("LOAD_STORE").unwrap_or_else(|_| "sqlite".into());
    let mut nodes = std::env::var("LOAD_NODES").unwrap_or_else(|_| "1".into());
    let mut endpoints = std::env::var("LOAD_ENDPOINTS").unwrap_or_else(|_| "1".into());
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let target = match argument.as_str() {
            // cargo bench passes `--bench` to every bench binary.
            "--bench" => continue,
            "--sessions" => &mut sessions,
            "--turns" => &mut turns,
            "--synchronous" => &mut synchronous,
            "--store" => &mut store,
            "--nodes" => &mut nodes,
            "--endpoints" => &mut endpoints,
            other => bail!("unknown option {other}; use --sessions 1,10,100 --turns 50 --synchronous full|normal --store sqlite|postgres://... --nodes 1 --endpoints 1"),
        };
        *target = arguments
            .next()
            .with_context(|| format!("{argument} needs a value"))?;
    }
    let sessions = sessions
        .split(',')
        .map(|count| {
            count
                .trim()
                .parse::<u32>()
                .context("--sessions: a list of numbers")
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        sessions.iter().all(|&count| count > 0),
        "--sessions: each at least 1"
    );
    let turns: u32 = turns.parse().context("--turns: a number")?;
    ensure!(turns > 0, "--turns: at least 1");
    ensure!(
        synchronous == "full" || synchronous == "normal",
        "--synchronous: full or normal"
    );
    let postgres = match store.as_str() {
        "sqlite" => None,
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Some(url.to_string())
        }
        other => bail!("--store: sqlite or a postgres:// URL, not {other}"),
    };
    let nodes: u32 = nodes.parse().context("--nodes: a number")?;
    ensure!(nodes > 0, "--nodes: at least 1");
    ensure!(
        nodes == 1 || postgres.is_some(),
        "--nodes: several nodes need --store postgres://..."
    );
    let endpoints: u32 = endpoints
        .parse()
        .with_context(|| format!("--endpoints: a number from 1 to 16, not {endpoints:?}"))?;
    ensure!(
        (1..=16).contains(&endpoints),
        "--endpoints: from 1 to 16, not {endpoints}"
    );
    Ok(Options {
        sessions,
        turns,
        synchronous,
        postgres,
        nodes,
        endpoints,
    })
}

/// The `heistd` binary cargo built for this bench (Cargo builds a
/// package's binaries for its benches and names them in
/// `CARGO_BIN_EXE_<name>`); `LOAD_HEISTD_BIN` points elsewhere.
fn heistd_binary() -> Result<PathBuf> {
    let binary = std::env::var_os("LOAD_HEISTD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_heistd")));
    ensure!(
        binary.is_file(),
        "no heistd binary at {}; build it (cargo build --release) or set LOAD_HEISTD_BIN",
        binary.display()
    );
    Ok(binary)
}

/// A child process that is killed when dropped.
struct Process {
    child: Child,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Companions {
    process: Process,
    /// Each companion's base URL, as it printed it.
    urls: BTreeMap<String, String>,
}

impl Companions {
    fn stop(&mut self) {
        self.process.stop();
    }
}

/// `heistd services all` on ephemeral ports; each companion prints the
/// URL it listens on.
fn start_companions(binary: &Path, directory: &Path) -> Result<Companions> {
    let ports = wire::COMPANION_NAMES
        .map(|name| format!("{name} = 0"))
        .join("\n");
    let config = directory.join("services.toml");
    // Every session of the daemon and of the floor's bare client calls from
    // 127.0.0.1, and the floor's as one client (the planner): the
    // per-source connection cap (64 by default) and the database tool's
    // per-client share of its workers (three quarters) must cover a hundred
    // sessions at once, which the defaults, made against one hostile local
    // process, do not.
    std::fs::write(
        &config,
        format!(
            "[http]\nmax_connections_per_ip = 512\n\n\
             [companions.database_query]\nmax_concurrent_queries = 136\n\n\
             [companions.ports]\n{ports}\n"
        ),
    )?;
    let mut child = Command::new(binary)
        .args(["services", "all", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start heistd services all")?;
    let stdout = child.stdout.take().context("services' stdout")?;
    let process = Process { child };
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut urls = BTreeMap::new();
    while urls.len() < wire::COMPANION_NAMES.len() {
        let line = lines.next().context("services exited before listening")??;
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [name, "listening", "on", url] = words[..] {
            urls.insert(name.to_string(), url.to_string());
        }
    }
    // Keep reading so that the pipe never fills.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Companions { process, urls })
}

/// The daemon's config: the companions' URLs, the store (`store` is its
/// TOML), room for `sessions` at once and the rehearsal model as
/// `llm.base_url` (one endpoint) or as `endpoints` `[[llm.endpoints]]`;
/// everything else as built in.
fn daemon_config(
    urls: &BTreeMap<String, String>,
    store: &str,
    sessions: u32,
    endpoints: u32,
) -> String {
    let mut text = format!("{store}[daemon]\nmax_concurrent_sessions = {sessions}\n");
    for service in heistd::config::SERVICE_NAMES {
        text.push_str(&format!(
            "[services.{service}]\nbase_url = \"{}\"\n",
            urls[service]
        ));
    }
    let model_url = format!(
        "{}{}",
        urls[wire::Companion::Rehearsal.name()],
        wire::OPENAI_PREFIX
    );
    if endpoints == 1 {
        text.push_str(&format!("[llm]\nbase_url = \"{model_url}\"\n"));
        return text;
    }
    // `llm.base_url` and `llm.model` stay at their defaults: either beside
    // the list is an error.
    for endpoint in 1..=endpoints {
        text.push_str(&format!(
            "[[llm.endpoints]]\nname = \"m{endpoint}\"\nbase_url = \"{model_url}\"\nmodel = \"{}\"\n",
            wire::REHEARSAL_MODEL_ID
        ));
    }
    text
}

/// Starts `heistd daemon` and returns it with its admin API's URL, read
/// from the `STATUS=` it sends to NOTIFY_SOCKET once ready.
fn start_daemon(binary: &Path, directory: &Path, config: &str) -> Result<(Process, String)> {
    let config_path = directory.join("heistd.toml");
    std::fs::write(&config_path, config)?;
    let socket_path = directory.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(120)))?;
    let log = std::fs::File::create(directory.join("daemon.log"))?;
    // `LOAD_DAEMON_WRAPPER="valgrind --tool=callgrind"` profiles the daemon.
    let wrapper = std::env::var("LOAD_DAEMON_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    let child = command
        .args(["daemon", "--config"])
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("HEISTD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HEISTD_DAEMON__ADMIN_ADDRESS", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start heistd daemon")?;
    let process = Process { child };
    let mut buffer = vec![0u8; 4096];
    loop {
        let length = socket
            .recv(&mut buffer)
            .context("no STATUS from the daemon within 120 s (see daemon.log)")?;
        let message = String::from_utf8_lossy(&buffer[..length]).to_string();
        let address = message
            .lines()
            .find_map(|line| line.strip_prefix("STATUS=admin API on "))
            .and_then(|rest| rest.split(';').next());
        if let Some(address) = address {
            return Ok((process, format!("http://{}", address.trim())));
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon's side.

async fn daemon_run(
    binary: &Path,
    urls: &BTreeMap<String, String>,
    root: &Path,
    sessions: u32,
    options: &Options,
    companions: &Companions,
) -> Result<DaemonMeasured> {
    let directory = root.join(format!("daemon-{sessions}"));
    std::fs::create_dir_all(&directory)?;
    let trail = match &options.postgres {
        None => Trail::Sqlite(directory.join("audit.db")),
        Some(server) => Trail::Postgres(Box::new(PgDatabase::create(server).await?)),
    };
    let per_node = sessions.div_ceil(options.nodes);
    let mut daemons = Vec::new();
    for node in 0..options.nodes {
        let node_directory = if options.nodes == 1 {
            directory.clone()
        } else {
            directory.join(format!("node-{node}"))
        };
        std::fs::create_dir_all(&node_directory)?;
        let config = daemon_config(
            urls,
            &trail.store_toml(&options.synchronous, node),
            per_node,
            options.endpoints,
        );
        daemons.push(tokio::task::block_in_place(|| {
            start_daemon(binary, &node_directory, &config)
        })?);
    }
    let http = heistd::clients::http_client()?;
    for (_, admin) in &daemons {
        wait_until_ready(&http, admin).await?;
    }
    let pids: Vec<u32> = daemons.iter().map(|(daemon, _)| daemon.pid()).collect();
    let cpu_before = cpu_ms_of(&pids)?;
    let companions_before = cpu_ms(companions.process.pid())?;
    let started_at = Utc::now();
    for session in 0..sessions {
        let (_, admin) = &daemons[(session % options.nodes) as usize];
        start_run(&http, admin, options.turns, u64::from(session) + 1).await?;
    }
    wait_until_done(&trail).await?;
    let cpu_ms_used = cpu_ms_of(&pids)? - cpu_before;
    let companions_cpu_ms = cpu_ms(companions.process.pid())? - companions_before;
    let mut peak_rss_mb: f64 = 0.0;
    for pid in &pids {
        peak_rss_mb = peak_rss_mb.max(self::peak_rss_mb(*pid)?);
    }
    for (daemon, _) in &mut daemons {
        daemon.stop();
    }
    let measured = turn_times(&trail, started_at, sessions * options.turns).await?;
    if let Trail::Postgres(database) = trail {
        database.drop_database().await?;
    }
    Ok(DaemonMeasured {
        measured,
        peak_rss_mb,
        cpu_ms: cpu_ms_used,
        companions_cpu_ms,
    })
}

/// Where the daemons' audit trail is, to read the turn times back.
enum Trail {
    Sqlite(PathBuf),
    Postgres(Box<PgDatabase>),
}

impl Trail {
    /// The `[store]` (and, with PostgreSQL, `[cluster]`) of node `node`.
    fn store_toml(&self, synchronous: &str, node: u32) -> String {
        match self {
            Trail::Sqlite(database) => format!(
                "[store]\npath = \"{}\"\nsynchronous = \"{synchronous}\"\n",
                database.display()
            ),
            Trail::Postgres(database) => format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{}\"\n[cluster]\nnode_id = \"load-{node}\"\n",
                database.url
            ),
        }
    }
}

/// A database made for one N on the PostgreSQL server, dropped after it.
struct PgDatabase {
    server: String,
    name: String,
    url: String,
    client: tokio_postgres::Client,
}

impl PgDatabase {
    async fn create(server: &str) -> Result<Self> {
        let suffix: u64 = rand::Rng::random(&mut rand::rng());
        let name = format!("heistd_load_{suffix:016x}");
        pg_connect(server)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE on {server}"))?;
        let mut url = reqwest::Url::parse(server).context("--store: a URL")?;
        url.set_path(&name);
        let url = url.to_string();
        let client = pg_connect(&url).await?;
        Ok(Self {
            server: server.to_string(),
            name,
            url,
            client,
        })
    }

    async fn drop_database(self) -> Result<()> {
        drop(self.client);
        pg_connect(&self.server)
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .context("DROP DATABASE")?;
        Ok(())
    }
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Summed CPU of several processes, in milliseconds.
fn cpu_ms_of(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|pid| cpu_ms(*pid)).sum()
}

/// Readiness is the daemon's own judgement that its services are up.
async fn wait_until_ready(http: &reqwest::Client, admin: &str) -> Result<()> {
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = http.get(format!("{admin}/readyz")).send().await;
        if ready.is_ok_and(|response| response.status().is_success()) {
            return Ok(());
        }
        ensure!(
            Instant::now() < limit,
            "the daemon was not ready within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_run(http: &reqwest::Client, admin: &str, turns: u32, seed: u64) -> Result<()> {
    let response = http
        .post(format!("{admin}/api/v1/runs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "turns": turns, "seed": seed }))
        .send()
        .await?;
    let status = response.status();
    ensure!(
        status.as_u16() == 202,
        "POST /api/v1/runs answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Polls the audit store (read-only, beside the daemon's writer) until no
/// session is active (or, with PostgreSQL, queued).
async fn wait_until_done(trail: &Trail) -> Result<()> {
    const UNFINISHED: &str = "SELECT COUNT(*) FROM sessions WHERE status IN ('active', 'queued')";
    let connection = match trail {
        Trail::Sqlite(database) => Some(Connection::open_with_flags(
            database,
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?),
        Trail::Postgres(_) => None,
    };
    let limit = Instant::now() + RUN_LIMIT;
    loop {
        let active: i64 = match (&connection, trail) {
            (Some(connection), _) => connection.query_row(UNFINISHED, [], |row| row.get(0))?,
            (None, Trail::Postgres(database)) => {
                database.client.query_one(UNFINISHED, &[]).await?.get(0)
            }
            (None, Trail::Sqlite(_)) => unreachable!("SQLite has its connection"),
        };
        if active == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < limit,
            "sessions still active after {RUN_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each turn's time is its commit's timestamp minus the previous turn's
/// (the session's start for turn 1); the wall time runs from just before
/// the first `POST /api/v1/runs` to the last session's end.
async fn turn_times(trail: &Trail, started_at: DateTime<Utc>, expected: u32) -> Result<Measured> {
    const UNFINISHED: &str = "SELECT COUNT(*) FROM sessions WHERE status != 'completed'";
    const FAILED: &str = "SELECT COUNT(*) FROM messages WHERE error IS NOT NULL";
    const TURNS: &str =
        "SELECT s.start_time, m.timestamp FROM messages m JOIN sessions s USING (session_id)
         ORDER BY m.session_id, m.turn_id";
    const ENDED: &str = "SELECT MAX(end_time) FROM sessions";
    let (unfinished, failed, rows, ended): (i64, i64, Vec<(String, String)>, String) = match trail {
        Trail::Sqlite(database) => {
            let connection =
                Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let mut statement = connection.prepare(TURNS)?;
            let rows = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            (
                connection.query_row(UNFINISHED, [], |row| row.get(0))?,
                connection.query_row(FAILED, [], |row| row.get(0))?,
                rows,
                connection.query_row(ENDED, [], |row| row.get(0))?,
            )
        }
        Trail::Postgres(database) => {
            let client = &database.client;
            let rows = client
                .query(TURNS, &[])
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            (
                client.query_one(UNFINISHED, &[]).await?.get(0),
                client.query_one(FAILED, &[]).await?.get(0),
                rows,
                client.query_one(ENDED, &[]).await?.get(0),
            )
        }
    };
    ensure!(unfinished == 0, "{unfinished} sessions did not complete");
    ensure!(failed == 0, "{failed} turns failed");
    ensure!(
        rows.len() == expected as usize,
        "{} turns committed, {expected} expected",
        rows.len()
    );
    let mut samples_ms = Vec::with_capacity(rows.len());
    let mut previous: Option<(String, DateTime<Utc>)> = None;
    for (start_time, committed) in rows {
        let committed = parse_time(&committed)?;
        let since = match &previous {
            Some((session_start, last)) if *session_start == start_time => *last,
            _ => parse_time(&start_time)?,
        };
        samples_ms.push((committed - since).as_seconds_f64() * 1000.0);
        previous = Some((start_time, committed));
    }
    let wall_seconds = (parse_time(&ended)? - started_at).as_seconds_f64();
    Ok(Measured {
        samples_ms,
        wall_seconds,
    })
}

fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("timestamp {text}"))?
        .with_timezone(&Utc))
}

/// User plus system CPU of a process so far, in milliseconds.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces, in brackets.
    let after_name = stat.rsplit_once(')').context("/proc stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 1000.0 / clock_ticks_per_second())
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on; `getconf`
/// says otherwise if it is not.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

fn peak_rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kilobytes: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/PID/status")?;
    Ok(kilobytes / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------
// The floor.

/// What every floor session shares: one pooled client (as heistd shares
/// one), the planner's token, the companions' URLs and the database.
struct Floor {
    http: reqwest::Client,
    token: String,
    urls: BTreeMap<String, String>,
    system_prompt: String,
    /// One writer, as heistd's store has one connection.
    database: Arc<Mutex<Connection>>,
    session_ids: Vec<String>,
}

async fn floor_run(
    urls: &BTreeMap<String, String>,
    root: &Path,
    sessions: u32,
    options: &Options,
) -> Result<Measured> {
    let database = root.join(format!("floor-{sessions}.db"));
    let floor = Arc::new(floor_setup(urls, &database, &options.synchronous, sessions).await?);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for session in 0..sessions {
        let floor = floor.clone();
        let turns = options.turns;
        tasks.push(tokio::spawn(async move {
            let session_id = floor.session_ids[session as usize].clone();
            floor_session(&floor, &session_id, turns, u64::from(session) + 1).await
        }));
    }
    let mut samples_ms = Vec::new();
    for task in tasks {
        samples_ms.extend(task.await??);
    }
    Ok(Measured {
        samples_ms,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The floor's database has heistd's schema (so its indexes are the ones a
/// turn's rows update), made by `StoreHandle::open_sqlite`; its commits are
/// bare SQL.
async fn floor_setup(
    urls: &BTreeMap<String, String>,
    database: &Path,
    synchronous: &str,
    sessions: u32,
) -> Result<Floor> {
    let config = heistd::config::load(None, Vec::new())?;
    let level = match synchronous {
        "normal" => heistd::config::Synchronous::Normal,
        _ => heistd::config::Synchronous::Full,
    };
    // The sessions' rows, which the turn rows refer to.
    let store = heistd::store::StoreHandle::open_sqlite(database, level).await?;
    let mut session_ids = Vec::with_capacity(sessions as usize);
    for session in 0..sessions {
        let new = heistd::store::NewSession {
            scenario: "floor".into(),
            seed: u64::from(session) + 1,
            planned_turns: 0,
            schedule: None,
            scheduled_time: None,
            trigger: None,
        };
        session_ids.push(store.create_session(new).await?);
    }
    drop(store);
    let connection = Connection::open(database)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", synchronous.to_uppercase())?;
    let scenario = Scenario::from_config(None)?;
    let agent = scenario
        .agents
        .iter()
        .find(|agent| agent.name == FLOOR_AGENT)
        .context("the scenario's planner")?;
    let secret = config
        .client_secret(FLOOR_AGENT)
        .context("the planner's secret")?;
    // The tools' scopes and memory's, as the scenario grants the planner:
    // the memory service refuses a token without them.
    let mut scopes: Vec<String> = Tool::ALL.iter().map(|tool| tool.scope()).collect();
    scopes.extend(["memory:read".to_string(), "memory:write".to_string()]);
    let http = heistd::clients::http_client()?;
    let token: Value = http
        .post(format!("{}{}", urls["oauth"], wire::TOKEN_PATH))
        .json(
            &json!({ "grant_type": "client_credentials", "client_id": FLOOR_AGENT,
                       "client_secret": secret, "scope": scopes.join(" ") }),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(Floor {
        http,
        token: token["access_token"]
            .as_str()
            .context("a token")?
            .to_string(),
        urls: urls.clone(),
        system_prompt: format!("{}\n\nThe job: {}", agent.system_prompt, scenario.objective),
        database: Arc::new(Mutex::new(connection)),
        session_ids,
    })
}

/// T turns of model call, one tool call, commit, memory write; the
/// transcript is kept in memory.
async fn floor_session(floor: &Floor, session_id: &str, turns: u32, seed: u64) -> Result<Vec<f64>> {
    let mut samples_ms = Vec::with_capacity(turns as usize);
    let mut transcript: VecDeque<String> = VecDeque::new();
    for turn_id in 1..=turns {
        let started = Instant::now();
        let user = format!(
            "The conversation so far:\n{}\nTurn {turn_id} of {turns}. It is your turn, {FLOOR_AGENT}. Reply in character.",
            transcript.iter().map(String::as_str).collect::<String>()
        );
        let message = floor_chat(floor, &user, seed).await?;
        let request = wire::parse_tool_requests(&message)
            .into_iter()
            .next()
            .context("the rehearsal reply asks for a tool")?;
        let result = floor_tool(floor, &request).await?;
        let payload = json!({ "agent_id": FLOOR_AGENT, "turn_id": turn_id,
                              "message": message, "game_session_id": session_id });
        let row = FloorRow {
            session_id: session_id.to_string(),
            turn_id,
            message: message.clone(),
            tool: request.tool.clone(),
            parameter: request.parameter.clone(),
            result: result.clone(),
            payload: payload.to_string(),
        };
        let database = floor.database.clone();
        tokio::task::spawn_blocking(move || floor_commit(&database, &row)).await??;
        floor
            .http
            .post(format!(
                "{}{}",
                floor.urls["memory"],
                wire::STORE_MEMORY_PATH
            ))
            .header(
                wire::IDEMPOTENCY_KEY_HEADER,
                format!("{session_id}:{turn_id}"),
            )
            .bearer_auth(&floor.token)
            .json(&payload)
            .send()
            .await?
            .error_for_status()?;
        samples_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        transcript.push_back(format!(
            "{FLOOR_AGENT} (planner), turn {turn_id}: {message}\n  [{} result: {result}]\n",
            request.tool
        ));
        if transcript.len() > FLOOR_CONTEXT_TURNS {
            transcript.pop_front();
        }
    }
    Ok(samples_ms)
}

/// The model call, with the body heistd's LLM client sends.
async fn floor_chat(floor: &Floor, user: &str, seed: u64) -> Result<String> {
    let reply: Value = floor
        .http
        .post(format!(
            "{}{}{}",
            floor.urls[wire::Companion::Rehearsal.name()],
            wire::OPENAI_PREFIX,
            wire::CHAT_COMPLETIONS_PATH
        ))
        .json(&json!({
            "model": wire::REHEARSAL_MODEL_ID,
            "messages": [
                { "role": "system", "content": floor.system_prompt },
                { "role": "user", "content": user },
            ],
            "temperature": 0.7,
            "max_tokens": 400,
            "seed": seed,
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let content = reply["choices"][0]["message"]["content"]
        .as_str()
        .context("the model's reply")?;
    Ok(content.trim().to_string())
}

async fn floor_tool(floor: &Floor, request: &wire::ToolRequest) -> Result<String> {
    let tool = Tool::parse(&request.tool).context("a known tool")?;
    let reply: Value = floor
        .http
        .post(format!("{}{}", floor.urls[tool.name()], tool.path()))
        .bearer_auth(&floor.token)
        .json(&json!({ tool.parameter_field(): request.parameter }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(reply["success"] == true, "tool failed: {reply}");
    Ok(match &reply["result"] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    })
}

/// A turn's rows as the floor commits them.
struct FloorRow {
    session_id: String,
    turn_id: u32,
    message: String,
    tool: String,
    parameter: String,
    result: String,
    payload: String,
}

/// The message, the tool call and the outbox entry in one transaction.
fn floor_commit(database: &Mutex<Connection>, row: &FloorRow) -> Result<()> {
    let mut connection = database.lock();
    let transaction = connection.transaction()?;
    let now = heistd::store::timestamp(Utc::now());
    transaction.execute(
        "INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp)
         VALUES (?1, ?2, ?3, 'planner', ?4, ?5)",
        params![row.session_id, row.turn_id, FLOOR_AGENT, row.message, now],
    )?;
    transaction.execute(
        "INSERT INTO tool_usage (session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
        params![row.session_id, row.turn_id, FLOOR_AGENT, row.tool, row.parameter, row.result, now],
    )?;
    transaction.execute(
        "INSERT INTO outbox (session_id, turn_id, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![row.session_id, row.turn_id, row.payload, now],
    )?;
    transaction.commit()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Reporting.

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

/// Prints the table for one N and returns its summary line.
fn report(sessions: u32, turns: u32, floor: &Measured, daemon: &DaemonMeasured) -> String {
    let total = f64::from(sessions * turns);
    let mut floor_samples = floor.samples_ms.clone();
    floor_samples.sort_by(f64::total_cmp);
    let mut daemon_samples = daemon.measured.samples_ms.clone();
    daemon_samples.sort_by(f64::total_cmp);
    let floor_rate = total / floor.wall_seconds;
    let daemon_rate = total / daemon.measured.wall_seconds;
    println!(
        "\n{sessions} sessions x {turns} turns (load average {})",
        load_average()
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "turns/s"
    );
    for (name, samples, rate) in [
        ("floor", &floor_samples, floor_rate),
        ("heistd", &daemon_samples, daemon_rate),
    ] {
        println!(
            "{name:<8} {:>10.3} {:>10.3} {:>10.0}",
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            rate
        );
    }
    println!(
        "daemon: peak RSS {:.1} MB, CPU {:.3} ms/turn; companions CPU {:.3} ms/turn",
        daemon.peak_rss_mb,
        daemon.cpu_ms / total,
        daemon.companions_cpu_ms / total
    );
    format!(
        "load: sessions={sessions} turns_per_s={daemon_rate:.0} floor_turns_per_s={floor_rate:.0} ratio={:.2} p50_ms={:.3} floor_p50_ms={:.3} p99_ms={:.3} rss_mb={:.1} cpu_ms_per_turn={:.3}",
        daemon_rate / floor_rate,
        percentile(&daemon_samples, 0.5),
        percentile(&floor_samples, 0.5),
        percentile(&daemon_samples, 0.99),
        daemon.peak_rss_mb,
        daemon.cpu_ms / total
    )
}
