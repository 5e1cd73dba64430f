//! The `heistd` binary as a user runs it: exit codes and messages.

use std::path::Path;
use std::process::{Command, Output};

use heistd::store::StoreHandle;

use crate::support;

fn heistd(arguments: &[&str], directory: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(arguments)
        .current_dir(directory)
        .env_remove("RUST_LOG")
        .output()
        .expect("heistd runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_names_the_key_and_file_and_exits_1() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cases: &[(&str, &str)] = &[
        (
            "[llm]\nmodel = \"x\"\nbase_ur = \"http://x\"\n",
            "llm.base_ur",
        ),
        ("[heist]\nturns = \"twelve\"\n", "heist.turns"),
        (
            "[services.file_reader]\ntimeout_ms = true\n",
            "services.file_reader.timeout_ms",
        ),
        ("[store\npath = 1\n", "bad.toml"),
    ];
    for (contents, key) in cases {
        let path = directory.path().join("bad.toml");
        std::fs::write(&path, contents).expect("write");
        let output = heistd(
            &["config", "check", "--config", "bad.toml"],
            directory.path(),
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{contents}: {stderr}");
        assert!(
            stderr.contains(key),
            "{contents}: `{stderr}` does not name {key}"
        );
        assert!(
            stderr.contains("bad.toml"),
            "{contents}: `{stderr}` does not name the file"
        );
    }
    let missing = heistd(
        &["config", "check", "--config", "missing.toml"],
        directory.path(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("missing.toml"));
}

#[test]
fn config_check_prints_the_resolved_config_without_secrets() {
    // The install config as installed: /etc/heistd/heistd.toml with the
    // README's credentials folder beside it, read outside systemd.
    let directory = tempfile::tempdir().expect("temp dir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/heistd.toml");
    let installed = directory.path().join("heistd.toml");
    std::fs::copy(&example, &installed).expect("copy");
    std::fs::create_dir(directory.path().join("credentials")).expect("mkdir");
    let names = [
        "admin-token",
        "oauth-signing-key",
        "planner",
        "hacker",
        "safecracker",
        "mole",
        "operator",
        "heistd",
    ];
    for name in names {
        let secret = format!("{name}-secret-that-must-not-show-0123456789");
        std::fs::write(directory.path().join("credentials").join(name), secret).expect("write");
    }
    let output = heistd(
        &[
            "config",
            "check",
            "--config",
            installed.to_str().expect("utf-8"),
        ],
        directory.path(),
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        stdout.contains("config OK") && stdout.contains("[llm]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("client_secret_file = \"planner\"")
            && !stdout.contains("rehearsal-secret")
            && !stdout.contains("must-not-show"),
        "{stdout}"
    );
    // Every client has its own secret: no built-in secret to warn about.
    assert!(
        !text(&output.stderr).contains("warning"),
        "{}",
        text(&output.stderr)
    );
    // Without the folder (and outside systemd) the first credential is named.
    std::fs::remove_dir_all(directory.path().join("credentials")).expect("rm");
    let missing = heistd(
        &[
            "config",
            "check",
            "--config",
            installed.to_str().expect("utf-8"),
        ],
        directory.path(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("CREDENTIALS_DIRECTORY"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn demo_then_sessions_read_the_same_audit_trail() {
    let directory = tempfile::tempdir().expect("temp dir");
    let demo = heistd(
        &["demo", "--turns", "5", "--seed", "11", "--db", "demo.db"],
        directory.path(),
    );
    let stdout = text(&demo.stdout);
    assert!(demo.status.success(), "{stdout}\n{}", text(&demo.stderr));
    assert!(
        stdout.contains("rehearsal model") && stdout.contains("completed"),
        "{stdout}"
    );
    assert!(stdout.contains("[ 5/5]"), "{stdout}");
    let session_id = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("session ")
                .and_then(|rest| rest.split_whitespace().next())
        })
        .expect("summary names the session")
        .to_string();

    let list = heistd(&["sessions", "--db", "demo.db", "list"], directory.path());
    assert!(text(&list.stdout).contains(&session_id));
    let export = heistd(
        &[
            "sessions",
            "--db",
            "demo.db",
            "export",
            &session_id,
            "--format",
            "json",
        ],
        directory.path(),
    );
    let exported: serde_json::Value =
        serde_json::from_slice(&export.stdout).expect("export is JSON");
    assert_eq!(exported["session_info"]["status"], "completed");
    assert_eq!(exported["messages"].as_array().map(Vec::len), Some(5));
    let markdown = heistd(
        &[
            "sessions",
            "--db",
            "demo.db",
            "export",
            &session_id,
            "--format",
            "md",
        ],
        directory.path(),
    );
    assert!(text(&markdown.stdout).contains("### Turn 5"));
    let unknown = heistd(
        &["sessions", "--db", "demo.db", "show", "heist_nope"],
        directory.path(),
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("heist_nope not found"));
}

#[test]
fn check_reports_down_services_and_exits_1() {
    let directory = tempfile::tempdir().expect("temp dir");
    // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
    let mut contents = String::new();
    for service in heistd::config::SERVICE_NAMES {
        contents.push_str(&format!(
            "[services.{service}]\nbase_url = \"http://127.0.0.1:9\"\ntimeout_ms = 500\n"
        ));
    }
    contents.push_str("[llm]\nbase_url = \"http://127.0.0.1:9/v1\"\ntimeout_ms = 500\n");
    std::fs::write(directory.path().join("down.toml"), contents).expect("write");
    let output = heistd(&["check", "--config", "down.toml"], directory.path());
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("down: oauth, memory, calculator, file_reader, database_query, llm"),
        "{stderr}"
    );
}

#[test]
fn json_logs_put_the_session_and_turn_on_every_turn_line_without_colours() {
    let directory = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args([
            "--log",
            "info",
            "--log-format",
            "json",
            "demo",
            "--turns",
            "3",
            "--seed",
            "2",
            "--db",
            "demo.db",
        ])
        .current_dir(directory.path())
        .output()
        .expect("heistd runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI colours when stderr is not a terminal"
    );
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    let turn_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| {
            line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|span| span["name"] == "turn"))
        })
        .collect();
    assert!(
        !turn_lines.is_empty(),
        "some lines are logged inside a turn"
    );
    for line in &turn_lines {
        let spans = line["spans"].as_array().expect("spans");
        assert!(
            spans
                .iter()
                .any(|span| span["name"] == "session" && span["session_id"].is_string()),
            "{line}"
        );
        assert!(
            spans
                .iter()
                .any(|span| span["name"] == "turn" && span["turn_id"].is_number()),
            "{line}"
        );
    }
    let recorded = turn_lines
        .iter()
        .filter(|line| line["fields"]["message"] == "turn recorded")
        .count();
    assert_eq!(recorded, 3, "each turn's own line is inside its span");
}

#[test]
fn the_chaos_demo_rides_out_its_faults() {
    let directory = tempfile::tempdir().expect("temp dir");
    let demo = heistd(
        &[
            "demo", "--chaos", "--turns", "9", "--seed", "4", "--db", "chaos.db",
        ],
        directory.path(),
    );
    let stdout = text(&demo.stdout);
    assert!(demo.status.success(), "{stdout}\n{}", text(&demo.stderr));
    assert!(
        stdout.contains("the memory service goes down")
            && stdout.contains("the memory service is back")
            && stdout.contains("a health check sees it up"),
        "{stdout}"
    );
    assert_memory_is_back_after_the_outage(&directory.path().join("chaos.db"));
    let outbox = stdout
        .lines()
        .find_map(|line| line.strip_prefix("outbox: "))
        .expect("the demo reports the outbox");
    let numbers: Vec<u64> = outbox
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    assert!(
        numbers.len() >= 2 && numbers[0] == numbers[1] && numbers[0] > 0,
        "every write delivered: {outbox}"
    );
    assert!(
        stdout.contains("each is a row in service_calls"),
        "the outage's failed calls are in the audit trail:\n{stdout}"
    );
    let detail = support::block_on(async {
        let store = StoreHandle::open_sqlite(
            &directory.path().join("chaos.db"),
            heistd::config::Synchronous::Normal,
        )
        .await
        .expect("store");
        let session = &store.list_sessions(1).await.expect("sessions")[0];
        store.session(&session.session_id).await.expect("detail")
    });
    assert!(
        detail
            .service_calls
            .iter()
            .any(|row| row.call.service == "memory" && row.call.outcome != "success"),
        "the memory outage is in service_calls: {:?}",
        detail.service_calls
    );
    assert!(stdout.contains("[ 9/9]"), "{stdout}");
}

/// `heistd services all` in its own process, as an operator runs it: every
/// companion answers, the prototype's Python client works against them, and
/// SIGTERM stops them with exit code 0.
#[test]
fn services_run_in_their_own_process_for_the_prototypes_client() {
    use std::io::BufRead;
    let directory = tempfile::tempdir().expect("temp dir");
    let ports = heistd::wire::COMPANION_NAMES
        .map(|name| format!("{name} = 0"))
        .join("\n");
    std::fs::write(
        directory.path().join("services.toml"),
        format!("[companions.ports]\n{ports}\n"),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(["services", "all", "--config", "services.toml"])
        .current_dir(directory.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(directory.path().join("services.err")).expect("log file"))
        .spawn()
        .expect("services start");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut urls = std::collections::BTreeMap::new();
    while urls.len() < 6 {
        let line = lines.next().expect("a line per service").expect("utf-8");
        let mut words = line.split_whitespace();
        if let (Some(name), Some("listening"), Some("on"), Some(url)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            urls.insert(name.to_string(), url.to_string());
        }
    }
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/prototype_client.py");
    let url = |name: &str| urls[name].clone();
    let python = Command::new("python3")
        .arg(client)
        .args([
            url("oauth"),
            url("memory"),
            url("calculator"),
            url("file_reader"),
            url("database_query"),
            format!("{}/v1", url("rehearsal")),
        ])
        .output()
        .expect("python3 runs");
    let signal = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().expect("services exit");
    assert!(
        python.status.success(),
        "{}{}",
        text(&python.stdout),
        text(&python.stderr)
    );
    signal.expect("SIGTERM sent");
    assert_eq!(status.code(), Some(0));
    // One line per companion: stdout says where it listens, the log does
    // not say it again.
    let log = std::fs::read_to_string(directory.path().join("services.err")).expect("log");
    assert!(!log.contains("listening"), "{log}");

    // Companions in separate processes must share a token key.
    let alone = heistd(
        &["services", "calculator", "--config", "services.toml"],
        directory.path(),
    );
    assert_eq!(alone.status.code(), Some(1));
    assert!(
        text(&alone.stderr).contains("HEISTD_OAUTH_SIGNING_KEY"),
        "{}",
        text(&alone.stderr)
    );
    // The rehearsal model checks no token, so alone it needs no key, and
    // off loopback no client secrets either (only the OAuth service has
    // them).
    let mut model = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(["services", "rehearsal", "--config", "services.toml"])
        .current_dir(directory.path())
        .env_remove("RUST_LOG")
        .env_remove("HEISTD_OAUTH_SIGNING_KEY")
        .env("HEISTD_COMPANIONS__HOST", "0.0.0.0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the model starts");
    let first = std::io::BufReader::new(model.stdout.take().expect("stdout"))
        .lines()
        .next()
        .map(|line| line.expect("utf-8"));
    model.kill().expect("killed");
    model.wait().expect("reaped");
    assert!(
        first
            .as_deref()
            .is_some_and(|line| line.starts_with("rehearsal") && line.contains("listening")),
        "{first:?}"
    );
}

#[test]
fn a_model_url_nothing_answers_fails_the_demo_within_seconds_naming_the_url() {
    let directory = tempfile::tempdir().expect("temp dir");
    let started = tokio::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args([
            "demo",
            "--turns",
            "2",
            "--db",
            "down.db",
            "--llm-url",
            "http://127.0.0.1:9/v1",
            "--llm-model",
            "nothing",
        ])
        .current_dir(directory.path())
        .output()
        .expect("heistd runs");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("http://127.0.0.1:9/v1") && stderr.contains("cannot connect"),
        "{stderr}"
    );
}

/// The newcomer's rough edges: each input gets the exit code and the words
/// that say what to do, before anything runs.
#[test]
fn cli_edges_get_clear_refusals() {
    let directory = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        directory.path().join("long.toml"),
        "[heist]\nturns = 5000\n",
    )
    .expect("write");
    let cases: &[(&[&str], i32, &str)] = &[
        // One rule for turns: 1 to 1000, on the command line and in config.
        (&["demo", "--turns", "0"], 2, "1..=1000"),
        (&["run", "--turns", "5000"], 2, "1..=1000"),
        (
            &["config", "check", "--config", "long.toml"],
            1,
            "heist.turns",
        ),
        (&["services", "bogus"], 1, "unknown service `bogus`"),
        (
            &["--log", "nonsense=bogus,,", "config", "check"],
            1,
            "invalid log filter",
        ),
        // `--db` after the subcommand names the file it looked for.
        (
            &["sessions", "list", "--db", "nowhere.db"],
            1,
            "no audit database at nowhere.db",
        ),
    ];
    for (arguments, code, words) in cases {
        let output = heistd(arguments, directory.path());
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(*code), "{arguments:?}: {stderr}");
        assert!(
            stderr.contains(words),
            "{arguments:?}: `{stderr}` lacks `{words}`"
        );
    }
}

/// The config of an in-process stack as a file a separate `heistd run`
/// reads: every service at the stack's loopback address.
fn stack_config_file(stack: &heistd::cli::LocalStack, directory: &Path, db: &str) -> String {
    let config = &stack.config;
    let services = [
        ("oauth", &config.services.oauth.base_url),
        ("memory", &config.services.memory.base_url),
        ("calculator", &config.services.calculator.base_url),
        ("file_reader", &config.services.file_reader.base_url),
        ("database_query", &config.services.database_query.base_url),
    ]
    .map(|(name, url)| format!("[services.{name}]\nbase_url = \"{url}\"\n"))
    .join("\n");
    let text = format!(
        "[store]\npath = \"{db}\"\n\n[llm]\nbase_url = \"{}\"\nmodel = \"{}\"\n\n{services}",
        config.llm.base_url, config.llm.model
    );
    std::fs::write(directory.join("run.toml"), text).expect("config written");
    "run.toml".to_string()
}

/// `heistd run --turns 6 | head -1`: the reader goes after one line; the
/// heist goes on to its end, is recorded, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_stops_the_printing_not_the_heist() {
    use std::io::BufRead;
    let stack = heistd::cli::LocalStack::start(super::support::base_config(), None)
        .await
        .expect("companions start");
    let directory = tempfile::tempdir().expect("temp dir");
    let config = stack_config_file(&stack, directory.path(), "run.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(["run", "--config", &config, "--turns", "6", "--seed", "3"])
        .current_dir(directory.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("heistd run starts");
    let stdout = child.stdout.take().expect("stdout");
    let first = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .expect("one line")
        .expect("utf-8");
    assert!(first.contains("[ 1/6]"), "{first}");
    // The reader has gone: `head -1` exits here.
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("heistd run ends within a minute")
    .expect("join")
    .expect("wait");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let store = StoreHandle::open_sqlite(
        &directory.path().join("run.db"),
        heistd::config::Synchronous::Normal,
    )
    .await
    .expect("store opens");
    let sessions = store.list_sessions(10).await.expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].status_text, "completed");
    assert_eq!(sessions[0].num_turns, 6);
    stack.companions.shutdown().await;
}

/// A database as the prototype wrote it; with `collide`, two runs started
/// in the same second share its session id and turn ids.
fn prototype_database(path: &Path, collide: bool) {
    let prototype = rusqlite::Connection::open(path).expect("open");
    prototype
        .execute_batch(
            "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, start_time TEXT, end_time TEXT, num_turns INTEGER, status TEXT);
             CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, turn_id INTEGER, agent_name TEXT,
                 agent_role TEXT, message TEXT, timestamp TEXT);
             CREATE TABLE tool_usage (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, turn_id INTEGER, agent_name TEXT,
                 tool_name TEXT, tool_params TEXT, tool_result TEXT, timestamp TEXT, success BOOLEAN);
             INSERT INTO sessions VALUES ('heist_20250101_120000', '2025-01-01T12:00:00', '2025-01-01T12:05:00', 2, 'completed');
             INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp) VALUES
                 ('heist_20250101_120000', 1, 'planner', 'Mastermind', 'first run, turn 1', '2025-01-01T12:00:01.000000'),
                 ('heist_20250101_120000', 2, 'hacker', 'Hacker', 'first run, turn 2', '2025-01-01T12:00:03.000000');
             INSERT INTO tool_usage (session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success) VALUES
                 ('heist_20250101_120000', 2, 'hacker', 'calculator', '1+1', '2', '2025-01-01T12:00:03.100000', 1);",
        )
        .expect("prototype schema");
    if collide {
        prototype
            .execute_batch(
                "INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp) VALUES
                     ('heist_20250101_120000', 1, 'planner', 'Mastermind', 'second run, turn 1', '2025-01-01T12:00:01.500000'),
                     ('heist_20250101_120000', 2, 'safecracker', 'Safecracker', 'second run, turn 2', '2025-01-01T12:00:04.000000');
                 INSERT INTO tool_usage (session_id, turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success) VALUES
                     ('heist_20250101_120000', 2, 'safecracker', 'calculator', '2+2', '4', '2025-01-01T12:00:04.100000', 1);",
            )
            .expect("colliding run");
    }
}

#[test]
fn reading_a_prototype_database_changes_no_byte_of_it() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("prototype.db");
    prototype_database(&path, true);
    let before = std::fs::read(&path).expect("read");
    for arguments in [
        &["sessions", "--db", "prototype.db", "list"][..],
        &[
            "sessions",
            "--db",
            "prototype.db",
            "show",
            "heist_20250101_120000",
        ],
        &[
            "sessions",
            "--db",
            "prototype.db",
            "export",
            "heist_20250101_120000",
            "--format",
            "json",
        ],
    ] {
        let output = heistd(arguments, directory.path());
        assert_eq!(
            output.status.code(),
            Some(0),
            "{arguments:?}: {}",
            text(&output.stderr)
        );
        assert!(
            text(&output.stdout).contains("heist_20250101_120000"),
            "{}",
            text(&output.stdout)
        );
    }
    assert_eq!(std::fs::read(&path).expect("read"), before, "byte for byte");
    let files: Vec<_> = std::fs::read_dir(directory.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(files, ["prototype.db"], "no WAL, no lock file");
}

#[test]
fn a_prototype_database_with_a_same_second_collision_is_adopted_by_splitting_it() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("prototype.db");
    prototype_database(&path, true);
    let store = support::block_on(StoreHandle::open_sqlite(
        &path,
        heistd::config::Synchronous::Normal,
    ))
    .expect("adopted");
    let mut sessions: Vec<(String, i64)> = support::block_on(store.list_sessions(10))
        .expect("list")
        .into_iter()
        .map(|session| (session.session_id, session.num_turns))
        .collect();
    sessions.sort();
    assert_eq!(
        sessions,
        [
            ("heist_20250101_120000".to_string(), 2),
            ("heist_20250101_120000_split2".to_string(), 2)
        ]
    );
    let second =
        support::block_on(store.session("heist_20250101_120000_split2")).expect("second run");
    assert_eq!(second.messages[0].message, "second run, turn 1");
    assert_eq!(second.tool_usage.len(), 1);
    assert_eq!(second.tool_usage[0].tool_params, "2+2");
    let first = support::block_on(store.session("heist_20250101_120000")).expect("first run");
    assert_eq!(first.tool_usage[0].tool_params, "1+1");
    drop(store);
    let output = heistd(
        &["sessions", "--db", "prototype.db", "list"],
        directory.path(),
    );
    assert!(
        text(&output.stdout).contains("heist_20250101_120000_split2"),
        "{}",
        text(&output.stdout)
    );
}

/// The chaos demo's memory outage covers turns 4 to 6; it announces the
/// service back after turn 6, and the heist must then have it back: no
/// later turn's memory read failed or met an open breaker, and every
/// memory write reached the service while the session played, not in the
/// catch-up after its end.
fn assert_memory_is_back_after_the_outage(db: &Path) {
    let connection = rusqlite::Connection::open(db).expect("open");
    let failed_reads: Vec<(i64, String)> = connection
        .prepare(
            "SELECT turn_id, outcome FROM service_calls WHERE service = 'memory' \
             AND operation LIKE '%get_compressed_memory' AND turn_id > 6",
        )
        .expect("prepare")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(
        failed_reads.is_empty(),
        "memory reads after the outage failed: {failed_reads:?}"
    );
    let late: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM outbox JOIN sessions USING (session_id) \
             WHERE delivered_at IS NULL OR delivered_at > sessions.end_time",
            [],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(late, 0, "memory writes delivered only after the session");
}

/// Each turn of the one session in `db` as it ended: agent, failed or not,
/// the reply, and each tool call with its success.
fn turn_outcomes(db: &Path) -> Vec<String> {
    let detail = support::block_on(async {
        let store = StoreHandle::open_read_only(db).await.expect("store");
        let session = &store.list_sessions(1).await.expect("sessions")[0];
        store.session(&session.session_id).await.expect("detail")
    });
    detail
        .messages
        .iter()
        .map(|message| {
            let tools: Vec<String> = detail
                .tool_usage
                .iter()
                .filter(|tool| tool.turn_id == message.turn_id)
                .map(|tool| format!("{}({})={}", tool.tool_name, tool.tool_params, tool.success))
                .collect();
            format!(
                "{} {} failed={} {:?} {tools:?}",
                message.turn_id,
                message.agent_name,
                message.error.is_some(),
                message.message
            )
        })
        .collect()
}

#[test]
fn the_chaos_demo_replays_with_its_seed() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut outcomes = Vec::new();
    for db in ["first.db", "second.db"] {
        let demo = heistd(
            &[
                "demo", "--chaos", "--turns", "10", "--seed", "7", "--db", db,
            ],
            directory.path(),
        );
        assert!(
            matches!(demo.status.code(), Some(0 | 3)),
            "{}",
            text(&demo.stderr)
        );
        outcomes.push(turn_outcomes(&directory.path().join(db)));
        assert_memory_is_back_after_the_outage(&directory.path().join(db));
    }
    assert_eq!(outcomes[0].len(), 10);
    assert!(
        outcomes[0]
            .iter()
            .any(|turn| turn.contains("failed=true") || turn.contains("=false")),
        "chaos injected something: {:#?}",
        outcomes[0]
    );
    assert_eq!(outcomes[0], outcomes[1]);
}

/// `--chaos` with the user's own model injects nothing into it, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_an_external_model_says_the_model_is_left_alone() {
    let model = crate::model_double::ModelDouble::start(Default::default()).await;
    let directory = tempfile::tempdir().expect("temp dir");
    let (url, path) = (model.url.clone(), directory.path().to_path_buf());
    // On a blocking thread: the double answers on this runtime meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args([
                "demo",
                "--chaos",
                "--turns",
                "1",
                "--seed",
                "3",
                "--db",
                "chaos.db",
                "--llm-url",
                &url,
                "--llm-model",
                "double",
            ])
            .current_dir(path)
            .env_remove("RUST_LOG")
            .output()
            .expect("heistd runs")
    })
    .await
    .expect("joined");
    let stdout = text(&output.stdout);
    let chaos = stdout
        .lines()
        .find(|line| line.starts_with("chaos:"))
        .unwrap_or_default();
    assert!(
        chaos.contains("left alone") && !chaos.contains("503"),
        "{stdout}\n{}",
        text(&output.stderr)
    );
}

/// One-shot runs and the readers work on SQLite; with PostgreSQL they name
/// the daemon's API instead of racing its leases.
#[test]
fn run_demo_and_sessions_on_postgres_point_at_the_daemon() {
    let directory = tempfile::tempdir().expect("temp dir");
    for arguments in [
        &["run", "--turns", "1"][..],
        &["demo", "--turns", "1"][..],
        &["sessions", "list"][..],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args(arguments)
            .current_dir(directory.path())
            .env("HEISTD_STORE__BACKEND", "postgres")
            .env("HEISTD_STORE__URL", "postgres://heistd@127.0.0.1:1/none")
            .output()
            .expect("heistd runs");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}: {stderr}");
        assert!(
            stderr.contains("works on a SQLite store") && stderr.contains("/api/v1/"),
            "{arguments:?}: {stderr}"
        );
    }
}

/// A store in use by another heistd is the same user error (exit 1) from
/// every command that writes it, the daemon included.
#[test]
fn a_store_in_use_exits_1_from_the_daemon_as_from_run() {
    let directory = tempfile::tempdir().expect("temp dir");
    let database = directory.path().join("busy.db");
    std::fs::write(
        directory.path().join("busy.toml"),
        format!(
            "[store]\npath = \"{}\"\n[daemon]\nadmin_address = \"127.0.0.1:0\"\n",
            database.display()
        ),
    )
    .expect("config");
    let mut store_config = heistd::config::load(None, Vec::new())
        .expect("defaults")
        .store;
    store_config.path = database.clone();
    let _writer = support::block_on(StoreHandle::open_configured(
        &store_config,
        &heistd::config::ClusterConfig::default(),
    ))
    .expect("the test holds the store");
    for arguments in [
        &["daemon", "--config", "busy.toml"][..],
        &["run", "--turns", "1", "--config", "busy.toml"][..],
    ] {
        let output = heistd(arguments, directory.path());
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}: {stderr}");
        assert!(
            stderr.contains("in use by another heistd"),
            "{arguments:?}: {stderr}"
        );
    }
}

/// A store that cannot be written stops `heistd run` before any service
/// call, with exit 2 (a store failure). On a read-only file system the
/// writer's lock file already refuses it; the write probe after opening
/// covers stores that open but cannot commit.
#[test]
#[ignore = "needs root (mounts a tmpfs)"]
fn run_on_a_store_that_cannot_be_written_exits_2_before_any_call() {
    let tmpfs = crate::daemon::Tmpfs::mount("4m");
    let database = tmpfs.path.join("audit.db");
    let mut store_config = heistd::config::load(None, Vec::new())
        .expect("defaults")
        .store;
    store_config.path = database.clone();
    drop(
        support::block_on(StoreHandle::open_configured(
            &store_config,
            &heistd::config::ClusterConfig::default(),
        ))
        .expect("created"),
    );
    tmpfs.remount_read_only();
    let directory = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        directory.path().join("ro.toml"),
        format!(
            "[store]\npath = \"{}\"\n[llm]\nbase_url = \"http://127.0.0.1:9/v1\"\n",
            database.display()
        ),
    )
    .expect("config");
    let output = heistd(
        &["run", "--turns", "1", "--config", "ro.toml"],
        directory.path(),
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("audit store"), "{stderr}");
    assert!(
        !stderr.contains("cannot connect"),
        "no service was called: {stderr}"
    );
}

/// Ollama-like: the server lists its models, but a chat for one it does not
/// have answers 404. The preflight's tiny chat finds it before any turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_the_server_does_not_have_fails_the_demo_within_seconds_naming_the_url() {
    let model = crate::model_double::ModelDouble::start(crate::model_double::Behaviour {
        unknown_model_404: true,
        ..Default::default()
    })
    .await;
    let directory = tempfile::tempdir().expect("temp dir");
    let (url, path) = (model.url.clone(), directory.path().to_path_buf());
    let started = tokio::time::Instant::now();
    // On a blocking thread: the double answers on this runtime meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args([
                "demo",
                "--turns",
                "2",
                "--db",
                "missing.db",
                "--llm-url",
                &url,
                "--llm-model",
                "not-pulled",
            ])
            .current_dir(path)
            .env_remove("RUST_LOG")
            .output()
            .expect("heistd runs")
    })
    .await
    .expect("joined");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&model.url) && stderr.contains("HTTP 404") && stderr.contains("not-pulled"),
        "{stderr}"
    );
    // The URL is right (it ends in /v1); the model name is what is wrong.
    assert!(
        stderr.contains("does not have that model") && !stderr.contains("does it end in /v1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not list `not-pulled`"),
        "a warning first: {stderr}"
    );
    assert_eq!(model.chat_calls(), 0, "no turn was played");
    assert_eq!(model.last_request()["max_tokens"], 1);
}

/// A newcomer's `heistd demo` then `heistd sessions list`, in a fresh
/// directory with no flags: the list shows the demo's session (the demo
/// writes its own file, and `sessions` says it reads that one). A
/// `--config` whose store does not exist names the demo's file instead;
/// the install config reads the store without its credentials, which only
/// other commands use.
#[test]
fn sessions_list_after_demo_in_a_fresh_directory_reads_the_demos_file() {
    let directory = tempfile::tempdir().expect("temp dir");
    let demo = heistd(&["demo", "--turns", "2", "--seed", "5"], directory.path());
    assert!(demo.status.success(), "{}", text(&demo.stderr));
    // A clean exit leaves the database alone: the WAL checkpointed into
    // it, `-wal`, `-shm` and the lock file gone.
    let mut left: Vec<String> = std::fs::read_dir(directory.path())
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    left.sort();
    assert_eq!(left, ["heistd-demo.db"], "{}", text(&demo.stderr));

    let list = heistd(&["sessions", "list"], directory.path());
    let (stdout, stderr) = (text(&list.stdout), text(&list.stderr));
    assert!(list.status.success(), "{stderr}");
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(stderr.contains("heistd-demo.db"), "{stderr}");

    std::fs::write(
        directory.path().join("elsewhere.toml"),
        "[store]\npath = \"elsewhere.db\"\n",
    )
    .expect("write");
    let named = heistd(
        &["sessions", "--config", "elsewhere.toml", "list"],
        directory.path(),
    );
    let stderr = text(&named.stderr);
    assert_eq!(named.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("elsewhere.db")
            && stderr.contains("heistd sessions --db heistd-demo.db list"),
        "{stderr}"
    );

    // The install config, no credentials beside it, outside systemd: its
    // store (here moved to the demo's file) is read all the same.
    let installed = directory.path().join("heistd.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/heistd.toml"),
        &installed,
    )
    .expect("copy");
    let read = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(["sessions", "--config", "heistd.toml", "list"])
        .current_dir(directory.path())
        .env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("HEISTD_STORE__PATH", "heistd-demo.db")
        .output()
        .expect("heistd runs");
    assert!(read.status.success(), "{}", text(&read.stderr));
    assert!(text(&read.stdout).contains("completed"));
    // A command that uses the secrets still needs them.
    let check = heistd(
        &["config", "check", "--config", "heistd.toml"],
        directory.path(),
    );
    assert_eq!(check.status.code(), Some(1));
}

/// `run` takes `demo`'s options where they mean the same: `--db` and
/// `--llm-url`/`--llm-model` override the config's store and model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_the_database_and_model_from_its_options() {
    let stack = heistd::cli::LocalStack::start(super::support::base_config(), None)
        .await
        .expect("companions start");
    let directory = tempfile::tempdir().expect("temp dir");
    // The services only: no [store], and a model nothing answers at.
    stack_config_file(&stack, directory.path(), "config.db");
    let config = std::fs::read_to_string(directory.path().join("run.toml")).expect("read");
    let config = config
        .replace("path = \"config.db\"", "path = \"never.db\"")
        .replacen(&stack.config.llm.base_url, "http://127.0.0.1:9/v1", 1);
    std::fs::write(directory.path().join("run.toml"), config).expect("write");
    let (llm, path) = (stack.config.llm.clone(), directory.path().to_path_buf());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args([
                "run",
                "--config",
                "run.toml",
                "--turns",
                "2",
                "--seed",
                "3",
                "--db",
                "flag.db",
                "--llm-url",
                &llm.base_url,
                "--llm-model",
                &llm.model,
            ])
            .current_dir(path)
            .env_remove("RUST_LOG")
            .output()
            .expect("heistd runs")
    })
    .await
    .expect("joined");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!directory.path().join("never.db").exists());
    let list = heistd(&["sessions", "--db", "flag.db", "list"], directory.path());
    assert!(
        text(&list.stdout).contains("completed"),
        "{}",
        text(&list.stdout)
    );
    let help = text(&heistd(&["run", "--help"], directory.path()).stdout);
    for option in ["--db", "--llm-url", "--llm-model", "--turns", "--seed"] {
        assert!(help.contains(option), "run --help lacks {option}: {help}");
    }
    stack.companions.shutdown().await;
}

/// A model server that answers the preflight's chat and lets every other
/// chat hang: a heist on it is always mid-turn. Sends a message on each
/// chat it lets hang.
async fn hanging_model() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use axum::routing::{get, post};
    let (hung, hangs) = tokio::sync::mpsc::unbounded_channel();
    let router = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async { axum::Json(serde_json::json!({"data": [{"id": "hanging"}]})) }),
        )
        .route(
            "/v1/chat/completions",
            post(move |axum::Json(request): axum::Json<serde_json::Value>| {
                let hung = hung.clone();
                async move {
                    if request["messages"][0]["content"] != heistd::wire::PREFLIGHT_PROMPT {
                        let _ = hung.send(());
                        std::future::pending::<()>().await;
                    }
                    axum::Json(serde_json::json!({
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "OK"}}]
                    }))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}/v1"), hangs)
}

/// `heistd demo` on `db` against `model`, its stderr lines sent as read.
fn spawn_demo(
    directory: &Path,
    db: &str,
    model: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args([
            "demo",
            "--turns",
            "3",
            "--seed",
            "2",
            "--db",
            db,
            "--llm-url",
            model,
            "--llm-model",
            "hanging",
        ])
        .current_dir(directory)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("demo starts");
    let stderr = child.stderr.take().expect("stderr");
    let (line, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for read in std::io::BufReader::new(stderr).lines() {
            let Ok(read) = read else { return };
            if line.send(read).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

/// Reads `lines` until one contains `wanted`; all of them, for messages.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) => {
                let found = line.contains(wanted);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no `{wanted}` within 30 s: {seen:#?}"),
        }
    }
}

fn send(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, signal).expect("signal sent");
}

/// (status, failure reason) of each session in `db`, oldest first.
fn session_statuses(db: &Path) -> Vec<(String, String)> {
    let connection = rusqlite::Connection::open(db).expect("open");
    let statuses = connection
        .prepare("SELECT status, COALESCE(failure_reason, '') FROM sessions ORDER BY rowid")
        .expect("prepare")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    statuses
}

/// Ctrl-C twice mid-turn quits at once and still marks the session
/// `interrupted` (exit 130); a demo killed mid-turn leaves its session
/// `active`, and the next demo on that store marks it, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_quits_at_once_and_no_session_stays_active() {
    use nix::sys::signal::Signal;
    let (model, mut hangs) = hanging_model().await;
    let directory = tempfile::tempdir().expect("temp dir");
    let db = directory.path().join("quit.db");

    // Killed mid-turn: nothing can mark its session.
    let (mut killed, _lines) = spawn_demo(directory.path(), "quit.db", &model);
    hangs.recv().await.expect("the first demo is mid-turn");
    send(&killed, Signal::SIGKILL);
    tokio::task::block_in_place(|| killed.wait()).expect("reaped");
    assert_eq!(session_statuses(&db), [("active".into(), String::new())]);

    // The next demo marks it, then is quit at once mid-turn.
    let (mut quit, lines) = spawn_demo(directory.path(), "quit.db", &model);
    hangs.recv().await.expect("the second demo is mid-turn");
    let seen = tokio::task::block_in_place(|| wait_for_line(&lines, "quit without ending it"));
    assert!(
        seen.iter().any(|line| line.contains("marked interrupted")),
        "{seen:#?}"
    );
    send(&quit, Signal::SIGINT);
    tokio::task::block_in_place(|| wait_for_line(&lines, "again to quit now"));
    send(&quit, Signal::SIGINT);
    let seen = tokio::task::block_in_place(|| wait_for_line(&lines, "quit at once"));
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::task::spawn_blocking(move || quit.wait()),
    )
    .await
    .expect("exits within 10 s")
    .expect("joined")
    .expect("waited");
    assert_eq!(status.code(), Some(130), "{seen:#?}");
    assert!(
        seen.last()
            .is_some_and(|line| line.contains("marked interrupted")),
        "{seen:#?}"
    );
    let statuses = session_statuses(&db);
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(
        statuses[0].0 == "interrupted" && statuses[0].1.contains("heistd demo"),
        "{statuses:?}"
    );
    assert!(
        statuses[1].0 == "interrupted" && statuses[1].1.contains("second Ctrl-C"),
        "{statuses:?}"
    );
}

/// `--version` names the build, as `heistd_build_info` does, so a bug
/// report says which commit it is about.
#[test]
fn version_names_the_package_version_and_the_commit_built() {
    let directory = tempfile::tempdir().expect("temp dir");
    let output = heistd(&["--version"], directory.path());
    assert!(output.status.success());
    assert_eq!(
        text(&output.stdout).trim(),
        format!(
            "heistd {} ({})",
            env!("CARGO_PKG_VERSION"),
            heistd::metrics::BUILD_COMMIT
        )
    );
}

/// What a packager installs beside the binary comes from the binary: each
/// shell's completions and the man page name the subcommands (the new
/// ones among them), and `version` says what `--version` says plus the
/// commit on its own line.
#[test]
fn completions_man_page_and_version_come_from_the_binary() {
    let directory = tempfile::tempdir().expect("temp dir");
    for shell in ["bash", "zsh", "fish"] {
        let output = heistd(&["completions", shell], directory.path());
        assert!(output.status.success(), "{shell}: {}", text(&output.stderr));
        let script = text(&output.stdout);
        for name in [
            "daemon", "demo", "sessions", "watch", "status", "runs", "man",
        ] {
            assert!(script.contains(name), "{shell} completions lack {name}");
        }
    }
    let output = heistd(&["completions", "powershell"], directory.path());
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    let output = heistd(&["man"], directory.path());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let page = text(&output.stdout);
    assert!(page.contains(".TH heistd 1"), "{page}");
    for name in [
        "heistd sessions watch",
        "heistd runs start",
        "heistd status",
        "heistd check",
    ] {
        assert!(page.contains(name), "the man page lacks {name}");
    }
    let version = text(&heistd(&["--version"], directory.path()).stdout);
    let output = heistd(&["version"], directory.path());
    assert!(output.status.success());
    let printed = text(&output.stdout);
    assert!(
        printed.starts_with(version.trim()),
        "{printed} vs {version}"
    );
    assert!(
        printed.lines().any(|line| line.starts_with("commit: ")),
        "{printed}"
    );
}
