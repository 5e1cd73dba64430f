//! [`CallError`], why a call to a service failed, and how failures are
//! classified: it speaks resilience's vocabulary, implementing
//! [`Classify`] (transient or not, `Retry-After`, the attempt's metric
//! label), and the stack's own outcomes ([`GuardError`]: timeout, open
//! breaker, full bulkhead, exhausted budget) become its matching variants,
//! so callers branch on one error type. Also here: how a failed send, an
//! oversized reply and a service's error body become a `CallError`.

use std::time::Duration;

use crate::resilience::{Classify, GuardError};

mod overflow;

pub use overflow::ContextOverflow;

/// Why a call to a service failed, precise enough for retry decisions.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{service}: no answer within {} ms", after.as_millis())]
    Timeout { service: String, after: Duration },
    /// A streamed reply started, then nothing came for the idle timeout
    /// (resilience's cut, like `Timeout`).
    #[error("{service}: the reply stopped coming: nothing for {} ms", idle.as_millis())]
    Stalled { service: String, idle: Duration },
    #[error("{service}: cannot connect: {message}")]
    Connect { service: String, message: String },
    #[error("{service}: HTTP {status}: {message}")]
    Status {
        service: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
        /// The request did not fit the model's context window, as read
        /// once from the body (its JSON fields first, then its words).
        overflow: Option<ContextOverflow>,
    },
    #[error("{service}: unreadable reply: {message}")]
    Decode { service: String, message: String },
    #[error("{service}: {message}")]
    Refused { service: String, message: String },
    // The stack's own refusals, converted from resilience's `GuardError`
    // (as is its `Timeout`), so callers branch on this one type.
    #[error("{service}: circuit breaker is open; call not attempted")]
    CircuitOpen { service: String },
    #[error("{service}: too many calls in flight; call not attempted")]
    BulkheadFull { service: String },
    #[error("{service}: retry budget exhausted; last error: {last}")]
    BudgetExhausted { service: String, last: String },
}

impl Classify for CallError {
    /// Never true of the stack's own rejections.
    fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Stalled { .. } | Self::Connect { .. } => true,
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Timeout { .. } | Self::Stalled { .. } => "timeout",
            Self::Connect { .. } => "connect_error",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Decode { .. } => "decode_error",
            Self::Refused { .. } => "refused",
            Self::CircuitOpen { .. } => "rejected_open",
            Self::BulkheadFull { .. } => "rejected_bulkhead",
            Self::BudgetExhausted { .. } => "rejected_budget",
        }
    }

    fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Stalled { .. })
    }

    fn is_backpressure(&self) -> bool {
        matches!(self, Self::Status { status: 429, .. })
    }
}

impl From<GuardError<CallError>> for CallError {
    fn from(error: GuardError<CallError>) -> Self {
        match error {
            GuardError::Service(error) => error,
            GuardError::Timeout { service, after } => Self::Timeout { service, after },
            GuardError::Stalled { service, idle } => Self::Stalled { service, idle },
            GuardError::CircuitOpen { service } => Self::CircuitOpen { service },
            GuardError::BulkheadFull { service } => Self::BulkheadFull { service },
            GuardError::BudgetExhausted { service, last } => {
                Self::BudgetExhausted { service, last }
            }
        }
    }
}

impl CallError {
    /// What a context-length refusal said, when this is one.
    pub fn context_overflow(&self) -> Option<ContextOverflow> {
        match self {
            Self::Status { overflow, .. } => *overflow,
            _ => None,
        }
    }

    /// The service is unavailable rather than the request wrong: it could
    /// not be reached, did not answer in time, failed on its side (5xx),
    /// pushed back (408, 429), or the stack would not call it (an open
    /// breaker, a full bulkhead, an exhausted budget). Waiting may help;
    /// changing the request will not.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::Stalled { .. }
            | Self::Connect { .. }
            | Self::CircuitOpen { .. }
            | Self::BulkheadFull { .. }
            | Self::BudgetExhausted { .. } => true,
            Self::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            Self::Decode { .. } | Self::Refused { .. } => false,
        }
    }

    /// The stack refused the call without making it: it says nothing new
    /// about the service, so it never replaces a real error in a report.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::CircuitOpen { .. } | Self::BulkheadFull { .. })
    }

    /// The service judged the request itself unacceptable (400, 413, 422;
    /// 409: its idempotency key already names another body, so a resend
    /// under it is refused the same way), or it could not be built: sending
    /// it again can never succeed. A 401,
    /// 403 or 404 is not permanent: it says the setup is wrong (a bad URL or
    /// key), and the request may succeed once that is fixed.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 400 | 409 | 413 | 422),
            Self::Refused { .. } => true,
            _ => false,
        }
    }
}

pub(super) fn classify_send_error(service: &str, error: &reqwest::Error) -> CallError {
    let message = error_chain(error);
    if error.is_builder() {
        // Our own request could not be built: no attempt will ever do better.
        return CallError::Refused {
            service: service.into(),
            message,
        };
    }
    if error.is_timeout() {
        return CallError::Timeout {
            service: service.into(),
            after: Duration::ZERO,
        };
    }
    // Connect, request and body errors alike: the service may answer next time.
    CallError::Connect {
        service: service.into(),
        message,
    }
}

pub(super) fn too_large(service: &str, max_bytes: usize) -> CallError {
    CallError::Decode {
        service: service.into(),
        message: format!("reply is over the {max_bytes}-byte limit (max_reply_bytes)"),
    }
}

/// The error a service's non-success reply becomes: its own words (escaped
/// and cut, since they end up in logs and the audit trail, so they cannot
/// forge lines or flood either) and, for a 400 or 413, what a
/// context-length error says.
pub(super) fn status_error(
    service: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> CallError {
    let message = error_message(body).unwrap_or_else(|| {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("error")
            .to_string()
    });
    CallError::Status {
        service: service.into(),
        status,
        message: crate::wire::loggable(&message),
        retry_after,
        overflow: matches!(status, 400 | 413)
            .then(|| ContextOverflow::from_body(body))
            .flatten(),
    }
}

/// The human message inside a JSON error body, in the shapes our services
/// and OpenAI-compatible servers use.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let text = match error {
        serde_json::Value::String(code) => match value
            .get("error_description")
            .and_then(|description| description.as_str())
        {
            Some(description) => format!("{code}: {description}"),
            None => code.clone(),
        },
        serde_json::Value::Object(object) => object.get("message")?.as_str()?.to_string(),
        _ => return None,
    };
    Some(text)
}

pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stacks_outcomes_become_the_matching_call_errors() {
        let service = || "svc".to_string();
        let cases: [(GuardError<CallError>, &str); 5] = [
            (
                GuardError::Service(CallError::Status {
                    service: service(),
                    status: 401,
                    message: "unauthorized".into(),
                    retry_after: None,
                    overflow: None,
                }),
                "svc: HTTP 401: unauthorized",
            ),
            (
                GuardError::Timeout {
                    service: service(),
                    after: Duration::from_millis(1500),
                },
                "svc: no answer within 1500 ms",
            ),
            (
                GuardError::CircuitOpen { service: service() },
                "svc: circuit breaker is open; call not attempted",
            ),
            (
                GuardError::BulkheadFull { service: service() },
                "svc: too many calls in flight; call not attempted",
            ),
            (
                GuardError::BudgetExhausted {
                    service: service(),
                    last: "svc: HTTP 503: busy".into(),
                },
                "svc: retry budget exhausted; last error: svc: HTTP 503: busy",
            ),
        ];
        for (guard_error, text) in cases {
            assert_eq!(guard_error.to_string(), text);
            let label = guard_error.label();
            let call_error = CallError::from(guard_error);
            assert_eq!(call_error.to_string(), text, "same text after conversion");
            assert_eq!(call_error.label(), label, "same attempt label");
        }
        let open = CallError::from(GuardError::CircuitOpen { service: service() });
        assert!(matches!(open, CallError::CircuitOpen { .. }));
    }

    #[test]
    fn call_errors_classify_as_before() {
        let status = |status: u16| CallError::Status {
            service: "svc".into(),
            status,
            message: "x".into(),
            retry_after: None,
            overflow: None,
        };
        for (code, transient, label) in [
            (404, false, "client_error"),
            (408, true, "client_error"),
            (429, true, "client_error"),
            (500, true, "server_error"),
            (503, true, "server_error"),
        ] {
            assert_eq!(status(code).is_transient(), transient, "HTTP {code}");
            assert_eq!(status(code).label(), label, "HTTP {code}");
        }
        let timeout = CallError::Timeout {
            service: "svc".into(),
            after: Duration::ZERO,
        };
        assert!(timeout.is_transient() && timeout.is_timeout());
        let refused = CallError::Refused {
            service: "svc".into(),
            message: "bad url".into(),
        };
        assert!(!refused.is_transient() && refused.label() == "refused");
    }

    /// What the outbox sets aside rather than sends again: a body the
    /// service refused for good, not a setup problem or an outage.
    #[test]
    fn only_a_refused_body_is_permanent() {
        let status = |status: u16| CallError::Status {
            service: "memory".into(),
            status,
            message: "x".into(),
            retry_after: None,
            overflow: None,
        };
        for code in [400, 409, 413, 422] {
            assert!(status(code).is_permanent(), "HTTP {code}");
        }
        for code in [401, 403, 404, 429, 500, 503, 507] {
            assert!(!status(code).is_permanent(), "HTTP {code}");
        }
    }
}
