//! The `[http]` section: the limits every listener of heistd serves within
//! (each companion and the admin API), so a slow or greedy client is cut
//! off rather than holding sockets and file descriptors.
//!
//! This is only configuration; `http::serve` applies it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::ServeLimits;

/// `[http]`: the limits of every listener (the companions and the admin
/// API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// A request's headers must arrive within this, so a slowloris is cut;
    /// also the longest a kept-alive connection waits for its next request.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A handler that has not answered within this gets 503.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A connection on which no byte moves for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Open connections per listener (at most 65536); beyond it new ones
    /// are closed at once (`heistd_http_connections_shed_total`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout_ms: default_header_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
        }
    }
}

impl HttpConfig {
    /// What `http::serve` takes.
    pub fn limits(&self) -> ServeLimits {
        ServeLimits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
        }
    }

    /// Checks the values; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let values = [
            ("header_timeout_ms", self.header_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_connections", self.max_connections as u64),
        ];
        if let Some((key, _)) = values.iter().find(|(_, value)| *value == 0) {
            return Err((format!("http.{key}"), "must be at least 1".into()));
        }
        if self.max_connections > 65_536 {
            return Err((
                "http.max_connections".into(),
                "must be at most 65536".into(),
            ));
        }
        Ok(())
    }
}

fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    512
}
