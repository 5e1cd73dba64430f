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
    /// Open connections per listener (at most 65536); beyond it an idle
    /// connection of the source holding the most is closed to make room,
    /// or the new one is (`heistd_http_connections_shed_total`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections per listener from one source address; beyond it
    /// that source's oldest idle connection is closed, or the new one is,
    /// so no one address can fill a listener and starve `/health`. A daemon
    /// calls its companions from one address with up to one call per
    /// session in flight: keep it above `daemon.max_concurrent_sessions` +
    /// 16 (`config check` warns otherwise).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// The longest request body any handler reads (413 beyond it). Bodies
    /// are read only after the token is checked; OAuth's `/token`, whose
    /// credentials are in the body, reads at most 8 KiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Request body bytes held by all requests in flight on one listener
    /// (503 beyond it): what a flood of large bodies can cost in memory,
    /// about three times this once parsed, per listener.
    #[serde(default = "default_body_budget_bytes")]
    pub body_budget_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout_ms: default_header_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_body_bytes: default_max_body_bytes(),
            body_budget_bytes: default_body_budget_bytes(),
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
            max_connections_per_ip: self.max_connections_per_ip,
            max_body_bytes: self.max_body_bytes,
            body_budget_bytes: self.body_budget_bytes,
        }
    }

    /// Checks the values; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let values = [
            ("header_timeout_ms", self.header_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("body_budget_bytes", self.body_budget_bytes as u64),
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
        if self.max_body_bytes > self.body_budget_bytes {
            return Err((
                "http.max_body_bytes".into(),
                "must be at most http.body_budget_bytes, or no body that long could ever be read"
                    .into(),
            ));
        }
        if self.body_budget_bytes > MAX_BODY_BUDGET_BYTES {
            return Err((
                "http.body_budget_bytes".into(),
                format!("must be at most {MAX_BODY_BUDGET_BYTES} (1 GiB)"),
            ));
        }
        Ok(())
    }
}

/// More than this per listener defeats the point of a budget.
const MAX_BODY_BUDGET_BYTES: usize = 1 << 30;

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
fn default_max_connections_per_ip() -> usize {
    64
}
fn default_max_body_bytes() -> usize {
    // axum's own default, which the companions and the admin API had.
    2 * 1024 * 1024
}
fn default_body_budget_bytes() -> usize {
    // Sixteen bodies of the longest kind at once; heistd's own requests
    // (chats with the model, memory writes) are far smaller.
    32 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_limits_name_the_key_at_fault() {
        let cases = [
            (
                HttpConfig {
                    max_connections_per_ip: 0,
                    ..HttpConfig::default()
                },
                "http.max_connections_per_ip",
            ),
            (
                HttpConfig {
                    max_body_bytes: 64 * 1024 * 1024,
                    ..HttpConfig::default()
                },
                "http.max_body_bytes",
            ),
            (
                HttpConfig {
                    body_budget_bytes: 2 << 30,
                    max_body_bytes: 1024,
                    ..HttpConfig::default()
                },
                "http.body_budget_bytes",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(config.validate().map_err(|(key, _)| key), Err(key.into()));
        }
        let defaults = HttpConfig::default();
        assert_eq!(defaults.validate(), Ok(()));
        assert_eq!(defaults.limits().max_connections_per_ip, 64);
    }
}
