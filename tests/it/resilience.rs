//! The resilience stack against real loopback services with injected
//! faults. Time here is real (sockets do not run on paused time), so waits
//! are kept to a few hundred milliseconds, and a longer wait is paused and
//! advanced only while nothing is on the wire; the exact timing rules are
//! proven under paused time in `src/resilience/tests.rs`.

use std::time::Duration;

use heistd::clients::{CallError, MemoryClient, MemoryWrite, ServiceClient};
use heistd::config::Fault;
use heistd::config::PolicyConfig;
use heistd::heist::RunOptions;
use heistd::resilience::{BreakerState, Policy};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::{self, TestStack};

fn policy(timeout_ms: u64, configure: impl FnOnce(&mut PolicyConfig)) -> Policy {
    let mut config = PolicyConfig::quick_service();
    config.backoff_base_ms = 10;
    config.backoff_cap_ms = 20;
    configure(&mut config);
    Policy {
        jitter_seed: Some(1),
        ..Policy::new(timeout_ms, config)
    }
}

/// A calculator client named `name` (the metrics label) with its token.
fn calculator(
    stack: &TestStack,
    name: &str,
    policy: Policy,
) -> (ServiceClient, Vec<(&'static str, String)>) {
    let client = ServiceClient::new(name, &stack.url("calculator"), policy, support::http());
    let token = support::token(&stack.signing_key(), "calculator:use", 300);
    (client, vec![("authorization", format!("Bearer {token}"))])
}

async fn add(client: &ServiceClient, headers: &[(&str, String)]) -> Result<Value, CallError> {
    client
        .post_json(
            "/tools/calculator",
            &json!({ "expression": "1 + 1" }),
            headers,
        )
        .await
}

fn set(stack: &TestStack, service: &str, fault: Fault) {
    stack
        .stack
        .companions
        .get(service)
        .expect("service runs")
        .fault
        .set(fault);
}

/// Polls a condition that another task will make true (bounded: 5 s).
async fn wait_until(condition: impl Fn() -> bool) {
    let limit = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < limit, "condition not reached within 5 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets the runtime run whatever is ready, sockets included, until
/// `condition` holds or a thousand rounds have passed. Unlike a sleep,
/// a yield never moves paused time on: only an idle runtime does.
async fn run_ready_tasks_until(condition: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

fn seen(stack: &TestStack, service: &str) -> u64 {
    stack
        .stack
        .companions
        .get(service)
        .expect("service runs")
        .fault
        .requests_seen()
}

#[tokio::test]
async fn an_open_breaker_sends_nothing_to_the_server() {
    let stack = TestStack::start().await;
    let (client, headers) = calculator(
        &stack,
        "calculator",
        policy(2_000, |config| {
            config.max_attempts = 1;
            config.breaker.minimum_calls = 3;
            config.breaker.wait_in_open_ms = 60_000;
        }),
    );
    set(
        &stack,
        "calculator",
        Fault {
            error_rate: 1.0,
            error_status: 500,
            ..Fault::default()
        },
    );
    for _ in 0..3 {
        assert!(matches!(
            add(&client, &headers).await,
            Err(CallError::Status { status: 500, .. })
        ));
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let before = seen(&stack, "calculator");
    set(&stack, "calculator", Fault::default());
    for _ in 0..20 {
        assert!(matches!(
            add(&client, &headers).await,
            Err(CallError::CircuitOpen { .. })
        ));
    }
    assert_eq!(
        seen(&stack, "calculator"),
        before,
        "no request reached the server"
    );
}

/// The server asks for an hour; the test proves the client waits that hour
/// without spending it: time is paused only while nothing is on the wire
/// (the client is asleep before its retry), moved on, and resumed before
/// the retry's real request.
#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_that_delay() {
    const RETRY_AFTER: Duration = Duration::from_secs(3_600);
    let handle = heistd::metrics::install();
    let stack = TestStack::start().await;
    let name = "retry_after_probe";
    let (client, headers) = calculator(
        &stack,
        name,
        policy(2_000, |config| {
            config.max_attempts = 2;
            // Neither the cap nor the deadline may cut the hour short.
            config.retry_after_cap_ms = 2 * RETRY_AFTER.as_millis() as u64;
            config.deadline_ms = 2 * RETRY_AFTER.as_millis() as u64;
        }),
    );
    set(
        &stack,
        "calculator",
        Fault {
            fail_next: 1,
            error_status: 429,
            retry_after_seconds: Some(RETRY_AFTER.as_secs()),
            ..Fault::default()
        },
    );
    let call = tokio::spawn(async move { add(&client, &headers).await });
    // The retry counter moves in the same poll that starts the client's
    // sleep, so once it reads 1 the wait has begun and nothing is in flight.
    let retried = format!("heistd_service_retries_total{{service=\"{name}\"}} 1");
    wait_until(|| handle.render().contains(&retried)).await;
    assert_eq!(seen(&stack, "calculator"), 1);

    tokio::time::pause();
    // A minute short of the hour (slack for the moments between the sleep
    // starting and the pause): the backoff alone (10-20 ms) would have
    // retried long ago, and a retry would have had every chance to finish.
    tokio::time::advance(RETRY_AFTER - Duration::from_secs(60)).await;
    run_ready_tasks_until(|| call.is_finished() || seen(&stack, "calculator") > 1).await;
    assert!(!call.is_finished(), "retried before the Retry-After hour");
    assert_eq!(seen(&stack, "calculator"), 1, "no retry reached the server");
    tokio::time::advance(Duration::from_secs(61)).await;
    // The retry's request runs on real time: paused time would jump to
    // the attempt timeout whenever the runtime waits on the socket.
    tokio::time::resume();

    let reply = call
        .await
        .expect("the call task")
        .expect("the retry succeeds");
    assert_eq!(reply["result"], "2");
    assert_eq!(seen(&stack, "calculator"), 2);
}

#[tokio::test]
async fn a_hanging_server_is_cut_at_the_attempt_timeout() {
    let stack = TestStack::start().await;
    let (client, headers) = calculator(
        &stack,
        "calculator",
        policy(200, |config| config.max_attempts = 1),
    );
    set(
        &stack,
        "calculator",
        Fault {
            hang: true,
            ..Fault::default()
        },
    );
    let started = Instant::now();
    let outcome = add(&client, &headers).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(outcome, Err(CallError::Timeout { after, .. }) if after == Duration::from_millis(200)),
        "{outcome:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_retried_memory_write_is_stored_once() {
    let stack = TestStack::start().await;
    let service = ServiceClient::new(
        "memory",
        &stack.url("memory"),
        policy(2_000, |config| config.max_attempts = 3),
        support::http(),
    );
    let oauth = heistd::clients::OAuthClient::new(ServiceClient::new(
        "oauth",
        &stack.url("oauth"),
        policy(2_000, |_| {}),
        support::http(),
    ));
    let memory =
        MemoryClient::new(service).with_credentials(oauth, "heistd", "heistd-rehearsal-secret");
    // The first attempt is stored, but its reply is lost: the client retries.
    set(
        &stack,
        "memory",
        Fault {
            fail_next: 1,
            error_status: 503,
            after_handling: true,
            ..Fault::default()
        },
    );
    let write = MemoryWrite {
        agent_id: "mole".into(),
        turn_id: 1,
        message: "the dock".into(),
        game_session_id: "heist_once".into(),
    };
    memory
        .store(&write, "heist_once:1")
        .await
        .expect("the retry is acknowledged");
    assert_eq!(
        seen(&stack, "memory"),
        2,
        "two attempts reached the service"
    );
    let listed: Value = support::http()
        .get(format!(
            "{}/sessions/heist_once/memories",
            stack.url("memory")
        ))
        .bearer_auth(support::memory_admin_token(&stack))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["memories"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn failed_and_retried_calls_land_in_the_audit_trail() {
    let stack = TestStack::start().await;
    set(
        &stack,
        "calculator",
        Fault {
            error_rate: 1.0,
            error_status: 503,
            ..Fault::default()
        },
    );
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let report = runner
        .run(RunOptions::new(12, 42), None)
        .await
        .expect("run");
    let detail = stack
        .store
        .session(&report.session_id)
        .await
        .expect("session");
    let calculator_turns: Vec<i64> = detail
        .tool_usage
        .iter()
        .filter(|tool| tool.tool_name == "calculator")
        .map(|tool| tool.turn_id)
        .collect();
    assert!(!calculator_turns.is_empty());
    let calls: Vec<_> = detail
        .service_calls
        .iter()
        .filter(|row| row.call.service == "calculator")
        .collect();
    assert_eq!(
        calls.len(),
        calculator_turns.len(),
        "one row per failed calculator call"
    );
    let first = calls[0];
    assert_eq!(first.turn_id, calculator_turns[0]);
    assert_eq!(first.call.operation, "tools/calculator");
    assert_eq!(first.call.attempts, 3);
    assert_eq!(first.call.outcome, "error");
    assert!(first
        .call
        .last_error
        .as_deref()
        .unwrap_or_default()
        .contains("HTTP 503"));
    assert!(
        detail
            .service_calls
            .iter()
            .all(|row| row.call.service == "calculator"),
        "nothing else failed"
    );
}

#[tokio::test]
async fn every_outcome_has_its_metric_series() {
    let handle = heistd::metrics::install();
    let stack = TestStack::start().await;
    let name = "metrics_probe";
    let (client, headers) = calculator(
        &stack,
        name,
        policy(150, |config| {
            config.max_attempts = 2;
            config.retry_budget_ratio = 0.0;
            config.retry_budget_min_per_second = 0.1;
            config.max_concurrent = 1;
            config.max_queue_wait_ms = 50;
            // Opens only when the last 4 attempts all failed (see the end).
            config.breaker.minimum_calls = 4;
            config.breaker.window_size = 4;
            config.breaker.failure_rate_threshold = 1.0;
            config.breaker.wait_in_open_ms = 60_000;
        }),
    );
    // success
    add(&client, &headers).await.expect("success");
    // error: a 400 is not retried
    let bad = client
        .post_json::<_, Value>(
            "/tools/calculator",
            &json!({ "expression": "1 +" }),
            &headers,
        )
        .await;
    assert!(matches!(bad, Err(CallError::Status { status: 400, .. })));
    // timeout, then a budget refusal of its retry (reserve of 1 in the window)
    set(
        &stack,
        "calculator",
        Fault {
            hang: true,
            ..Fault::default()
        },
    );
    assert!(
        matches!(add(&client, &headers).await, Err(CallError::Timeout { .. })),
        "first: the reserve allows one retry"
    );
    assert!(matches!(
        add(&client, &headers).await,
        Err(CallError::BudgetExhausted { .. })
    ));
    // bulkhead: one call holds the only slot while another waits 50 ms
    let (holder, hold_headers) = (client.clone(), headers.clone());
    let before = seen(&stack, "calculator");
    let holding = tokio::spawn(async move { add(&holder, &hold_headers).await });
    // Once the server has the holder's request, the holder has the slot.
    wait_until(|| seen(&stack, "calculator") > before).await;
    let crowded = add(&client, &headers).await;
    let _ = holding.await;
    // the last four attempts all timed out: the breaker is open
    let rejected = add(&client, &headers).await;
    let text = handle.render();
    let series = |outcome: &str| {
        format!("heistd_service_requests_total{{service=\"{name}\",outcome=\"{outcome}\"}}")
    };
    for outcome in ["success", "error", "timeout", "rejected_budget"] {
        assert!(
            text.contains(&series(outcome)),
            "no series for {outcome}:\n{text}"
        );
    }
    assert!(
        matches!(crowded, Err(CallError::BulkheadFull { .. })),
        "{crowded:?}"
    );
    assert!(text.contains(&series("rejected_bulkhead")), "{text}");
    assert!(
        matches!(rejected, Err(CallError::CircuitOpen { .. })),
        "{rejected:?}"
    );
    let text = handle.render();
    assert!(text.contains(&series("rejected_open")), "{text}");
    assert!(
        text.contains(&format!(
            "heistd_circuit_breaker_state{{service=\"{name}\",state=\"open\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("heistd_circuit_breaker_transitions_total{{service=\"{name}\",from=\"closed\",to=\"open\"}} 1")));
    assert!(text.contains(&format!("heistd_service_calls_by_retry_total{{service=\"{name}\",kind=\"successful_without_retry\"}} 1")));
    assert!(text.contains(&format!(
        "heistd_service_calls_by_retry_total{{service=\"{name}\",kind=\"failed_with_retry\"}}"
    )));
    assert!(text.contains(&format!(
        "heistd_retry_budget_exhausted_total{{service=\"{name}\"}}"
    )));
    assert!(text.contains(&format!(
        "heistd_service_attempt_duration_seconds_bucket{{service=\"{name}\",le=\"0.001\"}}"
    )));
}
