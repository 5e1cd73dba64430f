//! The health checks' settings (`[llm.health]`, `[services.<name>.health]`):
//! how often the daemon checks each service, and when a service counts as
//! down or up again. Each kind of service has its own defaults (the model
//! is checked less often and given longer).
//!
//! This is only configuration; `health` runs the checks.

use serde::{Deserialize, Serialize};

/// `[llm.health]`, `[services.<name>.health]`: the daemon's periodic check
/// of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// How often the service is checked (at least 100).
    pub interval_ms: u64,
    /// A check not answered within this has failed.
    pub timeout_ms: u64,
    /// Each check waits up to this much more, so checks do not align.
    pub jitter_ms: u64,
    /// Consecutive failed checks that mark an up service down.
    pub unhealthy_threshold: u32,
    /// Consecutive good checks that mark a down service up.
    pub healthy_threshold: u32,
    /// A service marked down makes its circuit breaker reject at once.
    pub breaker_follows_health: bool,
    /// `/readyz` is false while a required service is down.
    pub required: bool,
}

impl HealthCheckConfig {
    /// OAuth, memory and tools: checked often, answered quickly.
    pub fn quick_service() -> Self {
        Self {
            interval_ms: 10_000,
            timeout_ms: 2_000,
            jitter_ms: 1_000,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            breaker_follows_health: true,
            required: true,
        }
    }

    /// The model is probed less often and given longer to answer.
    pub fn language_model() -> Self {
        Self {
            interval_ms: 30_000,
            timeout_ms: 5_000,
            jitter_ms: 3_000,
            ..Self::quick_service()
        }
    }

    /// Checks the values; the error is (key below `prefix`, why).
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let fail = |key: &str, message: &str| Err((format!("{prefix}.{key}"), message.to_string()));
        if self.interval_ms < 100 {
            return fail("interval_ms", "must be at least 100");
        }
        if self.timeout_ms == 0 {
            return fail("timeout_ms", "must be at least 1");
        }
        if self.unhealthy_threshold == 0 {
            return fail("unhealthy_threshold", "must be at least 1");
        }
        if self.healthy_threshold == 0 {
            return fail("healthy_threshold", "must be at least 1");
        }
        Ok(())
    }
}
