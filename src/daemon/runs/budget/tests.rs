//! The daily budgets at the door, under paused tokio time: a real SQLite
//! store holds today's sessions and their tokens, [`Runs`]' clock starts
//! at the wall time they were recorded at, and moving tokio time a day
//! on opens the budget again. Sessions are seeded straight into the store
//! (the store's `start_time` is the wall clock's, which paused time does
//! not move: hence a clock that starts at the wall time, so "today" is
//! the same day for both until the test moves the clock on).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use super::super::{RunContext, Runs};
use crate::clients::Clients;
use crate::config::{Config, Synchronous};
use crate::daemon::state::{DaemonState, StartRunError};
use crate::health::HealthBoard;
use crate::scenario::Scenario;
use crate::scheduler::Clock;
use crate::store::{NewSession, RunTrigger, StoreHandle, TurnRecord, TurnUsage};

const CONFIG: &str = r#"
[daemon]
max_tokens_per_day = 1000

[[schedule]]
name = "nightly"
every = "1h"
max_tokens_per_day = 300

[[schedule]]
name = "hourly"
every = "1h"
"#;

struct Door {
    runs: Arc<Runs>,
    store: StoreHandle,
    config: Arc<Config>,
    _directory: tempfile::TempDir,
}

async fn door() -> Door {
    let directory = tempfile::tempdir().expect("temporary directory");
    let config_path = directory.path().join("heistd.toml");
    std::fs::write(&config_path, CONFIG).expect("config written");
    let config = Arc::new(crate::config::load(Some(&config_path), Vec::new()).expect("config"));
    let store = StoreHandle::open_sqlite(&directory.path().join("audit.db"), Synchronous::Normal)
        .await
        .expect("store opens");
    let (run_commands, _requests) = mpsc::channel(1);
    let state = Arc::new(DaemonState::new(
        config.clone(),
        store.clone(),
        Arc::new(HealthBoard::default()),
        crate::metrics::install(),
        run_commands,
        None,
    ));
    let context = RunContext {
        config: config.clone(),
        scenario: Arc::new(Scenario::embedded()),
        clients: Clients::from_config(&config).expect("clients"),
    };
    let (_stop_sender, stop) = watch::channel(false);
    let webhooks = crate::daemon::webhooks::Webhooks::new(&config, store.clone());
    let runs = Runs::new(
        state,
        store.clone(),
        context,
        stop,
        webhooks,
        Clock::new(Utc::now()),
    );
    Door {
        runs,
        store,
        config,
        _directory: directory,
    }
}

/// A session of `schedule` started now whose one turn used `tokens`.
async fn spend(store: &StoreHandle, schedule: Option<&str>, tokens: u32) {
    let session_id = store
        .create_session(NewSession {
            scenario: "bank".into(),
            seed: 1,
            planned_turns: 1,
            schedule: schedule.map(str::to_string),
            scheduled_time: schedule.map(|_| Utc::now().to_rfc3339()),
            trigger: schedule.map(|_| RunTrigger::Schedule),
        })
        .await
        .expect("session");
    let turn = TurnRecord {
        usage: TurnUsage {
            prompt_tokens: tokens - 10,
            completion_tokens: 10,
            estimated: false,
            cost: None,
        },
        ..crate::store::fixtures::turn(&session_id, 1)
    };
    store.record_turn(turn).await.expect("turn committed");
}

fn schedule<'a>(config: &'a Config, name: &str) -> &'a crate::config::ScheduleConfig {
    config
        .schedule
        .iter()
        .find(|schedule| schedule.name == name)
        .expect("schedule")
}

#[tokio::test(start_paused = true)]
async fn a_schedules_spent_budget_skips_its_slots_until_the_next_utc_day() {
    let door = door().await;
    let context = door.runs.context();
    let (nightly, hourly) = (
        schedule(&door.config, "nightly"),
        schedule(&door.config, "hourly"),
    );
    let slot = Utc::now();
    spend(&door.store, Some("nightly"), 200).await;
    assert!(
        !door.runs.skip_for_budget(&context, nightly, slot).await,
        "200 of 300 used"
    );
    spend(&door.store, Some("nightly"), 100).await;
    assert!(
        door.runs.skip_for_budget(&context, nightly, slot).await,
        "300 of 300 used"
    );
    // Another schedule without a budget of its own, and run requests, go
    // on: the daemon's 1000 is not spent.
    assert!(!door.runs.skip_for_budget(&context, hourly, slot).await);
    door.runs
        .refuse_if_budget_spent(&context, None)
        .await
        .expect("the daemon's budget is not spent");
    // An operator's trigger of the schedule is refused too.
    let refused = door
        .runs
        .refuse_if_budget_spent(&context, Some("nightly"))
        .await
        .expect_err("the schedule's budget is spent");
    assert!(
        refused
            .to_string()
            .starts_with("schedule \"nightly\" max_tokens_per_day (300) reached: 300 tokens used"),
        "{refused}"
    );
    // The slot went nowhere: no session was created for it.
    let run = door.runs.clone().run_scheduled(nightly.clone(), slot);
    run.await;
    assert_eq!(
        door.store.list_sessions(10).await.expect("sessions").len(),
        2
    );
    tokio::time::advance(Duration::from_secs(86_400)).await;
    assert!(
        !door.runs.skip_for_budget(&context, nightly, slot).await,
        "a new UTC day opens the budget again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_daemon_budget_refuses_run_requests_and_every_slot_until_the_next_utc_day() {
    let door = door().await;
    let context = door.runs.context();
    spend(&door.store, None, 600).await;
    spend(&door.store, Some("hourly"), 400).await;
    let refused = door
        .runs
        .refuse_if_budget_spent(&context, None)
        .await
        .expect_err("1000 of 1000 used");
    let StartRunError::BudgetSpent {
        reason,
        retry_after_seconds,
    } = refused
    else {
        panic!("not a budget refusal: {refused:?}");
    };
    let today = Utc::now().format("%Y-%m-%d");
    assert_eq!(
        reason,
        format!("daemon.max_tokens_per_day (1000) reached: 1000 tokens used by the runs started on {today} (UTC); more runs start the next UTC day")
    );
    assert!(
        (1..=86_400).contains(&retry_after_seconds),
        "{retry_after_seconds}"
    );
    let hourly = schedule(&door.config, "hourly");
    assert!(
        door.runs
            .skip_for_budget(&context, hourly, Utc::now())
            .await
    );
    tokio::time::advance(Duration::from_secs(retry_after_seconds)).await;
    door.runs
        .refuse_if_budget_spent(&context, None)
        .await
        .expect("the next UTC day");
    assert!(
        !door
            .runs
            .skip_for_budget(&context, hourly, Utc::now())
            .await
    );
}
