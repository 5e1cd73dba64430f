//! The daemon's parts below its admin API: `runs` (the one door that admits,
//! tracks, drains and recovers runs under the global cap), `state` (what
//! the admin API reads, and the registry of running sessions), `outbox`
//! (memory writes left behind by ended sessions), `reconcile` (the memory
//! service's counts against the store's delivered writes), `notify` (sd_notify by
//! hand), `retention`, `telemetry` (the series a fresh daemon shows, and
//! the gauges read at each scrape), `cluster` (heartbeats and takeover
//! when several daemons share a PostgreSQL store), `control` (what
//! operators steer: cancels, paused, triggered and backfilled schedules)
//! and `events` (what the admin API's event streams hear live: committed
//! turns, waits, endings).
//!
//! Nothing here wires the daemon together (that is `app`), serves HTTP
//! (that is `api`) or installs signal handlers.

pub mod cluster;
pub mod control;
pub mod events;
pub mod notify;
pub mod outbox;
pub mod reconcile;
pub mod retention;
pub mod runs;
pub mod state;
pub mod store_watch;
pub mod telemetry;

pub use state::{
    ConfigStatus, DaemonState, Readiness, RunCommand, RunRequest, RunningSession, ScheduleStatus,
    StartRunError,
};
