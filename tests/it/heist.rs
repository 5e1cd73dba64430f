//! Whole heists against the in-process stack.

use std::collections::{BTreeMap, BTreeSet};

use heistd::config::Fault;
use heistd::heist::{RunOptions, RunReport};
use heistd::store::{SessionDetail, SessionStatus};

use crate::support::{http, TestStack};

async fn run(stack: &TestStack, turns: u32, seed: u64) -> (RunReport, SessionDetail) {
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let report = runner
        .run(RunOptions::new(turns, seed), None)
        .await
        .expect("run finishes");
    let detail = stack
        .store
        .session(&report.session_id)
        .await
        .expect("session is stored");
    (report, detail)
}

async fn memories(stack: &TestStack, session_id: &str) -> Vec<serde_json::Value> {
    let url = format!("{}/sessions/{session_id}/memories", stack.url("memory"));
    let body: serde_json::Value = http()
        .get(url)
        .bearer_auth(crate::support::memory_admin_token(stack))
        .send()
        .await
        .expect("memory answers")
        .json()
        .await
        .expect("json");
    body["memories"].as_array().cloned().unwrap_or_default()
}

fn assert_every_tool_succeeded(detail: &SessionDetail) {
    let succeeded: BTreeSet<&str> = detail
        .tool_usage
        .iter()
        .filter(|tool| tool.success)
        .map(|tool| tool.tool_name.as_str())
        .collect();
    assert_eq!(succeeded, BTreeSet::from(heistd::wire::TOOL_NAMES));
}

fn fault(refuse: bool, error_rate: f64) -> Fault {
    Fault {
        refuse,
        error_rate,
        ..Fault::default()
    }
}

#[tokio::test]
async fn a_full_heist_lands_in_all_three_tables_and_in_memory() {
    let stack = TestStack::start().await;
    let (report, detail) = run(&stack, 12, 42).await;

    assert_eq!(report.status, SessionStatus::Completed);
    assert_eq!(detail.session.status, SessionStatus::Completed);
    assert_eq!(detail.session.num_turns, 12);
    assert!(detail.session.end_time.is_some());
    let turn_ids: Vec<i64> = detail
        .messages
        .iter()
        .map(|message| message.turn_id)
        .collect();
    assert_eq!(turn_ids, (1..=12).collect::<Vec<_>>());
    assert!(detail
        .messages
        .iter()
        .all(|message| message.error.is_none() && !message.message.is_empty()));
    assert_eq!(detail.messages[0].agent_name, "planner");
    assert!(detail
        .messages
        .windows(2)
        .all(|pair| pair[0].agent_name != pair[1].agent_name));

    // Every tool request in a message has its row, and every tool succeeded at least once.
    for message in &detail.messages {
        let requested = heistd::wire::parse_tool_requests(&message.message).len();
        let recorded = detail
            .tool_usage
            .iter()
            .filter(|tool| tool.turn_id == message.turn_id)
            .count();
        assert_eq!(requested, recorded, "turn {}", message.turn_id);
    }
    assert_every_tool_succeeded(&detail);
    assert!(detail
        .tool_usage
        .iter()
        .all(|tool| tool.success && tool.error.is_none() && !tool.tool_result.is_empty()));
    assert_eq!(
        report.tool_calls_succeeded as usize,
        detail.tool_usage.len()
    );

    // The memory service holds every message of the session, once.
    let stored = memories(&stack, &report.session_id).await;
    let stored: BTreeMap<i64, String> = stored
        .iter()
        .map(|memory| {
            (
                memory["turn_id"].as_i64().expect("turn"),
                memory["message"].as_str().expect("message").to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<i64, String> = detail
        .messages
        .iter()
        .map(|message| (message.turn_id, message.message.clone()))
        .collect();
    assert_eq!(stored, expected);
    assert_eq!(report.memory_pending, 0);
}

#[tokio::test]
async fn the_seed_reproduces_order_and_transcript() {
    let first_stack = TestStack::start().await;
    let second_stack = TestStack::start().await;
    let transcript = |detail: &SessionDetail| -> Vec<(String, String)> {
        detail
            .messages
            .iter()
            .map(|message| (message.agent_name.clone(), message.message.clone()))
            .collect()
    };
    let (_, first) = run(&first_stack, 10, 7).await;
    let (_, again) = run(&second_stack, 10, 7).await;
    let (_, other) = run(&first_stack, 10, 8).await;
    assert_eq!(transcript(&first), transcript(&again));
    assert_ne!(transcript(&first), transcript(&other));
    assert_eq!(first.session.seed, Some(7));
    assert_ne!(first.session.session_id, again.session.session_id);
}

#[tokio::test]
async fn a_dead_tool_service_degrades_turns_and_the_run_completes() {
    let stack = TestStack::start().await;
    stack.set_fault("calculator", fault(true, 0.0));
    let (report, detail) = run(&stack, 12, 42).await;

    assert_eq!(report.status, SessionStatus::Completed);
    assert_eq!(detail.messages.len(), 12);
    let calculator: Vec<_> = detail
        .tool_usage
        .iter()
        .filter(|tool| tool.tool_name == "calculator")
        .collect();
    assert!(!calculator.is_empty(), "seed 42 asks for the calculator");
    let errors: Vec<&str> = calculator
        .iter()
        .map(|call| call.error.as_deref().unwrap_or_default())
        .collect();
    assert!(calculator.iter().all(|call| !call.success));
    assert!(
        errors[0].contains("calculator: cannot connect"),
        "{}",
        errors[0]
    );
    for error in &errors {
        assert!(
            error.contains("calculator: cannot connect")
                || error.contains("calculator: circuit breaker is open"),
            "{error}"
        );
    }
    assert!(detail
        .tool_usage
        .iter()
        .any(|tool| tool.tool_name != "calculator" && tool.success));
    assert_eq!(report.tool_calls_failed as usize, calculator.len());
}

#[tokio::test]
async fn a_memory_outage_loses_nothing_the_outbox_delivers_later() {
    // This test is about the outbox, so the memory breaker (which would
    // rightly keep rejecting for a while after the outage) is off.
    let mut config = crate::support::base_config();
    config.services.memory.policy.breaker.enabled = false;
    config.services.memory.policy.max_attempts = 1;
    let stack = TestStack::start_with(config).await;
    let memory = stack.stack.companions.get("memory").expect("memory");
    memory.fault.set(fault(true, 0.0));
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let report = runner
        .run(RunOptions::new(6, 3), None)
        .await
        .expect("run finishes");
    assert_eq!(report.status, SessionStatus::Completed);
    assert_eq!(report.memory_pending, 6, "every write waits in the outbox");

    memory.fault.clear();
    assert_eq!(
        runner
            .deliver_outbox(&report.session_id)
            .await
            .expect("deliver"),
        0
    );
    let stored = memories(&stack, &report.session_id).await;
    let turns: Vec<i64> = stored
        .iter()
        .filter_map(|memory| memory["turn_id"].as_i64())
        .collect();
    assert_eq!(turns, (1..=6).collect::<Vec<_>>());
    // Delivering again stores nothing twice.
    assert_eq!(
        runner
            .deliver_outbox(&report.session_id)
            .await
            .expect("deliver"),
        0
    );
    assert_eq!(memories(&stack, &report.session_id).await.len(), 6);
    // The failed deliveries are in the audit trail, under the turn whose
    // write they carried: after each turn the outbox tried its oldest
    // write, turn 1's, and kept the order.
    let detail = stack
        .store
        .session(&report.session_id)
        .await
        .expect("detail");
    let failed_deliveries: Vec<i64> = detail
        .service_calls
        .iter()
        .filter(|row| {
            row.call.service == "memory"
                && row.call.operation.contains("store")
                && row.call.outcome != "success"
        })
        .map(|row| row.turn_id)
        .collect();
    assert_eq!(failed_deliveries, [1; 6], "{:?}", detail.service_calls);
}

#[tokio::test]
async fn a_memory_write_that_needed_a_retry_is_in_service_calls() {
    let stack = TestStack::start().await;
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let session_id = runner.start(&RunOptions::new(1, 5)).await.expect("session");
    // The observer runs once the turn is committed, before its memory
    // write is delivered: the next memory request is the write.
    let fail_the_write = |_: &heistd::heist::TurnView<'_>| {
        stack.set_fault(
            "memory",
            Fault {
                fail_next: 1,
                error_status: 503,
                ..Fault::default()
            },
        )
    };
    runner
        .play(&session_id, &RunOptions::new(1, 5), Some(&fail_the_write))
        .await
        .expect("run");
    let detail = stack.store.session(&session_id).await.expect("detail");
    let delivery = detail
        .service_calls
        .iter()
        .find(|row| row.call.service == "memory" && row.call.operation.contains("store"))
        .unwrap_or_else(|| panic!("the retried write is recorded: {:?}", detail.service_calls));
    assert_eq!(delivery.turn_id, 1);
    assert!(delivery.call.attempts > 1, "{delivery:?}");
    assert_eq!(memories(&stack, &session_id).await.len(), 1);
}

#[tokio::test]
async fn an_llm_outage_pauses_the_session_and_fails_it_with_the_real_error_not_the_breaker() {
    let mut config = crate::support::base_config();
    config.llm.policy.backoff_base_ms = 10;
    config.llm.policy.backoff_cap_ms = 20;
    config.llm.policy.breaker.wait_in_open_ms = 500;
    config.heist.max_model_outage_ms = 1_500;
    let stack = TestStack::start_with(config).await;
    stack.set_fault("rehearsal", fault(false, 1.0));
    let (report, detail) = run(&stack, 4, 1).await;
    // The session waited out the outage limit instead of burning its turns:
    // past the first call's three failed attempts, the model saw the
    // session's own probes (once a second while it waits, past the breaker).
    assert!(
        stack
            .stack
            .companions
            .get("rehearsal")
            .expect("the rehearsal model runs")
            .fault
            .requests_seen()
            >= 4,
        "the session probed the model while it waited"
    );
    assert_eq!(report.status, SessionStatus::Failed);
    assert_eq!(report.turns, 0, "no turn is recorded for an outage");
    assert!(detail.messages.is_empty());
    let reason = detail.session.failure_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("HTTP 503") && !reason.contains("circuit breaker"),
        "{reason}"
    );
    assert!(detail.tool_usage.is_empty());
    assert!(
        memories(&stack, &report.session_id).await.is_empty(),
        "nothing is remembered of an outage"
    );
    // No turn was recorded, but every model call it made was: the calls a
    // session made while it waited out a dead model are in service_calls,
    // under the turn they were for.
    let model_calls: Vec<_> = detail
        .service_calls
        .iter()
        .filter(|call| call.call.service == "llm")
        .collect();
    let attempts: u32 = model_calls.iter().map(|call| call.call.attempts).sum();
    assert!(
        attempts >= 3 && model_calls.iter().all(|call| call.turn_id == 1),
        "{model_calls:?}"
    );
    assert!(
        model_calls.iter().any(|call| call
            .call
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("503")),
        "{model_calls:?}"
    );
}

#[tokio::test]
async fn a_hung_llm_is_cut_at_its_timeout() {
    let mut config = crate::support::base_config();
    config.llm.timeout_ms = 300;
    config.llm.policy.max_attempts = 1;
    config.llm.policy.breaker.enabled = false;
    config.heist.max_model_outage_ms = 1_000;
    let stack = TestStack::start_with(config).await;
    stack.set_fault(
        "rehearsal",
        Fault {
            hang: true,
            ..Fault::default()
        },
    );
    let (report, detail) = run(&stack, 2, 1).await;
    assert_eq!(report.status, SessionStatus::Failed);
    assert!(detail.messages.is_empty());
    let reason = detail.session.failure_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("no answer within 300 ms"), "{reason}");
}

/// A turn whose tools could not run because no token could be had did not
/// do what it said: it is a failed turn, and a session made of them is not
/// `completed`. A turn that asked for no tool is not hurt.
#[tokio::test]
async fn an_oauth_outage_fails_the_turns_whose_tools_could_not_run() {
    let stack = TestStack::start().await;
    stack.set_fault("oauth", fault(true, 0.0));
    let (report, detail) = run(&stack, 5, 9).await;
    assert!(!detail.tool_usage.is_empty());
    for call in &detail.tool_usage {
        assert!(!call.success);
        assert!(
            call.error
                .as_deref()
                .unwrap_or_default()
                .starts_with("no access token: oauth"),
            "{:?}",
            call.error
        );
    }
    let turns_with_tools: BTreeSet<i64> =
        detail.tool_usage.iter().map(|call| call.turn_id).collect();
    for message in &detail.messages {
        let error = message.error.as_deref().unwrap_or_default();
        if turns_with_tools.contains(&message.turn_id) {
            assert!(
                error.starts_with(&format!("no access token for {}", message.agent_name)),
                "turn {}: {error:?}",
                message.turn_id
            );
        } else {
            assert_eq!(error, "", "turn {} asked for no tool", message.turn_id);
        }
    }
    assert_eq!(report.failed_turns as usize, turns_with_tools.len());
    assert!(
        turns_with_tools.len() * 2 > detail.messages.len(),
        "seed 9 asks for tools in most turns: {turns_with_tools:?}"
    );
    assert_eq!(report.status, SessionStatus::Failed, "{report:?}");
}

#[tokio::test]
async fn a_full_store_stops_the_run_cleanly_and_memory_never_gets_ahead_of_it() {
    // The session pauses for the outage, then gives up and ends failed.
    let mut config = crate::support::base_config();
    config.store.max_outage_ms = 300;
    let stack = TestStack::start_with(config).await;
    // Room for the schema and a few turns, not forty.
    let size = std::fs::metadata(stack.store.path())
        .map(|metadata| metadata.len())
        .unwrap_or(0);
    stack
        .store
        .limit_size(size + 24 * 1024)
        .await
        .expect("cap the store");
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let outcome = runner.run(RunOptions::new(40, 8), None).await;
    let error = outcome.expect_err("the store fills up").to_string();
    assert!(error.contains("full"), "{error}");

    let sessions = stack.store.list_sessions(10).await.expect("sessions");
    let session = &sessions[0];
    assert_eq!(session.status, SessionStatus::Failed);
    let reason = session.failure_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("could not be recorded") && reason.contains("full"),
        "{reason}"
    );
    let detail = stack
        .store
        .session(&session.session_id)
        .await
        .expect("detail");
    let committed: Vec<i64> = detail
        .messages
        .iter()
        .map(|message| message.turn_id)
        .collect();
    assert!(
        !committed.is_empty() && committed.len() < 40,
        "{committed:?}"
    );
    assert_eq!(committed, (1..=committed.len() as i64).collect::<Vec<_>>());
    // SQLite and memory agree: memory holds exactly the committed turns.
    let remembered: Vec<i64> = memories(&stack, &session.session_id)
        .await
        .iter()
        .filter_map(|memory| memory["turn_id"].as_i64())
        .collect();
    assert_eq!(remembered, committed);
}

#[tokio::test]
async fn a_memory_write_refused_for_good_is_set_aside_and_the_rest_are_delivered() {
    use heistd::clients::MemoryWrite;
    use heistd::store::TurnRecord;
    let stack = TestStack::start().await;
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let session_id = runner.start(&RunOptions::new(2, 1)).await.expect("session");
    for (turn_id, message) in [
        (1u32, "x".repeat(100 * 1024)),
        (2, "a normal reply".to_string()),
    ] {
        let write = MemoryWrite {
            agent_id: "mole".into(),
            turn_id: turn_id.into(),
            message: message.clone(),
            game_session_id: session_id.clone(),
        };
        let record = TurnRecord {
            session_id: session_id.clone(),
            turn_id,
            agent_name: "mole".into(),
            agent_role: "Inside Man".into(),
            message,
            error: None,
            tool_calls: Vec::new(),
            memory_payload: Some(serde_json::to_string(&write).expect("json")),
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
        stack.store.record_turn(record).await.expect("commit");
    }
    // The memory service answers 413 to the first write: it can never be
    // stored, and must not block the second.
    assert_eq!(
        runner.deliver_outbox(&session_id).await.expect("deliver"),
        0
    );
    let stored: Vec<i64> = memories(&stack, &session_id)
        .await
        .iter()
        .filter_map(|memory| memory["turn_id"].as_i64())
        .collect();
    assert_eq!(stored, [2]);
    assert_eq!(
        stack
            .store
            .outbox_counts(&session_id)
            .await
            .expect("counts"),
        (1, 2),
        "one delivered, one set aside"
    );
    assert_eq!(
        stack
            .store
            .pending_outbox(&session_id, 10)
            .await
            .expect("pending")
            .len(),
        0
    );
}

#[tokio::test]
async fn native_tool_calling_runs_the_same_heist_and_records_it_the_same_way() {
    let mut config = crate::support::base_config();
    config.llm.tool_calling = heistd::config::ToolCalling::Native;
    let stack = TestStack::start_with(config).await;
    let (report, detail) = run(&stack, 12, 42).await;
    assert_eq!(report.status, SessionStatus::Completed);
    assert_every_tool_succeeded(&detail);
    for message in &detail.messages {
        // Native calls are written into the message in the prototype's
        // notation, one per call, so the trail reads the same as text mode.
        let written = heistd::wire::parse_tool_requests(&message.message).len();
        let recorded = detail
            .tool_usage
            .iter()
            .filter(|tool| tool.turn_id == message.turn_id)
            .count();
        assert_eq!(
            written, recorded,
            "turn {}: {}",
            message.turn_id, message.message
        );
    }
    // The same seed in text mode asks for the same tools with the same parameters.
    let text_stack = TestStack::start().await;
    let (_, text_detail) = run(&text_stack, 12, 42).await;
    let calls = |detail: &SessionDetail| -> Vec<(i64, String, String)> {
        detail
            .tool_usage
            .iter()
            .map(|tool| {
                (
                    tool.turn_id,
                    tool.tool_name.clone(),
                    tool.tool_params.clone(),
                )
            })
            .collect()
    };
    assert_eq!(calls(&detail), calls(&text_detail));
}

#[tokio::test]
async fn a_token_the_tools_reject_is_replaced_at_the_agents_next_turn() {
    let stack = TestStack::start().await;
    // The calculator rejects one token, as after a signing-key change.
    stack.set_fault(
        "calculator",
        Fault {
            fail_next: 1,
            error_status: 401,
            ..Fault::default()
        },
    );
    let (_, detail) = run(&stack, 12, 42).await;
    let rejected = detail
        .tool_usage
        .iter()
        .find(|tool| {
            tool.error
                .as_deref()
                .unwrap_or_default()
                .contains("HTTP 401")
        })
        .expect("seed 42 calls the calculator");
    let agents: BTreeSet<&str> = detail
        .messages
        .iter()
        .map(|message| message.agent_name.as_str())
        .collect();
    let speaks_again = detail.messages.iter().any(|message| {
        message.agent_name == rejected.agent_name && message.turn_id > rejected.turn_id
    });
    assert!(
        speaks_again,
        "the test needs the agent to speak again; pick another seed"
    );
    // One token per agent, plus one fresh token for the agent whose token
    // was rejected (instead of reusing it until it expires), plus the one
    // heistd's own memory client holds for the whole run.
    let token_requests = stack
        .stack
        .companions
        .get("oauth")
        .expect("oauth")
        .fault
        .requests_seen();
    assert_eq!(token_requests, agents.len() as u64 + 2);
}

/// The store outage rule: a full store pauses the session where it is;
/// once there is room again it goes on and completes, every turn once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_pauses_the_session_which_completes_once_there_is_room() {
    let stack = TestStack::start().await;
    let size = std::fs::metadata(stack.store.path())
        .map(|metadata| metadata.len())
        .unwrap_or(0);
    stack
        .store
        .limit_size(size + 24 * 1024)
        .await
        .expect("cap the store");
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let session_id = runner
        .start(&RunOptions::new(30, 8))
        .await
        .expect("session");
    let playing = {
        let session_id = session_id.clone();
        tokio::spawn(async move {
            runner
                .play(&session_id, &RunOptions::new(30, 8), None)
                .await
        })
    };
    // Paused: the committed turns stop growing short of 30 while it waits.
    let limit = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = Vec::new();
    loop {
        let committed = stack
            .store
            .session(&session_id)
            .await
            .expect("detail")
            .messages
            .len();
        last.push(committed);
        if last.len() > 10
            && last[last.len() - 10..]
                .iter()
                .all(|&count| count == committed)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < limit,
            "never paused: {last:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let paused_at = *last.last().expect("counted");
    assert!(paused_at < 30 && !playing.is_finished(), "{paused_at}");
    assert_eq!(
        stack
            .store
            .session(&session_id)
            .await
            .expect("detail")
            .session
            .status,
        SessionStatus::Active
    );
    stack
        .store
        .limit_size(64 * 1024 * 1024)
        .await
        .expect("room again");
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), playing)
        .await
        .expect("resumes within a minute")
        .expect("join")
        .expect("completes");
    assert_eq!(report.status, SessionStatus::Completed);
    let detail = stack.store.session(&session_id).await.expect("detail");
    let turns: Vec<i64> = detail
        .messages
        .iter()
        .map(|message| message.turn_id)
        .collect();
    assert_eq!(turns, (1..=30).collect::<Vec<_>>());
    assert_eq!(memories(&stack, &session_id).await.len(), 30);
}
