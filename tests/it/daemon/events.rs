//! Watching sessions live against a real daemon: `heistd sessions watch`
//! prints every turn of a session and exits with its ending's code, the
//! event streams resume with `Last-Event-ID` without a gap or a repeat, a
//! client that stops reading is cut with a `closed` event (and the stream
//! cap answers 503 meanwhile), and `heistd status`, `check` and
//! `sessions list` print for people and as JSON.

use std::time::Duration;

use heistd::config::{Fault, Synchronous};
use heistd::store::{NewSession, SessionStatus, StoreHandle, TurnRecord};
use heistd::wire::events::{Decoder, Frame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{eventually, Daemon, ADMIN_TOKEN};
use crate::support::{self, TestStack};

impl Daemon {
    /// The admin API's `host:port`.
    pub(crate) fn address(&self) -> String {
        self.admin.trim_start_matches("http://").to_string()
    }

    /// `heistd ARGS` aimed at this daemon; (exit code, stdout, stderr).
    pub(crate) async fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args(args)
            .env("HEISTD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("HEISTD_DAEMON__ADMIN_ADDRESS")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), command)
            .await
            .expect("the command ends within 60 s")
            .expect("the command runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    }
}

/// Reads an event stream until `enough` says so or it ends; the frames.
async fn read_frames(
    mut response: reqwest::Response,
    enough: impl Fn(&[Frame]) -> bool,
) -> Vec<Frame> {
    read_more(&mut response, enough).await
}

/// [`read_frames`] on a stream the caller goes on reading.
async fn read_more(
    response: &mut reqwest::Response,
    enough: impl Fn(&[Frame]) -> bool,
) -> Vec<Frame> {
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    let limit = Instant::now() + Duration::from_secs(60);
    while !enough(&frames) {
        let chunk = tokio::time::timeout_at(limit, response.chunk())
            .await
            .expect("events within 60 s")
            .expect("the stream reads");
        let Some(chunk) = chunk else { break };
        frames.extend(decoder.feed(&chunk));
    }
    frames
}

async fn events(daemon: &Daemon, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = support::http().get(format!("{}{path}", daemon.admin));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("events answer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        heistd::wire::events::CONTENT_TYPE
    );
    response
}

fn turn_ids(frames: &[Frame]) -> Vec<i64> {
    frames
        .iter()
        .filter(|frame| frame.event == "turn")
        .map(|frame| {
            let data: Value = serde_json::from_str(&frame.data).expect("turn JSON");
            assert_eq!(frame.id.as_deref(), Some(&*data["turn_id"].to_string()));
            data["turn_id"].as_i64().expect("turn id")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_watch_prints_every_turn_of_a_30_turn_session_and_exits_0() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(&stack, "").await;
    let session_id = daemon.start_run(30).await;
    let config = daemon.config_path.display().to_string();
    let address = daemon.address();
    let (code, stdout, stderr) = daemon
        .cli(&[
            "sessions",
            "watch",
            &session_id,
            "--config",
            &config,
            "--admin-address",
            &address,
        ])
        .await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for turn in 1..=30 {
        let heading = format!("[{turn:>2}/30] ");
        assert_eq!(
            stdout.matches(&heading).count(),
            1,
            "turn {turn} once in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("session {session_id} completed after 30 turns")),
        "{stdout}"
    );
    // `status` for a person and as JSON, the stream closed by now.
    let (code, page, _) = daemon.cli(&["status", "--admin-address", &address]).await;
    assert_eq!(code, Some(0), "{page}");
    for expected in ["SESSIONS RUNNING: ", "SERVICE", "memory", "CLUSTER: sqlite"] {
        assert!(page.contains(expected), "{expected:?} not in:\n{page}");
    }
    let (code, json, _) = daemon
        .cli(&["status", "--admin-address", &address, "--output", "json"])
        .await;
    assert_eq!(code, Some(0), "{json}");
    let status: Value = serde_json::from_str(&json).expect("status JSON");
    assert!(status["pid"].as_u64().is_some(), "{status}");
    eventually(
        Duration::from_secs(10),
        "the watch's stream is closed",
        async || {
            let (_, status) = daemon.get("/api/v1/status").await;
            (status["event_streams"] == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_resumed_with_last_event_id_misses_and_repeats_nothing() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(&stack, "").await;
    let session_id = daemon.start_run(30).await;
    let path = format!("/api/v1/sessions/{session_id}/events");
    // Ten turns, then the connection drops.
    let first = read_frames(events(&daemon, &path, None).await, |frames| {
        turn_ids(frames).len() >= 10
    })
    .await;
    let mut seen = turn_ids(&first);
    let last = first
        .iter()
        .rev()
        .find_map(|frame| frame.id.clone())
        .expect("an id");
    let rest = read_frames(events(&daemon, &path, Some(&last)).await, |frames| {
        frames.iter().any(|frame| frame.event == "ended")
    })
    .await;
    seen.extend(turn_ids(&rest));
    assert_eq!(
        seen,
        (1..=30).collect::<Vec<i64>>(),
        "each turn once, in order"
    );
    let ended: Value = serde_json::from_str(&rest.last().expect("ended").data).expect("ended JSON");
    assert_eq!(ended["status"], "completed");
    assert_eq!(ended["turns"], 30);
    // A turn says who played it, its tool calls and its duration.
    let turn: Value = serde_json::from_str(&rest[0].data).expect("turn JSON");
    for key in [
        "agent",
        "role",
        "message",
        "tool_calls",
        "retries",
        "duration_ms",
    ] {
        assert!(turn.get(key).is_some(), "{key} missing from {turn}");
    }
    // Every session's stream, from the start: the same 30 turns, by row id.
    let all = read_frames(
        events(&daemon, "/api/v1/events", Some("0")).await,
        |frames| frames.iter().filter(|frame| frame.event == "turn").count() >= 30,
    )
    .await;
    let turns: Vec<(String, i64)> = all
        .iter()
        .filter(|frame| frame.event == "turn")
        .map(|frame| {
            let data: Value = serde_json::from_str(&frame.data).expect("turn JSON");
            assert_eq!(frame.id.as_deref(), Some(&*data["id"].to_string()));
            (
                data["session_id"].as_str().expect("id").to_string(),
                data["turn_id"].as_i64().expect("turn"),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = (1..=30).map(|turn| (session_id.clone(), turn)).collect();
    assert_eq!(turns, expected);
    // A bad Last-Event-ID and an unknown session are refused, in JSON.
    let response = support::http()
        .get(format!("{}{path}", daemon.admin))
        .header("Last-Event-ID", "turn-7")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 400);
    let (status, body) = daemon.get("/api/v1/sessions/heist_nobody/events").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sessions_watch_exits_3() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(&stack, "[heist]\nmax_model_outage_ms = 500\n").await;
    stack.set_fault(
        "rehearsal",
        Fault {
            refuse: true,
            ..Fault::default()
        },
    );
    let session_id = daemon.start_run(5).await;
    let address = daemon.address();
    let runs = ["runs", "start", "--turns", "3", "--admin-address", &address];
    let (code, stdout, stderr) = daemon
        .cli(&[
            "sessions",
            "watch",
            &session_id,
            "--admin-address",
            &address,
        ])
        .await;
    assert_eq!(code, Some(3), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("session {session_id} failed")),
        "{stdout}"
    );
    assert!(stderr.contains("ended failed"), "{stderr}");
    // `runs start --follow` starts one and follows it to the same end.
    let follow = [&runs[..], &["--follow"][..]].concat();
    let (code, stdout, _) = daemon.cli(&follow).await;
    assert_eq!(code, Some(3), "{stdout}");
    assert!(
        stdout.contains("started") && stdout.contains("failed"),
        "{stdout}"
    );
    // Without --follow: the session id, at once.
    stack.set_fault("rehearsal", Fault::default());
    let (code, stdout, stderr) = daemon.cli(&runs).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.trim().starts_with("heist_"), "{stdout}");
}

/// A store holding one session of big turns, so an unread stream of them
/// fills every buffer between the daemon and the client.
async fn big_session(path: &std::path::Path, turns: u32) {
    let store = StoreHandle::open_sqlite(path, Synchronous::Normal)
        .await
        .expect("store");
    let session_id = store
        .create_session(NewSession {
            scenario: "bank".into(),
            seed: 1,
            planned_turns: turns,
            schedule: None,
            scheduled_time: None,
            trigger: None,
        })
        .await
        .expect("session");
    for turn_id in 1..=turns {
        let turn = TurnRecord {
            session_id: session_id.clone(),
            turn_id,
            agent_name: "hacker".into(),
            agent_role: "Hacker".into(),
            message: "x".repeat(64 * 1024),
            error: None,
            tool_calls: Vec::new(),
            memory_payload: None,
            service_calls: Vec::new(),
            prompt_tokens: None,
            completion_tokens: None,
            finish_reason: None,
            trimmed: false,
            endpoint: None,
            model: None,
            fallback: false,
            usage: Default::default(),
        };
        store.record_turn(turn).await.expect("turn");
    }
    store
        .finish_session(&session_id, SessionStatus::Completed, None)
        .await
        .expect("finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_with_a_closed_event() {
    let stack = TestStack::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let database = data.path().join("big.db");
    big_session(&database, 200).await;
    let config = format!(
        "[store]\npath = \"{}\"\n[events]\nmax_streams = 1\nbuffer_events = 2\nslow_reader_ms = 300\n{}",
        database.display(),
        super::services_text(&stack, "")
    );
    let daemon = Daemon::start_with_config(&config).await;
    // 200 turns of 64 KiB, asked for and never read.
    let mut socket = tokio::net::TcpStream::connect(daemon.address())
        .await
        .expect("connect");
    socket
        .write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: heistd\r\nLast-Event-ID: 0\r\n\r\n")
        .await
        .expect("request");
    eventually(Duration::from_secs(10), "the stream is open", async || {
        let (_, status) = daemon.get("/api/v1/status").await;
        (status["event_streams"] == 1).then_some(())
    })
    .await;
    // The one stream allowed is taken: another is refused, in JSON.
    let (status, body) = daemon.get("/api/v1/events").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("events.max_streams"),
        "{body}"
    );
    // The reader is cut after slow_reader_ms with its buffer full: the
    // slot is free again, nothing waits on it.
    eventually(
        Duration::from_secs(20),
        "the slow stream is closed",
        async || {
            let (_, status) = daemon.get("/api/v1/status").await;
            (status["event_streams"] == 0).then_some(())
        },
    )
    .await;
    let metrics = daemon.get_text("/metrics").await;
    assert!(
        metrics.contains("heistd_event_streams_closed_total{reason=\"slow_reader\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("heistd_event_streams 0"), "{metrics}");
    // What the client reads now ends with the `closed` event, well before
    // the 200th turn.
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    let limit = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&received).contains("\r\n0\r\n\r\n") {
        let read = tokio::time::timeout_at(limit, socket.read(&mut buffer))
            .await
            .expect("the stream ends within 30 s")
            .expect("read");
        if read == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&received);
    let turns = text.matches("event: turn\n").count();
    assert!(
        turns < 200,
        "all {turns} turns were buffered for a reader that did not read"
    );
    let closed = text.rfind("event: closed\n").expect("a closed event");
    assert!(
        text[closed..].contains("slow_reader"),
        "{}",
        &text[closed..]
    );
    assert!(
        !text[closed..].contains("event: turn"),
        "closed is the last word"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_sessions_list_print_json() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(&stack, "").await;
    daemon.start_run(2).await;
    let config = daemon.config_path.display().to_string();
    let (code, stdout, stderr) = daemon
        .cli(&["check", "--config", &config, "-o", "json"])
        .await;
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!("check --output json is JSON ({error}):\n{stdout}\n{stderr}")
    });
    let services = report["services"].as_array().expect("services");
    assert!(services
        .iter()
        .any(|service| service["service"] == "memory"));
    assert_eq!(
        code,
        Some(if report["healthy"] == true { 0 } else { 1 }),
        "{report}"
    );
    let database = daemon.directory.path().join("audit.db");
    let database = database.display().to_string();
    let (code, stdout, stderr) = daemon
        .cli(&["sessions", "--db", &database, "list", "--output", "json"])
        .await;
    assert_eq!(code, Some(0), "{stderr}");
    let list: Value = serde_json::from_str(&stdout).expect("sessions JSON");
    assert_eq!(list["sessions"].as_array().expect("sessions").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sessions_stream_tells_waits_and_endings_and_ends_when_the_daemon_stops() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(&stack, "[heist]\nmax_model_outage_ms = 1500\n").await;
    stack.set_fault(
        "rehearsal",
        Fault {
            refuse: true,
            ..Fault::default()
        },
    );
    // Subscribed before the run exists: its live events cannot be missed.
    let mut stream = events(&daemon, "/api/v1/events", None).await;
    let session_id = daemon.start_run(3).await;
    let frames = read_more(&mut stream, |frames| {
        frames.iter().any(|frame| frame.event == "ended")
    })
    .await;
    let data = |frame: &Frame| serde_json::from_str::<Value>(&frame.data).expect("JSON");
    let waiting = frames
        .iter()
        .find(|frame| frame.event == "waiting")
        .map(data)
        .unwrap_or_else(|| panic!("a waiting event in {frames:?}"));
    assert_eq!(waiting["session_id"], session_id.as_str());
    assert_eq!(waiting["reason"], "model");
    assert_eq!(waiting["turn_id"], 1);
    let ended = data(frames.last().expect("ended"));
    assert_eq!(ended["session_id"], session_id.as_str());
    assert_eq!(ended["status"], "failed", "{ended}");
    // A stopping daemon ends the stream with its reason, and is not held
    // by it: it exits at once.
    daemon.signal("TERM");
    let frames = read_more(&mut stream, |frames| {
        frames.iter().any(|frame| frame.event == "closed")
    })
    .await;
    let closed = data(frames.last().expect("closed"));
    assert_eq!(closed["reason"], "shutting_down", "{closed}");
    let mut daemon = daemon;
    assert!(daemon.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_after_a_daemon_restart_without_a_gap_or_a_repeat() {
    let stack = TestStack::start().await;
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 40,
            ..Fault::default()
        },
    );
    let daemon = Daemon::start(&stack, "").await;
    let session_id = daemon.start_run(20).await;
    let path = format!("/api/v1/sessions/{session_id}/events");
    let first = read_frames(events(&daemon, &path, None).await, |frames| {
        turn_ids(frames).len() >= 5
    })
    .await;
    let mut seen = turn_ids(&first);
    let last = first
        .iter()
        .rev()
        .find_map(|frame| frame.id.clone())
        .expect("an id");
    // Killed mid-session: the next daemon resumes it from the store.
    daemon.signal("KILL");
    let daemon = daemon.restart().await;
    let rest = read_frames(events(&daemon, &path, Some(&last)).await, |frames| {
        frames.iter().any(|frame| frame.event == "ended")
    })
    .await;
    seen.extend(turn_ids(&rest));
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<i64>>(),
        "each turn once, in order"
    );
    let ended: Value = serde_json::from_str(&rest.last().expect("ended").data).expect("ended JSON");
    assert_eq!(ended["status"], "completed", "{ended}");
}
