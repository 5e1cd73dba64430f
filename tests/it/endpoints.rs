//! Several model endpoints behind one `[llm]` (issue 21), each a model
//! double on loopback counting the requests it gets: a session routes
//! around a dead and a hung endpoint, completes on a fallback when every
//! primary is down and comes back when one recovers, and keeps every slot
//! of two one-slot servers busy.

use std::sync::Arc;
use std::time::Duration;

use heistd::clients::{ChatMessage, Clients};
use heistd::config::{Config, ModelEndpointConfig, OutlierConfig};
use heistd::heist::{HeistRunner, RunOptions, RunReport};
use heistd::store::SessionStatus;
use tokio::time::Instant;

use crate::model_double::{Behaviour, ModelDouble};
use crate::support::{base_config, TestStack};

fn endpoint(
    name: &str,
    double: &ModelDouble,
    model: &str,
    max_concurrent: u32,
) -> ModelEndpointConfig {
    ModelEndpointConfig {
        name: Some(name.into()),
        base_url: double.url.clone(),
        model: model.into(),
        api_key_env: None,
        api_key_file: None,
        api_key: None,
        max_concurrent,
        weight: 1,
    }
}

/// Retries fast and a budget that is not what these tests are about.
fn quick_config() -> Config {
    let mut config = base_config();
    config.llm.policy.backoff_base_ms = 10;
    config.llm.policy.backoff_cap_ms = 20;
    config.llm.policy.retry_budget_min_per_second = 50.0;
    config
}

async fn runner(config: Config) -> (TestStack, HeistRunner) {
    let stack = TestStack::start_with_model(config, None).await;
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    (stack, runner)
}

async fn play(runner: &HeistRunner, turns: u32, seed: u64) -> RunReport {
    let report = runner
        .run(RunOptions::new(turns, seed), None)
        .await
        .expect("run finishes");
    assert_eq!(
        report.status,
        SessionStatus::Completed,
        "{:?}",
        report.failure_reason
    );
    assert_eq!(report.failed_turns, 0, "no failed turn");
    report
}

#[tokio::test]
async fn a_session_routes_around_a_dead_and_a_hung_endpoint() {
    let healthy = ModelDouble::start(Behaviour::default()).await;
    let dead = ModelDouble::start(Behaviour {
        down: true,
        ..Behaviour::default()
    })
    .await;
    let hung = ModelDouble::start(Behaviour {
        hang: true,
        ..Behaviour::default()
    })
    .await;
    let mut config = quick_config();
    config.llm.timeout_ms = 300;
    config.llm.endpoints = vec![
        endpoint("healthy", &healthy, "m", 4),
        endpoint("dead", &dead, "m", 4),
        endpoint("hung", &hung, "m", 4),
    ];
    config.llm.outlier = OutlierConfig {
        consecutive_failures: 3,
        // Longer than the session: each dead one is out once, for good.
        base_ejection_ms: 120_000,
        max_ejection_percent: 50,
    };
    // The breakers must not be what stops the calls: ejection is.
    config.llm.policy.breaker.consecutive_failures = 0;
    config.llm.policy.breaker.minimum_calls = 100;
    let (_stack, runner) = runner(config).await;
    play(&runner, 30, 4).await;
    let limit = 3;
    assert!(
        dead.chat_requests() <= limit && hung.chat_requests() <= limit,
        "at most consecutive_failures calls each within one ejection: dead {}, hung {}",
        dead.chat_requests(),
        hung.chat_requests()
    );
    assert!(
        healthy.chat_calls() >= 30,
        "the healthy one answered every turn: {}",
        healthy.chat_calls()
    );
}

#[tokio::test]
async fn every_primary_down_the_fallback_serves_and_the_primary_takes_over_again() {
    let primaries = [
        Arc::new(
            ModelDouble::start(Behaviour {
                down: true,
                ..Behaviour::default()
            })
            .await,
        ),
        Arc::new(
            ModelDouble::start(Behaviour {
                down: true,
                ..Behaviour::default()
            })
            .await,
        ),
    ];
    let fallback = ModelDouble::start(Behaviour {
        generation: Duration::from_millis(100),
        ..Behaviour::default()
    })
    .await;
    let ejection = Duration::from_millis(1_000);
    let mut config = quick_config();
    config.llm.endpoints = vec![
        endpoint("primary-a", &primaries[0], "small", 4),
        endpoint("primary-b", &primaries[1], "small", 4),
    ];
    config.llm.fallbacks = vec![endpoint("cloud", &fallback, "large", 4)];
    config.llm.outlier = OutlierConfig {
        consecutive_failures: 1,
        base_ejection_ms: ejection.as_millis() as u64,
        max_ejection_percent: 50,
    };
    config.llm.policy.breaker.consecutive_failures = 1;
    config.llm.policy.breaker.wait_in_open_ms = ejection.as_millis() as u64;

    // One call: the fallback answers, and the reply says so.
    let clients = Clients::from_config(&config).expect("clients");
    let reply = clients
        .llm
        .chat(&[ChatMessage::user("Plan the entry.".into())], 1, &[])
        .await
        .expect("the fallback answers");
    assert_eq!(
        (
            reply.endpoint.as_str(),
            reply.model.as_str(),
            reply.fallback
        ),
        ("cloud", "large", true)
    );
    assert_eq!(fallback.last_request()["model"], "large");

    let (_stack, runner) = runner(config).await;
    let runner = Arc::new(runner);
    let session = tokio::spawn({
        let runner = runner.clone();
        async move { play(&runner, 40, 9).await }
    });
    // Down while the fallback plays a few turns, then both primaries recover.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fallback.chat_calls() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        primaries
            .iter()
            .map(|double| double.chat_calls())
            .sum::<u32>(),
        0,
        "no primary answered while down"
    );
    for primary in &primaries {
        primary.set(|behaviour| behaviour.down = false);
    }
    let recovered = Instant::now();
    let answered_by_a_primary = || {
        primaries
            .iter()
            .map(|double| double.chat_calls())
            .sum::<u32>()
            > 0
    };
    while !answered_by_a_primary() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back_after = recovered.elapsed();
    assert!(
        answered_by_a_primary(),
        "the session went back to a primary"
    );
    assert!(
        back_after <= ejection + Duration::from_millis(700),
        "back on a primary {back_after:?} after it recovered (ejection {ejection:?})"
    );
    let fallback_calls_then = fallback.chat_calls();
    session.await.expect("session");
    assert!(
        fallback.chat_calls() <= fallback_calls_then + 1,
        "once a primary serves, the fallback is left alone: {} then {}",
        fallback_calls_then,
        fallback.chat_calls()
    );
    assert!(primaries
        .iter()
        .any(|double| double.last_request()["model"] == "small"));
}

/// The bulkhead of each endpoint of `config` once its server was asked.
async fn learned_slots(config: &Config) -> Vec<u32> {
    let clients = Clients::from_config(config).expect("clients");
    let before: Vec<u32> = clients
        .llm
        .service
        .endpoints()
        .iter()
        .map(|endpoint| endpoint.max_concurrent())
        .collect();
    assert!(
        before
            .iter()
            .all(|slots| *slots == config.llm.policy.max_concurrent),
        "the policy's until the server says: {before:?}"
    );
    clients.llm.learn_slots().await;
    clients
        .llm
        .service
        .endpoints()
        .iter()
        .map(|endpoint| endpoint.max_concurrent())
        .collect()
}

/// Four sessions of `turns` turns at once on one runner (one client, so
/// they share its bulkheads); the median of their turn times.
async fn median_turn_time(runner: HeistRunner, turns: u32) -> Duration {
    let runner = Arc::new(runner);
    let sessions: Vec<_> = (0..4)
        .map(|seed| {
            let runner = runner.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                play(&runner, turns, seed).await;
                started.elapsed() / turns
            })
        })
        .collect();
    let mut times = Vec::new();
    for session in sessions {
        times.push(session.await.expect("session"));
    }
    times.sort();
    (times[1] + times[2]) / 2
}

#[tokio::test]
async fn two_one_slot_servers_serve_four_sessions_as_fast_as_one_two_slot_server() {
    let generation = Duration::from_millis(250);
    let slots = |slots| Behaviour {
        generation,
        slots,
        llama_cpp: true,
        ..Behaviour::default()
    };
    let turns = 6;
    // One server with two slots: the bulkhead learns 2 from /props.
    let double = ModelDouble::start(slots(2)).await;
    let mut config = quick_config();
    config.llm.endpoints = vec![endpoint("both", &double, "m", 0)];
    assert_eq!(learned_slots(&config).await, [2]);
    let (_one, runner_one) = runner(config).await;
    let one_server = median_turn_time(runner_one, turns).await;

    // Two servers of one slot each: 1 each from /props.
    let first = ModelDouble::start(slots(1)).await;
    let second = ModelDouble::start(slots(1)).await;
    let mut config = quick_config();
    config.llm.endpoints = vec![
        endpoint("first", &first, "m", 0),
        endpoint("second", &second, "m", 0),
    ];
    assert_eq!(learned_slots(&config).await, [1, 1]);
    let (_two, runner_two) = runner(config).await;
    let two_servers = median_turn_time(runner_two, turns).await;

    let (first_calls, second_calls) = (first.chat_calls(), second.chat_calls());
    assert_eq!(first_calls + second_calls, 4 * turns);
    assert!(
        first_calls.min(second_calls) >= 4 * turns / 3,
        "both slots kept busy: {first_calls} and {second_calls}"
    );
    // Four sessions on two slots: a turn waits for about one other call.
    assert!(
        one_server >= generation,
        "the sessions shared the slots: {one_server:?}"
    );
    assert!(
        two_servers.as_secs_f64() <= one_server.as_secs_f64() * 1.1,
        "p50 turn time on two one-slot servers {two_servers:?}, on one two-slot server {one_server:?}"
    );
}

#[tokio::test]
async fn a_tool_service_of_two_endpoints_routes_around_the_dead_one() {
    use heistd::clients::ServiceClient;
    let stack = TestStack::start().await;
    // A port nothing listens on: every connection is refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let mut settings = base_config().services.calculator;
    settings.endpoints = vec![dead, stack.url("calculator")];
    settings.outlier.consecutive_failures = 2;
    settings.policy.backoff_base_ms = 1;
    settings.policy.backoff_cap_ms = 2;
    let client = ServiceClient::from_config("calculator", &settings, reqwest::Client::new());
    let token = crate::support::token(&stack.signing_key(), "calculator:use", 60);
    let headers = [("authorization", format!("Bearer {token}"))];
    for _ in 0..20 {
        let reply: serde_json::Value = client
            .post_json(
                "/tools/calculator",
                &serde_json::json!({"expression": "6*7"}),
                &headers,
            )
            .await
            .expect("a retry on the live endpoint answers");
        assert!(
            reply["success"] == true && reply["result"].to_string().contains("42"),
            "{reply}"
        );
    }
    let endpoints = client.endpoints();
    assert!(
        endpoints[0].ejected_for().is_some(),
        "the dead one is ejected"
    );
    assert!(endpoints[1].ejected_for().is_none());
}

#[tokio::test]
async fn a_prompt_too_long_for_every_primary_window_goes_to_a_fallback_that_fits_it() {
    // 120 tokens: no prompt of the scenario fits, even trimmed.
    let small = ModelDouble::start(Behaviour {
        context_tokens: Some(120),
        ..Behaviour::default()
    })
    .await;
    let large = ModelDouble::start(Behaviour {
        context_tokens: Some(100_000),
        ..Behaviour::default()
    })
    .await;
    let mut config = quick_config();
    config.llm.endpoints = vec![endpoint("small", &small, "small", 4)];
    config.llm.fallbacks = vec![endpoint("large", &large, "large", 4)];
    let (_stack, runner) = runner(config).await;
    play(&runner, 6, 5).await;
    assert_eq!(
        (small.chat_calls(), small.oversized()),
        (1, 1),
        "the primary refused one prompt, naming its window, and was not asked again"
    );
    assert_eq!(large.chat_calls(), 6, "every turn played on the fallback");
    assert_eq!(large.oversized(), 0);
    assert_eq!(large.last_request()["model"], "large");
}
