//! Steering a running daemon as an operator does (issue 22, parts 1 and
//! 2): cancelling a session mid-heist, pausing a schedule across a
//! restart, triggering one run, backfilling the slots a stop missed, and
//! the CLI's steering commands finding the daemon and its token in the
//! config. Real `heistd daemon` processes (`daemon::Daemon`), real HTTP,
//! the audit store read back from its file. Waits poll with a bound; the
//! one fixed wait is the test's subject (a paused schedule runs nothing
//! for 5 s, a daemon stopped for 10 s).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike as _, Utc};
use heistd::config::Fault;
use heistd::store::{SessionStatus, StoreHandle};
use serde_json::{json, Value};

use crate::daemon::{committed_turns, eventually, Daemon, ADMIN_TOKEN};
use crate::support::TestStack;

/// A model slow enough that a session is mid-heist when it is cancelled.
fn slow_model(stack: &TestStack) {
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 200,
            ..Fault::default()
        },
    );
}

async fn sessions_of(store: &StoreHandle, schedule: &str) -> Vec<heistd::store::SessionRow> {
    store
        .find_sessions(None, Some(schedule), 1000)
        .await
        .expect("find sessions")
}

/// The value of the series of `family` with every one of `labels`
/// (`name="value"`, in any order) in the daemon's `/metrics`; 0 when absent.
async fn metric(daemon: &Daemon, family: &str, labels: &[&str]) -> f64 {
    daemon
        .get_text("/metrics")
        .await
        .lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_until_none_active(store: &StoreHandle, schedule: &str) {
    eventually(
        Duration::from_secs(20),
        "the runs in flight end",
        async || {
            sessions_of(store, schedule)
                .await
                .iter()
                .all(|session| session.status != SessionStatus::Active)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_cancelled_session_stops_after_its_current_turn_with_its_turns_intact() {
    let stack = TestStack::start().await;
    slow_model(&stack);
    let daemon = Daemon::start(&stack, "").await;
    let store = daemon.store().await;
    let session_id = daemon.start_run(40).await;
    eventually(Duration::from_secs(30), "two turns", async || {
        (committed_turns(&store, &session_id).await.len() >= 2).then_some(())
    })
    .await;
    let cancel = format!("/api/v1/sessions/{session_id}/cancel");
    let (status, body) = daemon.post(&cancel, json!({ "reason": "runaway" })).await;
    let turns_at_cancel = committed_turns(&store, &session_id).await.len();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelling");
    let detail = eventually(Duration::from_secs(10), "cancelled", async || {
        let detail = store.session(&session_id).await.ok()?;
        (detail.session.status == SessionStatus::Cancelled).then_some(detail)
    })
    .await;
    assert_eq!(detail.session.status_text, "cancelled");
    assert_eq!(detail.session.failure_reason.as_deref(), Some("runaway"));
    let turns: Vec<i64> = detail
        .messages
        .iter()
        .map(|message| message.turn_id)
        .collect();
    assert!(
        turns.len() <= turns_at_cancel + 1,
        "at most the turn in flight followed the cancel: {turns:?}, {turns_at_cancel} at cancel"
    );
    assert_eq!(
        turns,
        (1..=turns.len() as i64).collect::<Vec<_>>(),
        "turns intact"
    );
    assert_eq!(detail.session.num_turns, turns.len() as i64);

    let (status, body) = daemon.post(&cancel, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("ended"),
        "{body}"
    );
    let (status, _) = daemon
        .post("/api/v1/sessions/heist_nope/cancel", json!({}))
        .await;
    assert_eq!(status, 404);
    let anonymous = crate::support::http()
        .post(format!("{}{cancel}", daemon.admin_url()))
        .send()
        .await
        .expect("answers");
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, body) = daemon.post(&cancel, json!({ "why": "typo" })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        metric(&daemon, "heistd_sessions_total", &["status=\"cancelled\""]).await,
        1.0
    );
}

#[tokio::test]
async fn a_paused_schedule_runs_no_slot_survives_a_restart_and_runs_again_once_resumed() {
    let stack = TestStack::start().await;
    let mut daemon = Daemon::start(
        &stack,
        "[[schedule]]\nname = \"fast\"\nevery = \"1s\"\nturns = 1\n",
    )
    .await;
    let store = daemon.store().await;
    eventually(Duration::from_secs(20), "a first slot runs", async || {
        (!sessions_of(&store, "fast").await.is_empty()).then_some(())
    })
    .await;
    let (status, body) = daemon
        .post(
            "/api/v1/schedules/fast/pause",
            json!({ "note": "bank holiday" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true);
    let skipped = async |daemon: &Daemon| {
        let labels = ["schedule=\"fast\"", "outcome=\"skipped_paused\""];
        metric(daemon, "heistd_schedule_runs_total", &labels).await
    };
    eventually(Duration::from_secs(10), "a slot skipped", async || {
        (skipped(&daemon).await >= 1.0).then_some(())
    })
    .await;
    wait_until_none_active(&store, "fast").await;
    let before = sessions_of(&store, "fast").await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sessions_of(&store, "fast").await.len(),
        before,
        "paused: no slot ran"
    );
    assert_eq!(
        metric(&daemon, "heistd_schedule_paused", &["schedule=\"fast\""]).await,
        1.0
    );
    let (_, list) = daemon.get("/api/v1/schedules").await;
    let fast = &list["schedules"][0];
    assert_eq!(fast["name"], "fast");
    assert_eq!(fast["paused"], true);
    assert_eq!(fast["note"], "bank holiday");
    assert!(
        fast["paused_by"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "{fast}"
    );
    assert!(fast["last_slot"].is_string(), "{fast}");

    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(30)).await;
    let daemon = daemon.restart().await;
    let (_, list) = daemon.get("/api/v1/schedules").await;
    assert_eq!(
        list["schedules"][0]["paused"], true,
        "still paused after a restart: {list}"
    );
    eventually(
        Duration::from_secs(10),
        "a slot skipped after the restart",
        async || (skipped(&daemon).await >= 1.0).then_some(()),
    )
    .await;
    assert_eq!(sessions_of(&store, "fast").await.len(), before);

    let (status, body) = daemon
        .post("/api/v1/schedules/fast/resume", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_paused"], true);
    eventually(Duration::from_secs(10), "a slot runs again", async || {
        (sessions_of(&store, "fast").await.len() > before).then_some(())
    })
    .await;
    assert_eq!(
        metric(&daemon, "heistd_schedule_paused", &["schedule=\"fast\""]).await,
        0.0
    );
    let (status, _) = daemon.post("/api/v1/schedules/nope/pause", json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn trigger_runs_exactly_one_recorded_as_manual() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(
        &stack,
        "[[schedule]]\nname = \"weekly\"\nevery = \"7d\"\nturns = 2\n",
    )
    .await;
    let store = daemon.store().await;
    let (status, body) = daemon
        .post("/api/v1/schedules/weekly/trigger", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["trigger"], "manual");
    let session_id = body["session_id"].as_str().expect("session id").to_string();
    eventually(Duration::from_secs(20), "the run ends", async || {
        let detail = store.session(&session_id).await.ok()?;
        (detail.session.status == SessionStatus::Completed).then_some(())
    })
    .await;
    let sessions = sessions_of(&store, "weekly").await;
    assert_eq!(sessions.len(), 1, "exactly one run");
    assert_eq!(sessions[0].session_id, session_id);
    assert_eq!(sessions[0].trigger.as_deref(), Some("manual"));
    assert_eq!(sessions[0].scheduled_time, None);
    let (status, _) = daemon
        .post("/api/v1/schedules/nope/trigger", json!({}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_backfill_runs_the_slots_a_stop_missed_once_each_however_often_asked() {
    let stack = TestStack::start().await;
    let mut daemon = Daemon::start(
        &stack,
        "[[schedule]]\nname = \"fast\"\nevery = \"1s\"\nturns = 1\n",
    )
    .await;
    let store = daemon.store().await;
    eventually(Duration::from_secs(20), "a first slot runs", async || {
        (!sessions_of(&store, "fast").await.is_empty()).then_some(())
    })
    .await;
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(30)).await;
    let stopped = Utc::now();
    let from = stopped.with_nanosecond(0).expect("whole second") + TimeDelta::seconds(1);
    let to = from + TimeDelta::seconds(9);
    // The stop itself: ten slots pass with no daemon.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let daemon = daemon.restart().await;
    let range = json!({ "from": from.to_rfc3339(), "to": to.to_rfc3339() });
    let (status, first) = daemon
        .post("/api/v1/schedules/fast/backfill", range.clone())
        .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["slots"].as_array().map(Vec::len), Some(10), "{first}");
    assert_eq!(first["already_ran"], 0);
    let (status, second) = daemon.post("/api/v1/schedules/fast/backfill", range).await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(
        second["slots"].as_array().map(Vec::len),
        Some(0),
        "{second}"
    );
    assert_eq!(second["already_ran"], 10);

    let expected: BTreeSet<DateTime<Utc>> = (0..10)
        .map(|step| from + TimeDelta::seconds(step))
        .collect();
    let backfilled = eventually(
        Duration::from_secs(60),
        "ten backfilled runs end",
        async || {
            let runs: Vec<_> = sessions_of(&store, "fast")
                .await
                .into_iter()
                .filter(|session| session.trigger.as_deref() == Some("backfill"))
                .collect();
            (runs.len() == 10
                && runs
                    .iter()
                    .all(|run| run.status == SessionStatus::Completed))
            .then_some(runs)
        },
    )
    .await;
    let slots: BTreeSet<DateTime<Utc>> = backfilled
        .iter()
        .filter_map(|run| DateTime::parse_from_rfc3339(run.scheduled_time.as_deref()?).ok())
        .map(|slot| slot.with_timezone(&Utc))
        .collect();
    assert_eq!(slots, expected, "each missed slot ran once");
    let in_range = sessions_of(&store, "fast")
        .await
        .into_iter()
        .filter(|session| {
            session
                .scheduled_time
                .as_deref()
                .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
                .is_some_and(|slot| expected.contains(&slot.with_timezone(&Utc)))
        })
        .count();
    assert_eq!(in_range, 10, "no slot of the range ran twice");

    let (status, again) = daemon
        .post(
            "/api/v1/schedules/fast/backfill",
            json!({ "from": from.to_rfc3339(), "to": to.to_rfc3339() }),
        )
        .await;
    assert_eq!(
        (status, again["already_ran"].clone()),
        (202, json!(10)),
        "{again}"
    );
    let too_long =
        json!({ "from": (to - TimeDelta::seconds(200)).to_rfc3339(), "to": to.to_rfc3339() });
    let (status, refused) = daemon
        .post("/api/v1/schedules/fast/backfill", too_long)
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("daemon.max_backfill_slots = 100"),
        "{refused}"
    );
}

/// Runs the `heistd` binary with `arguments`: exit code, stdout, stderr.
async fn heistd(arguments: Vec<String>) -> (i32, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args(&arguments)
            .env_remove("HEISTD_ADMIN_TOKEN")
            .output()
            .expect("heistd runs")
    })
    .await
    .expect("joined");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test]
async fn the_steering_commands_find_the_daemon_and_its_token_in_the_config() {
    let stack = TestStack::start().await;
    slow_model(&stack);
    let secrets = tempfile::tempdir().expect("temp dir");
    let token_file = secrets.path().join("admin_token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write the token");
    let daemon = Daemon::start(
        &stack,
        &format!(
            "[daemon]\nadmin_token_file = \"{}\"\n[[schedule]]\nname = \"weekly\"\nevery = \"7d\"\nturns = 30\n",
            token_file.display()
        ),
    )
    .await;
    let config = daemon.config_path().display().to_string();
    let address = daemon.admin_url().trim_start_matches("http://").to_string();
    let command = |words: &[&str]| {
        let mut arguments: Vec<String> = words.iter().map(|word| word.to_string()).collect();
        arguments.extend([
            "--config".into(),
            config.clone(),
            "--admin-address".into(),
            address.clone(),
        ]);
        heistd(arguments)
    };

    let (code, out, err) = command(&["schedules", "list"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("weekly") && out.contains("every"), "{out}");
    let (code, out, err) = command(&["schedules", "pause", "weekly", "--note", "audit week"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("paused"), "{out}");
    let (_, out, _) = command(&["schedules", "list"]).await;
    assert!(
        out.contains("paused by") && out.contains("audit week"),
        "{out}"
    );
    let (code, out, err) = command(&["schedules", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let listed: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed["schedules"][0]["paused"], true, "{listed}");
    assert_eq!(listed["schedules"][0]["note"], "audit week");
    let (code, out, err) = command(&["schedules", "resume", "weekly"]).await;
    assert_eq!((code, out.contains("resumed")), (0, true), "{out}{err}");

    let (code, out, err) = command(&["schedules", "trigger", "weekly"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let session_id = out
        .split_whitespace()
        .find(|word| word.starts_with("heist_"))
        .expect("the session id is printed")
        .to_string();
    let (code, out, err) =
        command(&["sessions", "cancel", &session_id, "--reason", "wrong week"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cancelling"), "{out}");
    let store = daemon.store().await;
    eventually(Duration::from_secs(10), "cancelled", async || {
        let detail = store.session(&session_id).await.ok()?;
        (detail.session.failure_reason.as_deref() == Some("wrong week")).then_some(())
    })
    .await;

    let (code, _, err) = command(&["sessions", "cancel", &session_id]).await;
    assert_eq!(code, 1, "an ended session: {err}");
    assert!(err.contains("409"), "{err}");
    let (code, _, err) = command(&["schedules", "pause", "nope"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    let now = Utc::now().with_nanosecond(0).expect("whole second");
    let (code, out, err) = command(&[
        "schedules",
        "backfill",
        "weekly",
        "--from",
        &(now - TimeDelta::days(1)).to_rfc3339(),
        "--to",
        &now.to_rfc3339(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schedule weekly"), "{out}");
    let value: Value = daemon.get("/api/v1/schedules").await.1;
    assert_eq!(value["schedules"][0]["paused"], false);
}

/// Issue 22 part 7: a session waiting out a dead model shows in
/// `heistd_sessions_waiting{reason="model"}` while it waits, and no longer
/// once the model is back and it plays on; the calls it made meanwhile
/// are in `service_calls`.
#[tokio::test]
async fn a_session_waiting_for_the_model_is_counted_until_the_model_is_back() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(
        &stack,
        "[heist]\nmax_model_outage_ms = 60000\n[llm.policy]\nbackoff_base_ms = 10\nbackoff_cap_ms = 20\n",
    )
    .await;
    let store = daemon.store().await;
    stack.set_fault(
        "rehearsal",
        Fault {
            error_rate: 1.0,
            error_status: 503,
            ..Fault::default()
        },
    );
    let session_id = daemon.start_run(3).await;
    let waiting = async |daemon: &Daemon| {
        metric(daemon, "heistd_sessions_waiting", &["reason=\"model\""]).await
    };
    eventually(Duration::from_secs(20), "the session waits", async || {
        (waiting(&daemon).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&daemon, "heistd_sessions_waiting", &["reason=\"store\""]).await,
        0.0
    );
    stack.set_fault("rehearsal", Fault::default());
    eventually(
        Duration::from_secs(30),
        "the session completes",
        async || {
            let detail = store.session(&session_id).await.ok()?;
            (detail.session.status == SessionStatus::Completed).then_some(())
        },
    )
    .await;
    assert_eq!(waiting(&daemon).await, 0.0);
    let detail = store.session(&session_id).await.expect("detail");
    assert!(
        detail
            .service_calls
            .iter()
            .any(|call| call.call.service == "llm" && call.turn_id == 1),
        "the failed calls of the outage are recorded: {:?}",
        detail.service_calls
    );
}

#[tokio::test]
async fn a_reload_that_removes_a_schedule_removes_its_pause_and_keeps_the_others() {
    let stack = TestStack::start().await;
    let weekly = "[[schedule]]\nname = \"weekly\"\nevery = \"7d\"\n";
    let mut daemon = Daemon::start(
        &stack,
        &format!("{weekly}[[schedule]]\nname = \"daily\"\nevery = \"1d\"\n"),
    )
    .await;
    for name in ["weekly", "daily"] {
        let (status, body) = daemon
            .post(&format!("/api/v1/schedules/{name}/pause"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let text = std::fs::read_to_string(daemon.config_path()).expect("config");
    assert!(text.contains(weekly));
    std::fs::write(daemon.config_path(), text.replace(weekly, "")).expect("rewrite");
    daemon.signal("HUP");
    daemon.wait_for_notification("RELOADING=1").await;
    daemon.wait_for_notification("READY=1").await;
    let store = daemon.store().await;
    let pauses = store.schedule_pauses().await.expect("pauses");
    let paused: Vec<&str> = pauses.iter().map(|pause| pause.schedule.as_str()).collect();
    assert_eq!(paused, ["daily"], "no stale pause of the removed schedule");
    let (_, list) = daemon.get("/api/v1/schedules").await;
    assert_eq!(
        list["schedules"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(list["schedules"][0]["name"], "daily");
    assert_eq!(list["schedules"][0]["paused"], true);
}
