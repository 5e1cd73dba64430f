//! The retry budget (as in Finagle, Linkerd and Envoy): retries may be at
//! most `ratio` of the calls made in the last [`WINDOW`], plus a reserve of
//! `min_per_second` per second of the window, so an outage never multiplies
//! the load on a service, while a quiet service can still be retried.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far back calls and retries count.
pub const WINDOW: Duration = Duration::from_secs(10);

pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    events: Mutex<Events>,
}

#[derive(Default)]
struct Events {
    calls: VecDeque<Instant>,
    retries: VecDeque<Instant>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: f64) -> Self {
        Self {
            ratio,
            reserve: min_per_second * WINDOW.as_secs_f64(),
            events: Mutex::new(Events::default()),
        }
    }

    /// Counts a call (its first attempt).
    pub fn record_call(&self) {
        let now = Instant::now();
        let mut events = self.lock(now);
        events.calls.push_back(now);
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self) -> bool {
        let now = Instant::now();
        let mut events = self.lock(now);
        let allowed = self.reserve + self.ratio * events.calls.len() as f64;
        if (events.retries.len() as f64) + 1.0 > allowed {
            return false;
        }
        events.retries.push_back(now);
        true
    }

    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Events> {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Events { calls, retries } = &mut *events;
        for queue in [calls, retries] {
            while queue
                .front()
                .is_some_and(|at| now.duration_since(*at) >= WINDOW)
            {
                queue.pop_front();
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fraction_of_calls_plus_a_reserve() {
        let budget = RetryBudget::new(0.2, 1.0);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.record_call();
            while budget.try_retry() {
                retries += 1;
            }
        }
        // 20% of 1000 calls plus the 10-retry reserve of a 10 s window.
        assert_eq!(retries, 210);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let budget = RetryBudget::new(0.0, 0.5);
        assert!((0..5).all(|_| budget.try_retry()));
        assert!(!budget.try_retry(), "reserve of 5 used up");
        tokio::time::advance(WINDOW).await;
        assert!(budget.try_retry(), "old retries have left the window");
    }
}
