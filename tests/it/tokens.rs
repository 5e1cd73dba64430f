//! Counting tokens as the server does (issue #21): heists against a model
//! double with a 2048-token window and a tokenizer of one token per
//! character (denser than heistd's first guess), refusing oversized
//! requests in each server's words, with the calibrated estimate
//! (`llm.token_counting = "auto"`) and with the server's tokenizer
//! (`"server"`). Every turn must succeed, trimmed, and no model call after
//! the first may overflow (none at all when the server counts).

use heistd::clients::{RatioSource, WindowSource};
use heistd::config::{Config, TokenCounting};
use heistd::heist::{RunOptions, RunReport};
use heistd::store::{SessionDetail, SessionStatus};

use crate::model_double::{Behaviour, ModelDouble, MODEL};
use crate::support::{base_config, TestStack};

const WINDOW: u32 = 2048;

/// The servers whose refusals the double speaks.
#[derive(Debug, Clone, Copy)]
enum Flavour {
    OpenAi,
    LlamaCpp,
    LmStudio,
    Ollama,
}

async fn dense_double(flavour: Flavour) -> ModelDouble {
    ModelDouble::start(Behaviour {
        context_tokens: Some(WINDOW),
        tokens_per_char: Some(1.0),
        llama_cpp: matches!(flavour, Flavour::LlamaCpp),
        lm_studio: matches!(flavour, Flavour::LmStudio),
        ollama: matches!(flavour, Flavour::Ollama),
        slots: 2,
        ..Behaviour::default()
    })
    .await
}

/// Twelve turns against `double`; the report, the stored session and the
/// LLM client the runner used.
async fn heist(
    double: &ModelDouble,
    config: Config,
) -> (RunReport, SessionDetail, heistd::clients::LlmClient) {
    let stack =
        TestStack::start_with_model(config, Some((double.url.clone(), MODEL.to_string()))).await;
    let runner = stack.stack.runner(stack.store.clone()).expect("runner");
    let llm = runner.clients().llm.clone();
    let report = runner
        .run(RunOptions::new(12, 5), None)
        .await
        .expect("run finishes");
    let detail = stack
        .store
        .session(&report.session_id)
        .await
        .expect("stored");
    (report, detail, llm)
}

/// Every turn played, none failed, each prompt within the window, some
/// trimmed to it.
fn assert_all_turns_fit(what: &str, report: &RunReport, detail: &SessionDetail) {
    assert_eq!(
        report.status,
        SessionStatus::Completed,
        "{what}: {:?}",
        report.failure_reason
    );
    assert_eq!(report.failed_turns, 0, "{what}");
    assert_eq!(detail.messages.len(), 12, "{what}");
    for message in &detail.messages {
        assert!(message.error.is_none(), "{what}: {:?}", message.error);
        assert!(
            message
                .prompt_tokens
                .is_some_and(|tokens| tokens <= i64::from(WINDOW)),
            "{what}: {:?}",
            message.prompt_tokens
        );
    }
    assert!(
        detail.messages.iter().any(|message| message.trimmed),
        "{what}: the prompts were trimmed to the window"
    );
}

#[tokio::test]
async fn after_the_first_refusal_no_call_overflows_whatever_the_server_says_it_in() {
    for flavour in [
        Flavour::OpenAi,
        Flavour::LlamaCpp,
        Flavour::LmStudio,
        Flavour::Ollama,
    ] {
        let double = dense_double(flavour).await;
        let (report, detail, llm) = heist(&double, base_config()).await;
        let what = format!("{flavour:?}");
        assert_all_turns_fit(&what, &report, &detail);
        let overflows = double.overflows();
        assert!(overflows.len() >= 12, "{what}: {overflows:?}");
        assert_eq!(
            double.oversized(),
            1,
            "{what}: one refusal, then none: {overflows:?}"
        );
        assert!(
            overflows[1..].iter().all(|overflowed| !overflowed),
            "{what}: from the second model call on, none overflows: {overflows:?}"
        );
        let known = &llm.endpoints()[0];
        assert_eq!(known.context_tokens, Some(WINDOW), "{what}: {known:?}");
        let source = match flavour {
            // Ollama's refusal names no window: its `/api/ps` does.
            Flavour::Ollama => WindowSource::ServerProps,
            _ => WindowSource::ContextError,
        };
        assert_eq!(known.context_source, Some(source), "{what}: {known:?}");
        assert_eq!(known.ratio_source, RatioSource::Usage, "{what}: {known:?}");
        assert!(
            known.chars_per_token <= 1.0,
            "{what}: the ratio errs dense: {known:?}"
        );
    }
}

#[tokio::test]
async fn counted_by_the_servers_tokenizer_not_even_the_first_call_overflows() {
    let double = dense_double(Flavour::LlamaCpp).await;
    let mut config = base_config();
    config.llm.token_counting = TokenCounting::Server;
    let (report, detail, llm) = heist(&double, config).await;
    assert_all_turns_fit("server counting", &report, &detail);
    let overflows = double.overflows();
    assert_eq!(overflows.len(), 12, "{overflows:?}");
    assert_eq!(double.oversized(), 0, "{overflows:?}");
    assert!(double.tokenize_calls() >= 12, "{}", double.tokenize_calls());
    let known = &llm.endpoints()[0];
    assert_eq!(
        (known.context_tokens, known.context_source),
        (Some(WINDOW), Some(WindowSource::ServerProps)),
        "the window came from /props before the first call: {known:?}"
    );
    assert_eq!(known.server_counting, Some(true));
}

#[tokio::test]
async fn a_server_without_a_tokenizer_is_estimated_with_a_warning_and_still_fits() {
    let double = dense_double(Flavour::OpenAi).await;
    let mut config = base_config();
    config.llm.token_counting = TokenCounting::Server;
    let (report, detail, llm) = heist(&double, config).await;
    assert_all_turns_fit("no tokenizer", &report, &detail);
    assert_eq!(double.tokenize_calls(), 0);
    assert!(
        double.overflows()[1..].iter().all(|overflowed| !overflowed),
        "{:?}",
        double.overflows()
    );
    assert_eq!(llm.endpoints()[0].server_counting, Some(false));
}

#[tokio::test]
async fn a_configured_window_is_kept_and_shown_as_configured() {
    let double = dense_double(Flavour::LlamaCpp).await;
    let mut config = base_config();
    config.llm.context_tokens = WINDOW;
    let (report, detail, llm) = heist(&double, config).await;
    assert_all_turns_fit("configured", &report, &detail);
    let known = &llm.endpoints()[0];
    assert_eq!(
        (known.context_tokens, known.context_source),
        (Some(WINDOW), Some(WindowSource::Configured))
    );
    assert_eq!(known.model, MODEL);
    assert_eq!(known.token_counting, TokenCounting::Auto);
    assert!(known.calibrations >= 12, "{known:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heistd_check_shows_the_window_and_the_ratio_and_where_they_came_from() {
    let double = dense_double(Flavour::LlamaCpp).await;
    let directory = tempfile::tempdir().expect("temp dir");
    // The other services down (port 9, quickly): only the model's lines
    // matter here.
    let mut contents = String::new();
    for service in heistd::config::SERVICE_NAMES {
        contents.push_str(&format!(
            "[services.{service}]\nbase_url = \"http://127.0.0.1:9\"\ntimeout_ms = 300\n"
        ));
    }
    contents.push_str(&format!(
        "[llm]\nbase_url = \"{}\"\nmodel = \"{MODEL}\"\ntoken_counting = \"server\"\n",
        double.url
    ));
    std::fs::write(directory.path().join("check.toml"), contents).expect("write");
    let path = directory.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args(["check", "--config", "check.toml"])
            .current_dir(path)
            .env_remove("RUST_LOG")
            .output()
            .expect("heistd runs")
    })
    .await
    .expect("check ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("llm ") && line.contains("context window"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "({MODEL}): context window {WINDOW} tokens (from the server's model list)"
        )) && line.contains(
            // "ping" and a newline: five tokens for four characters.
            "0.80 characters per token (from the server's tokenizer; prompts counted: 1)"
        ),
        "{stdout}"
    );
    assert_eq!(double.tokenize_calls(), 1);
}
