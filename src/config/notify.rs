//! The `[[notify]]` entries: webhook receivers told when a session ends or
//! a service goes down or comes back, each with the events it wants, the
//! secret its deliveries are signed with and how long to keep trying.
//!
//! This is only configuration; `daemon::webhooks` delivers.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::endpoints::check_url;
use super::Secret;

/// The most `max_attempts` a receiver may ask for: with the backoff capped
/// at 15 minutes, 100 attempts keep an event for about a day.
pub const MAX_NOTIFY_ATTEMPTS: u32 = 100;

/// `[[notify]]`: one webhook receiver. Each event is a JSON `POST` to
/// `url`, with an `Idempotency-Key` header (the same for every attempt of
/// one event), `X-Heistd-Timestamp` and, with a secret, `X-Heistd-Signature:
/// sha256=<hex HMAC-SHA256 of the body>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where events are posted (http, or https in a build with TLS).
    pub url: String,
    /// The receiver's name in metrics and logs, unique among the entries;
    /// unset: the URL's `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The events sent: `session_completed`, `session_failed`,
    /// `session_cancelled`, `service_down`, `service_up`; unset: all.
    #[serde(default = "NotifyEvent::all")]
    pub events: Vec<NotifyEvent>,
    /// A file holding the signing secret (a relative path is a systemd
    /// credential); unset: deliveries are not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The secret, read once at load; never written out.
    #[serde(skip)]
    pub secret: Option<Secret>,
    /// Attempts per event, the first included (1 to 100); an event still
    /// refused after these is abandoned and counted in
    /// `heistd_notify_abandoned_total`. Attempts wait 1 s, 2 s, 4 s, ...
    /// (at most 15 min) after each failure.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Per-attempt timeout of a delivery.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// What a receiver may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    SessionCompleted,
    SessionFailed,
    SessionCancelled,
    ServiceDown,
    ServiceUp,
}

impl NotifyEvent {
    pub const ALL: [Self; 5] = [
        Self::SessionCompleted,
        Self::SessionFailed,
        Self::SessionCancelled,
        Self::ServiceDown,
        Self::ServiceUp,
    ];

    pub fn all() -> Vec<Self> {
        Self::ALL.to_vec()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionCompleted => "session_completed",
            Self::SessionFailed => "session_failed",
            Self::SessionCancelled => "session_cancelled",
            Self::ServiceDown => "service_down",
            Self::ServiceUp => "service_up",
        }
    }
}

fn default_max_attempts() -> u32 {
    10
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl NotifyConfig {
    /// The receiver's name: `name`, else the URL's `host:port`.
    pub fn receiver_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_string();
                Some(match url.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| self.url.clone())
    }

    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.contains(&event)
    }
}

/// Checks every entry; the error is (key, why) and names the entry.
pub(super) fn validate(entries: &[NotifyConfig]) -> Result<(), (String, String)> {
    let mut names = std::collections::BTreeSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let key = |field: &str| format!("notify[{index}].{field}");
        check_url(&key("url"), &entry.url)?;
        if entry.events.is_empty() {
            return Err((
                key("events"),
                "lists no event; leave it out to send every event".into(),
            ));
        }
        if !(1..=MAX_NOTIFY_ATTEMPTS).contains(&entry.max_attempts) {
            return Err((
                key("max_attempts"),
                format!("must be from 1 to {MAX_NOTIFY_ATTEMPTS}"),
            ));
        }
        if entry.timeout_ms == 0 {
            return Err((key("timeout_ms"), "must be at least 1".into()));
        }
        let name = entry.receiver_name();
        if name.is_empty() || !names.insert(name.clone()) {
            return Err((
                key("name"),
                format!("`{name}` names another [[notify]] entry too (or is empty); give each a unique name"),
            ));
        }
    }
    Ok(())
}
