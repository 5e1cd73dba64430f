//! The scheduler owns deciding when each `[[schedule]]` entry's runs are due:
//! it evaluates the entry's trigger (parsed by `config`: a cron expression in
//! the schedule's IANA time zone, or a fixed period), sleeps until each slot
//! with tokio time, and applies the overlap, jitter and missed-run policies. A slot is a `DateTime<Utc>` that, with the
//! schedule's name, identifies a run.
//!
//! It must not start heists itself: it hands each slot to a [`Launcher`],
//! which the daemon implements (recording the run, enforcing the global cap).
//! It has no store access: the daemon passes in the last slots that ran.

mod clock;
mod runner;
mod trigger;

#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};

pub use self::clock::Clock;
pub use self::runner::{Launcher, Scheduler};
pub use self::trigger::Slots;
use crate::config::{Missed, Trigger};

/// The slot to run at start for the slots missed while heistd was stopped:
/// with `run_once` and a previous slot, the latest slot in `(last_slot, now]`
/// (one run for all of them); otherwise none.
pub fn missed_slot(
    trigger: &Trigger,
    last_slot: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    policy: Missed,
) -> Option<DateTime<Utc>> {
    let last_slot = match policy {
        Missed::Skip => return None,
        Missed::RunOnce => last_slot?,
    };
    trigger
        .latest_at_or_before(now)
        .filter(|latest| *latest > last_slot)
}
