//! The `heistd` binary: parse, set up logs, dispatch to `heistd::cli`, and own the signals.

use std::process::ExitCode;

use clap::Parser;
use heistd::cli::args::{Cli, Command};
use heistd::cli::{self, CliError, DemoOptions};
use tokio::signal::unix::{signal, Signal, SignalKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = cli::logging::init(cli.log.as_deref(), cli.log_format, &cli.command)
        .map(|()| heistd::metrics::install())
        .and_then(|_| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            runtime.map_err(|error| CliError::Runtime(error.to_string()))
        })
        .and_then(|runtime| runtime.block_on(execute(cli.command)));
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
        Command::Demo(args) => drop(cli::demo(DemoOptions::new(args, stop_on_interrupt()?)).await?),
        Command::Run(args) => drop(cli::run(args, stop_on_interrupt()?).await?),
        Command::Check { config } => cli::check(&cli::load_config(config.as_deref())?.0).await?,
        Command::Services { names, config } => {
            cli::services(config, &names, shutdown_signal()?).await?
        }
        Command::Sessions { db, config, action } => {
            cli::output::print(&cli::sessions(db, config.as_deref(), action)?)
        }
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

/// For one-shot heists: the first Ctrl-C or SIGTERM ends the heist after
/// its current turn (session `interrupted`); a second one quits at once.
fn stop_on_interrupt() -> Result<tokio::sync::watch::Receiver<bool>, CliError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let first = shutdown_signal()?;
    tokio::spawn(async move {
        first.await;
        cli::output::write_stderr(format_args!("heistd: stopping after this turn (the session will be marked interrupted); again to quit now\n"));
        // An error means the heist has already ended: nothing to stop. Then
        // listening anew: only a signal after the first one quits at once.
        let _ = stop.send(true);
        if let Ok(second) = shutdown_signal() {
            second.await;
            std::process::exit(130);
        }
    });
    Ok(stopped)
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
