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
            tokio::runtime::Runtime::new().map_err(|error| CliError::Runtime(error.to_string()))
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
        Command::Demo(args) => drop(cli::demo(DemoOptions::new(args, interrupts()?)).await?),
        Command::Run(args) => drop(cli::run(args, interrupts()?).await?),
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

/// One-shot heists: the first Ctrl-C or SIGTERM ends the heist after its turn;
/// a second quits at once, its session marked `interrupted` on the way out.
fn interrupts() -> Result<cli::Interrupts, CliError> {
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let (quit_sender, quit) = tokio::sync::watch::channel(false);
    let first = shutdown_signal()?;
    tokio::spawn(async move {
        first.await;
        // Listening anew first: a signal sent on reading the line is heard.
        let second = shutdown_signal();
        cli::output::write_stderr(format_args!("heistd: stopping after this turn (the session will be marked interrupted); again to quit now\n"));
        let _ = stop_sender.send(true);
        if let Ok(second) = second {
            second.await;
            let _ = quit_sender.send(true);
            tokio::time::sleep(cli::QUIT_WITHIN).await;
            std::process::exit(130);
        }
    });
    Ok(cli::Interrupts { stop, quit })
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
