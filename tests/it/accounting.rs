//! Token accounting end to end: `heistd daemon` as a child process plays a
//! heist against the model double, which adds up the `usage` it sends;
//! the daemon's token counter, the session's totals in the store and the
//! day's totals in `GET /api/v1/status` must say the same. A reply without
//! `usage` is counted by heistd's estimate and marked estimated; prices
//! give a cost of tokens times price, and without prices there is no cost
//! series at all.

use std::time::Duration;

use serde_json::Value;

use crate::daemon::{eventually, services_text, Daemon};
use crate::model_double::{Behaviour, ModelDouble, MODEL};
use crate::support::TestStack;

const TURNS: u32 = 4;

/// A daemon on `stack`'s companions whose model is `model`, with `llm`
/// (keys of `[llm]`) added.
async fn daemon_on(
    stack: &TestStack,
    model: &ModelDouble,
    llm: &str,
) -> (Daemon, tempfile::TempDir) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = format!(
        "[store]\npath = \"{}\"\n",
        directory.path().join("audit.db").display()
    );
    // The `[llm]` table comes last, so `llm` lands in it.
    let services = services_text(stack, &format!("model = \"{MODEL}\"\n{llm}"))
        .replace(&stack.url("rehearsal"), &model.url);
    (
        Daemon::start_with_config(&(store + &services)).await,
        directory,
    )
}

/// Runs a heist and returns its session once it has ended.
async fn finished_session(daemon: &Daemon) -> Value {
    let session_id = daemon.start_run(TURNS).await;
    eventually(Duration::from_secs(30), "the session ends", async || {
        let (status, body) = daemon.get(&format!("/api/v1/sessions/{session_id}")).await;
        (status == 200 && body["session"]["status"] != "active").then_some(body)
    })
    .await
}

/// The value of the series of `family` whose labels include `labels`.
fn series_value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn endpoint_of(model: &ModelDouble) -> String {
    model
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_counter_and_session_totals_equal_the_servers_usage_and_prices_give_cost() {
    let stack = TestStack::start().await;
    let model = ModelDouble::start(Behaviour::default()).await;
    let (daemon, _directory) = daemon_on(
        &stack,
        &model,
        "prompt_price_per_million = 3.0\ncompletion_price_per_million = 15.0\n",
    )
    .await;
    let detail = finished_session(&daemon).await;
    let session = &detail["session"];
    assert_eq!(session["status"], "completed", "{detail}\n{}", daemon.log());
    let (prompt, completion) = model.usage_sent();
    assert!(prompt > 0 && completion > 0);
    assert_eq!(session["prompt_tokens"], prompt, "{session}");
    assert_eq!(session["completion_tokens"], completion, "{session}");
    assert_eq!(session["usage_estimated"], 0);
    let cost = (prompt as f64 * 3.0 + completion as f64 * 15.0) / 1_000_000.0;
    let stored_cost = session["cost"].as_f64().expect("a cost");
    assert!(
        (stored_cost - cost).abs() < 1e-12,
        "{stored_cost} vs {cost}"
    );
    // Each message names the endpoint and model that answered.
    let endpoint = endpoint_of(&model);
    for message in detail["messages"].as_array().expect("messages") {
        assert_eq!(message["endpoint"], endpoint.as_str(), "{message}");
        assert_eq!(message["model"], MODEL, "{message}");
    }
    let metrics = daemon.get_text("/metrics").await;
    let labels = |kind| {
        [
            ("endpoint", endpoint.as_str()),
            ("model", MODEL),
            ("kind", kind),
        ]
    };
    assert_eq!(
        series_value(&metrics, "heistd_model_tokens_total", &labels("prompt")),
        Some(prompt as f64),
        "{metrics}"
    );
    assert_eq!(
        series_value(&metrics, "heistd_model_tokens_total", &labels("completion")),
        Some(completion as f64)
    );
    assert!(metrics.contains("# TYPE heistd_model_cost_total counter\n"));
    let counted_cost = series_value(
        &metrics,
        "heistd_model_cost_total",
        &[
            ("service", "llm"),
            ("endpoint", endpoint.as_str()),
            ("model", MODEL),
        ],
    )
    .expect("a cost series");
    assert!(
        (counted_cost - cost).abs() < 1e-12,
        "{counted_cost} vs {cost}"
    );
    // Today's totals, from the store: this run is unscheduled.
    let (status, body) = daemon.get("/api/v1/status").await;
    assert_eq!(status, 200);
    let tokens = &body["tokens"];
    assert_eq!(
        tokens["day"],
        chrono::Utc::now().format("%Y-%m-%d").to_string()
    );
    assert_eq!(tokens["total"]["prompt_tokens"], prompt, "{tokens}");
    assert_eq!(tokens["total"]["completion_tokens"], completion);
    assert_eq!(tokens["total"]["sessions"], 1);
    assert_eq!(tokens["unscheduled"]["prompt_tokens"], prompt);
    // The list shows the totals too.
    let (_, list) = daemon.get("/api/v1/sessions").await;
    assert_eq!(list["sessions"][0]["prompt_tokens"], prompt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_usage_is_counted_by_estimate_and_no_price_means_no_cost_series() {
    let stack = TestStack::start().await;
    let model = ModelDouble::start(Behaviour {
        no_usage: true,
        ..Behaviour::default()
    })
    .await;
    let (daemon, _directory) = daemon_on(&stack, &model, "").await;
    let detail = finished_session(&daemon).await;
    let session = &detail["session"];
    assert_eq!(session["status"], "completed", "{detail}\n{}", daemon.log());
    assert_eq!(model.usage_sent(), (0, 0));
    // Every turn is estimated, and counted as such.
    assert_eq!(session["usage_estimated"], TURNS, "{session}");
    let prompt = session["prompt_tokens"].as_u64().expect("prompt tokens");
    let completion = session["completion_tokens"]
        .as_u64()
        .expect("completion tokens");
    assert!(prompt > 0 && completion > 0, "{session}");
    assert_eq!(session["cost"], Value::Null);
    for message in detail["messages"].as_array().expect("messages") {
        assert_eq!(
            message["prompt_tokens"],
            Value::Null,
            "not the server's count"
        );
    }
    let metrics = daemon.get_text("/metrics").await;
    let endpoint = endpoint_of(&model);
    let labels = |kind| {
        [
            ("endpoint", endpoint.as_str()),
            ("model", MODEL),
            ("kind", kind),
        ]
    };
    assert_eq!(
        series_value(&metrics, "heistd_model_tokens_total", &labels("prompt")),
        Some(prompt as f64)
    );
    assert_eq!(
        series_value(&metrics, "heistd_model_tokens_total", &labels("completion")),
        Some(completion as f64)
    );
    assert!(
        !metrics.contains("heistd_model_cost_total"),
        "no price, no cost series:\n{metrics}"
    );
    let (_, body) = daemon.get("/api/v1/status").await;
    assert_eq!(body["tokens"]["total"]["usage_estimated"], TURNS);
    assert!(
        body["tokens"]["total"].get("cost").is_none(),
        "{}",
        body["tokens"]
    );
}

/// `promtool check metrics` finds nothing in a priced daemon's `/metrics`
/// after a heist: the cost family heistd writes beside the recorder's
/// text is well formed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (Debian's prometheus package)"]
async fn promtool_check_metrics_finds_nothing_with_a_cost_series() {
    let promtool =
        crate::support::promtool("promtool_check_metrics_finds_nothing_with_a_cost_series");
    let stack = TestStack::start().await;
    let model = ModelDouble::start(Behaviour::default()).await;
    let (daemon, _directory) = daemon_on(
        &stack,
        &model,
        "prompt_price_per_million = 0.15\ncompletion_price_per_million = 0.6\n",
    )
    .await;
    finished_session(&daemon).await;
    let metrics = daemon.get_text("/metrics").await;
    assert!(metrics.contains("heistd_model_cost_total{"), "{metrics}");
    if let Some(said) = crate::support::promtool_check_metrics(promtool, &metrics) {
        panic!("promtool check metrics with a cost series:\n{said}");
    }
}
