//! The `heistd` command line: parse, set up logging, call `heistd::cli`.

use std::process::ExitCode;

use clap::Parser;
use heistd::cli::args::{Cli, Command, ConfigAction, Format, LogFormat, SessionsAction};
use heistd::cli::{self, CliError, DemoOptions};
use heistd::store::Store;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_by_default = matches!(
        cli.command,
        Command::Demo { .. }
            | Command::Sessions { .. }
            | Command::Config { .. }
            | Command::Check { .. }
    );
    let filter = cli.log.clone().unwrap_or_else(|| {
        if quiet_by_default {
            "warn".into()
        } else {
            "info".into()
        }
    });
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Every span on the line: a turn's lines carry its session id too.
        LogFormat::Json => logs
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    heistd::metrics::install();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("heistd: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("heistd: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn execute(command: Command) -> Result<(), CliError> {
    match command {
        Command::Daemon { config } => {
            let (loaded, path) = cli::load_config(config.as_deref())?;
            let (reload_sender, reload) = tokio::sync::mpsc::channel(4);
            // Registered before the daemon can say READY=1, so an early
            // SIGHUP reloads instead of killing the process.
            let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|error| CliError::Usage(format!("cannot listen for SIGHUP: {error}")))?;
            tokio::spawn(forward_hangups(hangups, reload_sender));
            let options = heistd::daemon::DaemonOptions {
                config: loaded,
                config_path: path,
                systemd: heistd::config::systemd_environment(),
            };
            heistd::daemon::run(options, shutdown_signal()?, reload).await?;
        }
        Command::Demo {
            turns,
            db,
            seed,
            llm_url,
            llm_model,
            chaos,
        } => {
            cli::demo(DemoOptions {
                turns,
                db,
                seed,
                llm: llm_url.zip(llm_model),
                chaos,
                stop: stop_on_interrupt()?,
            })
            .await?;
        }
        Command::Run {
            config,
            turns,
            seed,
        } => {
            let (config, _) = cli::load_config(config.as_deref())?;
            cli::run(config, turns, seed, stop_on_interrupt()?).await?;
        }
        Command::Check { config } => {
            let (config, _) = cli::load_config(config.as_deref())?;
            cli::check(&config).await?;
        }
        Command::Services { names, config } => {
            let (config, _) = cli::load_config(config.as_deref())?;
            cli::services(config, &names, shutdown_signal()?).await?;
        }
        Command::Sessions { db, config, action } => {
            let path = match db {
                Some(path) => path,
                None => cli::load_config(config.as_deref())?.0.store.path,
            };
            if !path.is_file() {
                return Err(CliError::Usage(format!(
                    "no audit database at {}",
                    path.display()
                )));
            }
            let store = Store::open(&path, heistd::config::Synchronous::Normal)?;
            match action {
                SessionsAction::List { limit } => print!("{}", cli::sessions_list(&store, limit)?),
                SessionsAction::Show { session_id } => {
                    print!("{}", cli::export_markdown(&store.session(&session_id)?))
                }
                SessionsAction::Export {
                    session_id,
                    format: Format::Json,
                } => println!("{}", cli::export_json(&store.session(&session_id)?)),
                SessionsAction::Export {
                    session_id,
                    format: Format::Md,
                } => print!("{}", cli::export_markdown(&store.session(&session_id)?)),
            }
        }
        Command::Config {
            action: ConfigAction::Check { config },
        } => print!("{}", cli::config_check(config.as_deref())?),
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed
/// here, at once, not when the future is first polled: a signal that comes
/// early must stop heistd gracefully, not kill it.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| {
        signal(kind).map_err(|error| CliError::Usage(format!("cannot listen for signals: {error}")))
    };
    let (mut interrupt, mut terminate) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::terminate())?,
    );
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
        eprintln!("heistd: stopping after this turn (the session will be marked interrupted); again to quit now");
        let _ = stop.send(true);
        // Listening anew: only a signal after the first one quits at once.
        if let Ok(second) = shutdown_signal() {
            second.await;
            std::process::exit(130);
        }
    });
    Ok(stopped)
}

/// Sends one reload request per SIGHUP.
async fn forward_hangups(
    mut hangups: tokio::signal::unix::Signal,
    reload: tokio::sync::mpsc::Sender<()>,
) {
    while hangups.recv().await.is_some() {
        if reload.send(()).await.is_err() {
            return;
        }
    }
}
