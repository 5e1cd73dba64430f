//! The `heistd` binary: parse, set up logs, dispatch to `heistd::cli`, and own the signals.

use std::process::ExitCode;

use clap::Parser;
use heistd::cli::args::{Cli, Command};
use heistd::cli::{self, CliError, DemoOptions, Interrupts};
use tokio::signal::unix::{signal, Signal, SignalKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = cli::logging::init(cli.log.as_deref(), cli.log_format, &cli.command)
        .map(|()| heistd::metrics::install())
        .and_then(|_| {
            tokio::runtime::Runtime::new().map_err(|error| CliError::Runtime(error.to_string()))
        })
        .and_then(|runtime| {
            let outcome = runtime.block_on(execute(cli.command));
            // A store call that a quit at once cut loose must not hold the exit.
            if matches!(outcome, Err(CliError::Quit(_))) {
                runtime.shutdown_timeout(cli::QUIT_WITHIN);
            }
            outcome
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            cli::output::write_stderr(format_args!("heistd: {error}\n"));
            ExitCode::from(error.exit_code())
        }
    }
}

async fn execute(command: Command) -> Result<(), CliError> {
    match command {
        Command::Daemon { config } => {
            let (shutdown, reload) = (shutdown_signal()?, reload_on_hangup()?);
            cli::daemon(config.as_deref(), shutdown, reload).await?
        }
        // The report has been printed; only the exit code is left.
        Command::Demo(args) => {
            let interrupts = Interrupts::listen(shutdown_signal)?;
            drop(cli::demo(DemoOptions::new(args, interrupts)).await?)
        }
        Command::Run(args) => drop(cli::run(args, Interrupts::listen(shutdown_signal)?).await?),
        Command::Check { config, output } => {
            cli::check(&cli::load_config(config.as_deref())?.0, output.output).await?
        }
        Command::Services { names, config } => {
            cli::services(config, &names, shutdown_signal()?).await?
        }
        Command::Sessions { db, config, action } => {
            cli::output::print(&cli::sessions(db, config.as_deref(), action).await?)
        }
        Command::Schedules(args) => cli::output::print(&cli::schedules(args).await?),
        Command::Status { daemon, output } => {
            cli::output::print(&cli::status(daemon, output).await?)
        }
        Command::Runs { action } => cli::output::print(&cli::runs(action).await?),
        Command::Completions { shell } => cli::output::print(&cli::completions(shell)?),
        Command::Man => cli::output::print(&cli::man()?),
        Command::Version => cli::output::print(&cli::version()),
        Command::Config { action } => cli::output::print(&cli::config(action)?),
        Command::Reload(args) => cli::output::print(&cli::reload(args).await?),
        Command::Store { action } => cli::output::print(&cli::store(action).await?),
    }
    Ok(())
}

fn listen(kind: SignalKind) -> Result<Signal, CliError> {
    signal(kind).map_err(|error| CliError::Usage(format!("cannot listen for signals: {error}")))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed here,
/// at once, not when the future is first polled: a signal that comes early
/// must stop heistd gracefully, not kill it.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut terminate = listen(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// One reload request per SIGHUP. Registered at once, before the daemon can
/// say READY=1, so an early SIGHUP reloads instead of killing the process.
fn reload_on_hangup() -> Result<tokio::sync::mpsc::Receiver<()>, CliError> {
    let mut hangups = listen(SignalKind::hangup())?;
    let (reload, requests) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() && reload.send(()).await.is_ok() {}
    });
    Ok(requests)
}
