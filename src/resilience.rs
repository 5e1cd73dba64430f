//! The resilience stack every outbound call runs in. Today: the per-attempt
//! timeout, so no hung service can hold a turn for longer than its policy
//! allows. Retry with backoff and budget, the circuit breaker and the
//! bulkhead arrive with the resilience issue and slot in here, outermost
//! first, without changing any caller.
//!
//! Only this module decides how long to wait and whether to try again; it
//! knows nothing of wire formats.

use std::future::Future;
use std::time::Duration;

use crate::clients::CallError;

/// How calls to one service are guarded.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Longest one attempt may take before it is abandoned.
    pub attempt_timeout: Duration,
}

impl Policy {
    pub fn from_timeout_ms(timeout_ms: u64) -> Self {
        Self {
            attempt_timeout: Duration::from_millis(timeout_ms),
        }
    }
}

/// Runs one call to `service` under `policy`.
pub async fn call<T>(
    policy: &Policy,
    service: &str,
    attempt: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(policy.attempt_timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(CallError::Timeout {
            service: service.to_string(),
            after: policy.attempt_timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_is_cut_at_the_timeout() {
        let policy = Policy::from_timeout_ms(2_000);
        let started = tokio::time::Instant::now();
        let outcome: Result<(), CallError> = call(&policy, "memory", std::future::pending()).await;
        assert!(
            matches!(outcome, Err(CallError::Timeout { after, .. }) if after == Duration::from_secs(2))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
