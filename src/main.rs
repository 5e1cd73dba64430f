//! The `heistd` command line: parse, set up logging, call `heistd::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use heistd::cli::{self, CliError, DemoOptions};
use heistd::store::Store;

/// heistd runs multi-agent LLM heist-planning sessions against HTTP services
/// (OAuth, memory, tools, an OpenAI-compatible model) and records every
/// message and tool call in a SQLite audit trail.
///
/// Start with `heistd demo`: it runs the whole system in one process.
#[derive(Parser)]
#[command(name = "heistd", version, about, long_about)]
struct Cli {
    /// Log filter (e.g. `info`, `heistd=debug`); also read from RUST_LOG.
    #[arg(long, global = true, env = "RUST_LOG")]
    log: Option<String>,
    /// `text` for people, `json` (one object per line) for journald and
    /// log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The long-running service: scheduled heists, periodic health checks,
    /// the admin API, systemd notification; SIGHUP reloads the config,
    /// SIGTERM stops gracefully.
    Daemon {
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run one heist on a built-in stack: every companion service in-process
    /// on loopback ports, the rehearsal model unless --llm-url is given.
    Demo {
        /// Turns in the heist (default: [heist] turns, 12).
        #[arg(long)]
        turns: Option<u32>,
        /// The SQLite audit database to write.
        #[arg(long, default_value = "heistd-demo.db")]
        db: PathBuf,
        /// Fixes the agent order (and the rehearsal transcript); random when unset.
        #[arg(long)]
        seed: Option<u64>,
        /// An OpenAI-compatible base URL, e.g. http://127.0.0.1:1234/v1 (LM Studio).
        #[arg(long, requires = "llm_model")]
        llm_url: Option<String>,
        /// The model name that server expects.
        #[arg(long, requires = "llm_url")]
        llm_model: Option<String>,
        /// Inject faults (model and calculator errors, a memory outage) to
        /// watch retries, breakers and the outbox at work.
        #[arg(long)]
        chaos: bool,
    },
    /// Run one heist against the services in the config.
    Run {
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Turns in the heist (default: [heist] turns, 12).
        #[arg(long)]
        turns: Option<u32>,
        /// Fixes the agent order (and the rehearsal transcript); random when unset.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Check every configured service's health once; exit 1 if any is down.
    Check {
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run companion services (all, or the named ones) until Ctrl-C/SIGTERM.
    Services {
        /// all, oauth, memory, calculator, file_reader, database_query, rehearsal
        names: Vec<String>,
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read the audit store.
    Sessions {
        /// The audit database; default: the config's store.path.
        #[arg(long)]
        db: Option<PathBuf>,
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Work with the config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// The most recent sessions.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One session as a Markdown transcript.
    Show { session_id: String },
    /// One session as JSON or Markdown, on standard output.
    Export {
        session_id: String,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the config and print it resolved, secrets redacted; exit 1 on error.
    Check {
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Md,
}

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
            })
            .await?;
        }
        Command::Run {
            config,
            turns,
            seed,
        } => {
            let (config, _) = cli::load_config(config.as_deref())?;
            cli::run(config, turns, seed).await?;
        }
        Command::Check { config } => {
            let (config, _) = cli::load_config(config.as_deref())?;
            print!("{}", cli::check(&config).await?);
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
