//! The stack's vocabulary: [`Classify`], what the stack asks of a caller's
//! error to decide on a retry; [`GuardError`], the outcomes the stack itself
//! produces (a timeout, an open breaker, a full bulkhead, an exhausted
//! budget) around the caller's error; and [`CallOutcome`], how a whole call
//! ended, for metrics and the audit trail.
//!
//! It names no caller: the callers' errors implement [`Classify`] and turn a
//! [`GuardError`] back into their own type, so this module never imports
//! theirs.

use std::time::Duration;

/// What the stack needs to know about a failed attempt's error.
pub trait Classify: std::fmt::Display {
    /// Worth trying again: the service may answer differently next time.
    fn is_transient(&self) -> bool;

    /// How long the service asked us to wait (`Retry-After`), if it did.
    fn retry_after(&self) -> Option<Duration>;

    /// The per-attempt metric label of this failure (`outcome` of
    /// `heistd_service_attempts_total`), e.g. `"server_error"`.
    fn label(&self) -> &'static str;

    /// The caller's own transport timed out (rather than the stack's
    /// per-attempt timeout): the call's outcome is then
    /// [`CallOutcome::Timeout`], not [`CallOutcome::Error`].
    fn is_timeout(&self) -> bool {
        false
    }

    /// The service asked us to slow down (HTTP 429): worth retrying after
    /// its `Retry-After`, but not a fault that should open its breaker.
    fn is_backpressure(&self) -> bool {
        false
    }
}

/// Why a guarded call failed: the service's own error, or the stack's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError<E> {
    /// The last attempt's error, as the caller's closure returned it.
    #[error("{0}")]
    Service(E),
    #[error("{service}: no answer within {} ms", after.as_millis())]
    Timeout { service: String, after: Duration },
    /// A streamed reply started, then nothing came for the idle timeout.
    #[error("{service}: the reply stopped coming: nothing for {} ms", idle.as_millis())]
    Stalled { service: String, idle: Duration },
    #[error("{service}: circuit breaker is open; call not attempted")]
    CircuitOpen { service: String },
    #[error("{service}: too many calls in flight; call not attempted")]
    BulkheadFull { service: String },
    #[error("{service}: retry budget exhausted; last error: {last}")]
    BudgetExhausted { service: String, last: String },
}

/// How one logical call ended (the `outcome` label of
/// `heistd_service_requests_total` and of a `service_calls` row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Success,
    Timeout,
    Error,
    RejectedOpen,
    RejectedBulkhead,
    RejectedBudget,
    /// The endpoint's rate limits had no room before the call's deadline
    /// (see `rate_limit`): nothing was sent.
    RateLimited,
}

impl<E: Classify> Classify for GuardError<E> {
    fn is_transient(&self) -> bool {
        match self {
            Self::Service(error) => error.is_transient(),
            Self::Timeout { .. } | Self::Stalled { .. } => true,
            // The stack's own refusals: trying again at once would only be
            // refused again.
            Self::CircuitOpen { .. } | Self::BulkheadFull { .. } | Self::BudgetExhausted { .. } => {
                false
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Service(error) => error.retry_after(),
            _ => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Service(error) => error.label(),
            Self::Timeout { .. } | Self::Stalled { .. } => "timeout",
            Self::CircuitOpen { .. } => CallOutcome::RejectedOpen.as_str(),
            Self::BulkheadFull { .. } => CallOutcome::RejectedBulkhead.as_str(),
            Self::BudgetExhausted { .. } => CallOutcome::RejectedBudget.as_str(),
        }
    }

    fn is_timeout(&self) -> bool {
        match self {
            Self::Service(error) => error.is_timeout(),
            Self::Timeout { .. } | Self::Stalled { .. } => true,
            _ => false,
        }
    }

    fn is_backpressure(&self) -> bool {
        match self {
            Self::Service(error) => error.is_backpressure(),
            _ => false,
        }
    }
}

impl CallOutcome {
    /// The outcome of a call that ended with `result`.
    pub fn of<T, E: Classify>(result: &Result<T, GuardError<E>>) -> Self {
        match result {
            Ok(_) => Self::Success,
            Err(GuardError::CircuitOpen { .. }) => Self::RejectedOpen,
            Err(GuardError::BulkheadFull { .. }) => Self::RejectedBulkhead,
            Err(GuardError::BudgetExhausted { .. }) => Self::RejectedBudget,
            Err(error) if error.is_timeout() => Self::Timeout,
            Err(_) => Self::Error,
        }
    }

    /// The label written to metrics and stored in `service_calls.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::RejectedOpen => "rejected_open",
            Self::RejectedBulkhead => "rejected_bulkhead",
            Self::RejectedBudget => "rejected_budget",
            Self::RateLimited => "rate_limited",
        }
    }

    pub fn is_success(self) -> bool {
        self == Self::Success
    }
}
