//! Log set-up for every subcommand: text for people or JSON lines for
//! journald and log shippers, on stderr, so stdout carries only output.
//! It only installs the subscriber; it decides nothing else.

use super::args::{Command, LogFormat};
use super::CliError;

/// Installs the global subscriber. `filter` is `--log` / `RUST_LOG`; without
/// one, commands a person reads (demo, sessions, config, check, reload) log
/// warnings only and the services log `info`.
pub fn init(filter: Option<&str>, format: LogFormat, command: &Command) -> Result<(), CliError> {
    let quiet = matches!(
        command,
        Command::Demo { .. }
            | Command::Sessions { .. }
            | Command::Config { .. }
            | Command::Check { .. }
            | Command::Reload { .. }
            | Command::Status { .. }
            | Command::Runs { .. }
            | Command::Completions { .. }
            | Command::Man
            | Command::Version
    );
    let default = if quiet { "warn" } else { "info" };
    let filter = filter.unwrap_or(default);
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|error| {
            CliError::Usage(format!(
                "invalid log filter `{filter}` (--log or RUST_LOG): {error}; e.g. `info` or `heistd=debug`"
            ))
        })?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // Every span on the line: a turn's lines carry its session id too.
        LogFormat::Json => logs
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}
