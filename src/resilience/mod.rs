//! The resilience stack every outbound call runs in, outermost first:
//! overall deadline ▸ retry (full-jitter backoff, `Retry-After`, retry
//! budget) ▸ circuit breaker ▸ bulkhead (concurrency limit) ▸ per-attempt
//! timeout ▸ the request. One [`Guard`] per service holds that service's
//! retry budget and its endpoints; clones of a client share it. Each
//! [`Endpoint`] has its own breaker, bulkhead, outstanding count and
//! outlier ejection, and each attempt picks one (`pick`): the lowest tier
//! that can serve, power of two choices by outstanding requests, weighted,
//! a retry preferring an endpoint the call has not tried. The deadline,
//! retries and budget stay per call. With one endpoint it is the stack as
//! it always was.
//!
//! Only this module decides whether to try again and how long to wait. A
//! call rejected by an open breaker, an exhausted budget or a full bulkhead
//! is not retried and never reaches the network. It knows nothing of wire
//! formats: the caller's attempt closure makes the request and returns its
//! own error, which tells the stack what it needs through [`Classify`]. The
//! stack's own outcomes (a timeout, an open breaker, a full bulkhead, an
//! exhausted budget) are [`GuardError`]s, and a whole call's outcome is a
//! [`CallOutcome`]. It imports nothing from the modules that call it.
//!
//! Written here on `tokio::time` rather than taken from `failsafe`,
//! `backoff` or `reqwest-retry`: `backoff` is unmaintained (RUSTSEC-2025-0012),
//! `failsafe` has no half-open permit count and no retry, and
//! `reqwest-retry` ignores `Retry-After`, has no budget and reads
//! `SystemTime`, so paused-time tests could not drive it.

pub mod backoff;
pub mod breaker;
pub mod budget;
mod endpoint;
pub mod journal;
mod outcome;
mod pick;
mod progress;

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::config::{OutlierConfig, PolicyConfig};
use crate::metrics as names;
pub use breaker::{BreakerState, CircuitBreaker, Verdict};
use budget::RetryBudget;
pub use endpoint::{Endpoint, EndpointSnapshot, EndpointSpec};
pub use outcome::{CallOutcome, Classify, GuardError};
use pick::Refusal;
pub use progress::Progress;
use progress::{run_timed, Cut};

/// How calls to one service are guarded, in durations.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Longest one attempt may take before it is abandoned.
    pub attempt_timeout: Duration,
    pub config: PolicyConfig,
    /// Seeds the jitter so tests see one sequence; random when `None`.
    pub jitter_seed: Option<u64>,
}

/// The per-service state of the stack.
pub struct Guard {
    service: String,
    policy: Policy,
    outlier: OutlierConfig,
    /// Never empty; in the order configured, primaries first.
    endpoints: Vec<Endpoint>,
    budget: RetryBudget,
    random: Mutex<ChaCha8Rng>,
}

/// What the stack did for one logical call, for the audit trail.
#[derive(Debug, Clone)]
pub struct CallSummary {
    pub attempts: u32,
    /// The endpoint of the last attempt that reached the network.
    pub endpoint: Option<usize>,
    pub outcome: CallOutcome,
    pub last_error: Option<String>,
    pub duration: Duration,
}

impl Policy {
    pub fn new(timeout_ms: u64, config: PolicyConfig) -> Self {
        Self {
            attempt_timeout: Duration::from_millis(timeout_ms),
            config,
            jitter_seed: None,
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.config.deadline_ms)
    }
}

impl Guard {
    /// A guard of one endpoint (named after the service).
    pub fn new(service: &str, policy: Policy) -> Self {
        let only = EndpointSpec {
            name: service.to_string(),
            base_url: String::new(),
            model: String::new(),
            tier: 0,
            weight: 1,
            max_concurrent: policy.config.max_concurrent,
        };
        Self::with_endpoints(service, policy, OutlierConfig::default(), vec![only])
    }

    /// A guard of several endpoints (an empty list is one endpoint named
    /// after the service). With one, its breaker writes the service's
    /// breaker series as it always did; with several, the guard writes
    /// them for the service as a whole (see [`Self::breaker_state`]).
    pub fn with_endpoints(
        service: &str,
        policy: Policy,
        outlier: OutlierConfig,
        specs: Vec<EndpointSpec>,
    ) -> Self {
        if specs.is_empty() {
            return Self::new(service, policy);
        }
        let random = match policy.jitter_seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        create_series(service);
        let alone = specs.len() == 1;
        let endpoints = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                Endpoint::new(
                    index,
                    service,
                    spec,
                    policy.config.breaker.clone(),
                    policy.config.max_concurrent,
                    alone,
                )
            })
            .collect();
        let guard = Self {
            service: service.to_string(),
            budget: RetryBudget::new(
                policy.config.retry_budget_ratio,
                policy.config.retry_budget_min_per_second,
            ),
            random: Mutex::new(random),
            policy,
            outlier,
            endpoints,
        };
        guard.export_breaker();
        guard
    }

    /// The service's endpoints, primaries first.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The service's breaker: closed when any endpoint's is, else half-open
    /// when any is, else open. With one endpoint, its breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        let states: Vec<BreakerState> = self
            .endpoints
            .iter()
            .map(|endpoint| endpoint.breaker.state())
            .collect();
        [BreakerState::Closed, BreakerState::HalfOpen]
            .into_iter()
            .find(|state| states.contains(state))
            .unwrap_or(BreakerState::Open)
    }

    /// How long until some endpoint's open breaker lets a probe through;
    /// `None` when some endpoint's breaker is not open. See
    /// [`CircuitBreaker::open_remaining`].
    pub fn open_remaining(&self) -> Option<Duration> {
        let mut soonest: Option<Duration> = None;
        for endpoint in &self.endpoints {
            let remaining = endpoint.breaker.open_remaining()?;
            soonest = Some(soonest.map_or(remaining, |soonest| soonest.min(remaining)));
        }
        soonest
    }

    /// See [`CircuitBreaker::half_open_now`]; every endpoint's.
    pub fn half_open_now(&self) {
        for index in 0..self.endpoints.len() {
            self.endpoint_answered(index);
        }
    }

    /// See [`CircuitBreaker::hold_open`]; every endpoint's.
    pub fn hold_open(&self) {
        for index in 0..self.endpoints.len() {
            self.hold_endpoint_open(index);
        }
    }

    /// See [`CircuitBreaker::release_hold`]; every endpoint's.
    pub fn release_hold(&self) {
        for index in 0..self.endpoints.len() {
            self.release_endpoint_hold(index);
        }
    }

    /// Endpoint `index` was seen answering (its health check, a session's
    /// probe): its open breaker half-opens and its ejection ends.
    pub fn endpoint_answered(&self, index: usize) {
        if let Some(endpoint) = self.endpoints.get(index) {
            endpoint.breaker.half_open_now();
            endpoint.end_ejection();
            self.export_breaker();
        }
    }

    /// Endpoint `index`'s health check answers: an ejection ends now.
    pub fn end_ejection(&self, index: usize) {
        if let Some(endpoint) = self.endpoints.get(index) {
            endpoint.end_ejection();
        }
    }

    /// Holds endpoint `index`'s breaker open while it is seen down.
    pub fn hold_endpoint_open(&self, index: usize) {
        if let Some(endpoint) = self.endpoints.get(index) {
            endpoint.breaker.hold_open();
            self.export_breaker();
        }
    }

    /// Ends the hold on endpoint `index` once it is seen up again; an
    /// ejection ends too.
    pub fn release_endpoint_hold(&self, index: usize) {
        if let Some(endpoint) = self.endpoints.get(index) {
            endpoint.breaker.release_hold();
            endpoint.end_ejection();
            self.export_breaker();
        }
    }

    /// Endpoint `index` has `slots` slots, as its server says: its
    /// bulkhead is sized to them, unless the config set its size. `None`:
    /// the server answered without saying; it keeps the policy's size.
    pub fn learn_endpoint_slots(&self, index: usize, slots: Option<u32>) {
        let Some(endpoint) = self.endpoints.get(index) else {
            return;
        };
        if endpoint.capacity_settled() {
            return;
        }
        match slots {
            Some(slots) if slots > 0 => endpoint.set_capacity(slots),
            _ => endpoint
                .capacity_settled
                .store(true, std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs one logical call named `operation` (for the audit trail):
    /// `attempt` is called once per attempt and must make a fresh request
    /// each time.
    pub async fn call<T, E, F, Fut>(
        &self,
        operation: &str,
        mut attempt: F,
    ) -> (Result<T, GuardError<E>>, CallSummary)
    where
        E: Classify,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_streaming(operation, None, |_| attempt()).await
    }

    /// [`Self::call`] for an attempt whose reply streams in: it marks its
    /// [`Progress`] as pieces arrive, and with an `idle` timeout the
    /// per-attempt timeout then caps only the wait for the first piece;
    /// after it the attempt is cut when nothing has come for `idle`. The
    /// call's deadline caps the whole either way.
    pub async fn call_streaming<T, E, F, Fut>(
        &self,
        operation: &str,
        idle: Option<Duration>,
        mut attempt: F,
    ) -> (Result<T, GuardError<E>>, CallSummary)
    where
        E: Classify,
        F: FnMut(Progress) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_on(operation, idle, &|_| true, |_, progress| attempt(progress))
            .await
    }

    /// [`Self::call_streaming`] over the endpoints `eligible` accepts: each
    /// attempt picks one and is given it to address its request.
    pub async fn call_on<T, E, F, Fut>(
        &self,
        operation: &str,
        idle: Option<Duration>,
        eligible: &(dyn Fn(&Endpoint) -> bool + Sync),
        mut attempt: F,
    ) -> (Result<T, GuardError<E>>, CallSummary)
    where
        E: Classify,
        F: FnMut(&Endpoint, Progress) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let deadline = started + self.policy.deadline();
        let mut attempts = 0u32;
        let mut tried = vec![false; self.endpoints.len()];
        let mut endpoint = None;
        // The last error a real attempt got. When a retry is then refused by
        // the stack (the breaker opened on the attempts before it), that
        // refusal says nothing new: the call ends with the real error, so
        // `last_error` agrees with `attempts`.
        let mut last_real_error: Option<GuardError<E>> = None;
        self.budget.record_call();
        let result = loop {
            let outcome = self
                .attempt_once(&mut attempt, idle, deadline, eligible, &mut tried)
                .await;
            attempts += u32::from(outcome.endpoint.is_some());
            endpoint = outcome.endpoint.or(endpoint);
            let error = match outcome.result {
                Ok(value) => break Ok(value),
                Err(error) => error,
            };
            if outcome.endpoint.is_none() {
                break Err(last_real_error.take().unwrap_or(error));
            }
            if !error.is_transient() {
                break Err(error);
            }
            if attempts >= self.policy.config.max_attempts {
                break Err(error);
            }
            let delay = self.delay_before_retry(&error, attempts);
            if Instant::now() + delay >= deadline {
                // Waiting would overrun the deadline: give up now.
                break Err(error);
            }
            if !self.budget.try_retry() {
                metrics::counter!(names::RETRY_BUDGET_EXHAUSTED_TOTAL, "service" => self.service.clone()).increment(1);
                break Err(GuardError::BudgetExhausted {
                    service: self.service.clone(),
                    last: error.to_string(),
                });
            }
            metrics::counter!(names::SERVICE_RETRIES_TOTAL, "service" => self.service.clone())
                .increment(1);
            tracing::debug!(service = %self.service, attempt = attempts, ?delay, %error, "retrying");
            last_real_error = Some(error);
            tokio::time::sleep(delay).await;
        };
        let summary = CallSummary {
            attempts,
            endpoint,
            outcome: CallOutcome::of(&result),
            last_error: result.as_ref().err().map(ToString::to_string),
            duration: started.elapsed(),
        };
        self.export(&summary);
        journal::note(&self.service, operation, &summary);
        (result, summary)
    }

    async fn attempt_once<T, E, F, Fut>(
        &self,
        attempt: &mut F,
        idle: Option<Duration>,
        deadline: Instant,
        eligible: &(dyn Fn(&Endpoint) -> bool + Sync),
        tried: &mut [bool],
    ) -> AttemptOutcome<T, E>
    where
        E: Classify,
        F: FnMut(&Endpoint, Progress) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let chosen = match self.choose(eligible, tried, deadline).await {
            Ok(chosen) => chosen,
            Err(refusal) => {
                return AttemptOutcome {
                    result: Err(self.refused(refusal)),
                    endpoint: None,
                }
            }
        };
        let endpoint = chosen.endpoint;
        tried[endpoint.index] = true;
        let outstanding = endpoint.start_request();
        let limit = self
            .policy
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let attempt_started = Instant::now();
        let progress = Progress::new(idle);
        let timed = run_timed(
            attempt(endpoint, progress.clone()),
            &progress,
            attempt_started + limit,
            deadline,
        );
        let (result, cut_by_deadline) = match timed.await {
            Ok(result) => (result.map_err(GuardError::Service), false),
            Err(cut) => {
                let (error, cut_by_deadline) = self.cut_error(cut, limit, attempt_started);
                (Err(error), cut_by_deadline)
            }
        };
        drop(chosen.slot);
        drop(outstanding);
        let elapsed = attempt_started.elapsed();
        // A streamed reply is as slow as its wait for the first piece: a
        // long reply that keeps coming is not a slow service.
        let latency = progress
            .first_piece_after(attempt_started)
            .unwrap_or(elapsed);
        let slow =
            latency > Duration::from_millis(self.policy.config.breaker.slow_call_duration_ms);
        if cut_by_deadline && !slow {
            // Our deadline, not the service, ended this attempt early: it
            // says nothing about the service's health. (Cut after the slow
            // threshold, it was a slow call all the same, and counts.)
            drop(chosen.permit);
        } else {
            let verdict = breaker::Verdict::of(result.as_ref().err());
            chosen.permit.judge(verdict, latency);
            if endpoint.note_attempt(verdict, &self.outlier) {
                self.maybe_eject(endpoint);
            }
        }
        self.export_breaker();
        let label = match &result {
            Ok(_) => CallOutcome::Success.as_str(),
            Err(error) => error.label(),
        };
        metrics::counter!(names::SERVICE_ATTEMPTS_TOTAL, "service" => self.service.clone(), "outcome" => label).increment(1);
        metrics::histogram!(names::SERVICE_ATTEMPT_DURATION_SECONDS, "service" => self.service.clone()).record(elapsed.as_secs_f64());
        endpoint.record_attempt_duration(elapsed);
        AttemptOutcome {
            result,
            endpoint: Some(endpoint.index),
        }
    }

    /// The stack's own refusal when no endpoint was chosen.
    fn refused<E>(&self, refusal: Refusal) -> GuardError<E> {
        let service = self.service.clone();
        match refusal {
            Refusal::Open => GuardError::CircuitOpen { service },
            Refusal::Full => GuardError::BulkheadFull { service },
        }
    }

    /// The error of an attempt that was cut, and whether our deadline
    /// rather than the service's slowness cut it.
    fn cut_error<E>(
        &self,
        cut: Cut,
        limit: Duration,
        attempt_started: Instant,
    ) -> (GuardError<E>, bool) {
        let service = self.service.clone();
        match cut {
            Cut::NoAnswer => (
                GuardError::Timeout {
                    service,
                    after: limit,
                },
                limit < self.policy.attempt_timeout,
            ),
            Cut::Stalled(idle) => (GuardError::Stalled { service, idle }, false),
            Cut::Deadline => (
                GuardError::Timeout {
                    service,
                    after: attempt_started.elapsed(),
                },
                true,
            ),
        }
    }

    fn delay_before_retry(&self, error: &impl Classify, attempts_made: u32) -> Duration {
        let config = &self.policy.config;
        if let Some(retry_after) = error.retry_after() {
            return retry_after.min(Duration::from_millis(config.retry_after_cap_ms));
        }
        let mut random = self.random.lock();
        backoff::full_jitter(
            Duration::from_millis(config.backoff_base_ms),
            Duration::from_millis(config.backoff_cap_ms),
            attempts_made.saturating_sub(1),
            &mut *random,
        )
    }

    fn export(&self, summary: &CallSummary) {
        let service = self.service.clone();
        metrics::counter!(names::SERVICE_REQUESTS_TOTAL, "service" => service.clone(), "outcome" => summary.outcome.as_str()).increment(1);
        metrics::histogram!(names::SERVICE_REQUEST_DURATION_SECONDS, "service" => service.clone())
            .record(summary.duration.as_secs_f64());
        let kind = match (summary.outcome.is_success(), summary.attempts > 1) {
            (true, false) => "successful_without_retry",
            (true, true) => "successful_with_retry",
            (false, false) => "failed_without_retry",
            (false, true) => "failed_with_retry",
        };
        metrics::counter!(names::SERVICE_CALLS_BY_RETRY_TOTAL, "service" => service, "kind" => kind).increment(1);
    }
}

/// Every series of a service's calls exists from the start at 0, so a
/// dashboard shows 0 rather than "no data" and `rate()` sees the first
/// event of each outcome.
fn create_series(service: &str) {
    use names::labels;
    let service = || service.to_string();
    metrics::counter!(names::SERVICE_RETRIES_TOTAL, "service" => service()).increment(0);
    metrics::counter!(names::RETRY_BUDGET_EXHAUSTED_TOTAL, "service" => service()).increment(0);
    for outcome in labels::REQUEST_OUTCOMES {
        metrics::counter!(names::SERVICE_REQUESTS_TOTAL, "service" => service(), "outcome" => outcome)
            .increment(0);
    }
    for outcome in labels::ATTEMPT_OUTCOMES {
        metrics::counter!(names::SERVICE_ATTEMPTS_TOTAL, "service" => service(), "outcome" => outcome)
            .increment(0);
    }
    for kind in labels::RETRY_KINDS {
        metrics::counter!(names::SERVICE_CALLS_BY_RETRY_TOTAL, "service" => service(), "kind" => kind)
            .increment(0);
    }
    // Registering a histogram makes it render, every bucket at 0.
    let _ = metrics::histogram!(names::SERVICE_REQUEST_DURATION_SECONDS, "service" => service());
    let _ = metrics::histogram!(names::SERVICE_ATTEMPT_DURATION_SECONDS, "service" => service());
}

struct AttemptOutcome<T, E> {
    result: Result<T, GuardError<E>>,
    /// The endpoint the attempt went to; `None` when the stack itself
    /// refused (breakers, bulkheads).
    endpoint: Option<usize>,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod endpoint_tests;
