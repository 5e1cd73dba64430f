//! Log set-up for every subcommand: text for people or JSON lines for
//! journald and log shippers, on stderr, so stdout carries only output.
//! It only installs the subscriber; it decides nothing else.

use super::args::{Command, LogFormat};

/// Installs the global subscriber. `filter` is `--log` / `RUST_LOG`; without
/// one, commands a person reads (demo, sessions, config, check, reload) log
/// warnings only and the services log `info`.
pub fn init(filter: Option<&str>, format: LogFormat, command: &Command) {
    let quiet = matches!(
        command,
        Command::Demo { .. }
            | Command::Sessions { .. }
            | Command::Config { .. }
            | Command::Check { .. }
            | Command::Reload { .. }
    );
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
}
