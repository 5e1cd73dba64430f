//! `heistd sessions ...`: the audit store read back, as a list (or JSON
//! with `--output json`), a Markdown transcript or JSON; `sessions watch`
//! goes to the running daemon instead (`watch`). It only reads: the file is opened
//! read-only, never created, and the config is read without its secrets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::output::{self, first_line};
use super::{args, config_file, sqlite_only, CliError};
use crate::config;
use crate::store::{SessionDetail, StoreHandle};

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
        "{:<32} {:<11} {:>5}  {:<27} {}\n",
        "SESSION", "STATUS", "TURNS", "STARTED", "REASON"
    );
    for session in store.list_sessions(limit).await? {
        let _ = writeln!(
            output,
            "{:<32} {:<11} {:>5}  {:<27} {}",
            session.session_id,
            session.status_text,
            session.num_turns,
            session.start_time,
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
    output.push_str("\n## Conversation\n");
    for message in &detail.messages {
        let _ = writeln!(
            output,
            "\n### Turn {}: {} ({})\n",
            message.turn_id, message.agent_name, message.agent_role
        );
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
