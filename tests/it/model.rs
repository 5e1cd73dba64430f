//! Heists against a model server that behaves like the real ones
//! ([`crate::model_double`]): prompts that fit a small window, checked
//! native tool calling, and outages that pause a session instead of
//! failing its turns. Time-based behaviour is bounded with short configured
//! durations and waits on events, never on hopeful sleeps.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use heistd::config::{Config, ToolCalling};
use heistd::heist::{RunNotice, RunOptions, RunReport};
use heistd::store::{SessionDetail, SessionStatus};

use crate::model_double::{Behaviour, ModelDouble, StreamFlaw, MODEL};
use crate::support::{base_config, TestStack};

async fn stack_for(double: &ModelDouble, config: Config) -> TestStack {
    TestStack::start_with_model(config, Some((double.url.clone(), MODEL.to_string()))).await
}

/// Runs a heist, collecting its notices.
async fn run(
    stack: &TestStack,
    turns: u32,
    seed: u64,
) -> (RunReport, SessionDetail, Vec<RunNotice>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let runner = stack
        .stack
        .runner(stack.store.clone())
        .expect("runner")
        .with_notices(Arc::new(move |notice: &RunNotice| {
            sink.lock().push(notice.clone())
        }));
    let report = runner
        .run(RunOptions::new(turns, seed), None)
        .await
        .expect("run finishes");
    let detail = stack
        .store
        .session(&report.session_id)
        .await
        .expect("stored");
    let notices = notices.lock().clone();
    (report, detail, notices)
}

#[tokio::test]
async fn a_700_token_window_is_learned_and_every_turn_fits_trimmed() {
    let double = ModelDouble::start(Behaviour {
        context_tokens: Some(700),
        ..Behaviour::default()
    })
    .await;
    let stack = stack_for(&double, base_config()).await;
    let (report, detail, _) = run(&stack, 12, 5).await;
    assert_eq!(
        report.status,
        SessionStatus::Completed,
        "{:?}",
        report.failure_reason
    );
    assert_eq!(report.failed_turns, 0);
    assert_eq!(detail.messages.len(), 12);
    assert!(detail
        .messages
        .iter()
        .all(|message| message.error.is_none()));
    assert!(
        detail.messages.iter().any(|message| message.trimmed),
        "the rows say which turns were trimmed"
    );
    assert!(
        double.oversized() >= 1,
        "the window was learned from the 400"
    );
    assert!(
        double.oversized() <= 2,
        "after learning, requests fit: {} refused",
        double.oversized()
    );
    assert!(detail.messages.iter().all(|message| message
        .prompt_tokens
        .is_some_and(|tokens| tokens <= 700)
        && message.completion_tokens == Some(12)
        && message.finish_reason.as_deref() == Some("stop")));
}

/// Today's `llama-server` with a 2048-token window and a tokenizer of one
/// token per character (denser than heistd's first guess, as byte-level
/// vocabularies, code and non-English text are).
async fn llama_cpp_2048_one_token_per_character() -> ModelDouble {
    ModelDouble::start(Behaviour {
        context_tokens: Some(2048),
        tokens_per_char: Some(1.0),
        llama_cpp: true,
        ..Behaviour::default()
    })
    .await
}

/// Every turn played, none failed, each prompt within the window.
fn assert_all_turns_fit(report: &RunReport, detail: &SessionDetail, window: i64) {
    assert_eq!(
        report.status,
        SessionStatus::Completed,
        "{:?}",
        report.failure_reason
    );
    assert_eq!(report.failed_turns, 0);
    assert_eq!(detail.messages.len(), 12);
    for message in &detail.messages {
        assert!(message.error.is_none(), "{:?}", message.error);
        assert!(
            message.prompt_tokens.is_some_and(|tokens| tokens <= window),
            "{:?}",
            message.prompt_tokens
        );
    }
    assert!(
        detail.messages.iter().any(|message| message.trimmed),
        "the prompts were trimmed to the window"
    );
}

#[tokio::test]
async fn llama_cpps_window_and_context_error_keep_every_turn_of_a_dense_model_fitting() {
    let double = llama_cpp_2048_one_token_per_character().await;
    let stack = stack_for(&double, base_config()).await;
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    // As `heistd run` and `demo` do before the first turn (their preflight):
    // the window is `meta.n_ctx`, not the far larger `meta.n_ctx_train`.
    let llm = &runner.clients().llm;
    llm.list_models().await.expect("the model list");
    assert_eq!(llm.context_tokens(), Some(2048));
    let report = runner
        .run(RunOptions::new(12, 5), None)
        .await
        .expect("run finishes");
    let detail = stack
        .store
        .session(&report.session_id)
        .await
        .expect("stored");
    assert_all_turns_fit(&report, &detail, 2048);
    let overflows = double.overflows();
    assert!(overflows.len() >= 12, "{overflows:?}");
    assert!(
        overflows[1..].iter().all(|overflowed| !overflowed),
        "from the second model call on, none overflows: {overflows:?}"
    );
}

#[tokio::test]
async fn llama_cpps_context_error_alone_teaches_the_window_and_the_density_at_once() {
    // No model list read first (as the daemon's sessions start): the first
    // overflow, whenever it comes, must be the last.
    let double = llama_cpp_2048_one_token_per_character().await;
    let stack = stack_for(&double, base_config()).await;
    let (report, detail, _) = run(&stack, 12, 5).await;
    assert_all_turns_fit(&report, &detail, 2048);
    // The window was unknown until a prompt overflowed (the trimmed rows
    // say it was learned): exactly once.
    assert_eq!(
        double.oversized(),
        1,
        "one overflow, then none: {:?}",
        double.overflows()
    );
}

#[tokio::test]
async fn a_window_too_small_for_any_prompt_fails_the_turn_naming_the_keys() {
    let double = ModelDouble::start(Behaviour {
        context_tokens: Some(120),
        ..Behaviour::default()
    })
    .await;
    let stack = stack_for(&double, base_config()).await;
    let (report, detail, _) = run(&stack, 1, 5).await;
    assert_eq!(report.failed_turns, 1);
    let error = detail.messages[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("120 tokens") && error.contains("llm.context_tokens"),
        "{error}"
    );
}

#[tokio::test]
async fn a_model_that_ignores_tools_falls_back_to_text_and_uses_tools() {
    let double = ModelDouble::start(Behaviour {
        ignores_tools: true,
        ..Behaviour::default()
    })
    .await;
    let mut config = base_config();
    config.llm.tool_calling = ToolCalling::Native;
    let stack = stack_for(&double, config).await;
    let (report, detail, notices) = run(&stack, 4, 2).await;
    assert_eq!(report.status, SessionStatus::Completed);
    assert!(
        notices.iter().any(|notice| notice.to_string()
            == format!("native tool calling is not supported by {MODEL}; using the text protocol")),
        "{notices:?}"
    );
    // Every agent asked for the calculator in text; those who may use it did.
    assert_eq!(detail.tool_usage.len(), 4);
    assert!(report.tool_calls_succeeded >= 2, "{report:?}");
    assert_eq!(report.tool_calls_failed, 0, "{report:?}");
}

#[tokio::test]
async fn functions_name_text_in_native_mode_is_a_refused_malformed_request() {
    let double = ModelDouble::start(Behaviour {
        functions_as_text: true,
        ..Behaviour::default()
    })
    .await;
    let mut config = base_config();
    config.llm.tool_calling = ToolCalling::Native;
    let stack = stack_for(&double, config).await;
    let (report, detail, notices) = run(&stack, 2, 2).await;
    assert!(notices.is_empty(), "the forced check passed: {notices:?}");
    assert_eq!(report.tool_calls_refused, 2);
    for tool in &detail.tool_usage {
        assert_eq!(tool.tool_name, "calculator");
        assert!(!tool.success);
        let error = tool.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("refused: malformed native tool request"),
            "{error}"
        );
    }
    assert!(detail.messages[0]
        .message
        .contains("functions.calculator: 2+2"));
}

#[tokio::test]
async fn a_reply_cut_at_max_tokens_is_flagged() {
    let double = ModelDouble::start(Behaviour {
        cut_at_length: true,
        ..Behaviour::default()
    })
    .await;
    let stack = stack_for(&double, base_config()).await;
    let (_, detail, _) = run(&stack, 1, 2).await;
    assert_eq!(detail.messages[0].finish_reason.as_deref(), Some("length"));
    assert!(detail.messages[0].error.is_none());
}

fn quick_outage_config(max_model_outage_ms: u64) -> Config {
    let mut config = base_config();
    config.heist.max_model_outage_ms = max_model_outage_ms;
    config.llm.policy.backoff_base_ms = 10;
    config.llm.policy.backoff_cap_ms = 20;
    config
}

#[tokio::test]
async fn a_model_answering_500_forever_fails_the_session_once_the_outage_limit_passes() {
    let double = ModelDouble::start(Behaviour {
        down: true,
        ..Behaviour::default()
    })
    .await;
    let stack = stack_for(&double, quick_outage_config(2_000)).await;
    let started = tokio::time::Instant::now();
    let (report, detail, notices) = run(&stack, 20, 1).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(report.status, SessionStatus::Failed);
    assert!(detail.messages.len() <= 1, "no turn is spent on an outage");
    let reason = detail.session.failure_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("HTTP 500") && !reason.contains("breaker"),
        "{reason}"
    );
    assert!(notices
        .iter()
        .any(|notice| matches!(notice, RunNotice::ModelPaused { .. })));
}

#[tokio::test]
async fn a_model_back_after_an_outage_resumes_the_session_within_about_a_second() {
    let double = Arc::new(ModelDouble::start(Behaviour::default()).await);
    let mut config = quick_outage_config(60_000);
    // The breaker would otherwise hold the model off for 30 s after it is back.
    config.llm.policy.breaker.wait_in_open_ms = 30_000;
    let stack = stack_for(&double, config).await;
    let outage = Duration::from_millis(2_500);
    let switch = double.clone();
    tokio::spawn(async move {
        // Down once the session has played a few turns, for `outage`.
        while switch.chat_calls() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        switch.set(|behaviour| behaviour.down = true);
        tokio::time::sleep(outage).await;
        switch.set(|behaviour| behaviour.down = false);
    });
    let (report, detail, notices) = run(&stack, 8, 3).await;
    assert_eq!(report.status, SessionStatus::Completed);
    assert_eq!(report.failed_turns, 0, "no failed turn");
    assert_eq!(detail.messages.len(), 8);
    let paused = notices
        .iter()
        .find_map(|notice| match notice {
            RunNotice::ModelBack { paused, .. } => Some(*paused),
            _ => None,
        })
        .expect("the session paused and went on");
    assert!(
        paused <= outage + Duration::from_millis(1_500),
        "went on {paused:?} into an outage of {outage:?}"
    );
}

#[tokio::test]
async fn a_hung_model_opens_its_breaker_after_three_timeouts_and_the_session_ends_with_the_timeout()
{
    let double = ModelDouble::start(Behaviour {
        generation: Duration::from_secs(30),
        ..Behaviour::default()
    })
    .await;
    let mut config = quick_outage_config(1_500);
    config.llm.timeout_ms = 200;
    config.llm.policy.max_attempts = 1;
    let stack = stack_for(&double, config).await;
    let (report, detail, _) = run(&stack, 5, 1).await;
    assert_eq!(report.status, SessionStatus::Failed);
    assert!(detail.messages.is_empty());
    let reason = detail.session.failure_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("no answer within 200 ms"), "{reason}");
}

#[tokio::test]
async fn a_busy_one_slot_model_is_never_marked_down_by_the_health_checker() {
    use heistd::clients::{ChatMessage, Clients};
    use heistd::health::{checker, HealthBoard, Probe};

    let double = ModelDouble::start(Behaviour {
        generation: Duration::from_millis(1_200),
        ..Behaviour::default()
    })
    .await;
    let mut config = base_config();
    config.llm.base_url = double.url.clone();
    config.llm.model = MODEL.into();
    let clients = Clients::from_config(&config).expect("clients");
    let stack = TestStack::start().await;
    // Probes every 200 ms that give up after 300 ms: without passive health
    // two in a row during one generation would mark the model down.
    let mut health = config.llm.health.clone();
    health.interval_ms = 200;
    health.timeout_ms = 300;
    health.jitter_ms = 0;
    health.unhealthy_threshold = 2;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(checker::watch_service(
        clients.llm.service.clone(),
        Probe::ModelList,
        health,
        Arc::new(HealthBoard::default()),
        stack.store.clone(),
        shutdown,
    ));
    let messages = [ChatMessage {
        role: "user",
        content: "Turn 1 of 1.".into(),
    }];
    for _ in 0..3 {
        clients.llm.chat(&messages, 1, &[]).await.expect("answers");
    }
    stop.send(true).expect("stop");
    watcher.await.expect("checker ends");
    let events = stack
        .store
        .health_events(Some("llm"))
        .await
        .expect("events");
    assert!(
        events.iter().all(|event| event.to_state != "down"),
        "{events:?}"
    );
    assert_eq!(clients.llm.service.breaker_state().as_str(), "closed");
}

/// A client of the double alone, for tests of one call.
pub(crate) fn llm_client(
    double: &ModelDouble,
    configure: impl FnOnce(&mut Config),
) -> heistd::clients::LlmClient {
    let mut config = base_config();
    config.llm.base_url = double.url.clone();
    config.llm.model = MODEL.into();
    configure(&mut config);
    heistd::clients::Clients::from_config(&config)
        .expect("clients")
        .llm
}

pub(crate) fn one_message() -> [heistd::clients::ChatMessage; 1] {
    [heistd::clients::ChatMessage {
        role: "user",
        content: "Turn 1 of 1.".into(),
    }]
}

/// Polls `condition` every 10 ms until it holds or `within` passes.
async fn eventually(within: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[tokio::test]
async fn streamed_replies_are_stored_exactly_as_whole_ones() {
    let mut sessions = Vec::new();
    for stream in [true, false] {
        let double = ModelDouble::start(Behaviour {
            content_pieces: 5,
            ..Behaviour::default()
        })
        .await;
        let mut config = base_config();
        config.llm.tool_calling = ToolCalling::Native;
        config.llm.stream = stream;
        let stack = stack_for(&double, config).await;
        let (report, detail, _) = run(&stack, 4, 2).await;
        assert_eq!(report.status, SessionStatus::Completed);
        let asked = double.last_request();
        if stream {
            assert!(double.stream_requests() >= 4);
            assert_eq!(asked["stream_options"]["include_usage"], true);
        } else {
            assert_eq!(double.stream_requests(), 0);
            assert!(asked.get("stream").is_none(), "{asked}");
        }
        sessions.push(detail);
    }
    let (streamed, whole) = (&sessions[0], &sessions[1]);
    let row = |message: &heistd::store::MessageRow| {
        (
            message.message.clone(),
            message.prompt_tokens,
            message.completion_tokens,
            message.finish_reason.clone(),
        )
    };
    assert_eq!(
        streamed.messages.iter().map(row).collect::<Vec<_>>(),
        whole.messages.iter().map(row).collect::<Vec<_>>()
    );
    let tool = |tool: &heistd::store::ToolUsageRow| {
        (
            tool.tool_name.clone(),
            tool.tool_params.clone(),
            tool.success,
        )
    };
    assert!(
        !streamed.tool_usage.is_empty(),
        "native calls came in pieces"
    );
    assert_eq!(
        streamed.tool_usage.iter().map(tool).collect::<Vec<_>>(),
        whole.tool_usage.iter().map(tool).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_stream_that_stalls_is_cut_after_the_idle_timeout_and_its_connection_closed() {
    let double = ModelDouble::start(Behaviour {
        stall_after: Some(2),
        ..Behaviour::default()
    })
    .await;
    let llm = llm_client(&double, |config| {
        config.llm.timeout_ms = 10_000;
        config.llm.idle_timeout_ms = 300;
        config.llm.policy.max_attempts = 1;
    });
    let started = tokio::time::Instant::now();
    let error = llm
        .chat(&one_message(), 1, &[])
        .await
        .expect_err("the stream stalled");
    let elapsed = started.elapsed();
    assert!(
        error.to_string().contains("nothing for 300 ms") && error.is_outage(),
        "{error}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "cut {elapsed:?} after the start, not at timeout_ms"
    );
    assert!(
        eventually(Duration::from_secs(5), || double.abandoned_streams() == 1).await,
        "the double saw the connection closed"
    );
}

#[tokio::test]
async fn a_slow_but_steady_stream_outlasts_timeout_ms_and_completes() {
    let double = ModelDouble::start(Behaviour {
        event_interval: Duration::from_millis(100),
        content_pieces: 10,
        ..Behaviour::default()
    })
    .await;
    let llm = llm_client(&double, |config| {
        config.llm.timeout_ms = 400;
        config.llm.idle_timeout_ms = 1_000;
        config.llm.policy.max_attempts = 1;
    });
    let started = tokio::time::Instant::now();
    let reply = llm.chat(&one_message(), 1, &[]).await.expect("completes");
    assert!(
        started.elapsed() > Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        reply.content,
        "I will count the guards. [TOOL:calculator:2+2]"
    );
    assert_eq!(reply.completion_tokens, Some(12));
    assert_eq!(double.abandoned_streams(), 0);
}

#[tokio::test]
async fn a_cancelled_call_closes_its_stream() {
    let double = ModelDouble::start(Behaviour {
        stall_after: Some(1),
        ..Behaviour::default()
    })
    .await;
    let llm = llm_client(&double, |_| {});
    let messages = one_message();
    let call = llm.chat(&messages, 1, &[]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err(),
        "still waiting on the stalled stream"
    );
    assert!(
        eventually(Duration::from_secs(5), || double.abandoned_streams() == 1).await,
        "dropping the call closed the connection"
    );
}

#[tokio::test]
async fn a_plain_json_answer_to_a_stream_request_is_accepted() {
    let double = ModelDouble::start(Behaviour {
        plain_json: true,
        ..Behaviour::default()
    })
    .await;
    let llm = llm_client(&double, |_| {});
    let reply = llm.chat(&one_message(), 1, &[]).await.expect("accepted");
    assert_eq!(double.stream_requests(), 1);
    assert_eq!(
        (reply.prompt_tokens, reply.finish_reason.as_deref()),
        (Some(3), Some("stop"))
    );
}

#[tokio::test]
async fn a_broken_or_oversized_stream_is_an_error_that_says_what_broke() {
    for (flaw, max_reply_bytes, expected) in [
        (StreamFlaw::NoDone, 1 << 20, "ended without `data: [DONE]`"),
        (
            StreamFlaw::Malformed,
            1 << 20,
            "event 2 of the reply stream is not the JSON expected",
        ),
        (
            StreamFlaw::None,
            400,
            "over the 400-byte limit (max_reply_bytes)",
        ),
    ] {
        let double = ModelDouble::start(Behaviour {
            flaw,
            content_pieces: 20,
            ..Behaviour::default()
        })
        .await;
        let llm = llm_client(&double, |config| {
            config.llm.max_reply_bytes = max_reply_bytes
        });
        let error = llm.chat(&one_message(), 1, &[]).await.expect_err("broken");
        assert!(error.to_string().contains(expected), "{flaw:?}: {error}");
        assert!(!error.is_outage(), "{flaw:?}: {error}");
        assert_eq!(double.chat_calls(), 1, "{flaw:?}: not retried");
    }
}
