//! The store's contract: one suite of behaviours, written once against
//! `StoreHandle`, run unchanged on SQLite (a file in a temporary
//! directory) and on PostgreSQL (a fresh database per test). A backend
//! that passes it can stand behind the handle. Lease and fencing tests,
//! which need two nodes on one database, follow for PostgreSQL alone.

use std::time::Duration;

use heistd::config::Synchronous;
use heistd::store::{
    CancelOutcome, NewSession, RunTrigger, SchedulePause, ServiceCallRecord, SessionStatus,
    StoreError, StoreHandle, ToolCallRecord, TurnRecord, TurnUsage,
};

use crate::postgres::TestDatabase;

/// The lease PostgreSQL fixtures use, short so lease tests are quick.
const LEASE_MS: u64 = 400;

/// A store under test and what keeps it alive.
struct Fixture {
    handle: StoreHandle,
    _directory: Option<tempfile::TempDir>,
    database: Option<TestDatabase>,
}

impl Fixture {
    async fn sqlite() -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let handle =
            StoreHandle::open_sqlite(&directory.path().join("audit.db"), Synchronous::Normal)
                .await
                .expect("open");
        Self {
            handle,
            _directory: Some(directory),
            database: None,
        }
    }

    async fn postgres(test: &str) -> Option<Self> {
        let database = TestDatabase::create(test).await?;
        let handle = StoreHandle::open_configured(
            &database.store_config(),
            &TestDatabase::cluster_config("node-a", LEASE_MS),
        )
        .await
        .expect("open the PostgreSQL store");
        Some(Self {
            handle,
            _directory: None,
            database: Some(database),
        })
    }

    /// A second node on the same PostgreSQL database.
    async fn another_node(&self, node_id: &str) -> StoreHandle {
        let database = self.database.as_ref().expect("a PostgreSQL fixture");
        StoreHandle::open_configured(
            &database.store_config(),
            &TestDatabase::cluster_config(node_id, LEASE_MS),
        )
        .await
        .expect("open a second node")
    }
}

// The records every store test writes, shared with the store's unit tests.
#[path = "../../src/store/fixtures.rs"]
mod fixtures;
use fixtures::{new_session, turn};

/// Instantiates each named contract test once per backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = super::Fixture::sqlite().await;
                    super::$name(&fixture.handle).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
                async fn $name() {
                    let Some(fixture) = super::Fixture::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::$name(&fixture.handle).await;
                }
            )*
        }
    };
}

contract!(
    sessions_are_created_listed_and_ended_once,
    a_turn_commits_whole_or_not_at_all,
    no_turn_is_recorded_after_the_session_ended,
    failed_turns_are_not_context,
    the_outbox_is_delivered_failed_or_abandoned,
    delivered_writes_are_counted_and_marked_undelivered_again,
    a_schedule_slot_runs_once,
    health_events_read_back_in_order,
    pruning_deletes_old_ended_sessions_whole,
    a_released_session_is_claimed_once_its_lease_is_over,
    the_outbox_is_claimed_for_delivery_and_released,
    run_requests_queue_only_on_a_shared_store,
    cancel_requests_are_recorded_for_active_sessions_only,
    pauses_are_kept_until_resumed,
    a_schedules_runs_record_their_trigger_and_slots,
    turns_are_read_after_a_turn_and_after_a_row_id,
    a_turns_tokens_add_up_in_its_session_and_the_days_totals,
    webhook_events_are_queued_once_claimed_and_settled,
    a_days_tokens_count_the_sessions_started_that_day,
);

/// What the event streams read: a session's turns after a turn id (with
/// its row), every session's after a `messages.id`, and the highest id.
async fn turns_are_read_after_a_turn_and_after_a_row_id(store: &StoreHandle) {
    let start = store.last_message_id().await.expect("last id");
    let one = store.create_session(new_session(1, 5)).await.expect("one");
    let two = store.create_session(new_session(2, 5)).await.expect("two");
    for turn_id in 1..=3 {
        store
            .record_turn(turn(&one, turn_id))
            .await
            .expect("one's turn");
        store
            .record_turn(turn(&two, turn_id))
            .await
            .expect("two's turn");
    }
    let read = store.session_turns_after(&one, 1, 10).await.expect("read");
    assert_eq!(read.session.session_id, one);
    let ids: Vec<i64> = read.turns.iter().map(|t| t.message.turn_id).collect();
    assert_eq!(ids, [2, 3]);
    let second = &read.turns[0];
    assert_eq!(second.message.message, "message 2");
    assert_eq!(second.tool_calls.len(), 1);
    assert_eq!(second.tool_calls[0].tool_name, "calculator");
    assert_eq!(second.tool_calls[0].duration_ms, 1.0);
    assert_eq!(second.service_calls.len(), 1);
    assert_eq!(second.service_calls[0].attempts, 2);
    // A page, and the page after it.
    let page = store.session_turns_after(&one, 0, 2).await.expect("page");
    assert_eq!(page.turns.len(), 2);
    assert!(store
        .session_turns_after(&one, 3, 10)
        .await
        .expect("none")
        .turns
        .is_empty());
    assert!(matches!(
        store.session_turns_after("heist_nobody", 0, 10).await,
        Err(StoreError::SessionNotFound(_))
    ));
    // Every session's, in row order, each once, across pages.
    let mut seen = Vec::new();
    let mut after = start;
    loop {
        let page = store.turns_after(after, 4).await.expect("all");
        if page.is_empty() {
            break;
        }
        for read in &page {
            assert!(read.message.id > after, "row ids go up");
            after = read.message.id;
            assert_eq!(read.tool_calls.len(), 1, "each turn with its own calls");
            seen.push((read.message.session_id.clone(), read.message.turn_id));
        }
    }
    let mut expected = Vec::new();
    for turn_id in 1..=3 {
        expected.push((one.clone(), turn_id));
        expected.push((two.clone(), turn_id));
    }
    assert_eq!(seen, expected);
    assert_eq!(store.last_message_id().await.expect("last id"), after);
}

async fn sessions_are_created_listed_and_ended_once(store: &StoreHandle) {
    let first = store
        .create_session(new_session(7, 3))
        .await
        .expect("create");
    let second = store
        .create_session(new_session(8, 2))
        .await
        .expect("create");
    assert_ne!(first, second);
    assert!(first.starts_with("heist_"), "{first}");
    let listed = store.list_sessions(10).await.expect("list");
    assert_eq!(listed.len(), 2);
    let detail = store.session(&first).await.expect("detail");
    assert_eq!(detail.session.status, SessionStatus::Active);
    assert_eq!(detail.session.seed, Some(7));
    assert_eq!(detail.session.planned_turns, Some(3));
    assert_eq!(detail.session.scenario.as_deref(), Some("bank"));
    assert!(store
        .finish_session(&first, SessionStatus::Completed, None)
        .await
        .expect("finish"));
    assert!(
        !store
            .finish_session(&first, SessionStatus::Interrupted, Some("late"))
            .await
            .expect("second finish"),
        "the first ending sticks"
    );
    let detail = store.session(&first).await.expect("detail");
    assert_eq!(detail.session.status_text, "completed");
    assert!(detail.session.end_time.is_some());
    let active = store
        .find_sessions(Some(SessionStatus::Active), None, 10)
        .await
        .expect("find");
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].session_id, second);
    assert!(matches!(
        store.session("heist_missing").await,
        Err(StoreError::SessionNotFound(_))
    ));
    assert!(matches!(
        store
            .finish_session("heist_missing", SessionStatus::Failed, None)
            .await,
        Err(StoreError::SessionNotFound(_))
    ));
}

async fn a_turn_commits_whole_or_not_at_all(store: &StoreHandle) {
    let id = store
        .create_session(new_session(1, 3))
        .await
        .expect("create");
    store.record_turn(turn(&id, 1)).await.expect("first");
    assert!(store.record_turn(turn(&id, 1)).await.is_err());
    let detail = store.session(&id).await.expect("detail");
    assert_eq!(detail.messages.len(), 1);
    assert_eq!(detail.tool_usage.len(), 1);
    assert_eq!(detail.service_calls.len(), 1);
    assert_eq!(detail.service_calls[0].call.attempts, 2);
    assert_eq!(detail.session.num_turns, 1);
    assert_eq!(
        store.pending_outbox(&id, 10).await.expect("outbox").len(),
        1
    );
    assert_eq!(store.last_turn(&id).await.expect("last"), 1);
    store.record_turn(turn(&id, 2)).await.expect("second");
    assert_eq!(store.last_turn(&id).await.expect("last"), 2);
    // What the model server said of each reply reads back on both backends.
    let messages = store.session(&id).await.expect("detail").messages;
    let usage: Vec<_> = messages
        .iter()
        .map(|message| {
            let reason = message.finish_reason.as_deref();
            (
                message.prompt_tokens,
                message.completion_tokens,
                reason,
                message.trimmed,
            )
        })
        .collect();
    assert_eq!(
        usage,
        [
            (Some(101), Some(20), Some("stop"), false),
            (Some(102), Some(20), Some("stop"), true)
        ]
    );
    let json = serde_json::to_value(store.session(&id).await.expect("detail")).expect("json");
    assert_eq!(json["messages"][1]["message"], "message 2");
    assert_eq!(json["tool_usage"][0]["success"], true);
}

async fn a_turns_tokens_add_up_in_its_session_and_the_days_totals(store: &StoreHandle) {
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let id = store
        .create_session(new_session(1, 4))
        .await
        .expect("create");
    for turn_id in 1..=3 {
        store.record_turn(turn(&id, turn_id)).await.expect("commit");
    }
    // A turn that does not commit adds nothing: the totals move in the
    // turn's own transaction.
    assert!(store.record_turn(turn(&id, 1)).await.is_err());
    let mut estimated = turn(&id, 4);
    estimated.prompt_tokens = None;
    estimated.completion_tokens = None;
    estimated.usage = TurnUsage {
        prompt_tokens: 50,
        completion_tokens: 7,
        estimated: true,
        cost: Some(0.25),
    };
    store.record_turn(estimated).await.expect("commit");
    let detail = store.session(&id).await.expect("detail");
    let session = &detail.session;
    assert_eq!(
        (session.prompt_tokens, session.completion_tokens),
        (101 + 102 + 103 + 50, 20 * 3 + 7)
    );
    assert_eq!(session.usage_estimated, 1);
    assert_eq!(session.cost, Some(0.25));
    let answered: Vec<_> = detail
        .messages
        .iter()
        .map(|message| (message.endpoint.as_deref(), message.model.as_deref()))
        .collect();
    assert_eq!(
        answered[2],
        (Some("127.0.0.1:8006"), Some("fallback-model"))
    );
    assert_eq!(answered[0], (Some("127.0.0.1:8006"), Some("rehearsal")));
    let json = serde_json::to_value(&detail).expect("json");
    assert_eq!(json["session"]["prompt_tokens"], 356);
    assert_eq!(json["session"]["usage_estimated"], 1);
    assert_eq!(json["messages"][2]["model"], "fallback-model");
    // A scheduled session with no price: no cost.
    let scheduled = store
        .create_session(NewSession {
            schedule: Some("nightly".into()),
            scheduled_time: Some("2026-01-01T02:00:00Z".into()),
            ..new_session(2, 1)
        })
        .await
        .expect("create");
    store
        .record_turn(turn(&scheduled, 1))
        .await
        .expect("commit");
    let listed = store.list_sessions(10).await.expect("list");
    let row = listed
        .iter()
        .find(|row| row.session_id == scheduled)
        .expect("listed");
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.cost),
        (101, 20, None)
    );
    // The day's totals, per schedule.
    let totals = store.token_totals_since(before).await.expect("totals");
    let by_schedule: Vec<_> = totals
        .iter()
        .map(|row| {
            let totals = &row.totals;
            (
                row.schedule.as_deref(),
                totals.sessions,
                totals.prompt_tokens,
                totals.completion_tokens,
                totals.usage_estimated,
                totals.cost,
            )
        })
        .collect();
    assert_eq!(
        by_schedule,
        [
            (None, 1, 356, 67, 1, Some(0.25)),
            (Some("nightly"), 1, 101, 20, 0, None)
        ]
    );
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    assert!(store
        .token_totals_since(later)
        .await
        .expect("totals")
        .is_empty());
}

/// What a daily token budget reads: the tokens of the sessions started in
/// a period, of one schedule or of all.
async fn a_days_tokens_count_the_sessions_started_that_day(store: &StoreHandle) {
    let (from, to) = heistd::heist::utc_day(chrono::Utc::now());
    assert_eq!(
        store
            .tokens_used_between(from, to, None)
            .await
            .expect("sum"),
        0
    );
    let unscheduled = store
        .create_session(new_session(1, 4))
        .await
        .expect("create");
    for turn_id in 1..=2 {
        store
            .record_turn(turn(&unscheduled, turn_id))
            .await
            .expect("commit");
    }
    let nightly = store
        .create_session(NewSession {
            schedule: Some("nightly".into()),
            scheduled_time: Some("2026-01-01T02:00:00Z".into()),
            ..new_session(2, 1)
        })
        .await
        .expect("create");
    store.record_turn(turn(&nightly, 3)).await.expect("commit");
    // (101 + 20) + (102 + 20) unscheduled, 103 + 20 nightly.
    let sum = |schedule| store.tokens_used_between(from, to, schedule);
    assert_eq!(sum(None).await.expect("all"), 366);
    assert_eq!(sum(Some("nightly")).await.expect("nightly"), 123);
    assert_eq!(sum(Some("hourly")).await.expect("hourly"), 0);
    // The day before and the day after count none of them.
    let day = chrono::Duration::days(1);
    let before = store.tokens_used_between(from - day, from, None).await;
    assert_eq!(before.expect("yesterday"), 0);
    let after = store.tokens_used_between(to, to + day, None).await;
    assert_eq!(after.expect("tomorrow"), 0);
}

async fn no_turn_is_recorded_after_the_session_ended(store: &StoreHandle) {
    let id = store
        .create_session(new_session(1, 3))
        .await
        .expect("create");
    store
        .finish_session(&id, SessionStatus::Interrupted, Some("stopped"))
        .await
        .expect("finish");
    let refused = store.record_turn(turn(&id, 1)).await;
    assert!(
        matches!(refused, Err(StoreError::SessionEnded { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        store.record_turn(turn("heist_missing", 1)).await,
        Err(StoreError::SessionNotFound(_))
    ));
}

async fn failed_turns_are_not_context(store: &StoreHandle) {
    let id = store
        .create_session(new_session(1, 3))
        .await
        .expect("create");
    store.record_turn(turn(&id, 1)).await.expect("turn 1");
    let mut failed = turn(&id, 2);
    failed.message = String::new();
    failed.error = Some("llm: timed out".into());
    failed.tool_calls.clear();
    store.record_turn(failed).await.expect("turn 2");
    store.record_turn(turn(&id, 3)).await.expect("turn 3");
    let recent = store.recent_turns(&id, 5).await.expect("recent");
    let turns: Vec<i64> = recent.messages.iter().map(|m| m.turn_id).collect();
    assert_eq!(turns, vec![1, 3]);
    assert_eq!(recent.tool_usage.len(), 2);
    let recent = store.recent_turns(&id, 1).await.expect("recent");
    assert_eq!(recent.messages.len(), 1);
    assert_eq!(recent.messages[0].turn_id, 3);
    assert_eq!(recent.tool_usage.len(), 1, "only the tool calls of turn 3");
}

async fn the_outbox_is_delivered_failed_or_abandoned(store: &StoreHandle) {
    let id = store
        .create_session(new_session(1, 3))
        .await
        .expect("create");
    for turn_id in 1..=3 {
        store.record_turn(turn(&id, turn_id)).await.expect("turn");
    }
    assert_eq!(store.pending_outbox_total().await.expect("total"), 3);
    assert_eq!(
        store
            .sessions_with_pending_outbox(10)
            .await
            .expect("sessions"),
        vec![id.clone()]
    );
    let pending = store.pending_outbox(&id, 10).await.expect("pending");
    let turns: Vec<i64> = pending.iter().map(|entry| entry.turn_id).collect();
    assert_eq!(turns, vec![1, 2, 3], "oldest first");
    store
        .mark_outbox_failed(pending[0].id, "memory down")
        .await
        .expect("failed");
    let retried = store.pending_outbox(&id, 1).await.expect("pending");
    assert_eq!(retried[0].id, pending[0].id, "a failed write stays first");
    assert_eq!(retried[0].attempts, 1);
    store
        .mark_outbox_delivered(pending[0].id)
        .await
        .expect("delivered");
    store
        .mark_outbox_abandoned(pending[1].id, "refused")
        .await
        .expect("abandoned");
    assert_eq!(store.outbox_counts(&id).await.expect("counts"), (1, 3));
    assert_eq!(store.pending_outbox_total().await.expect("total"), 1);
    store
        .mark_outbox_delivered(pending[2].id)
        .await
        .expect("delivered");
    assert!(store
        .sessions_with_pending_outbox(10)
        .await
        .expect("sessions")
        .is_empty());
}

async fn delivered_writes_are_counted_and_marked_undelivered_again(store: &StoreHandle) {
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    let id = store
        .create_session(new_session(1, 3))
        .await
        .expect("create");
    for turn_id in 1..=3 {
        store.record_turn(turn(&id, turn_id)).await.expect("turn");
    }
    let pending = store.pending_outbox(&id, 10).await.expect("pending");
    // Nothing delivered yet: nothing the memory service should hold.
    let counts = store.delivered_counts(now - hour, now - hour, 10).await;
    assert!(counts.expect("counts").is_empty());
    store
        .mark_outbox_delivered(pending[0].id)
        .await
        .expect("delivered");
    store
        .mark_outbox_delivered(pending[1].id)
        .await
        .expect("delivered");
    store
        .mark_outbox_abandoned(pending[2].id, "quota")
        .await
        .expect("abandoned");
    let counts = store
        .delivered_counts(now - hour, now - hour, 10)
        .await
        .expect("counts");
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].session_id.as_str(), counts[0].delivered),
        (id.as_str(), 2)
    );
    // Their payloads, oldest first, for reconciliation to hash; the
    // abandoned one is not among them.
    let payloads = store.delivered_payloads(&id).await.expect("payloads");
    assert_eq!(
        payloads,
        vec![pending[0].payload.clone(), pending[1].payload.clone()]
    );
    // Past the memory service's retention: not expected to be held.
    let later = now + hour;
    let counts = store.delivered_counts(now - hour, later, 10).await;
    assert!(counts.expect("counts").is_empty());
    // An ended session counts within the window, not before it.
    store
        .finish_session(&id, SessionStatus::Completed, None)
        .await
        .expect("finish");
    let counts = store.delivered_counts(now - hour, now - hour, 10).await;
    assert_eq!(counts.expect("counts").len(), 1);
    let counts = store.delivered_counts(later, now - hour, 10).await;
    assert!(counts.expect("counts").is_empty());
    // Marked undelivered: the delivered ones come back, the abandoned one does not.
    assert_eq!(store.mark_outbox_undelivered(&id).await.expect("mark"), 2);
    let again = store.pending_outbox(&id, 10).await.expect("pending");
    let turns: Vec<i64> = again.iter().map(|entry| entry.turn_id).collect();
    assert_eq!(turns, vec![1, 2]);
    assert_eq!(store.outbox_counts(&id).await.expect("counts"), (0, 3));
    assert!(store
        .delivered_payloads(&id)
        .await
        .expect("payloads")
        .is_empty());
}

async fn a_schedule_slot_runs_once(store: &StoreHandle) {
    assert_eq!(
        store.last_scheduled_time("nightly").await.expect("last"),
        None
    );
    let slot = |time: &str| NewSession {
        schedule: Some("nightly".into()),
        scheduled_time: Some(time.into()),
        trigger: None,
        ..new_session(1, 2)
    };
    store
        .create_session(slot("2026-01-01T02:00:00+00:00"))
        .await
        .expect("first");
    let again = store
        .create_session(slot("2026-01-01T02:00:00+00:00"))
        .await;
    assert!(
        matches!(again, Err(StoreError::DuplicateRun { .. })),
        "{again:?}"
    );
    store
        .create_session(slot("2026-01-02T02:00:00+00:00"))
        .await
        .expect("next slot");
    assert_eq!(
        store.last_scheduled_time("nightly").await.expect("last"),
        Some("2026-01-02T02:00:00+00:00".into())
    );
    let of_schedule = store
        .find_sessions(None, Some("nightly"), 10)
        .await
        .expect("find");
    assert_eq!(of_schedule.len(), 2);
}

async fn health_events_read_back_in_order(store: &StoreHandle) {
    store
        .record_health_event("memory", "up", "down", "3 failed probes")
        .await
        .expect("event");
    store
        .record_health_event("llm", "unknown", "up", "probe ok")
        .await
        .expect("event");
    store
        .record_health_event("memory", "down", "up", "probe ok")
        .await
        .expect("event");
    let all = store.health_events(None).await.expect("all");
    assert_eq!(all.len(), 3);
    let memory = store.health_events(Some("memory")).await.expect("memory");
    let states: Vec<&str> = memory.iter().map(|e| e.to_state.as_str()).collect();
    assert_eq!(states, vec!["down", "up"]);
}

async fn webhook_events_are_queued_once_claimed_and_settled(store: &StoreHandle) {
    use heistd::store::{NewNotification, NotificationAttempt, NotificationCounts};
    let event = |receiver: &str, key: &str| NewNotification {
        receiver: receiver.to_string(),
        event_key: key.to_string(),
        event: "session_completed".to_string(),
        payload: format!("{{\"event_id\":\"{key}\"}}"),
    };
    let lease = Duration::from_secs(60);
    let added = store
        .enqueue_notifications(vec![
            event("ops", "one"),
            event("ops", "two"),
            event("audit", "one"),
        ])
        .await
        .expect("enqueue");
    assert_eq!(added, 3);
    // The same event for the same receiver again (two nodes, a retried
    // hook): nothing more.
    let again = store
        .enqueue_notifications(vec![event("ops", "one")])
        .await
        .expect("enqueue again");
    assert_eq!(again, 0);
    let claimed = store.claim_notifications(10, lease).await.expect("claim");
    let keys: Vec<(&str, &str)> = claimed
        .iter()
        .map(|entry| (entry.receiver.as_str(), entry.event_key.as_str()))
        .collect();
    assert_eq!(keys, vec![("ops", "one"), ("ops", "two"), ("audit", "one")]);
    assert!(claimed.iter().all(|entry| entry.attempts == 0));
    assert_eq!(claimed[0].payload, "{\"event_id\":\"one\"}");
    // Claimed: not due again within the lease.
    assert!(store
        .claim_notifications(10, lease)
        .await
        .expect("claim")
        .is_empty());
    let settle = |id: i64, attempt: NotificationAttempt| async move {
        store
            .record_notification_attempt(id, attempt)
            .await
            .expect("record");
    };
    settle(claimed[0].id, NotificationAttempt::Delivered).await;
    let failed = NotificationAttempt::Failed {
        error: "HTTP 500".into(),
        retry_in: Duration::ZERO,
    };
    settle(claimed[1].id, failed).await;
    let postponed = NotificationAttempt::Postponed {
        retry_in: Duration::ZERO,
    };
    settle(claimed[2].id, postponed).await;
    // Due again: the failed one with its attempt counted, the postponed
    // one without.
    let due = store.claim_notifications(10, lease).await.expect("claim");
    let attempts: Vec<(i64, i64)> = due.iter().map(|entry| (entry.id, entry.attempts)).collect();
    assert_eq!(attempts, vec![(claimed[1].id, 1), (claimed[2].id, 0)]);
    let abandoned = NotificationAttempt::Abandoned {
        error: "HTTP 500".into(),
    };
    settle(due[0].id, abandoned).await;
    let later = NotificationAttempt::Failed {
        error: "timeout".into(),
        retry_in: Duration::from_secs(3600),
    };
    settle(due[1].id, later).await;
    assert!(store
        .claim_notifications(10, lease)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(
        store.notification_counts().await.expect("counts"),
        NotificationCounts {
            pending: 1,
            delivered: 1,
            abandoned: 1,
        }
    );
}

async fn pruning_deletes_old_ended_sessions_whole(store: &StoreHandle) {
    let old = store
        .create_session(new_session(1, 2))
        .await
        .expect("create");
    store.record_turn(turn(&old, 1)).await.expect("turn");
    store
        .finish_session(&old, SessionStatus::Completed, None)
        .await
        .expect("finish");
    let running = store
        .create_session(new_session(2, 2))
        .await
        .expect("create");
    store.record_turn(turn(&running, 1)).await.expect("turn");
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        store
            .prune_sessions_before(future, 10)
            .await
            .expect("prune"),
        1
    );
    assert!(matches!(
        store.session(&old).await,
        Err(StoreError::SessionNotFound(_))
    ));
    assert_eq!(store.outbox_counts(&old).await.expect("counts"), (0, 0));
    assert_eq!(store.list_sessions(10).await.expect("list").len(), 1);
    store.compact(10).await.expect("compact");
    assert!(store.is_usable().await);
}

async fn a_released_session_is_claimed_once_its_lease_is_over(store: &StoreHandle) {
    let id = store
        .create_session(new_session(3, 4))
        .await
        .expect("create");
    store.record_turn(turn(&id, 1)).await.expect("turn");
    store.release(&id);
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 200)).await;
    let claimed = store.claim_orphaned_sessions(10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].session_id, id);
    assert_eq!(claimed[0].num_turns, 1);
    store
        .record_turn(turn(&id, 2))
        .await
        .expect("the claimant writes");
    assert!(store
        .finish_session(&id, SessionStatus::Completed, None)
        .await
        .expect("finish"));
}

async fn the_outbox_is_claimed_for_delivery_and_released(store: &StoreHandle) {
    let id = store
        .create_session(new_session(4, 2))
        .await
        .expect("create");
    for turn_id in 1..=2 {
        store.record_turn(turn(&id, turn_id)).await.expect("turn");
    }
    store
        .finish_session(&id, SessionStatus::Completed, None)
        .await
        .expect("finish");
    assert_eq!(
        store.claim_outbox_sessions(10).await.expect("claim"),
        vec![id.clone()]
    );
    let claimed = store.claim_outbox(&id, 10).await.expect("claim");
    let turns: Vec<i64> = claimed.iter().map(|entry| entry.turn_id).collect();
    assert_eq!(turns, vec![1, 2], "oldest first");
    store
        .mark_outbox_delivered(claimed[0].id)
        .await
        .expect("delivered");
    store.release_outbox(&id).await.expect("release");
    let rest = store.claim_outbox(&id, 10).await.expect("claim again");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, claimed[1].id);
    store
        .mark_outbox_delivered(rest[0].id)
        .await
        .expect("delivered");
    store.release_outbox(&id).await.expect("release");
    assert!(store.claim_outbox(&id, 10).await.expect("claim").is_empty());
    assert!(store
        .claim_outbox_sessions(10)
        .await
        .expect("claim")
        .is_empty());
}

/// A shared store queues run requests for any node to claim; SQLite, one
/// process that starts its runs at once, has no queue and says so.
async fn run_requests_queue_only_on_a_shared_store(store: &StoreHandle) {
    assert_eq!(store.queued_runs().await.expect("queued"), 0);
    assert!(store
        .claim_queued_runs("bank", 5)
        .await
        .expect("claim")
        .is_empty());
    let queued = store.enqueue_run(new_session(9, 3), 10).await;
    if !store.is_shared() {
        assert!(
            matches!(queued, Err(StoreError::NotShared(_))),
            "{queued:?}"
        );
        return;
    }
    let id = queued.expect("queued");
    let detail = store
        .session(&id)
        .await
        .expect("a queued session is visible");
    assert_eq!(detail.session.status, SessionStatus::Queued);
    assert_eq!(detail.session.status_text, "queued");
    assert_eq!(detail.session.planned_turns, Some(3));
    let listed = store
        .find_sessions(Some(SessionStatus::Queued), None, 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(store.queued_runs().await.expect("queued"), 1);
    assert!(
        store
            .claim_queued_runs("another-scenario", 5)
            .await
            .expect("claim")
            .is_empty(),
        "a node claims only runs of a scenario it has"
    );
    let claimed = store.claim_queued_runs("bank", 5).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].session_id, id);
    assert_eq!(claimed[0].status, SessionStatus::Active);
    assert_eq!(store.queued_runs().await.expect("queued"), 0);
    store
        .record_turn(turn(&id, 1))
        .await
        .expect("the claimant plays it");
    assert!(store
        .finish_session(&id, SessionStatus::Completed, None)
        .await
        .expect("finish"));
}

async fn cancel_requests_are_recorded_for_active_sessions_only(store: &StoreHandle) {
    let unknown = store.request_cancel("heist_nope", "why", "admin").await;
    assert!(
        matches!(unknown, Err(StoreError::SessionNotFound(_))),
        "{unknown:?}"
    );
    let active = store
        .create_session(new_session(1, 4))
        .await
        .expect("create");
    store.record_turn(turn(&active, 1)).await.expect("turn 1");
    assert_eq!(
        store
            .request_cancel(&active, "runaway", "admin token from 127.0.0.1")
            .await
            .expect("cancel"),
        CancelOutcome::Requested
    );
    // A second request keeps the first reason.
    assert_eq!(
        store
            .request_cancel(&active, "again", "admin")
            .await
            .expect("cancel again"),
        CancelOutcome::Requested
    );
    let requests = store.cancel_requests().await.expect("requests");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].session_id, active);
    assert_eq!(requests[0].reason, "runaway");
    assert!(store
        .finish_session(&active, SessionStatus::Cancelled, Some("runaway"))
        .await
        .expect("finish"));
    let detail = store.session(&active).await.expect("detail");
    assert_eq!(detail.session.status, SessionStatus::Cancelled);
    assert_eq!(detail.session.status_text, "cancelled");
    assert_eq!(detail.session.failure_reason.as_deref(), Some("runaway"));
    assert_eq!(detail.messages.len(), 1, "its turns stay");
    assert!(
        store.cancel_requests().await.expect("requests").is_empty(),
        "an ended session's request is done"
    );
    assert_eq!(
        store
            .request_cancel(&active, "late", "admin")
            .await
            .expect("ended"),
        CancelOutcome::Ended(SessionStatus::Cancelled)
    );
    if store.is_shared() {
        let queued = store
            .enqueue_run(new_session(2, 3), 10)
            .await
            .expect("queue");
        assert_eq!(
            store
                .request_cancel(&queued, "not needed", "admin")
                .await
                .expect("cancel queued"),
            CancelOutcome::Cancelled
        );
        assert_eq!(store.queued_runs().await.expect("queued"), 0);
        assert!(store
            .claim_queued_runs("bank", 5)
            .await
            .expect("claim")
            .is_empty());
        let detail = store.session(&queued).await.expect("detail");
        assert_eq!(detail.session.status, SessionStatus::Cancelled);
        assert_eq!(detail.session.failure_reason.as_deref(), Some("not needed"));
    }
}

async fn pauses_are_kept_until_resumed(store: &StoreHandle) {
    assert!(store.schedule_pauses().await.expect("pauses").is_empty());
    let pause = |note: &str| SchedulePause {
        schedule: "nightly".into(),
        note: note.into(),
        paused_by: "admin token from 127.0.0.1".into(),
        paused_at: "2026-12-07T03:00:00.000000Z".into(),
    };
    store
        .pause_schedule(pause("bank holiday"))
        .await
        .expect("pause");
    store
        .pause_schedule(pause("still"))
        .await
        .expect("pause again");
    assert_eq!(
        store.schedule_pauses().await.expect("pauses"),
        vec![pause("still")]
    );
    assert!(store.resume_schedule("nightly").await.expect("resume"));
    assert!(!store
        .resume_schedule("nightly")
        .await
        .expect("resume again"));
    assert!(store.schedule_pauses().await.expect("pauses").is_empty());
}

async fn a_schedules_runs_record_their_trigger_and_slots(store: &StoreHandle) {
    let run = |time: Option<&str>, trigger| NewSession {
        schedule: Some("every".into()),
        scheduled_time: time.map(str::to_string),
        trigger: Some(trigger),
        ..new_session(1, 2)
    };
    for (time, trigger) in [
        ("2026-01-01T00:00:01+00:00", RunTrigger::Schedule),
        ("2026-01-01T00:00:03+00:00", RunTrigger::Backfill),
        ("2026-01-01T00:00:09+00:00", RunTrigger::Schedule),
    ] {
        store
            .create_session(run(Some(time), trigger))
            .await
            .expect("create");
    }
    let manual = store
        .create_session(run(None, RunTrigger::Manual))
        .await
        .expect("a manual run has no slot");
    let detail = store.session(&manual).await.expect("detail");
    assert_eq!(detail.session.trigger.as_deref(), Some("manual"));
    assert_eq!(detail.session.schedule.as_deref(), Some("every"));
    assert_eq!(
        store
            .scheduled_slots(
                "every",
                "2026-01-01T00:00:01+00:00",
                "2026-01-01T00:00:05+00:00"
            )
            .await
            .expect("slots"),
        vec![
            "2026-01-01T00:00:01+00:00".to_string(),
            "2026-01-01T00:00:03+00:00".to_string()
        ]
    );
    assert_eq!(
        store.last_scheduled_time("every").await.expect("last"),
        Some("2026-01-01T00:00:09+00:00".into()),
        "a manual run is no slot"
    );
}

// PostgreSQL alone: several nodes on one database.

/// A daily token budget is the cluster's: each node reads the day's
/// tokens of every node's sessions from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn two_nodes_share_one_days_token_count() {
    let Some(fixture) = Fixture::postgres("two_nodes_share_one_days_token_count").await else {
        return;
    };
    let (node_a, node_b) = (&fixture.handle, fixture.another_node("node-b").await);
    let (from, to) = heistd::heist::utc_day(chrono::Utc::now());
    let on_a = node_a.create_session(new_session(1, 2)).await.expect("a");
    node_a.record_turn(turn(&on_a, 1)).await.expect("a commits");
    let on_b = node_b.create_session(new_session(2, 2)).await.expect("b");
    node_b.record_turn(turn(&on_b, 2)).await.expect("b commits");
    let expected = (101 + 20) + (102 + 20);
    for node in [node_a, &node_b] {
        let used = node.tokens_used_between(from, to, None).await.expect("sum");
        assert_eq!(used, expected, "each node sees both nodes' sessions");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn queued_runs_are_claimed_once_across_nodes_within_the_caps() {
    let Some(fixture) = Fixture::postgres("queued_runs_are_claimed_once_across_nodes").await else {
        return;
    };
    let (node_a, node_b) = (&fixture.handle, fixture.another_node("node-b").await);
    let mut queued = Vec::new();
    for seed in 0..6 {
        queued.push(
            node_a
                .enqueue_run(new_session(seed, 2), 6)
                .await
                .expect("queued"),
        );
    }
    let full = node_b.enqueue_run(new_session(7, 2), 6).await;
    assert!(
        matches!(
            full,
            Err(StoreError::QueueFull {
                queued: 6,
                max_queued: 6
            })
        ),
        "{full:?}"
    );
    assert!(
        full.unwrap_err()
            .to_string()
            .contains("daemon.max_queued_runs"),
        "the refusal names the key"
    );
    let first = node_b.claim_queued_runs("bank", 2).await.expect("claim");
    assert_eq!(first.len(), 2, "no more than the room asked for");
    // Both nodes claim the rest at once: each request goes to one of them.
    let (from_a, from_b) = tokio::join!(
        node_a.claim_queued_runs("bank", 10),
        node_b.claim_queued_runs("bank", 10)
    );
    let mut claimed: Vec<String> = first
        .iter()
        .chain(from_a.expect("a claims").iter())
        .chain(from_b.expect("b claims").iter())
        .map(|session| session.session_id.clone())
        .collect();
    claimed.sort();
    queued.sort();
    assert_eq!(claimed, queued, "every request claimed exactly once");
    assert_eq!(node_a.queued_runs().await.expect("queued"), 0);
    let owners = node_a.session_owners().await.expect("owners");
    assert_eq!(owners.len(), 6);
    assert!(
        owners
            .iter()
            .all(|(_, owner)| owner.as_deref() == Some("node-a")
                || owner.as_deref() == Some("node-b"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn queued_runs_are_claimed_within_the_cluster_cap() {
    let Some(database) = TestDatabase::create("queued_runs_within_the_cluster_cap").await else {
        return;
    };
    let mut cluster = TestDatabase::cluster_config("node-a", 5_000);
    cluster.max_concurrent_sessions = 2;
    let node = StoreHandle::open_configured(&database.store_config(), &cluster)
        .await
        .expect("open");
    node.create_session(new_session(1, 2))
        .await
        .expect("running");
    for seed in 0..3 {
        node.enqueue_run(new_session(seed, 2), 10)
            .await
            .expect("queued");
    }
    let claimed = node.claim_queued_runs("bank", 5).await.expect("claim");
    assert_eq!(claimed.len(), 1, "one place left under the cluster cap");
    assert_eq!(node.queued_runs().await.expect("queued"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn one_node_at_a_time_delivers_a_sessions_outbox() {
    let Some(fixture) = Fixture::postgres("one_node_at_a_time_delivers_an_outbox").await else {
        return;
    };
    let (node_a, node_b) = (&fixture.handle, fixture.another_node("node-b").await);
    let playing = node_a
        .create_session(new_session(1, 2))
        .await
        .expect("create");
    node_a.record_turn(turn(&playing, 1)).await.expect("turn");
    assert!(
        node_b
            .claim_outbox_sessions(10)
            .await
            .expect("claim")
            .is_empty(),
        "a session another node plays delivers its own writes"
    );
    let ended = node_a
        .create_session(new_session(2, 2))
        .await
        .expect("create");
    node_a.record_turn(turn(&ended, 1)).await.expect("turn");
    node_a
        .finish_session(&ended, SessionStatus::Completed, None)
        .await
        .expect("finish");
    // Renewed, so only the ended session is anybody's to claim.
    node_a.heartbeat().await.expect("heartbeat");
    let (batch_a, batch_b) = tokio::join!(
        node_a.claim_outbox_sessions(10),
        node_b.claim_outbox_sessions(10)
    );
    let (batch_a, batch_b) = (batch_a.expect("a"), batch_b.expect("b"));
    assert_eq!(
        batch_a.len() + batch_b.len(),
        1,
        "one node claims the ended session: {batch_a:?} {batch_b:?}"
    );
    let (holder, other) = if batch_a.is_empty() {
        (&node_b, node_a)
    } else {
        (node_a, &node_b)
    };
    assert_eq!(
        holder.claim_outbox(&ended, 10).await.expect("claim").len(),
        1
    );
    assert!(
        other
            .claim_outbox(&ended, 10)
            .await
            .expect("claim")
            .is_empty(),
        "the other node leaves writes a live node is delivering"
    );
    holder.release_outbox(&ended).await.expect("release");
    assert_eq!(
        other.claim_outbox(&ended, 10).await.expect("claim").len(),
        1
    );
    // A claimant that stops heartbeating loses its claim with its lease.
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 200)).await;
    holder.heartbeat().await.expect("the holder is alive");
    assert_eq!(
        holder.claim_outbox(&ended, 10).await.expect("claim").len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn a_node_paused_past_its_lease_is_fenced() {
    let Some(fixture) = Fixture::postgres("a_node_paused_past_its_lease_is_fenced").await else {
        return;
    };
    let (node_a, node_b) = (&fixture.handle, fixture.another_node("node-b").await);
    let id = node_a
        .create_session(new_session(5, 4))
        .await
        .expect("create");
    node_a.record_turn(turn(&id, 1)).await.expect("turn 1");
    assert!(
        node_b
            .claim_orphaned_sessions(10)
            .await
            .expect("claim")
            .is_empty(),
        "a live lease is not taken"
    );
    // Node A stops heartbeating (paused): its lease runs out.
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 200)).await;
    let claimed = node_b.claim_orphaned_sessions(10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let fenced = node_a.record_turn(turn(&id, 2)).await;
    assert!(
        matches!(&fenced, Err(StoreError::Fenced { owner, .. }) if owner == "node-b"),
        "{fenced:?}"
    );
    assert!(
        !node_a
            .finish_session(&id, SessionStatus::Failed, Some("fenced"))
            .await
            .expect("finish"),
        "the fenced node cannot end the session either"
    );
    assert_eq!(node_a.heartbeat().await.expect("heartbeat").renewed, 0);
    node_b
        .record_turn(turn(&id, 2))
        .await
        .expect("the new owner writes");
    let detail = node_b.session(&id).await.expect("detail");
    assert_eq!(detail.messages.len(), 2);
    assert_eq!(detail.session.status, SessionStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn heartbeats_keep_a_lease() {
    let Some(fixture) = Fixture::postgres("heartbeats_keep_a_lease").await else {
        return;
    };
    let (node_a, node_b) = (&fixture.handle, fixture.another_node("node-b").await);
    let id = node_a
        .create_session(new_session(5, 4))
        .await
        .expect("create");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(LEASE_MS / 4)).await;
        let report = node_a.heartbeat().await.expect("heartbeat");
        assert_eq!(report.renewed, 1);
        assert!(node_b
            .claim_orphaned_sessions(10)
            .await
            .expect("claim")
            .is_empty());
        node_b.heartbeat().await.expect("node b heartbeat");
    }
    node_a
        .record_turn(turn(&id, 1))
        .await
        .expect("still the owner");
    let nodes = node_b.nodes().await.expect("nodes");
    let ids: Vec<&str> = nodes.iter().map(|node| node.node_id.as_str()).collect();
    assert!(
        ids.contains(&"node-a") && ids.contains(&"node-b"),
        "{ids:?}"
    );
    assert!(nodes.iter().all(|node| node.alive));
    let owners = node_b.session_owners().await.expect("owners");
    assert_eq!(owners, vec![(id, Some("node-a".to_string()))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn nodes_starting_together_migrate_once() {
    let Some(database) = TestDatabase::create("nodes_starting_together_migrate_once").await else {
        return;
    };
    let opens = (0..4).map(|index| {
        let store = database.store_config();
        async move {
            StoreHandle::open_configured(
                &store,
                &TestDatabase::cluster_config(&format!("node-{index}"), LEASE_MS),
            )
            .await
        }
    });
    for opened in futures_join_all(opens).await {
        let handle = opened.expect("every node opens");
        assert!(handle.is_usable().await);
    }
}

/// Runs the futures concurrently (no `futures` crate for one join).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.expect("task"));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn the_cluster_cap_holds_across_nodes() {
    let Some(database) = TestDatabase::create("the_cluster_cap_holds_across_nodes").await else {
        return;
    };
    let mut cluster = TestDatabase::cluster_config("node-a", 5_000);
    cluster.max_concurrent_sessions = 2;
    let node_a = StoreHandle::open_configured(&database.store_config(), &cluster)
        .await
        .expect("open");
    cluster.node_id = "node-b".into();
    let node_b = StoreHandle::open_configured(&database.store_config(), &cluster)
        .await
        .expect("open");
    node_a
        .create_session(new_session(1, 2))
        .await
        .expect("first");
    let second = node_b
        .create_session(new_session(2, 2))
        .await
        .expect("second");
    let third = node_a.create_session(new_session(3, 2)).await;
    assert!(
        matches!(third, Err(StoreError::ClusterFull { running: 2 })),
        "{third:?}"
    );
    node_b
        .finish_session(&second, SessionStatus::Completed, None)
        .await
        .expect("finish");
    node_a
        .create_session(new_session(3, 2))
        .await
        .expect("room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set HEISTD_TEST_POSTGRES_URL"]
async fn two_nodes_never_claim_one_webhook_event_at_once() {
    use heistd::store::NewNotification;
    let Some(fixture) = Fixture::postgres("two_nodes_never_claim_one_webhook_event").await else {
        return;
    };
    let (node_a, node_b) = (fixture.handle.clone(), fixture.another_node("node-b").await);
    let events: Vec<NewNotification> = (0..40)
        .map(|index| NewNotification {
            receiver: "ops".to_string(),
            event_key: format!("event-{index}"),
            event: "service_down".to_string(),
            payload: "{}".to_string(),
        })
        .collect();
    // Both nodes queue the same events (each saw them): stored once.
    assert_eq!(
        node_a
            .enqueue_notifications(events.clone())
            .await
            .expect("a"),
        40
    );
    assert_eq!(node_b.enqueue_notifications(events).await.expect("b"), 0);
    let lease = Duration::from_secs(60);
    let mut claimed = Vec::new();
    // Both claim in small batches at the same time until nothing is due.
    loop {
        let (from_a, from_b) = tokio::join!(
            node_a.claim_notifications(3, lease),
            node_b.claim_notifications(3, lease)
        );
        let (from_a, from_b) = (from_a.expect("a claims"), from_b.expect("b claims"));
        if from_a.is_empty() && from_b.is_empty() {
            break;
        }
        claimed.extend(
            from_a
                .into_iter()
                .chain(from_b)
                .map(|entry| entry.event_key),
        );
    }
    let distinct: std::collections::BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), 40, "each event claimed once: {claimed:?}");
    assert_eq!(distinct.len(), 40);
}
