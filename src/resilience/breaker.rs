//! The circuit breaker, modelled on resilience4j: closed, it records each
//! call's outcome in a count- or time-based sliding window and opens when,
//! after a minimum number of calls, the failure rate or the slow-call rate
//! reaches its threshold; open, it rejects every call until its wait is
//! over; half-open, it lets exactly N probe calls through, closes when all
//! succeed and re-opens on the first failure. A probe whose caller is
//! cancelled gives its permit back.
//!
//! Besides the rate, a run of `consecutive_failures` failed calls opens it
//! at once (Envoy's outlier detection, failsafe-go's count threshold), so a
//! hung service is cut off after N timeouts instead of waiting for
//! `minimum_calls`. Backpressure (a 429) is not a fault: [`Verdict`]
//! decides what an attempt says, and a 429 counts neither way.
//!
//! It only decides and records; it never makes or times a call.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Classify;
use crate::config::{BreakerConfig, WindowKind};
use crate::metrics as names;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What one attempt says about the service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered, or failed in a way that is not its fault (a 4xx).
    Healthy,
    /// A transient failure: a timeout, a refused connection, a 5xx.
    Failed,
    /// The service asked us to slow down (429): it is alive and protecting
    /// itself, so the attempt counts neither for nor against it; the retry
    /// honours its `Retry-After`.
    Backpressure,
}

impl Verdict {
    /// The verdict on an attempt that ended with `error` (`None`: success).
    pub fn of(error: Option<&impl Classify>) -> Self {
        match error {
            Some(error) if error.is_backpressure() => Self::Backpressure,
            Some(error) if error.is_transient() => Self::Failed,
            _ => Self::Healthy,
        }
    }
}

pub struct CircuitBreaker {
    service: String,
    config: BreakerConfig,
    /// Writes the service's breaker series; false for one endpoint's
    /// breaker among several (the guard writes the service's then).
    exports: bool,
    inner: Mutex<Inner>,
}

/// Leave to make one call. Record its outcome with [`Permit::record`];
/// dropped unrecorded (the caller was cancelled), it is given back.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    recorded: bool,
}

struct Inner {
    state: BreakerState,
    /// Bumped on every transition, so a permit from an earlier state cannot
    /// count in the current one.
    generation: u64,
    window: VecDeque<Sample>,
    open_until: Instant,
    probes_issued: u32,
    probes_succeeded: u32,
    /// Held open from outside (the health checker saw the service down),
    /// whatever the window says, until released.
    held_open: bool,
    /// Failed calls in a row while closed; any healthy call resets it.
    consecutive_failures: u32,
}

struct Sample {
    at: Instant,
    failed: bool,
    slow: bool,
}

impl CircuitBreaker {
    pub fn new(service: &str, config: BreakerConfig) -> Self {
        Self::build(service, config, true)
    }

    /// A breaker that writes no metrics: one endpoint's among several.
    pub fn quiet(service: &str, config: BreakerConfig) -> Self {
        Self::build(service, config, false)
    }

    fn build(service: &str, config: BreakerConfig, exports: bool) -> Self {
        let breaker = Self {
            service: service.to_string(),
            config,
            exports,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                window: VecDeque::new(),
                open_until: Instant::now(),
                probes_issued: 0,
                probes_succeeded: 0,
                held_open: false,
                consecutive_failures: 0,
            }),
        };
        if !exports {
            return breaker;
        }
        breaker.export_state(BreakerState::Closed);
        for (from, to) in [
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed),
            (BreakerState::HalfOpen, BreakerState::Open),
        ] {
            metrics::counter!(names::BREAKER_TRANSITIONS_TOTAL, "service" => service.to_string(), "from" => from.as_str(), "to" => to.as_str())
                .increment(0);
        }
        breaker
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().state
    }

    /// How long until the open breaker lets its half-open probes through,
    /// or `None` when it is not open (or disabled). Zero when the wait is
    /// over and the next call will be a probe. Held open by a health
    /// checker, it has no set end: the configured open period is returned,
    /// the longest a breaker that opened itself would stay open.
    pub fn open_remaining(&self) -> Option<Duration> {
        let inner = self.inner.lock();
        if inner.state != BreakerState::Open {
            return None;
        }
        if inner.held_open {
            return Some(Duration::from_millis(self.config.wait_in_open_ms));
        }
        Some(inner.open_until.saturating_duration_since(Instant::now()))
    }

    /// Whether [`Self::try_acquire`] would give leave now, without taking
    /// it: the pick looks before it chooses.
    pub fn would_admit(&self) -> bool {
        let inner = self.inner.lock();
        if inner.held_open {
            return false;
        }
        if !self.config.enabled {
            return true;
        }
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => Instant::now() >= inner.open_until,
            BreakerState::HalfOpen => inner.probes_issued < self.config.half_open_permits,
        }
    }

    /// Leave to call, or `None` when the breaker rejects (open, or
    /// half-open with every probe permit out).
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut inner = self.inner.lock();
        if inner.held_open {
            return None;
        }
        if !self.config.enabled {
            return Some(Permit {
                breaker: self,
                generation: u64::MAX,
                recorded: false,
            });
        }
        let now = Instant::now();
        if inner.state == BreakerState::Open {
            if now < inner.open_until {
                return None;
            }
            self.transition(&mut inner, BreakerState::HalfOpen);
        }
        if inner.state == BreakerState::HalfOpen {
            if inner.probes_issued >= self.config.half_open_permits {
                return None;
            }
            inner.probes_issued += 1;
        }
        Some(Permit {
            breaker: self,
            generation: inner.generation,
            recorded: false,
        })
    }

    /// Holds the breaker open while a health checker sees the service
    /// down: it rejects every call and never lapses into half-open until
    /// [`Self::release_hold`].
    pub fn hold_open(&self) {
        self.set_held(true);
    }

    /// Ends a hold: the health checker sees the service up again, so the
    /// breaker closes at once (no half-open probe: the checker's probes
    /// were that). Nothing happens when no hold is in place.
    pub fn release_hold(&self) {
        self.set_held(false);
    }

    fn set_held(&self, held: bool) {
        let mut inner = self.inner.lock();
        if inner.held_open == held {
            return;
        }
        inner.held_open = held;
        let target = if held {
            BreakerState::Open
        } else {
            BreakerState::Closed
        };
        if inner.state != target {
            self.transition(&mut inner, target);
        }
        if held {
            // Never lapses into half-open while held; released explicitly.
            inner.open_until = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        }
    }

    /// Someone saw the service answer again (a session's own probe while it
    /// waits out an outage): an open breaker half-opens now, so the next
    /// call is its probe, instead of rejecting for the rest of its wait. A
    /// hold by the health checker is released too: the service answered.
    pub fn half_open_now(&self) {
        let mut inner = self.inner.lock();
        if inner.state != BreakerState::Open {
            return;
        }
        inner.held_open = false;
        self.transition(&mut inner, BreakerState::HalfOpen);
    }

    fn record(&self, generation: u64, failed: bool, duration: Duration) {
        if !self.config.enabled {
            return;
        }
        let mut inner = self.inner.lock();
        if generation != inner.generation {
            return;
        }
        let now = Instant::now();
        let slow = duration > Duration::from_millis(self.config.slow_call_duration_ms);
        match inner.state {
            BreakerState::Closed => {
                inner.window.push_back(Sample {
                    at: now,
                    failed,
                    slow,
                });
                inner.consecutive_failures = if failed {
                    inner.consecutive_failures + 1
                } else {
                    0
                };
                self.trim(&mut inner, now);
                if self.should_open(&inner) {
                    self.open(&mut inner, now);
                }
            }
            BreakerState::HalfOpen if failed => self.open(&mut inner, now),
            BreakerState::HalfOpen => {
                inner.probes_succeeded += 1;
                if inner.probes_succeeded >= self.config.half_open_permits {
                    self.transition(&mut inner, BreakerState::Closed);
                }
            }
            BreakerState::Open => {}
        }
    }

    fn release(&self, generation: u64) {
        let mut inner = self.inner.lock();
        if generation == inner.generation && inner.state == BreakerState::HalfOpen {
            inner.probes_issued = inner.probes_issued.saturating_sub(1);
        }
    }

    fn trim(&self, inner: &mut Inner, now: Instant) {
        match self.config.window {
            WindowKind::Count => {
                while inner.window.len() > self.config.window_size as usize {
                    inner.window.pop_front();
                }
            }
            WindowKind::Time => {
                let span = Duration::from_secs(u64::from(self.config.window_size));
                while inner
                    .window
                    .front()
                    .is_some_and(|sample| now.duration_since(sample.at) >= span)
                {
                    inner.window.pop_front();
                }
            }
        }
    }

    fn should_open(&self, inner: &Inner) -> bool {
        let limit = self.config.consecutive_failures;
        if limit > 0 && inner.consecutive_failures >= limit {
            return true;
        }
        let calls = inner.window.len();
        if calls < self.config.minimum_calls as usize {
            return false;
        }
        let failures = inner.window.iter().filter(|sample| sample.failed).count();
        let slow = inner.window.iter().filter(|sample| sample.slow).count();
        failures as f64 / calls as f64 >= self.config.failure_rate_threshold
            || slow as f64 / calls as f64 >= self.config.slow_call_rate_threshold
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.open_until = now + Duration::from_millis(self.config.wait_in_open_ms);
        self.transition(inner, BreakerState::Open);
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        inner.state = to;
        inner.generation += 1;
        inner.window.clear();
        inner.consecutive_failures = 0;
        inner.probes_issued = 0;
        inner.probes_succeeded = 0;
        tracing::warn!(service = %self.service, from = from.as_str(), to = to.as_str(), "circuit breaker");
        if !self.exports {
            return;
        }
        metrics::counter!(names::BREAKER_TRANSITIONS_TOTAL, "service" => self.service.clone(), "from" => from.as_str(), "to" => to.as_str())
            .increment(1);
        self.export_state(to);
    }

    fn export_state(&self, current: BreakerState) {
        export_state(&self.service, current);
    }
}

/// Writes a service's breaker state series: 1 for `current`, 0 for the rest.
pub(super) fn export_state(service: &str, current: BreakerState) {
    for state in BreakerState::ALL {
        let value = if state == current { 1.0 } else { 0.0 };
        metrics::gauge!(names::BREAKER_STATE, "service" => service.to_string(), "state" => state.as_str()).set(value);
    }
}

impl Permit<'_> {
    /// Records the call's outcome: `failed` counts against the service.
    pub fn record(mut self, failed: bool, duration: Duration) {
        self.recorded = true;
        self.breaker.record(self.generation, failed, duration);
    }

    /// Records what the attempt said: backpressure gives the permit back
    /// unrecorded (a half-open probe that got a 429 has proved nothing).
    pub fn judge(self, verdict: Verdict, duration: Duration) {
        match verdict {
            Verdict::Healthy => self.record(false, duration),
            Verdict::Failed => self.record(true, duration),
            Verdict::Backpressure => drop(self),
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.release(self.generation);
        }
    }
}

#[cfg(test)]
mod tests;
