//! The long-running daemon (`heistd daemon`): schedules, periodic health
//! checks, the admin API, systemd notification, reload on SIGHUP, graceful
//! stop, crash recovery and retention. It wires the other modules together
//! and owns the tasks; it takes its shutdown and reload signals as
//! parameters and installs no signal handlers itself.

pub mod state;

pub use state::{DaemonState, Readiness, RunCommand, RunRequest, RunningSession, ScheduleStatus, StartRunError};
