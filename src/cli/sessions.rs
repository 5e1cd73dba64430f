//! `heistd sessions ...`: the audit store read back, as a list (or JSON
//! with `--output json`), a Markdown transcript or JSON; `sessions watch`
//! goes to the running daemon instead (`watch`). It only reads: the file is opened
//! read-only, never created, and the config is read without its secrets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::output::{self, first_line};
use super::{args, config_file, sqlite_only, CliError};
use crate::config;
use crate::store::{MessageRow, SessionDetail, StoreHandle};

/// `heistd sessions ...`: reads the audit store at `--db`, else at the
/// config's `store.path` (see [`database_to_read`]); a missing file is an
/// error, never created.
pub async fn sessions(
    db: Option<PathBuf>,
    config: Option<&Path>,
    action: args::SessionsAction,
) -> Result<String, CliError> {
    use args::{Format, SessionsAction};
    let store = || open_to_read(db, config);
    Ok(match action {
        SessionsAction::List {
            limit,
            output: args::OutputArgs {
                output: args::Output::Json,
            },
        } => super::json(
            &serde_json::json!({ "sessions": store().await?.list_sessions(limit).await? }),
        ),
        SessionsAction::List { limit, .. } => sessions_list(&store().await?, limit).await?,
        SessionsAction::Show { session_id } => {
            export_markdown(&store().await?.session(&session_id).await?)
        }
        SessionsAction::Export {
            session_id,
            format: Format::Json,
        } => format!(
            "{}\n",
            export_json(&store().await?.session(&session_id).await?)
        ),
        SessionsAction::Export {
            session_id,
            format: Format::Md,
        } => export_markdown(&store().await?.session(&session_id).await?),
        // Steering and watching go to the daemon, not the file.
        SessionsAction::Cancel {
            session_id,
            reason,
            admin_address,
        } => super::steer::cancel(config, admin_address.as_deref(), &session_id, reason).await?,
        SessionsAction::Watch {
            session_id,
            admin_address,
        } => {
            let remote = super::remote::Remote::from_config(config, admin_address.as_deref())?;
            super::watch(&remote, &session_id).await?;
            String::new()
        }
    })
}

/// The audit store at `--db`, else the one [`database_to_read`] finds,
/// opened read-only; a missing file is an error, never created.
async fn open_to_read(db: Option<PathBuf>, config: Option<&Path>) -> Result<StoreHandle, CliError> {
    let path = match db {
        Some(path) => path,
        None => database_to_read(config)?,
    };
    if !path.is_file() {
        return Err(CliError::Usage(format!(
            "no audit database at {}: `heistd demo` or `heistd run` writes one, or name another with --db",
            path.display()
        )));
    }
    Ok(StoreHandle::open_read_only(&path).await?)
}

/// The database `sessions` reads without `--db`: the config's
/// `store.path`, the config read without its secrets (reading the store
/// needs none). When that file does not exist but the demo's does, here
/// in the working directory, the demo's is read (and said so), or, with a
/// `--config` that names the store meant, the demo's is named in the error.
fn database_to_read(config_path: Option<&Path>) -> Result<PathBuf, CliError> {
    let chosen = config_file(config_path);
    let config = config::load_without_secrets(chosen.as_deref(), config::process_environment())?;
    sqlite_only(&config, "heistd sessions")?;
    let configured = config.store.path;
    let demo = Path::new(args::DEMO_DATABASE);
    if configured.is_file() || !demo.is_file() {
        return Ok(configured);
    }
    if config_path.is_some() {
        return Err(CliError::Usage(format!(
            "no audit database at {} (store.path); `heistd demo` wrote {}: heistd sessions --db {} list",
            configured.display(),
            demo.display(),
            demo.display()
        )));
    }
    output::write_stderr(format_args!(
        "heistd: no audit database at {} (store.path): reading the demo's, {} (--db names another)\n",
        configured.display(),
        demo.display()
    ));
    Ok(demo.to_path_buf())
}

/// `heistd sessions list`.
pub async fn sessions_list(store: &StoreHandle, limit: usize) -> Result<String, CliError> {
    let mut output = format!(
        "{:<32} {:<11} {:>5}  {:<27} {:>9} {:>9} {:>10}  {}\n",
        "SESSION", "STATUS", "TURNS", "STARTED", "PROMPT", "COMPL", "COST", "REASON"
    );
    for session in store.list_sessions(limit).await? {
        // An estimated count is marked, as `sessions show` explains.
        let marker = if session.usage_estimated > 0 { "~" } else { "" };
        let _ = writeln!(
            output,
            "{:<32} {:<11} {:>5}  {:<27} {:>9} {:>9} {:>10}  {}",
            session.session_id,
            session.status_text,
            session.num_turns,
            session.start_time,
            format!("{marker}{}", session.prompt_tokens),
            format!("{marker}{}", session.completion_tokens),
            session
                .cost
                .map_or_else(|| "-".to_string(), |cost| format!("{cost:.4}")),
            session.failure_reason.unwrap_or_default()
        );
    }
    Ok(output)
}

/// `heistd sessions export ID --format json`: the session, its messages and
/// tool usage, as the prototype's JSON export.
pub fn export_json(detail: &SessionDetail) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "session_info": detail.session,
        "messages": detail.messages,
        "tool_usage": detail.tool_usage,
    }))
    .unwrap_or_default()
}

/// `heistd sessions show ID` and `export ID --format md`: a Markdown transcript.
pub fn export_markdown(detail: &SessionDetail) -> String {
    let session = &detail.session;
    let mut output = format!("# Heist session {}\n\n", session.session_id);
    let _ = writeln!(output, "- status: {}", session.status_text);
    let _ = writeln!(output, "- started: {}", session.start_time);
    let _ = writeln!(
        output,
        "- ended: {}",
        session.end_time.as_deref().unwrap_or("-")
    );
    let _ = writeln!(output, "- turns: {}", session.num_turns);
    if let Some(seed) = session.seed {
        let _ = writeln!(output, "- seed: {seed}");
    }
    if let Some(reason) = &session.failure_reason {
        let _ = writeln!(output, "- reason: {reason}");
    }
    let _ = write!(
        output,
        "- tokens: {} prompt, {} completion",
        session.prompt_tokens, session.completion_tokens
    );
    if session.usage_estimated > 0 {
        let _ = write!(
            output,
            " ({} estimated by heistd: the model sent no usage)",
            turns(session.usage_estimated)
        );
    }
    output.push('\n');
    if let Some(cost) = session.cost {
        let _ = writeln!(output, "- cost: {cost:.6} (at the configured prices)");
    }
    let answerers = answerers(detail);
    for answerer in &answerers {
        let _ = writeln!(
            output,
            "- answered by {} at {}: turns {}",
            answerer.model,
            answerer.endpoint,
            turn_ranges(&answerer.turns)
        );
    }
    output.push_str("\n## Conversation\n");
    for message in &detail.messages {
        let _ = writeln!(
            output,
            "\n### Turn {}: {} ({})\n",
            message.turn_id, message.agent_name, message.agent_role
        );
        if let Some(note) = other_answerer(&answerers, message) {
            let _ = writeln!(output, "{note}\n");
        }
        match &message.error {
            Some(error) => {
                let _ = writeln!(output, "_turn failed: {error}_");
            }
            None => {
                let _ = writeln!(output, "{}", message.message.trim());
            }
        }
        for tool in detail
            .tool_usage
            .iter()
            .filter(|tool| tool.turn_id == message.turn_id)
        {
            let outcome = if tool.success {
                format!("`{}`", first_line(&tool.tool_result, 100))
            } else {
                format!("failed: {}", tool.error.as_deref().unwrap_or(""))
            };
            let _ = writeln!(
                output,
                "\n- tool `{}` (`{}`): {outcome}",
                tool.tool_name, tool.tool_params
            );
        }
    }
    output
}

/// An endpoint and model that answered turns of a session.
struct Answerer<'a> {
    endpoint: &'a str,
    model: &'a str,
    turns: Vec<i64>,
}

/// Who answered the session's turns, the one that answered most first
/// (the session's usual model), then the others in the order they first
/// answered; turns recorded without an endpoint are left out.
fn answerers(detail: &SessionDetail) -> Vec<Answerer<'_>> {
    let mut answerers: Vec<Answerer<'_>> = Vec::new();
    for message in &detail.messages {
        let (Some(endpoint), Some(model)) = (&message.endpoint, &message.model) else {
            continue;
        };
        match answerers
            .iter_mut()
            .find(|answerer| answerer.endpoint == endpoint && answerer.model == model)
        {
            Some(answerer) => answerer.turns.push(message.turn_id),
            None => answerers.push(Answerer {
                endpoint,
                model,
                turns: vec![message.turn_id],
            }),
        }
    }
    if let Some(usual) = (0..answerers.len())
        .max_by_key(|&index| (answerers[index].turns.len(), std::cmp::Reverse(index)))
    {
        answerers[..=usual].rotate_right(1);
    }
    answerers
}

/// A note for a turn another endpoint or model answered than the
/// session's usual one (a fallback, when the primary could not serve).
fn other_answerer(answerers: &[Answerer<'_>], message: &MessageRow) -> Option<String> {
    let usual = answerers.first()?;
    let endpoint = message.endpoint.as_deref()?;
    let model = message.model.as_deref()?;
    (endpoint != usual.endpoint || model != usual.model).then(|| {
        format!(
            "_turn {} answered by {model} at {endpoint}, not the session's usual {} at {}_",
            message.turn_id, usual.model, usual.endpoint
        )
    })
}

/// `1 turn`, `3 turns`.
pub(super) fn turns(count: impl Into<i64>) -> String {
    match count.into() {
        1 => "1 turn".to_string(),
        count => format!("{count} turns"),
    }
}

/// Turn numbers as ranges: `1-6, 9, 11-12`.
fn turn_ranges(turns: &[i64]) -> String {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &turn in turns {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == turn => *end = turn,
            _ => ranges.push((turn, turn)),
        }
    }
    ranges
        .iter()
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(turn_id: i64, endpoint: &str, model: &str) -> MessageRow {
        MessageRow {
            id: turn_id,
            session_id: "heist_x".into(),
            turn_id,
            agent_name: "planner".into(),
            agent_role: "Planner".into(),
            message: format!("message {turn_id}"),
            timestamp: "t".into(),
            error: None,
            prompt_tokens: None,
            completion_tokens: None,
            finish_reason: None,
            trimmed: false,
            endpoint: Some(endpoint.into()),
            model: Some(model.into()),
        }
    }

    #[test]
    fn the_transcript_gives_tokens_cost_and_who_answered_each_turn() {
        let detail = SessionDetail {
            session: crate::store::SessionRow {
                session_id: "heist_x".into(),
                start_time: "t".into(),
                end_time: None,
                num_turns: 4,
                status_text: "completed".into(),
                status: crate::store::SessionStatus::Completed,
                seed: None,
                scenario: None,
                planned_turns: None,
                failure_reason: None,
                schedule: None,
                scheduled_time: None,
                trigger: None,
                prompt_tokens: 300,
                completion_tokens: 40,
                usage_estimated: 1,
                cost: Some(0.00123),
            },
            messages: vec![
                message(1, "a:1", "m"),
                message(2, "api.openai.com:443", "gpt-4o-mini"),
                message(3, "a:1", "m"),
                message(4, "a:1", "m"),
            ],
            tool_usage: Vec::new(),
            service_calls: Vec::new(),
        };
        let text = export_markdown(&detail);
        for wanted in [
            "- tokens: 300 prompt, 40 completion (1 turn estimated by heistd: the model sent no usage)\n",
            "- cost: 0.001230 (at the configured prices)\n",
            "- answered by m at a:1: turns 1, 3-4\n- answered by gpt-4o-mini at api.openai.com:443: turns 2\n",
            "### Turn 2: planner (Planner)\n\n_turn 2 answered by gpt-4o-mini at api.openai.com:443, not the session's usual m at a:1_\n",
        ] {
            assert!(text.contains(wanted), "{wanted:?} in:\n{text}");
        }
        assert_eq!(text.matches("not the session's usual").count(), 1);
    }

    #[test]
    fn turns_read_as_ranges() {
        assert_eq!(turn_ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(turn_ranges(&[4]), "4");
        assert_eq!(turn_ranges(&[]), "");
    }
}
