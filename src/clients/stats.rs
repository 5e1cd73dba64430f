//! [`ServiceStats`]: one service's call counts, recent latencies, calls in
//! flight and last success, shared by the clones of its `ServiceClient`,
//! for summaries and the health checker's passive view.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Counts and recent latencies of one service's calls, for summaries.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// The most recent call durations in seconds (bounded).
    recent_seconds: Mutex<VecDeque<f64>>,
    /// Calls under way now: a one-slot model server answers nothing else
    /// (not even `/models`) while it generates.
    pub(super) in_flight: AtomicU64,
    /// When a call last succeeded: passive health for the checker.
    last_success: Mutex<Option<tokio::time::Instant>>,
}

/// A summary of [`ServiceStats`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    pub calls: u64,
    pub failures: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const RECENT_SAMPLES: usize = 4096;

impl ServiceStats {
    /// Whether a call succeeded within `window` of now.
    pub fn answered_within(&self, window: Duration) -> bool {
        self.last_success
            .lock()
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// Whether a call is under way now.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    pub(super) fn record(&self, seconds: f64, ok: bool) {
        if ok {
            *self.last_success.lock() = Some(tokio::time::Instant::now());
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut recent = self.recent_seconds.lock();
        if recent.len() == RECENT_SAMPLES {
            recent.pop_front();
        }
        recent.push_back(seconds);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut samples: Vec<f64> = self.recent_seconds.lock().iter().copied().collect();
        samples.sort_by(f64::total_cmp);
        let percentile = |fraction: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let index = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
            samples[index] * 1000.0
        };
        StatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            p50_ms: percentile(0.5),
            p99_ms: percentile(0.99),
        }
    }
}

/// One call in flight, counted down when dropped.
pub(super) struct InFlight<'a>(pub(super) &'a ServiceStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
