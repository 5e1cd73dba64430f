//! `heistd run`, and what it shares with `demo`: the model's preflight,
//! the live turn and notice lines, and the summary at the end.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::output::{self, first_line};
use super::quit::{self, Interrupts};
use super::{args, load_config, sqlite_only, CliError};
use crate::clients::{Clients, StatsSnapshot};
use crate::heist::{self, HeistRunner, RunOptions, RunReport, TurnView};
use crate::scenario::Scenario;
use crate::store::StoreHandle;

/// `heistd run`: one heist against the configured services.
pub async fn run(args: args::RunArgs, interrupts: Interrupts) -> Result<RunReport, CliError> {
    let in_play = quit::InPlay::default();
    quit::unless_quit(&in_play, interrupts.quit, async {
        run_until_quit(args, interrupts.stop, &in_play).await
    })
    .await
}

async fn run_until_quit(
    args: args::RunArgs,
    stop: watch::Receiver<bool>,
    in_play: &quit::InPlay,
) -> Result<RunReport, CliError> {
    let (mut config, _) = load_config(args.config.as_deref())?;
    let args::HeistArgs {
        turns,
        seed,
        db,
        llm_url,
        llm_model,
    } = args.heist;
    if let Some(db) = db {
        config.store.path = db;
    }
    if let Some((base_url, model)) = llm_url.zip(llm_model) {
        config.llm.base_url = base_url;
        // The command line names one model server: the configured lists
        // give way to it.
        config.llm.endpoints.clear();
        config.llm.fallbacks.clear();
        config.llm.model = model;
    }
    let scenario = Arc::new(Scenario::from_config(config.heist.scenario.as_deref())?);
    sqlite_only(&config, "heistd run")?;
    let store = StoreHandle::open_configured(&config.store, &config.cluster).await?;
    // A store that cannot be written fails here, before any service call.
    store.probe_write().await?;
    quit::end_stale_sessions(&store, "heistd run").await?;
    let clients = Clients::from_config(&config)?;
    let turns = turns.unwrap_or(config.heist.turns);
    let seed = seed
        .or(config.heist.seed)
        .unwrap_or_else(heist::random_seed);
    preflight(&clients.llm).await?;
    let runner = HeistRunner::new(Arc::new(config), scenario, clients, store.clone())
        .with_stop(stop)
        .with_notices(Arc::new(print_notice));
    let options = RunOptions::new(turns, seed);
    let session_id = runner.start(&options).await?;
    in_play.started(&store, &session_id);
    let report = runner
        .play(&session_id, &options, Some(&print_turn))
        .await?;
    out!("{}", summary(&report, runner.clients(), store.path()));
    completed(report)
}

/// A heist that ran but did not complete is an error for the exit code
/// (3), after its summary has been printed.
pub(crate) fn completed(report: RunReport) -> Result<RunReport, CliError> {
    match report.status {
        crate::store::SessionStatus::Completed => Ok(report),
        status => Err(CliError::NotCompleted {
            session_id: report.session_id.clone(),
            status: status.as_str(),
            reason: report.failure_reason.clone().unwrap_or_default(),
        }),
    }
}

/// Checks the model endpoint before the first turn, with `/models` and
/// one tiny chat: a server that cannot be reached, does not answer, or
/// answers 404 (or refuses the chat: a bad key, a broken stream) fails the
/// command within seconds, naming the URL; a 5xx or a 429 is left to the
/// session's outage handling (it may be starting up); a model it does not
/// list is a warning.
pub(crate) async fn preflight(llm: &crate::clients::LlmClient) -> Result<(), CliError> {
    let url = &llm.service.base_url;
    let unusable = |error: &crate::clients::CallError| {
        CliError::Unhealthy(format!(
            "the model server at {url} cannot be used: {error}{}",
            base_url_hint(error)
        ))
    };
    match llm.list_models().await {
        Ok(models) if models.iter().any(|model| model == llm.model()) => {}
        Ok(models) => output::write_stderr(format_args!(
            "warning: the model server at {url} does not list `{}` (it lists: {}); trying it anyway\n",
            llm.model(),
            models.join(", ")
        )),
        Err(crate::clients::CallError::Status { status, .. }) if status >= 500 => return Ok(()),
        Err(error) => return Err(unusable(&error)),
    }
    // As long as a turn would wait for its first piece, and not less than
    // the minimum: a server may load the model on first use.
    let limit = PREFLIGHT_CHAT_MINIMUM.max(llm.first_piece_timeout());
    let chat = tokio::time::timeout(limit, llm.preflight_chat()).await;
    match chat {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) if left_to_the_session(&error) => Ok(()),
        Ok(Err(error)) => Err(unusable(&error)),
        Err(_) => Err(CliError::Unhealthy(format!(
            "the model server at {url} cannot be used: a 1-token chat got no answer within {} s (llm.timeout_ms)",
            limit.as_secs()
        ))),
    }
}

/// A preflight chat error the session's outage handling is for: the
/// server is there but unavailable for now (5xx, 429, an open breaker).
/// A refused connection or no answer fails the command instead.
fn left_to_the_session(error: &crate::clients::CallError) -> bool {
    use crate::clients::CallError;
    error.is_outage()
        && !matches!(
            error,
            CallError::Connect { .. } | CallError::Timeout { .. } | CallError::Stalled { .. }
        )
}

/// The preflight's tiny chat gets `llm.timeout_ms` (a turn's wait for its
/// first piece), and at least this long: a server that loads the model on
/// first use may need a while.
const PREFLIGHT_CHAT_MINIMUM: std::time::Duration = std::time::Duration::from_secs(30);

/// "does it end in /v1?" for a 404 from an OpenAI-compatible base URL.
pub(crate) fn base_url_hint(error: &crate::clients::CallError) -> &'static str {
    match error {
        // The server found the path but not the model (Ollama, vLLM and
        // the rehearsal model say "model ... not found"): the name is wrong.
        crate::clients::CallError::Status {
            status: 404,
            message,
            ..
        } if message.to_ascii_lowercase().contains("model") => {
            " (the server does not have that model: check llm.model against `heistd check`'s list)"
        }
        crate::clients::CallError::Status { status: 404, .. } => {
            " (the base URL answers 404: does it end in /v1?)"
        }
        _ => "",
    }
}

/// Prints a run's notices: a pause as one countdown line rewritten in
/// place, the rest as their own lines.
pub(crate) fn print_notice(notice: &heist::RunNotice) {
    match notice {
        heist::RunNotice::ModelPaused { .. } => {
            output::write_stdout(format_args!("\r   .. {notice}\x1b[K"))
        }
        heist::RunNotice::ModelBack { .. } => out!("\r   .. {notice}\x1b[K\n"),
        heist::RunNotice::TextToolsFallback { .. } => out!("warning: {notice}\n"),
    }
}

pub(crate) fn print_turn(view: &TurnView<'_>) {
    let record = view.record;
    print_turn_of(
        &TurnHeading {
            turn_id: i64::from(record.turn_id),
            total_turns: Some(i64::from(view.total_turns)),
            agent: &record.agent_name,
            role: &record.agent_role,
            elapsed_ms: Some(view.elapsed_ms),
        },
        record.error.as_deref(),
        &record.message,
        &record.tool_calls,
    );
}

/// A turn's first line: who played which turn, in how long.
pub(crate) struct TurnHeading<'a> {
    pub turn_id: i64,
    pub total_turns: Option<i64>,
    pub agent: &'a str,
    pub role: &'a str,
    pub elapsed_ms: Option<f64>,
}

/// A turn as the demo prints it, from its parts: a run's own record, or a
/// turn a daemon's event stream sent (`sessions watch`).
pub(crate) fn print_turn_of(
    heading: &TurnHeading<'_>,
    error: Option<&str>,
    message: &str,
    tool_calls: &[crate::store::ToolCallRecord],
) {
    let total = heading
        .total_turns
        .map_or("?".to_string(), |total| total.to_string());
    let elapsed = heading
        .elapsed_ms
        .map_or(String::new(), |ms| format!(" — {ms:.1} ms"));
    out!(
        "[{:>2}/{total}] {} ({}){elapsed}",
        heading.turn_id,
        heading.agent,
        heading.role,
    );
    match error {
        Some(error) => out!("   turn failed: {error}"),
        None => {
            for line in message.trim().lines() {
                out!("   {line}");
            }
        }
    }
    for call in tool_calls {
        let outcome = if call.success {
            format!("ok: {}", first_line(&call.tool_result, 90))
        } else {
            format!("FAILED: {}", call.error.as_deref().unwrap_or(""))
        };
        out!("   -> {}({}) {outcome}", call.tool_name, call.tool_params);
    }
    out!();
}

/// The summary's token lines: the session's tokens (and how many turns
/// were estimated), its cost when priced, and each turn a fallback
/// answered.
fn token_lines(report: &RunReport) -> String {
    let mut output = format!(
        "  tokens: {} prompt, {} completion",
        report.prompt_tokens, report.completion_tokens
    );
    if report.usage_estimated > 0 {
        let _ = write!(
            output,
            " ({} estimated: the model sent no usage)",
            super::sessions::turns(report.usage_estimated as i64)
        );
    }
    output.push('\n');
    if let Some(cost) = report.cost {
        let _ = writeln!(output, "  cost: {cost:.6} (at the configured prices)");
    }
    for turn in &report.fallback_turns {
        let _ = writeln!(output, "  {turn}");
    }
    output
}

pub(crate) fn summary(report: &RunReport, clients: &Clients, database: &Path) -> String {
    let mut output = String::new();
    let _ = writeln!(
        output,
        "session {} {}",
        report.session_id,
        report.status.as_str()
    );
    if let Some(reason) = &report.failure_reason {
        let _ = writeln!(output, "  reason: {reason}");
    }
    let _ = writeln!(
        output,
        "  turns: {} ({} failed)",
        report.turns, report.failed_turns
    );
    let _ = writeln!(
        output,
        "  tool calls: {} succeeded, {} failed, {} refused",
        report.tool_calls_succeeded, report.tool_calls_failed, report.tool_calls_refused
    );
    if report.memory_pending > 0 {
        let _ = writeln!(
            output,
            "  memory writes waiting in the outbox: {}",
            report.memory_pending
        );
    }
    output.push_str(&token_lines(report));
    let _ = writeln!(
        output,
        "\n  {:<15} {:>6} {:>9} {:>9} {:>9}",
        "service", "calls", "failures", "p50 ms", "p99 ms"
    );
    for service in clients.all() {
        let StatsSnapshot {
            calls,
            failures,
            p50_ms,
            p99_ms,
        } = service.stats.snapshot();
        let _ = writeln!(
            output,
            "  {:<15} {calls:>6} {failures:>9} {p50_ms:>9.2} {p99_ms:>9.2}",
            service.name
        );
    }
    let database = database.display();
    let _ = writeln!(output, "\n  audit trail: {database}");
    let _ = writeln!(
        output,
        "  read it:     heistd sessions --db {database} show {}",
        report.session_id
    );
    let _ = write!(
        output,
        "  or with SQL: sqlite3 {database} \"SELECT turn_id, agent_name, tool_name, success FROM tool_usage WHERE session_id = '{}'\"",
        report.session_id
    );
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_gives_tokens_estimates_cost_and_each_fallback_turn() {
        let report = RunReport {
            session_id: "heist_x".into(),
            status: crate::store::SessionStatus::Completed,
            failure_reason: None,
            turns: 12,
            failed_turns: 0,
            tool_calls_succeeded: 0,
            tool_calls_failed: 0,
            tool_calls_refused: 0,
            memory_pending: 0,
            prompt_tokens: 5000,
            completion_tokens: 600,
            usage_estimated: 2,
            cost: Some(0.0123),
            fallback_turns: vec![heist::FallbackTurn {
                turn_id: 7,
                endpoint: "api.openai.com:443".into(),
                model: "gpt-4o-mini".into(),
            }],
        };
        assert_eq!(
            token_lines(&report),
            "  tokens: 5000 prompt, 600 completion (2 turns estimated: the model sent no usage)\n\
             \x20 cost: 0.012300 (at the configured prices)\n\
             \x20 turn 7 answered by fallback gpt-4o-mini at api.openai.com:443\n"
        );
        let unpriced = RunReport {
            usage_estimated: 0,
            cost: None,
            fallback_turns: Vec::new(),
            ..report
        };
        assert_eq!(
            token_lines(&unpriced),
            "  tokens: 5000 prompt, 600 completion\n"
        );
    }
}
