//! `heistd check`: every configured service's health once, each endpoint
//! of a service of several on its own, and the model server's side: the
//! models each endpoint offers, native tool calling, and what is known of
//! each endpoint's window and token ratio. Printed for a person, or as one
//! JSON document with `--output json`.

use super::output;
use super::run::base_url_hint;
use super::{args, json, CliError};
use crate::clients::Clients;
use crate::config::{self, Config};

/// `heistd check`: every configured service's health once; with
/// `--output json`, the same as one JSON document (printed before the
/// exit code says whether all is well).
pub async fn check(config: &Config, output: args::Output) -> Result<(), CliError> {
    let clients = Clients::from_config(config)?;
    let reports = crate::health::check_all(&clients).await;
    // A fresh process has no breaker history: the running daemon's breakers
    // are the ones that matter, so ask it when it answers.
    let daemon_breakers = crate::api::breaker_states(&config.daemon.admin_address).await;
    let breaker_of = |report: &crate::health::HealthReport| {
        daemon_breakers
            .as_ref()
            .and_then(|breakers| breakers.get(&report.service))
            .map_or(report.breaker.to_string(), String::clone)
    };
    let mut lines = vec![match &daemon_breakers {
        Some(_) => format!(
            "breakers: as the daemon at {} sees them",
            config.daemon.admin_address
        ),
        None => format!(
            "breakers: no daemon answers at {}; shown as this check sees them",
            config.daemon.admin_address
        ),
    }];
    for report in &reports {
        let state = if report.up { "up" } else { "DOWN" };
        lines.push(format!(
            "{:<15} {:<5} {:>8.1} ms  breaker {:<9}  {}  {}",
            report.service,
            state,
            report.latency_ms,
            breaker_of(report),
            report.base_url,
            report.detail
        ));
    }
    clients.llm.learn_slots().await;
    let endpoints_down = check_endpoints(&clients, &mut lines).await;
    let down: Vec<&str> = reports
        .iter()
        .filter(|report| !report.up)
        .map(|report| report.service.as_str())
        .chain(endpoints_down.iter().map(String::as_str))
        .collect();
    let model_problem = check_model(&clients.llm, config, &mut lines).await;
    let problem = match (down.is_empty(), model_problem) {
        (true, problem) => problem,
        (false, problem) => Some(format!(
            "down: {}{}",
            down.join(", "),
            problem
                .map(|problem| format!("; {problem}"))
                .unwrap_or_default()
        )),
    };
    match output {
        args::Output::Text => lines.iter().for_each(|line| out!("{line}")),
        args::Output::Json => {
            let services: Vec<serde_json::Value> = reports
                .iter()
                .map(|report| {
                    serde_json::json!({
                        "service": report.service,
                        "up": report.up,
                        "latency_ms": report.latency_ms,
                        "breaker": breaker_of(report),
                        "base_url": report.base_url,
                        "detail": report.detail,
                    })
                })
                .collect();
            output::print(&json(&serde_json::json!({
                "healthy": problem.is_none(),
                "problem": problem,
                "breakers_from": if daemon_breakers.is_some() { "daemon" } else { "this check" },
                "services": services,
                "notes": lines,
            })));
        }
    }
    problem.map_or(Ok(()), |problem| Err(CliError::Unhealthy(problem)))
}

/// Each endpoint of a service of several, probed on its own and printed
/// below the service; returns the endpoints down as `service/endpoint`.
async fn check_endpoints(clients: &Clients, lines: &mut Vec<String>) -> Vec<String> {
    let mut down = Vec::new();
    for (service, kind) in crate::health::probes(clients) {
        if service.endpoints().len() < 2 {
            continue;
        }
        for endpoint in service.endpoints() {
            let target = service.on_endpoint(endpoint.index());
            let report = crate::health::probe(&target, kind, crate::clients::PROBE_TIMEOUT).await;
            let snapshot = endpoint.snapshot();
            lines.push(format!(
                "  {:<13} {:<5} {:>8.1} ms  tier {}  slots {}  {}  {}  {}",
                snapshot.name,
                if report.up { "up" } else { "DOWN" },
                report.latency_ms,
                snapshot.tier,
                snapshot.max_concurrent,
                snapshot.base_url,
                snapshot.model,
                report.detail
            ));
            if !report.up {
                down.push(format!("{}/{}", service.name, snapshot.name));
            }
        }
    }
    down
}

/// The model server's side of `heistd check`, for every endpoint: the
/// models each offers (its configured one must be among them), and, for
/// native tool calling, whether the model really returns tool calls.
/// Returns what is wrong.
async fn check_model(
    llm: &crate::clients::LlmClient,
    config: &Config,
    lines: &mut Vec<String>,
) -> Option<String> {
    let mut problems = Vec::new();
    for index in 0..llm.endpoint_count() {
        let view = llm.endpoint_view(index);
        let label = if llm.endpoint_count() > 1 {
            format!(" {}", view.service.endpoints()[index].name())
        } else {
            String::new()
        };
        if let Some(problem) = check_one_model(&view, config, &label, lines).await {
            problems.push(problem);
        }
    }
    if config.llm.token_counting == config::TokenCounting::Server {
        let probe = [crate::clients::ChatMessage::user("ping".into())];
        if llm.count_tokens(&probe, &[]).await.is_none() {
            lines.push("llm token counting: the server's tokenizer (POST /tokenize) does not answer; prompts are estimated (llm.token_counting = \"server\")".to_string());
        }
    }
    for endpoint in llm.endpoints() {
        lines.push(format!("llm {}", describe_endpoint(&endpoint)));
    }
    if config.llm.stream {
        lines.push(format!(
            "llm replies: streamed (first piece within {} ms, gaps under {} ms; llm.stream = false turns it off)",
            config.llm.timeout_ms,
            config.llm.idle_timeout_ms
        ));
    } else {
        lines.push(format!(
            "llm replies: whole (llm.stream = false; each attempt within {} ms)",
            config.llm.timeout_ms
        ));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// [`check_model`] for one endpoint's view, its lines marked `label`.
async fn check_one_model(
    llm: &crate::clients::LlmClient,
    config: &Config,
    label: &str,
    lines: &mut Vec<String>,
) -> Option<String> {
    let models = match llm.list_models().await {
        Ok(models) => models,
        Err(error) => {
            let prefix = if label.is_empty() {
                String::new()
            } else {
                format!("llm{label}: ")
            };
            return Some(format!("{prefix}{error}{}", base_url_hint(&error)));
        }
    };
    lines.push(format!("llm{label} models offered: {}", models.join(", ")));
    if !models.iter().any(|model| model == llm.model()) {
        return Some(format!(
            "llm{label}: the configured model `{}` is not among the models the server offers ({})",
            llm.model(),
            models.join(", ")
        ));
    }
    if config.llm.tool_calling == config::ToolCalling::Native {
        let probe = crate::clients::ToolSpec {
            name: "calculator".into(),
            description: "an arithmetic expression".into(),
        };
        match llm.supports_native_tools(&probe).await {
            Ok(true) => lines.push(format!("llm{label} native tool calling: supported")),
            Ok(false) => lines.push(format!(
                "llm{label} native tool calling: NOT supported by {}; heist sessions use the text protocol",
                llm.model()
            )),
            Err(error) => lines.push(format!("llm{label} native tool calling: cannot tell ({error})")),
        }
    }
    None
}

/// What is known of an endpoint's model, and where it came from.
fn describe_endpoint(endpoint: &crate::clients::EndpointKnowledge) -> String {
    let window = match (endpoint.context_tokens, endpoint.context_source) {
        (Some(window), Some(source)) => format!("{window} tokens (from {})", source.describe()),
        _ => "not known yet (learned from the first context-length error; llm.context_tokens sets it)".into(),
    };
    format!(
        "{} ({}): context window {window}; {:.2} characters per token (from {}; prompts counted: {})",
        endpoint.endpoint,
        endpoint.model,
        endpoint.chars_per_token,
        endpoint.ratio_source.describe(),
        endpoint.calibrations
    )
}
