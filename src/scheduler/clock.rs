//! Wall-clock time read from tokio's clock, so that a test which pauses and
//! advances tokio time moves cron schedules too.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Wall time as `origin` plus the tokio time elapsed since the clock was made.
///
/// Because it follows the monotonic clock, a change of the system clock (an
/// NTP step, a suspend) after start is not seen until the daemon restarts.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The wall time that `origin_instant` stands for.
    origin_wall: DateTime<Utc>,
    /// tokio's "now" when the clock was made; paused tests move it.
    origin_instant: Instant,
}

impl Clock {
    /// A clock that reads `origin` now and then runs with tokio time.
    pub fn new(origin: DateTime<Utc>) -> Self {
        Self {
            origin_wall: origin,
            origin_instant: Instant::now(),
        }
    }

    /// A clock that starts at the system's wall time.
    pub fn system() -> Self {
        Self::new(Utc::now())
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = self.origin_instant.elapsed();
        chrono::TimeDelta::from_std(elapsed)
            .ok()
            .and_then(|elapsed| self.origin_wall.checked_add_signed(elapsed))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Sleeps until the clock reads `at`; returns at once if it already does.
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        // Computing the deadline from the origin, not from `now()`, means
        // that a run due at a slot wakes at exactly that slot.
        let Ok(offset) = (at - self.origin_wall).to_std() else {
            return;
        };
        match self.origin_instant.checked_add(offset) {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            // Further than tokio can represent: never.
            None => std::future::pending().await,
        }
    }
}
