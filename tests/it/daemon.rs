//! `heistd daemon` as a child process, the way systemd runs it: a real
//! NOTIFY_SOCKET, real signals, the admin API over HTTP, and the audit
//! store read back from its file. The companions run in this test process.
//! Waits poll a condition with a bound; none sleeps and hopes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use heistd::config::Fault;
use heistd::config::Synchronous;
use heistd::store::{SessionStatus, StoreHandle};
use serde_json::Value;
use tokio::net::UnixDatagram;
use tokio::time::Instant;

use crate::support::{self, TestStack};

pub(crate) const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub(crate) struct Daemon {
    child: Child,
    admin: String,
    /// Everything the daemon sent to NOTIFY_SOCKET, read as it arrives
    /// (as systemd does: the kernel queues only ~10 datagrams).
    notifications: tokio::sync::mpsc::UnboundedReceiver<String>,
    directory: tempfile::TempDir,
    config_path: PathBuf,
}

/// A config for a daemon using `stack`'s companions, plus `extra` TOML.
fn config_text(stack: &TestStack, directory: &Path, extra: &str) -> String {
    let store = format!(
        "[store]\npath = \"{}\"\n",
        directory.join("audit.db").display()
    );
    store + &services_text(stack, extra)
}

/// The companions' and the model's URLs, plus `extra` TOML (no `[store]`).
pub(crate) fn services_text(stack: &TestStack, extra: &str) -> String {
    // The admin address comes from HEISTD_DAEMON__ADMIN_ADDRESS (port 0: the
    // daemon takes a free port and says which in STATUS=), so `extra` may
    // hold a [daemon] table of its own.
    let mut text = String::new();
    for service in heistd::config::SERVICE_NAMES {
        text.push_str(&format!(
            "[services.{service}]\nbase_url = \"{}\"\n[services.{service}.health]\ninterval_ms = 100\njitter_ms = 0\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
            stack.url(service)
        ));
    }
    text.push_str(&format!(
        "[llm]\nbase_url = \"{}\"\n",
        stack.url("rehearsal")
    ));
    text.push_str(extra);
    text
}

/// A name for the notify socket that no other test in this process uses.
fn socket_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "notify-{}.sock",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

impl Daemon {
    pub(crate) async fn start(stack: &TestStack, extra: &str) -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let config_path = directory.path().join("heistd.toml");
        std::fs::write(&config_path, config_text(stack, directory.path(), extra))
            .expect("write config");
        Self::spawn_in(directory, config_path).await
    }

    /// A daemon on `config` as it is (a `[store]` of its own included).
    pub(crate) async fn start_with_config(config: &str) -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let config_path = directory.path().join("heistd.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self::spawn_in(directory, config_path).await
    }

    /// Starts the daemon and waits for READY=1 and the admin address it
    /// reports in its first STATUS= line.
    async fn spawn_in(directory: tempfile::TempDir, config_path: PathBuf) -> Self {
        let socket_path = directory.path().join(socket_name());
        let notify = UnixDatagram::bind(&socket_path).expect("notify socket");
        let (forward, notifications) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok(length) = notify.recv(&mut buffer).await {
                if forward
                    .send(String::from_utf8_lossy(&buffer[..length]).to_string())
                    .is_err()
                {
                    return;
                }
            }
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(directory.path().join("daemon.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args(["daemon", "--config", config_path.to_str().expect("utf-8")])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "1000000")
            .env("HEISTD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("HEISTD_DAEMON__ADMIN_ADDRESS", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon starts");
        let mut daemon = Self {
            child,
            admin: String::new(),
            notifications,
            directory,
            config_path,
        };
        daemon.wait_for_notification("READY=1").await;
        let messages = daemon.wait_for_prefix("STATUS=admin API on ").await;
        let address = messages
            .iter()
            .flat_map(|message| message.lines())
            .find_map(|line| line.strip_prefix("STATUS=admin API on "))
            .and_then(|rest| rest.split(';').next())
            .expect("STATUS names the admin address")
            .to_string();
        daemon.admin = format!("http://{address}");
        daemon
    }

    /// Restarts on the same directory, config and database.
    pub(crate) async fn restart(mut self) -> Self {
        let _ = self.child.wait();
        let directory =
            std::mem::replace(&mut self.directory, tempfile::tempdir().expect("temp dir"));
        let config_path = self.config_path.clone();
        drop(self);
        Self::spawn_in(directory, config_path).await
    }

    async fn wait_for_prefix(&mut self, prefix: &str) -> Vec<String> {
        self.wait_until_notified(prefix, |line| line.starts_with(prefix))
            .await
    }

    pub(crate) async fn wait_for_notification(&mut self, wanted: &str) -> Vec<String> {
        self.wait_until_notified(wanted, |line| line == wanted)
            .await
    }

    async fn wait_until_notified(
        &mut self,
        wanted: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        let limit = Instant::now() + Duration::from_secs(30);
        loop {
            let received = tokio::time::timeout_at(limit, self.notifications.recv()).await;
            let message = received
                .unwrap_or_else(|_| {
                    panic!(
                        "no {wanted} within 30 s; got {seen:?}; log:\n{}",
                        self.log()
                    )
                })
                .expect("the notify reader runs");
            let found = message.lines().any(&matches);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }

    pub(crate) fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `POST path` with the admin token and a JSON body: status and body.
    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = support::http()
            .post(format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The admin API's base URL (`http://127.0.0.1:PORT`).
    pub(crate) fn admin_url(&self) -> &str {
        &self.admin
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("daemon.log")).unwrap_or_default()
    }

    pub(crate) async fn store(&self) -> StoreHandle {
        StoreHandle::open_sqlite(&self.directory.path().join("audit.db"), Synchronous::Normal)
            .await
            .expect("store opens")
    }

    pub(crate) fn signal(&self, name: &str) {
        use nix::sys::signal::{kill, Signal};
        let signal = match name {
            "TERM" => Signal::SIGTERM,
            "HUP" => Signal::SIGHUP,
            "KILL" => Signal::SIGKILL,
            "STOP" => Signal::SIGSTOP,
            "CONT" => Signal::SIGCONT,
            other => panic!("no signal {other} in these tests"),
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"));
        kill(pid, signal).expect("signal sent");
    }

    pub(crate) async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let limit = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < limit,
                "daemon did not exit within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = support::http()
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("admin API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A plain-text answer of the admin API (`/metrics`).
    pub(crate) async fn get_text(&self, path: &str) -> String {
        support::http()
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("admin API answers")
            .text()
            .await
            .expect("text")
    }

    pub(crate) async fn start_run(&self, turns: u32) -> String {
        let (status, body) = self.post_run(turns).await;
        assert_eq!(status, 202, "{body}");
        body["session_id"].as_str().expect("session id").to_string()
    }

    /// `POST /api/v1/runs` with the admin token: the status and the body.
    pub(crate) async fn post_run(&self, turns: u32) -> (u16, Value) {
        let response = support::http()
            .post(format!("{}/api/v1/runs", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "turns": turns, "seed": 5 }))
            .send()
            .await
            .expect("runs answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms for up to `within`.
pub(crate) async fn eventually<T>(
    within: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> Option<T>,
) -> T {
    let limit = Instant::now() + within;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            Instant::now() < limit,
            "not reached within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn committed_turns(store: &StoreHandle, session_id: &str) -> Vec<i64> {
    store
        .session(session_id)
        .await
        .map(|detail| {
            detail
                .messages
                .iter()
                .map(|message| message.turn_id)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn ready_and_watchdog_over_notify_socket_and_readyz_follows_health() {
    let stack = TestStack::start().await;
    let mut daemon = Daemon::start(&stack, "").await;
    let pings = daemon.wait_for_notification("WATCHDOG=1").await;
    assert!(!pings.is_empty());
    daemon.wait_for_notification("WATCHDOG=1").await;
    assert_eq!(daemon.get("/healthz").await.0, 200);
    eventually(Duration::from_secs(10), "ready", async || {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;

    stack.set_fault(
        "calculator",
        Fault {
            refuse: true,
            ..Fault::default()
        },
    );
    let body = eventually(
        Duration::from_secs(10),
        "not ready while the calculator is down",
        async || {
            let (status, body) = daemon.get("/readyz").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(body["services_not_up"], serde_json::json!(["calculator"]));
    let (_, status) = daemon.get("/api/v1/status").await;
    // Which file and which store: in the status and the first log line.
    let audit = daemon.directory.path().join("audit.db");
    let (config_path, store) = (
        daemon.config_path.display().to_string(),
        audit.display().to_string(),
    );
    assert_eq!(status["config_path"], config_path.as_str());
    assert_eq!(status["store"], store.as_str());
    // What the model client has learned, under the llm service.
    let llm = status["services"]
        .as_array()
        .and_then(|services| services.iter().find(|service| service["service"] == "llm"))
        .cloned()
        .unwrap_or_default();
    let endpoint = &llm["endpoints"][0];
    assert!(
        endpoint["model"].is_string()
            && endpoint["chars_per_token"].is_number()
            && endpoint["token_counting"] == "auto",
        "{llm}"
    );
    let log = daemon.log();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.contains("heistd starting")
            && first.contains(&format!("config={config_path}"))
            && first.contains(&format!("store={store}")),
        "{log}"
    );
    let calculator = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|service| service["service"] == "calculator")
        .cloned();
    assert_eq!(
        calculator
            .as_ref()
            .map(|service| service["breaker"].clone()),
        Some(Value::from("open")),
        "down holds the breaker open"
    );
    // `heistd check` shows the daemon's breakers, not its own fresh ones.
    let address = daemon.admin.trim_start_matches("http://").to_string();
    let check = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args([
            "check",
            "--config",
            daemon.config_path.to_str().expect("utf-8"),
        ])
        .env("HEISTD_DAEMON__ADMIN_ADDRESS", &address)
        .output()
        .expect("check runs");
    let table = String::from_utf8_lossy(&check.stdout).to_string();
    assert_eq!(check.status.code(), Some(1), "{table}");
    assert!(
        table.contains(&format!("as the daemon at {address}")),
        "{table}"
    );
    let calculator_line = table
        .lines()
        .find(|line| line.starts_with("calculator"))
        .unwrap_or_default();
    assert!(
        calculator_line.contains("DOWN") && calculator_line.contains("breaker open"),
        "{table}"
    );

    stack.set_fault("calculator", Fault::default());
    eventually(Duration::from_secs(10), "ready again", async || {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let events = daemon
        .store()
        .await
        .health_events(Some("calculator"))
        .await
        .expect("events");
    let transitions: Vec<(String, String)> = events
        .iter()
        .map(|event| (event.from_state.clone(), event.to_state.clone()))
        .collect();
    assert_eq!(
        transitions,
        [
            ("unknown".into(), "up".into()),
            ("up".into(), "down".into()),
            ("down".into(), "up".into())
        ],
        "{events:?}"
    );
    assert!(
        events[1].reason.contains("calculator"),
        "{}",
        events[1].reason
    );

    // The admin API's errors and auth, over the wire.
    assert_eq!(daemon.get("/api/v1/sessions/heist_unknown").await.0, 404);
    let unauthenticated = support::http()
        .post(format!("{}/api/v1/runs", daemon.admin))
        .send()
        .await
        .expect("answers");
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let forbidden = support::http()
        .post(format!("{}/api/v1/runs", daemon.admin))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("answers");
    assert_eq!(forbidden.status().as_u16(), 403);
    let metrics = support::http()
        .get(format!("{}/metrics", daemon.admin))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("heistd_health_transitions_total{service=\"calculator\",to=\"down\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_mid_run_interrupts_the_session_and_exits_0() {
    let stack = TestStack::start().await;
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 150,
            ..Fault::default()
        },
    );
    let mut daemon = Daemon::start(&stack, "").await;
    let session_id = daemon.start_run(40).await;
    let store = daemon.store().await;
    eventually(Duration::from_secs(10), "two turns committed", async || {
        (committed_turns(&store, &session_id).await.len() >= 2).then_some(())
    })
    .await;
    daemon.signal("TERM");
    daemon.wait_for_notification("STOPPING=1").await;
    let status = daemon.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let detail = store.session(&session_id).await.expect("session");
    assert_eq!(detail.session.status, SessionStatus::Interrupted);
    let turns = committed_turns(&store, &session_id).await;
    assert!(turns.len() < 40);
    assert_eq!(
        turns,
        (1..=turns.len() as i64).collect::<Vec<_>>(),
        "committed turns intact and contiguous"
    );
    assert_eq!(detail.session.num_turns, turns.len() as i64);
}

#[tokio::test]
async fn kill_9_mid_run_then_restart_resumes_every_turn_exactly_once() {
    let stack = TestStack::start().await;
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 100,
            ..Fault::default()
        },
    );
    let mut daemon = Daemon::start(&stack, "").await;
    let session_id = daemon.start_run(10).await;
    let store = daemon.store().await;
    eventually(
        Duration::from_secs(10),
        "three turns committed",
        async || (committed_turns(&store, &session_id).await.len() >= 3).then_some(()),
    )
    .await;
    daemon.signal("KILL");
    // Dead and reaped before we look: nothing can commit after this point.
    daemon.wait_exit(Duration::from_secs(10)).await;
    let before = committed_turns(&store, &session_id).await;
    assert!(before.len() < 10, "killed mid-run");
    assert_eq!(
        store
            .session(&session_id)
            .await
            .expect("session")
            .session
            .status,
        SessionStatus::Active
    );

    stack.set_fault("rehearsal", Fault::default());
    let daemon = daemon.restart().await;
    let detail = eventually(
        Duration::from_secs(15),
        "the resumed session completes",
        async || {
            let detail = store.session(&session_id).await.ok()?;
            (detail.session.status == SessionStatus::Completed).then_some(detail)
        },
    )
    .await;
    let turns: Vec<i64> = detail
        .messages
        .iter()
        .map(|message| message.turn_id)
        .collect();
    assert_eq!(
        turns,
        (1..=10).collect::<Vec<_>>(),
        "every turn once; log:\n{}",
        daemon.log()
    );
    assert_eq!(&turns[..before.len()], &before[..]);
    assert!(daemon.log().contains("resuming"));
    // Durations in the log are whole microseconds, not float noise.
    let durations: Vec<String> = daemon
        .log()
        .lines()
        .filter(|line| line.contains("turn recorded"))
        .filter_map(|line| {
            Some(
                line.split("elapsed_ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_string(),
            )
        })
        .collect();
    assert!(!durations.is_empty(), "{}", daemon.log());
    for value in &durations {
        let decimals = value.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "elapsed_ms={value}");
    }
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_keeps_running_on_an_invalid_one() {
    let stack = TestStack::start().await;
    let mut daemon =
        Daemon::start(&stack, "[[schedule]]\nname = \"hourly\"\nevery = \"1h\"\n").await;
    let schedule_names = async |daemon: &Daemon| -> Vec<String> {
        let (_, status) = daemon.get("/api/v1/status").await;
        status["schedules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|schedule| schedule["name"].as_str())
            .map(str::to_string)
            .collect()
    };
    eventually(Duration::from_secs(10), "status shows hourly", async || {
        (schedule_names(&daemon).await == ["hourly"]).then_some(())
    })
    .await;

    let text = std::fs::read_to_string(&daemon.config_path).expect("config");
    std::fs::write(
        &daemon.config_path,
        text.replace(
            "name = \"hourly\"\nevery = \"1h\"",
            "name = \"nightly\"\ncron = \"0 2 * * *\"\ntimezone = \"Europe/London\"",
        ),
    )
    .expect("rewrite");
    daemon.signal("HUP");
    daemon.wait_for_notification("RELOADING=1").await;
    daemon.wait_for_notification("READY=1").await;
    eventually(
        Duration::from_secs(10),
        "status shows nightly",
        async || (schedule_names(&daemon).await == ["nightly"]).then_some(()),
    )
    .await;

    let valid = std::fs::read_to_string(&daemon.config_path).expect("config");
    std::fs::write(
        &daemon.config_path,
        format!("{valid}\n[heist]\nturnz = 3\n"),
    )
    .expect("break the config");
    daemon.signal("HUP");
    daemon.wait_for_notification("READY=1").await;
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert_eq!(
        schedule_names(&daemon).await,
        ["nightly"],
        "the old config stays"
    );
    let log = daemon.log();
    assert!(
        log.contains("reload refused") && log.contains("heist.turnz"),
        "{log}"
    );
}

#[tokio::test]
async fn an_every_schedule_fires_each_slot_once() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(
        &stack,
        "[[schedule]]\nname = \"fast\"\nevery = \"1s\"\nturns = 2\n",
    )
    .await;
    let store = daemon.store().await;
    let sessions = eventually(
        Duration::from_secs(10),
        "three scheduled runs",
        async || {
            let sessions = store
                .find_sessions(Some(SessionStatus::Completed), Some("fast"), 100)
                .await
                .ok()?;
            (sessions.len() >= 3).then_some(sessions)
        },
    )
    .await;
    let mut slots: Vec<String> = sessions
        .iter()
        .filter_map(|session| session.scheduled_time.clone())
        .collect();
    slots.sort();
    // Every slot from the first to the last, one second apart: none
    // skipped, none doubled (a double would also be refused by the store,
    // which the log would show).
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = slots
        .iter()
        .map(|slot| chrono::DateTime::parse_from_rfc3339(slot).expect("RFC 3339 slot"))
        .collect();
    assert!(
        times
            .windows(2)
            .all(|pair| pair[1] - pair[0] == chrono::Duration::seconds(1)),
        "{slots:?}"
    );
    assert!(
        !daemon.log().contains("scheduled run not started"),
        "{}",
        daemon.log()
    );
    assert!(sessions.iter().all(|session| session.num_turns == 2));
}

#[tokio::test]
async fn a_turn_still_running_when_the_grace_period_ends_is_cut_and_its_session_interrupted() {
    let stack = TestStack::start().await;
    // The model never answers: the first turn is still in flight at SIGTERM.
    stack.set_fault(
        "rehearsal",
        Fault {
            hang: true,
            ..Fault::default()
        },
    );
    let mut daemon = Daemon::start(&stack, "[daemon]\nshutdown_grace_ms = 300\n").await;
    let session_id = daemon.start_run(5).await;
    let store = daemon.store().await;
    eventually(
        Duration::from_secs(10),
        "the run is under way",
        async || {
            let (_, status) = daemon.get("/api/v1/status").await;
            (status["running_sessions"].as_array().map(Vec::len) == Some(1)).then_some(())
        },
    )
    .await;
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let session = store.session(&session_id).await.expect("session").session;
    assert_eq!(session.status, SessionStatus::Interrupted);
    assert!(
        session
            .failure_reason
            .as_deref()
            .unwrap_or_default()
            .contains("grace period ran out"),
        "{session:?}"
    );
    assert!(
        committed_turns(&store, &session_id).await.is_empty(),
        "the cut turn left nothing behind"
    );
}

#[tokio::test]
async fn recovery_resumes_heistds_sessions_and_interrupts_ones_it_cannot_replay() {
    let stack = TestStack::start().await;
    let directory = tempfile::tempdir().expect("temp dir");
    let database = directory.path().join("audit.db");
    // A database the prototype left: its session is "active" (the prototype
    // never marked them otherwise), with no seed or plan to replay.
    {
        let prototype = rusqlite::Connection::open(&database).expect("open");
        prototype
            .execute_batch(
                "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, start_time TEXT, end_time TEXT, num_turns INTEGER, status TEXT);
                 INSERT INTO sessions VALUES ('heist_20250101_120000', '2025-01-01T12:00:00', NULL, 0, 'active');",
            )
            .expect("prototype rows");
    }
    // And one of heistd's own, started but with no turn committed when its
    // process died.
    let own = {
        let store = StoreHandle::open_sqlite(&database, Synchronous::Normal)
            .await
            .expect("adopt");
        let runner = stack.stack.runner(store).expect("runner");
        let options = heistd::heist::RunOptions::new(4, 9);
        runner.start(&options).await.expect("session")
    };
    let config_path = directory.path().join("heistd.toml");
    std::fs::write(&config_path, config_text(&stack, directory.path(), "")).expect("config");
    let daemon = Daemon::spawn_in(directory, config_path).await;
    let store = daemon.store().await;
    let resumed = eventually(
        Duration::from_secs(10),
        "heistd's session resumed to completion",
        async || {
            let detail = store.session(&own).await.ok()?;
            (detail.session.status == SessionStatus::Completed).then_some(detail)
        },
    )
    .await;
    assert_eq!(
        resumed
            .messages
            .iter()
            .map(|message| message.turn_id)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let prototype = eventually(
        Duration::from_secs(10),
        "the prototype's session ended",
        async || {
            let session = store.session("heist_20250101_120000").await.ok()?.session;
            (session.status != SessionStatus::Active).then_some(session)
        },
    )
    .await;
    assert_eq!(prototype.status, SessionStatus::Interrupted);
    assert!(
        prototype
            .failure_reason
            .as_deref()
            .unwrap_or_default()
            .contains("no seed or plan"),
        "{prototype:?}"
    );
}

/// The store deleted under a running session: `/readyz` says so within
/// 5 s, new runs are refused with 503, the session pauses instead of
/// completing into the unlinked file, and the error is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_makes_the_daemon_unready_and_pauses_its_sessions() {
    let stack = TestStack::start().await;
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 100,
            ..Fault::default()
        },
    );
    let daemon = Daemon::start(&stack, "").await;
    let session_id = daemon.start_run(30).await;
    let database = daemon.directory.path().join("audit.db");
    eventually(Duration::from_secs(10), "a turn committed", async || {
        let store = StoreHandle::open_read_only(&database).await.ok()?;
        (!committed_turns(&store, &session_id).await.is_empty()).then_some(())
    })
    .await;
    std::fs::remove_file(&database).expect("delete the store");
    let deleted_at = Instant::now();
    let readiness = eventually(Duration::from_secs(5), "/readyz 503", async || {
        let (status, body) = daemon.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(deleted_at.elapsed() < Duration::from_secs(5));
    assert!(
        readiness["store_problem"]
            .as_str()
            .unwrap_or_default()
            .contains("deleted"),
        "{readiness}"
    );
    let refused = support::http()
        .post(format!("{}/api/v1/runs", daemon.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "turns": 2 }))
        .send()
        .await
        .expect("runs answers");
    assert_eq!(refused.status().as_u16(), 503);
    let body: Value = refused.json().await.expect("json error");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("store"),
        "{body}"
    );
    eventually(Duration::from_secs(10), "the session paused", async || {
        daemon.log().contains("the session pauses").then_some(())
    })
    .await;
    // What the daemon still reads from its unlinked file: the session was
    // never ended into it.
    let (_, detail) = daemon.get(&format!("/api/v1/sessions/{session_id}")).await;
    assert_eq!(detail["session"]["status"], "active", "{detail}");
    assert!(
        daemon.log().contains("the audit store cannot take writes"),
        "{}",
        daemon.log()
    );
}

/// A small tmpfs mounted for one test, unmounted when dropped. Needs root:
/// the tests that use it are `#[ignore = "needs root ..."]`, and run under
/// `--include-ignored` (`.ci/run`, as root) they fail when it cannot be
/// mounted.
pub(crate) struct Tmpfs {
    pub(crate) path: PathBuf,
    _directory: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(size: &str) -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("mount runs");
        assert!(
            mounted.status.success(),
            "this test needs root to mount a tmpfs (run it as root, as .ci/run does, \
             or leave out the ignored tests): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        Self {
            path,
            _directory: directory,
        }
    }

    pub(crate) fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// A store that cannot be written at start stops the daemon before READY,
/// with exit code 2, the path and the reason.
#[tokio::test]
#[ignore = "needs root (mounts a tmpfs)"]
async fn a_read_only_store_at_start_exits_2_before_ready() {
    let tmpfs = Tmpfs::mount("4m");
    let stack = TestStack::start().await;
    let database = tmpfs.path.join("audit.db");
    drop(
        StoreHandle::open_sqlite(&database, Synchronous::Normal)
            .await
            .expect("create"),
    );
    tmpfs.remount_read_only();
    let directory = tempfile::tempdir().expect("temp dir");
    let config_path = directory.path().join("heistd.toml");
    std::fs::write(&config_path, config_text(&stack, &tmpfs.path, "")).expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(["daemon", "--config", config_path.to_str().expect("utf-8")])
        .env("HEISTD_DAEMON__ADMIN_ADDRESS", "127.0.0.1:0")
        .env("HEISTD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NOTIFY_SOCKET", directory.path().join("none.sock"))
        .output()
        .expect("daemon runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("audit.db"), "{stderr}");
    assert!(!stderr.contains("READY"), "{stderr}");
}

pub(crate) mod events;
mod memory_restart;
mod ops;

/// The disk under the store fills (a 2 MiB tmpfs and a file that takes the
/// rest): `/readyz` and new runs answer 503, the running session pauses
/// instead of failing, and once there is room again it completes, with the
/// metrics agreeing with the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mounts a tmpfs)"]
async fn a_full_disk_makes_the_daemon_unready_and_its_session_waits_for_room() {
    let tmpfs = Tmpfs::mount("2m");
    let stack = TestStack::start().await;
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 50,
            ..Fault::default()
        },
    );
    let database = tmpfs.path.join("audit.db");
    let config = format!(
        "[store]\npath = \"{}\"\nmax_outage_ms = 60000\n",
        database.display()
    ) + &services_text(&stack, "");
    let daemon = Daemon::start_with_config(&config).await;
    let session_id = daemon.start_run(20).await;
    eventually(Duration::from_secs(10), "two turns committed", async || {
        let store = StoreHandle::open_read_only(&database).await.ok()?;
        (committed_turns(&store, &session_id).await.len() >= 2).then_some(())
    })
    .await;
    let filler = tmpfs.path.join("filler");
    fill_the_disk(&filler);
    let (status, readiness) = eventually(Duration::from_secs(10), "/readyz 503", async || {
        let (status, body) = daemon.get("/readyz").await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503, "{readiness}");
    assert!(readiness["store_problem"].is_string(), "{readiness}");
    let refused = support::http()
        .post(format!("{}/api/v1/runs", daemon.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "turns": 2 }))
        .send()
        .await
        .expect("runs answers");
    assert_eq!(refused.status().as_u16(), 503);
    let (_, detail) = daemon.get(&format!("/api/v1/sessions/{session_id}")).await;
    assert_eq!(detail["session"]["status"], "active", "paused, not failed");

    std::fs::remove_file(&filler).expect("room again");
    eventually(
        Duration::from_secs(30),
        "the session completes",
        async || {
            let (_, detail) = daemon.get(&format!("/api/v1/sessions/{session_id}")).await;
            (detail["session"]["status"] == "completed").then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(10), "/readyz 200 again", async || {
        (daemon.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let store = StoreHandle::open_read_only(&database).await.expect("store");
    assert_eq!(
        committed_turns(&store, &session_id).await,
        (1..=20).collect::<Vec<_>>()
    );
    // The metrics count what the store recorded: one completed session.
    let metrics = support::http()
        .get(format!("{}/metrics", daemon.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let completed = metrics
        .lines()
        .find(|line| line.starts_with("heistd_sessions_total{status=\"completed\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or_default();
    assert_eq!(completed, "1", "{metrics}");
}

/// Writes zeros to `path` until the file system says it is full.
fn fill_the_disk(path: &Path) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while file
        .write_all(&block)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    // The last partial block: what is left, byte by byte in small writes.
    while file
        .write_all(&block[..512])
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
}
