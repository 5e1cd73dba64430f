//! The retry budget (as in Finagle, Linkerd and Envoy): retries may be at
//! most `ratio` of the calls made in the last [`WINDOW`], plus a reserve of
//! `min_per_second` per second of the window, so an outage never multiplies
//! the load on a service, while a quiet service can still be retried.
//!
//! Calls and retries are counted in [`BUCKETS`] one-second buckets rather
//! than one entry per call, so its memory stays the same under any load. A
//! bucket leaves the window whole: an event counts for between 9 and 10 s
//! (Finagle's budget buckets the same way). It only counts; it never waits.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

/// How many buckets make up the window.
pub const BUCKETS: usize = 10;
/// How long one bucket counts events for.
const BUCKET_SPAN: Duration = Duration::from_secs(1);
/// How far back calls and retries count.
pub const WINDOW: Duration = Duration::from_secs(BUCKETS as u64);

pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    /// Bucket numbers count whole [`BUCKET_SPAN`]s since this moment.
    started: Instant,
    buckets: Mutex<VecDeque<Bucket>>,
}

/// The calls and retries of one [`BUCKET_SPAN`]. Only spans that saw an
/// event have a bucket, oldest first.
struct Bucket {
    number: u64,
    calls: u64,
    retries: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: f64) -> Self {
        Self {
            ratio,
            reserve: min_per_second * WINDOW.as_secs_f64(),
            started: Instant::now(),
            buckets: Mutex::new(VecDeque::with_capacity(BUCKETS)),
        }
    }

    /// Counts a call (its first attempt).
    pub fn record_call(&self) {
        if let Some(current) = self.buckets_now().back_mut() {
            current.calls += 1;
        }
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self) -> bool {
        let mut buckets = self.buckets_now();
        let (calls, retries) = buckets.iter().fold((0, 0), |(calls, retries), bucket| {
            (calls + bucket.calls, retries + bucket.retries)
        });
        let allowed = self.reserve + self.ratio * calls as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        if let Some(current) = buckets.back_mut() {
            current.retries += 1;
        }
        true
    }

    /// The buckets still in the window, the current one last.
    fn buckets_now(&self) -> MutexGuard<'_, VecDeque<Bucket>> {
        let mut buckets = self.buckets.lock();
        // Read the clock under the lock, so bucket numbers only grow.
        let number = (Instant::now().duration_since(self.started).as_nanos()
            / BUCKET_SPAN.as_nanos()) as u64;
        while buckets
            .front()
            .is_some_and(|oldest| oldest.number + BUCKETS as u64 <= number)
        {
            buckets.pop_front();
        }
        if buckets.back().is_none_or(|newest| newest.number != number) {
            buckets.push_back(Bucket {
                number,
                calls: 0,
                retries: 0,
            });
        }
        buckets
    }

    #[cfg(test)]
    fn buckets_in_use(&self) -> usize {
        self.buckets.lock().len()
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

    #[tokio::test(start_paused = true)]
    async fn calls_spread_over_the_window_all_count() {
        // One call every 100 ms from 0 to 9.9 s: all 100 are in the window,
        // so 20% of them (and no reserve) may be retried.
        let budget = RetryBudget::new(0.2, 0.0);
        for index in 0..100 {
            if index > 0 {
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            budget.record_call();
        }
        let mut retries = 0;
        while budget.try_retry() {
            retries += 1;
        }
        assert_eq!(retries, 20);
        // At 10 s the first second's 10 calls leave: 18 allowed, 20 taken.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!budget.try_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_load() {
        // A minute of heavy traffic: 5000 calls and retries a second.
        let budget = RetryBudget::new(0.2, 1.0);
        let mut retries_last_window = VecDeque::new();
        for _second in 0..60 {
            let mut retries = 0u64;
            for _ in 0..5000 {
                budget.record_call();
                retries += u64::from(budget.try_retry());
            }
            retries_last_window.push_back(retries);
            if retries_last_window.len() > BUCKETS {
                retries_last_window.pop_front();
            }
            assert!(budget.buckets_in_use() <= BUCKETS);
            tokio::time::advance(BUCKET_SPAN).await;
        }
        assert_eq!(budget.buckets_in_use(), BUCKETS);
        // The ratio still holds over the last window: 20% of its 50 000
        // calls plus the reserve of 10.
        let total: u64 = retries_last_window.iter().sum();
        assert!(total <= 10_010, "{total} retries in one window");
        assert!(total >= 10_000, "{total}: the budget was not used fully");
        tokio::time::advance(WINDOW).await;
        budget.record_call();
        assert_eq!(budget.buckets_in_use(), 1, "a quiet window empties it");
    }
}
