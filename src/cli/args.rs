//! The command line's shape: every subcommand, option and its help text,
//! parsed by clap. `main.rs` parses with it and dispatches; nothing here
//! acts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `--version`: the package version and the commit it was built from
/// (`heistd_build_info`'s labels), so a report names the exact build.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HEISTD_BUILD_COMMIT"),
    ")"
);

/// heistd runs multi-agent LLM heist-planning sessions against HTTP services
/// (OAuth, memory, tools, an OpenAI-compatible model) and records every
/// message and tool call in an audit trail (SQLite, or PostgreSQL for
/// several daemons).
///
/// Start with `heistd demo`: it runs the whole system in one process.
#[derive(Parser)]
#[command(name = "heistd", version = VERSION, about, long_about)]
pub struct Cli {
    /// Log filter (e.g. `info`, `heistd=debug`); also read from RUST_LOG.
    #[arg(long, global = true, env = "RUST_LOG")]
    pub log: Option<String>,
    /// `text` for people, `json` (one object per line) for journald and
    /// log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// The long-running service: scheduled heists, periodic health checks,
    /// the admin API, systemd notification; SIGHUP reloads the config,
    /// SIGTERM stops gracefully.
    Daemon {
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Reload a running daemon's config and wait for the outcome: sends
    /// SIGHUP, then exits 0 once the new config is applied, or 1 with the
    /// daemon's reason (the key at fault) when it refused it and kept the
    /// old one. What systemd's ExecReload= runs.
    Reload(ReloadArgs),
    /// Run one heist on a built-in stack: every companion service in-process
    /// on loopback ports, the rehearsal model unless --llm-url is given.
    Demo(DemoArgs),
    /// Run one heist against the services in the config.
    Run(RunArgs),
    /// Check every configured service's health once; exit 1 if any is down.
    Check {
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
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
        /// The audit database; default: the config's store.path, or, when
        /// that file does not exist, `heistd-demo.db` here if the demo wrote
        /// it (said on stderr).
        #[arg(long, global = true)]
        db: Option<PathBuf>,
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Steer the running daemon's schedules over its admin API (the
    /// config's daemon.admin_address, with the admin token the daemon
    /// reads): list them, pause, resume, run one now, run missed slots.
    Schedules(SchedulesArgs),
    /// Work with the config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Work with the audit store itself.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// A running daemon's status page (GET /api/v1/status): services and
    /// breakers, sessions running, schedules, the cluster.
    Status {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Heists on a running daemon.
    Runs {
        #[command(subcommand)]
        action: RunsAction,
    },
    /// Print a shell completion script for heistd (bash, zsh or fish).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print heistd's man page (roff), e.g. `heistd man > heistd.1`.
    Man,
    /// Print the version, as --version does, and the commit it was built from.
    Version,
}

/// How `--output` prints a command's report: `text` for people, `json`
/// (one JSON document) for scripts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// `--output text|json`, flattened into each command that prints a report
/// (`status`, `sessions list`, `schedules list`, `check`).
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct OutputArgs {
    /// `text` for people, `json` for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Where the running daemon is: its config's `daemon.admin_address` and
/// admin token, or the address given.
#[derive(Args, Clone, Debug, Default)]
pub struct DaemonArgs {
    /// The config file naming the daemon's admin address and token;
    /// default /etc/heistd/heistd.toml if it exists, else built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The daemon's admin API address (host:port); overrides the config's.
    #[arg(long)]
    pub admin_address: Option<String>,
}

/// The shells `heistd completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
pub enum RunsAction {
    /// Start a heist on the daemon now (POST /api/v1/runs) and print its
    /// session id; with --follow, watch it like `sessions watch`.
    Start {
        /// Turns in the heist, 1 to 1000 (default: the daemon's [heist] turns).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_TURNS)))]
        turns: Option<u32>,
        /// Fixes the agent order (and the rehearsal transcript).
        #[arg(long)]
        seed: Option<u64>,
        /// Follow the session's turns until it ends; exit 0 when it
        /// completed, 3 when it failed, was interrupted or cancelled.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

#[derive(Subcommand)]
pub enum StoreAction {
    /// Copy a SQLite audit trail into PostgreSQL (idempotent; ends with a
    /// count check). The password comes from the config's
    /// store.password_env / store.password_file.
    Migrate {
        /// The PostgreSQL store, e.g. postgres://heistd@db:5432/heistd?sslmode=disable
        #[arg(long)]
        to: String,
        /// The SQLite database to copy; default: the config's store.path.
        #[arg(long)]
        from: Option<PathBuf>,
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum SessionsAction {
    /// The most recent sessions.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follow one session on the running daemon as it plays (its turns,
    /// waits and ending, as the demo prints them); exit 0 when it
    /// completed, 3 when it failed, was interrupted or cancelled.
    Watch {
        session_id: String,
        /// The daemon's admin API address (host:port); overrides the config's.
        #[arg(long)]
        admin_address: Option<String>,
    },
    /// One session as a Markdown transcript.
    Show { session_id: String },
    /// One session as JSON or Markdown, on standard output.
    Export {
        session_id: String,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Cancel a session on the running daemon (steering, over its admin
    /// API): it stops after its current turn and ends `cancelled`; a
    /// queued one never starts. Exit 1 when it is unknown or has ended.
    Cancel {
        session_id: String,
        /// Why; recorded as the session's reason.
        #[arg(long)]
        reason: Option<String>,
        /// The daemon's admin API address; overrides the config's.
        #[arg(long)]
        admin_address: Option<String>,
    },
}

// `heistd schedules`' options (the variant's doc is its help). Steering
// commands, kept apart from the readers above.
#[derive(Args)]
pub struct SchedulesArgs {
    /// The config file, read for daemon.admin_address and the admin token;
    /// default /etc/heistd/heistd.toml if it exists, else built-in defaults.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The daemon's admin API address; overrides the config's.
    #[arg(long, global = true)]
    pub admin_address: Option<String>,
    #[command(subcommand)]
    pub action: SchedulesAction,
}

/// How `schedules list` prints.
#[derive(Clone, Copy, ValueEnum)]
pub enum ScheduleOutput {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum SchedulesAction {
    /// Every schedule with its next and last slot and whether it is paused.
    List {
        /// `text` for people, `json` for scripts (the daemon's answer).
        #[arg(long, value_enum, default_value_t = ScheduleOutput::Text)]
        output: ScheduleOutput,
    },
    /// Pause a schedule on every node (it survives restarts and reloads):
    /// its slots are skipped until it is resumed.
    Pause {
        name: String,
        /// Why, for whoever looks next.
        #[arg(long)]
        note: Option<String>,
    },
    /// Resume a paused schedule: its next slot runs.
    Resume { name: String },
    /// Run the schedule once now (recorded with trigger "manual").
    Trigger { name: String },
    /// Run the slots of a past range that did not run, oldest first, under
    /// the schedule's overlap policy (at most daemon.max_backfill_slots).
    Backfill {
        name: String,
        /// The range's start, RFC 3339 (e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        from: String,
        /// The range's end, RFC 3339, included.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate the config and print it resolved, secrets redacted; exit 1 on error.
    Check {
        /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print nothing when the config is valid, only errors and
        /// warnings (for systemd's ExecStartPre=, which would log the whole
        /// config at every start).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print every key with its built-in default, as TOML (the built-in
    /// clients left out: no [[oauth.clients]] means them).
    Defaults,
}

// `heistd reload`'s options (the variant's doc is its help).
#[derive(Args)]
pub struct ReloadArgs {
    /// The daemon's process id (systemd: `--pid $MAINPID`); default: the
    /// pid the daemon reports in GET /api/v1/status.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The config file, read only for `daemon.admin_address`, where the
    /// daemon is asked how the reload went; default /etc/heistd/heistd.toml
    /// if it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The daemon's admin API address; overrides the config's.
    #[arg(long)]
    pub admin_address: Option<String>,
    /// How long to wait for the daemon's answer.
    #[arg(long, default_value_t = 60)]
    pub timeout_seconds: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Md,
}

/// The database `heistd demo` writes unless `--db` says otherwise: its own
/// file, so a demo never mixes into a real audit trail. `heistd sessions`
/// reads it when the configured store does not exist (a newcomer's first
/// `sessions list` after `demo`).
pub const DEMO_DATABASE: &str = "heistd-demo.db";

// `heistd demo`'s options (the variant's doc is its help).
#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub heist: HeistArgs,
    /// Inject faults (model and calculator errors, a memory outage) to
    /// watch retries, breakers and the outbox at work.
    #[arg(long)]
    pub chaos: bool,
}

// `heistd run`'s options (the variant's doc is its help).
#[derive(Args)]
pub struct RunArgs {
    /// The config file; default /etc/heistd/heistd.toml if it exists, else built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub heist: HeistArgs,
}

/// The options `run` and `demo` share, spelt once so they mean the same in
/// both.
#[derive(Args)]
pub struct HeistArgs {
    /// Turns in the heist, 1 to 1000 (default: [heist] turns, 12).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_TURNS)))]
    pub turns: Option<u32>,
    /// Fixes the agent order (and the rehearsal transcript); default:
    /// [heist] seed for `run`, else random.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The SQLite audit database to write; default: heistd-demo.db for
    /// `demo`, the config's store.path for `run`.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// An OpenAI-compatible base URL, e.g. http://127.0.0.1:1234/v1 (LM
    /// Studio); default: `demo`'s rehearsal model, the config's
    /// llm.base_url for `run`.
    #[arg(long, requires = "llm_model")]
    pub llm_url: Option<String>,
    /// The model name that server expects (with --llm-url).
    #[arg(long, requires = "llm_url")]
    pub llm_model: Option<String>,
}
