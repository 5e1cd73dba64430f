//! Token budgets end to end: `heistd daemon` as a child process against
//! the model double, whose every reply reports the same `usage` (60 prompt
//! and 40 completion tokens: 100 a turn). A session budget ends a session
//! after the turn that leaves no room for another; a daily budget ends
//! running sessions, skips a schedule's slots and refuses run requests
//! (429 naming the key). The day changing is driven by a paused clock in
//! the daemon's unit tests (`daemon::runs::budget`), which this process's
//! wall clock cannot be.

use std::time::Duration;

use serde_json::Value;

use crate::daemon::{eventually, services_text, Daemon};
use crate::model_double::{Behaviour, ModelDouble, MODEL};
use crate::support::TestStack;

/// A daemon on `stack`'s companions whose model is `model`; `extra` is
/// TOML after the `[llm]` keys (its own tables). The directory holds the
/// store.
async fn daemon_on(
    stack: &TestStack,
    model: &ModelDouble,
    extra: &str,
) -> (Daemon, tempfile::TempDir) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = format!(
        "[store]\npath = \"{}\"\n",
        directory.path().join("audit.db").display()
    );
    let services = services_text(stack, &format!("model = \"{MODEL}\"\n{extra}"))
        .replace(&stack.url("rehearsal"), &model.url);
    (
        Daemon::start_with_config(&(store + &services)).await,
        directory,
    )
}

async fn hundred_token_model() -> ModelDouble {
    ModelDouble::start(Behaviour {
        usage_per_reply: Some((60, 40)),
        ..Behaviour::default()
    })
    .await
}

/// The session once it has ended.
async fn ended(daemon: &Daemon, session_id: &str) -> Value {
    eventually(Duration::from_secs(30), "the session ends", async || {
        let (status, body) = daemon.get(&format!("/api/v1/sessions/{session_id}")).await;
        let status_now = &body["session"]["status"];
        (status == 200 && status_now != "active" && status_now != "queued").then_some(body)
    })
    .await
}

/// The value of the series of `family` whose labels include `labels`.
fn series(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {family} series with {labels:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_token_session_budget_ends_a_session_of_100_token_turns_after_the_fourth() {
    let stack = TestStack::start().await;
    let model = hundred_token_model().await;
    let (daemon, _directory) =
        daemon_on(&stack, &model, "[heist]\nmax_tokens_per_session = 400\n").await;
    let metrics = daemon.get_text("/metrics").await;
    assert_eq!(
        series(
            &metrics,
            "heistd_budget_exhausted_total",
            &[("scope", "session")]
        ),
        0.0
    );
    let session_id = daemon.start_run(8).await;
    let detail = ended(&daemon, &session_id).await;
    let session = &detail["session"];
    assert_eq!(session["status"], "failed", "{detail}\n{}", daemon.log());
    assert_eq!(session["num_turns"], 4, "{session}");
    assert_eq!(
        session["failure_reason"],
        "heist.max_tokens_per_session (400) reached: 400 tokens used, the next turn would take about 100 more"
    );
    assert_eq!(session["prompt_tokens"], 240);
    assert_eq!(session["completion_tokens"], 160);
    assert_eq!(
        model.usage_sent(),
        (240, 160),
        "no fifth turn was asked for"
    );
    let metrics = daemon.get_text("/metrics").await;
    assert_eq!(
        series(
            &metrics,
            "heistd_budget_exhausted_total",
            &[("scope", "session")]
        ),
        1.0
    );
    assert_eq!(
        series(&metrics, "heistd_sessions_total", &[("status", "failed")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_ends_a_running_session_after_its_turn_and_refuses_runs() {
    let stack = TestStack::start().await;
    let model = hundred_token_model().await;
    let (daemon, _directory) =
        daemon_on(&stack, &model, "[daemon]\nmax_tokens_per_day = 300\n").await;
    let session_id = daemon.start_run(6).await;
    let detail = ended(&daemon, &session_id).await;
    let session = &detail["session"];
    let today = chrono::Utc::now().format("%Y-%m-%d");
    assert_eq!(session["status"], "failed", "{detail}\n{}", daemon.log());
    assert_eq!(session["num_turns"], 3, "{session}");
    assert_eq!(
        session["failure_reason"],
        format!("daemon.max_tokens_per_day (300) reached: 300 tokens used by the runs started on {today} (UTC); more runs start the next UTC day")
    );
    let (status, body) = daemon.post_run(2).await;
    assert_eq!(status, 429, "{body}");
    let error = body["error"].as_str().expect("a JSON error");
    assert!(
        error.starts_with("daemon.max_tokens_per_day (300) reached: 300 tokens used"),
        "{error}"
    );
    let (_, list) = daemon.get("/api/v1/sessions").await;
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");
    let metrics = daemon.get_text("/metrics").await;
    // The session it ended, and the request it refused.
    assert_eq!(
        series(
            &metrics,
            "heistd_budget_exhausted_total",
            &[("scope", "daemon")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedules_spent_daily_budget_skips_its_slots_and_the_daemons_refuses_runs() {
    let stack = TestStack::start().await;
    let model = hundred_token_model().await;
    // Each slot's run plays two turns (200 tokens); the schedule may use
    // 150 a day and all runs 200, so after the first run both are spent.
    let extra = "[daemon]\nmax_tokens_per_day = 200\n\n[[schedule]]\nname = \"fast\"\nevery = \"1s\"\nturns = 2\nmax_tokens_per_day = 150\n";
    let (daemon, _directory) = daemon_on(&stack, &model, extra).await;
    let skipped = eventually(
        Duration::from_secs(30),
        "slots skipped for the budget",
        async || {
            let metrics = daemon.get_text("/metrics").await;
            let labels = [("schedule", "fast"), ("outcome", "skipped_budget")];
            let skipped = series(&metrics, "heistd_schedule_runs_total", &labels);
            (skipped >= 2.0).then_some(metrics)
        },
    )
    .await;
    let launched = [("schedule", "fast"), ("outcome", "launched")];
    assert_eq!(
        series(&skipped, "heistd_schedule_runs_total", &launched),
        1.0
    );
    // Read again: a scrape reads this family before the slots' one, so the
    // snapshot above may miss the skip being counted as it was taken.
    let metrics = daemon.get_text("/metrics").await;
    let exhausted = series(
        &metrics,
        "heistd_budget_exhausted_total",
        &[("scope", "schedule")],
    );
    assert!(exhausted >= 2.0, "{metrics}");
    let (_, list) = daemon.get("/api/v1/sessions").await;
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(
        sessions[0]["status"],
        "completed",
        "{list}\n{}",
        daemon.log()
    );
    assert_eq!(sessions[0]["schedule"], "fast");
    let (status, body) = daemon.post_run(2).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("daemon.max_tokens_per_day (200) reached")),
        "{body}"
    );
    assert!(
        daemon
            .log()
            .contains("skipping a slot: the daily token budget is spent"),
        "{}",
        daemon.log()
    );
}

/// Two daemons on one PostgreSQL database share `daemon.max_tokens_per_day`:
/// whichever node played the run, both read the day's tokens from the
/// store and both refuse the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn two_nodes_share_one_daily_budget() {
    let Some(database) =
        crate::postgres::TestDatabase::create("two_nodes_share_one_daily_budget").await
    else {
        return;
    };
    let stack = TestStack::start().await;
    let model = hundred_token_model().await;
    let node = async |name: &str| {
        let config = format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npool_size = 4\n[cluster]\nnode_id = \"{name}\"\nheartbeat_ms = 250\nlease_ms = 1500\n",
            database.url
        ) + &services_text(
            &stack,
            &format!("model = \"{MODEL}\"\n[daemon]\nmax_tokens_per_day = 300\n"),
        )
        .replace(&stack.url("rehearsal"), &model.url);
        Daemon::start_with_config(&config).await
    };
    let (node_a, node_b) = (node("node-a").await, node("node-b").await);
    let session_id = node_a.start_run(3).await;
    let detail = ended(&node_a, &session_id).await;
    assert_eq!(
        detail["session"]["status"],
        "completed",
        "{detail}\n{}",
        node_a.log()
    );
    for daemon in [&node_a, &node_b] {
        let (status, body) = daemon.post_run(2).await;
        assert_eq!(status, 429, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("daemon.max_tokens_per_day (300) reached: 300 tokens used"),
            "{error}"
        );
    }
}
