//! The admin token's guard (issue 20): wrong admin tokens are counted per
//! source address, and past [`MAX_FAILED_ATTEMPTS`] in [`FAILURE_WINDOW`]
//! a wrong token is answered 429 with `Retry-After` instead of 403. The
//! right token is compared first and always accepted, so a guesser on the
//! same address never locks the operator out (the token is high-entropy:
//! a lockout would buy nothing). Refusals are logged in full once per
//! source per interval and summarised after, so a flood of wrong tokens
//! writes a few lines, not one per request.
//!
//! This is the admin API's only state of its own: counts of failures, which
//! no handler reads to decide anything but how a refusal is answered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::ApiError;
use crate::http::limiter::{source_of, FailureWindows, RefusalLog, REFUSAL_SUMMARY_INTERVAL};

/// Wrong admin tokens answered 403 per source address in one window; the
/// next ones get 429.
pub const MAX_FAILED_ATTEMPTS: u32 = 10;
/// The window wrong tokens are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses counted at most (junk evicts junk first).
const MAX_TRACKED_SOURCES: usize = 10_000;

/// Shared by the admin API's handlers through a request extension.
pub struct AdminGuard {
    failures: Mutex<FailureWindows<IpAddr>>,
    refusals: Arc<RefusalLog>,
}

impl AdminGuard {
    pub fn new() -> Arc<Self> {
        let refusals = RefusalLog::new("admin API refused", REFUSAL_SUMMARY_INTERVAL);
        RefusalLog::spawn_flusher(&refusals);
        Arc::new(Self {
            failures: Mutex::new(FailureWindows::new(
                MAX_FAILED_ATTEMPTS,
                FAILURE_WINDOW,
                MAX_TRACKED_SOURCES,
            )),
            refusals,
        })
    }

    /// The refusal of a wrong admin token from `source`: 403, or 429 once
    /// the source is over its limit; logged in full or summarised.
    pub fn wrong_token(&self, source: Option<IpAddr>) -> ApiError {
        let now = Instant::now();
        // A request without a socket (a router called in a test) counts
        // as one unknown source.
        let source = source.map(source_of);
        let key = source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let over_limit = self.failures.lock().record(&key, now);
        let (reason, refusal) = match over_limit {
            Some(wait) => (
                "too many wrong tokens",
                ApiError::TooManyWrongTokens {
                    retry_after_seconds: wait.as_secs().max(1),
                },
            ),
            None => ("wrong bearer token", ApiError::WrongToken),
        };
        if self.refusals.refused(source, reason, now) {
            let source = source.map_or_else(|| "unknown".to_string(), |source| source.to_string());
            tracing::warn!(%source, "admin API refused a request: {reason}");
        }
        refusal
    }
}

/// The request's source address, when it came over a socket.
pub fn peer_of(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wrong_tokens_get_403_then_429_per_source_until_the_window_ends() {
        let guard = AdminGuard::new();
        let guesser: IpAddr = "127.0.0.9".parse().expect("ip");
        let other: IpAddr = "127.0.0.10".parse().expect("ip");
        for _ in 0..MAX_FAILED_ATTEMPTS {
            assert!(matches!(
                guard.wrong_token(Some(guesser)),
                ApiError::WrongToken
            ));
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        match guard.wrong_token(Some(guesser)) {
            ApiError::TooManyWrongTokens {
                retry_after_seconds,
            } => assert_eq!(retry_after_seconds, 45),
            other => panic!("{other:?}"),
        }
        // Another source is not slowed by this one's failures.
        assert!(matches!(
            guard.wrong_token(Some(other)),
            ApiError::WrongToken
        ));
        tokio::time::advance(Duration::from_secs(45)).await;
        assert!(matches!(
            guard.wrong_token(Some(guesser)),
            ApiError::WrongToken
        ));
    }
}
