//! heistd: a resilient daemon that runs multi-agent LLM "heist planning"
//! sessions against HTTP services and records everything in an audit
//! store (SQLite, or PostgreSQL shared by several daemons).
//!
//! # Layout
//!
//! - [`wire`]: what crosses the wire: tools, companions, paths, headers and
//!   the `[TOOL:name:parameter]` notation; imports nothing from the crate.
//! - [`http`]: the one HTTP server loop (timeouts, connection caps per
//!   listener and per source, body budgets), the failure tables and
//!   refusal summaries of the listeners that check a secret, and the
//!   open-files limit.
//! - [`config`]: the TOML file and `HEISTD_*` environment, validated once.
//! - [`scenario`]: agents, documents, shift data and the rehearsal script.
//! - [`store`]: the audit trail (SQLite, or PostgreSQL for several daemons)
//!   behind one backend trait, the only place with SQL for it.
//! - [`resilience`]: the stack every outbound call runs in.
//! - [`clients`]: typed clients for OAuth, memory, tools and the LLM.
//! - [`heist`]: the turn loop and the `[TOOL:name:parameter]` protocol.
//! - [`health`]: checking whether each configured service answers.
//! - [`scheduler`]: `[[schedule]]` slots, each run once.
//! - [`services`]: the companion services shipped in the binary.
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`cli`]: what each subcommand does, for `main.rs` to call.
//! - [`daemon`]: the daemon's runs, shared state, outbox, notify, retention.
//! - [`api`]: the daemon's admin HTTP API (probes, status, sessions, runs).
//! - [`app`]: builds and runs the daemon from those parts.

pub mod api;
pub mod app;
pub mod cli;
pub mod clients;
pub mod config;
pub mod daemon;
pub mod health;
pub mod heist;
pub mod http;
pub mod metrics;
pub mod resilience;
pub mod scenario;
pub mod scheduler;
pub mod services;
pub mod store;
pub mod wire;
