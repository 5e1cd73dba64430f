//! Provider rate limits against the model double's OpenAI-style limits
//! (`x-ratelimit-*` on every answer, a 429 without `Retry-After` past the
//! allowance), on real time with short windows, and heistd's own `rpm`
//! refusing a call before the network. The spacing of `rpm` and `tpm` is
//! tested on paused time next to the limiter (`resilience::rate_limit`).

use std::time::Duration;

use heistd::clients::CallError;
use heistd::heist::RunOptions;
use heistd::store::SessionStatus;
use tokio::time::Instant;

use crate::model::{llm_client, one_message};
use crate::model_double::{Behaviour, ModelDouble, RateLimitWindow, MODEL};
use crate::support::{base_config, TestStack};

fn limited(requests: u32, window: Duration) -> Behaviour {
    Behaviour {
        rate_limit: Some(RateLimitWindow { requests, window }),
        ..Behaviour::default()
    }
}

/// The case, with the double's minute shrunk to 3 s: the client
/// reads the headers, holds the 21st request until the reset, and no turn
/// fails.
#[tokio::test]
async fn a_25_turn_session_within_20_requests_a_window_fails_no_turn() {
    let double = ModelDouble::start(limited(20, Duration::from_secs(3))).await;
    let stack =
        TestStack::start_with_model(base_config(), Some((double.url.clone(), MODEL.to_string())))
            .await;
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let report = runner
        .run(RunOptions::new(25, 7), None)
        .await
        .expect("run finishes");
    assert_eq!(
        report.status,
        SessionStatus::Completed,
        "{:?}",
        report.failure_reason
    );
    assert_eq!(report.failed_turns, 0);
    assert!(
        double.allowance_used_up() >= 1,
        "the session met the limit (else this test proves nothing)"
    );
    assert!(double.chat_calls() > 20, "{} calls", double.chat_calls());
    // The issue allows one 429; heeding the 20th answer's headers leaves
    // none (a 429 would be retried at its reset, and the session would
    // still pass: this is what tells the hold from that retry).
    assert_eq!(double.rate_limited(), 0, "requests answered 429");
}

/// A 429 naming no `Retry-After` but `x-ratelimit-reset-requests` is
/// retried after that reset: once, not at the backoff's guesses (up to
/// 0.5 s, then 1 s), which would each meet another 429.
#[tokio::test]
async fn a_429_without_retry_after_is_retried_at_the_reset() {
    let window = Duration::from_millis(1500);
    let double = ModelDouble::start(limited(1, window)).await;
    let client = llm_client(&double, |_| {});
    // Another client uses the window's one request, unseen by heistd.
    let used = crate::support::http()
        .post(format!("{}/chat/completions", double.url))
        .json(&serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(used.headers()["x-ratelimit-remaining-requests"], "0");
    let started = Instant::now();
    let reply = client.chat(&one_message(), 1, &[]).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(double.rate_limited(), 1, "one 429, then the reset");
    assert!(
        started.elapsed() >= window - Duration::from_millis(200),
        "waited for the reset: {:?}",
        started.elapsed()
    );
}

/// With `rpm = 1` and a 2 s deadline, a second call would wait a minute:
/// it fails at once as `rate_limited`, never reaching the server, and is
/// counted per endpoint.
#[tokio::test]
async fn a_call_without_room_before_its_deadline_is_not_sent() {
    let handle = heistd::metrics::install();
    let double = ModelDouble::start(Behaviour::default()).await;
    let client = llm_client(&double, |config| {
        config.llm.rpm = 1;
        config.llm.policy.deadline_ms = 2000;
        config.llm.idle_timeout_ms = 1000;
    });
    client
        .chat(&one_message(), 1, &[])
        .await
        .expect("the first fits");
    let started = Instant::now();
    let refused = client.chat(&one_message(), 2, &[]).await;
    assert!(
        matches!(refused, Err(CallError::RateLimited { .. })),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "failed at once");
    assert_eq!(
        double.chat_calls(),
        1,
        "the second never reached the server"
    );
    let endpoint = double
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    let text = handle.render();
    assert!(
        text.contains(&format!(
            "heistd_model_rate_limited_total{{service=\"llm\",endpoint=\"{endpoint}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("heistd_service_requests_total{service=\"llm\",outcome=\"rate_limited\"}"),
        "{text}"
    );
}
