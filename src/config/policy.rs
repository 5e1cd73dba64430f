//! Per-service call policies as configured: the overall deadline, retries
//! with backoff and a budget, the circuit breaker and the bulkhead. Each kind
//! of service has its own defaults (an LLM call may take minutes, a tool a
//! few seconds); [`PolicyConfig::validate`] refuses values that would make
//! the stack misbehave, naming the key.
//!
//! This is only the configuration; `resilience` turns it into behaviour.

use serde::{Deserialize, Serialize};

/// `[llm.policy]`, `[services.<name>.policy]`: how calls to one service
/// are made: deadline, retries, retry budget and bulkhead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Longest a whole call may take, all attempts and waits included.
    pub deadline_ms: u64,
    /// Attempts per call, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// Full-jitter backoff: attempt n waits random(0, min(cap, base * 2^n)).
    pub backoff_base_ms: u64,
    /// The longest backoff wait, whatever the attempt.
    pub backoff_cap_ms: u64,
    /// A server's `Retry-After` is honoured up to this.
    pub retry_after_cap_ms: u64,
    /// Retries may be at most this fraction of recent calls (0..=1), plus
    /// `retry_budget_min_per_second`.
    pub retry_budget_ratio: f64,
    /// Retries allowed per second beyond `retry_budget_ratio` (over a 10 s
    /// window), so a quiet service can still be retried.
    pub retry_budget_min_per_second: f64,
    /// Bulkhead: calls in flight at once; more wait up to `max_queue_wait_ms`.
    pub max_concurrent: u32,
    /// How long a call waits for room in the bulkhead before it fails.
    pub max_queue_wait_ms: u64,
    /// The circuit breaker of this service's calls.
    pub breaker: BreakerConfig,
}

/// `[llm.policy.breaker]`, `[services.<name>.policy.breaker]`: the circuit
/// breaker that stops calling a failing service for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// `false`: the breaker never opens.
    pub enabled: bool,
    /// `count`: the last `window_size` calls; `time`: the last `window_size` seconds.
    pub window: WindowKind,
    /// The window's length, in calls or in seconds (see `window`).
    pub window_size: u32,
    /// The breaker cannot open before the window holds this many calls.
    pub minimum_calls: u32,
    /// Opens when failures / calls in the window reach this (0..=1).
    pub failure_rate_threshold: f64,
    /// A call slower than this counts as slow (see
    /// `slow_call_rate_threshold`).
    pub slow_call_duration_ms: u64,
    /// Opens when slow calls / calls in the window reach this (0..=1).
    pub slow_call_rate_threshold: f64,
    /// How long an open breaker rejects before it lets probes through.
    pub wait_in_open_ms: u64,
    /// Probe calls let through when half-open; all must succeed to close.
    pub half_open_permits: u32,
    /// Opens after this many failed calls in a row, whatever the window
    /// holds (a hung service is cut off after N timeouts, not after
    /// `minimum_calls`); 0 turns this trip off.
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Count,
    Time,
}

impl PolicyConfig {
    /// OAuth, memory and tools: quick services, a few seconds at most.
    pub fn quick_service() -> Self {
        Self {
            deadline_ms: 15_000,
            max_attempts: 3,
            backoff_base_ms: 100,
            backoff_cap_ms: 2_000,
            retry_after_cap_ms: 10_000,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_second: 1.0,
            max_concurrent: 32,
            max_queue_wait_ms: 1_000,
            breaker: BreakerConfig {
                enabled: true,
                window: WindowKind::Count,
                window_size: 20,
                minimum_calls: 10,
                failure_rate_threshold: 0.5,
                slow_call_duration_ms: 3_000,
                slow_call_rate_threshold: 1.0,
                wait_in_open_ms: 10_000,
                half_open_permits: 2,
                consecutive_failures: 5,
            },
        }
    }

    /// The model: one call may take minutes, and few run at once.
    pub fn language_model() -> Self {
        Self {
            deadline_ms: 240_000,
            max_attempts: 3,
            backoff_base_ms: 500,
            backoff_cap_ms: 10_000,
            retry_after_cap_ms: 60_000,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_second: 0.5,
            max_concurrent: 4,
            max_queue_wait_ms: 30_000,
            breaker: BreakerConfig {
                enabled: true,
                window: WindowKind::Count,
                window_size: 10,
                minimum_calls: 5,
                failure_rate_threshold: 0.5,
                slow_call_duration_ms: 90_000,
                slow_call_rate_threshold: 1.0,
                wait_in_open_ms: 30_000,
                half_open_permits: 1,
                consecutive_failures: 3,
            },
        }
    }

    /// Checks the values; the error is (key below `prefix`, why).
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let fail = |key: &str, message: &str| Err((format!("{prefix}.{key}"), message.to_string()));
        let fraction = |value: f64| (0.0..=1.0).contains(&value);
        if self.deadline_ms == 0 {
            return fail("deadline_ms", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1 (1 means no retries)");
        }
        if self.backoff_base_ms > self.backoff_cap_ms {
            return fail("backoff_base_ms", "must not exceed backoff_cap_ms");
        }
        if !fraction(self.retry_budget_ratio) {
            return fail("retry_budget_ratio", "must be between 0 and 1");
        }
        if !(self.retry_budget_min_per_second >= 0.0
            && self.retry_budget_min_per_second.is_finite())
        {
            return fail("retry_budget_min_per_second", "must be 0 or more");
        }
        if self.max_concurrent == 0 {
            return fail("max_concurrent", "must be at least 1");
        }
        let breaker = &self.breaker;
        if breaker.window_size == 0 {
            return fail("breaker.window_size", "must be at least 1");
        }
        if breaker.minimum_calls == 0 {
            return fail("breaker.minimum_calls", "must be at least 1");
        }
        if !fraction(breaker.failure_rate_threshold) || breaker.failure_rate_threshold == 0.0 {
            return fail(
                "breaker.failure_rate_threshold",
                "must be above 0 and at most 1",
            );
        }
        if !fraction(breaker.slow_call_rate_threshold) || breaker.slow_call_rate_threshold == 0.0 {
            return fail(
                "breaker.slow_call_rate_threshold",
                "must be above 0 and at most 1",
            );
        }
        if breaker.half_open_permits == 0 {
            return fail("breaker.half_open_permits", "must be at least 1");
        }
        Ok(())
    }
}
