//! Webhooks (`[[notify]]`): receivers told when a session ends (completed,
//! failed, cancelled) or a service goes down or comes back. Each event is
//! written to the store's webhook outbox first, one row per receiver that
//! wants it, and delivered from there at least once: a delivery that fails
//! is tried again after a backoff (1 s, 2 s, 4 s, ... at most 15 min, kept
//! in the store so it survives a restart), until the receiver's
//! `max_attempts`, then abandoned and counted. Every attempt of one event
//! carries the same `Idempotency-Key` (the receiver stores an event once),
//! an `X-Heistd-Timestamp` and, with a secret, `X-Heistd-Signature:
//! sha256=<hex>`, the HMAC-SHA256 of the body as sent (GitHub's scheme).
//!
//! Each receiver is a `ServiceClient` with its own breaker, bulkhead and
//! per-attempt timeout, and no retry inside a call: the outbox is the
//! retry, so `max_attempts` counts requests. On PostgreSQL any node
//! delivers; a claim moves the event's next attempt past the attempt's
//! lease, so two nodes never send one event at once. Ordering is not
//! promised (a retried event arrives after later ones): receivers order by
//! `occurred_at`. This module must not decide anything about sessions or
//! health; it reports what `runs` and the health checker concluded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::{mpsc, watch, Notify};

use crate::clients::{CallError, ServiceClient};
use crate::config::{Config, NotifyConfig, NotifyEvent, PolicyConfig};
use crate::health::{HealthState, HealthTransition};
use crate::metrics as names;
use crate::resilience::Policy;
use crate::store::{NewNotification, NotificationAttempt, NotificationEntry, StoreHandle};
use crate::wire::IDEMPOTENCY_KEY_HEADER;

/// The signature header: `sha256=` and the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "X-Heistd-Signature";
/// The attempt's time in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Heistd-Timestamp";
/// The event's name (`session_completed`, ...), also in the body.
pub const EVENT_HEADER: &str = "X-Heistd-Event";
/// How often due events are looked for when nothing new was queued.
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Events claimed per pass.
const EVENTS_PER_PASS: usize = 20;
/// The first retry's wait; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// The configured receivers and the store's webhook outbox.
pub struct Webhooks {
    store: StoreHandle,
    receivers: RwLock<Arc<BTreeMap<String, Receiver>>>,
    /// Woken when events were queued, so they go out at once.
    queued: Notify,
}

/// One `[[notify]]` entry and the client its deliveries go through.
struct Receiver {
    config: NotifyConfig,
    client: ServiceClient,
    /// The URL's path and query, posted on the client's origin.
    path: String,
}

impl Webhooks {
    pub fn new(config: &Config, store: StoreHandle) -> Arc<Self> {
        let webhooks = Arc::new(Self {
            store,
            receivers: RwLock::new(Arc::default()),
            queued: Notify::new(),
        });
        webhooks.replace_config(config);
        webhooks
    }

    /// Takes a reloaded config's receivers; one whose entry did not change
    /// keeps its client (and so its breaker's state).
    pub fn replace_config(&self, config: &Config) {
        let previous = self.receivers.read().clone();
        let mut receivers = BTreeMap::new();
        for entry in &config.notify {
            let name = entry.receiver_name();
            let receiver = match previous.get(&name) {
                Some(kept) if kept.config == *entry => Receiver {
                    config: kept.config.clone(),
                    client: kept.client.clone(),
                    path: kept.path.clone(),
                },
                _ => match Receiver::new(&name, entry) {
                    Some(receiver) => receiver,
                    None => continue,
                },
            };
            metrics::counter!(names::NOTIFY_ABANDONED_TOTAL, "receiver" => name.clone())
                .increment(0);
            for outcome in ["delivered", "failed", "abandoned"] {
                metrics::counter!(names::NOTIFY_DELIVERIES_TOTAL, "receiver" => name.clone(), "outcome" => outcome)
                    .increment(0);
            }
            receivers.insert(name, receiver);
        }
        *self.receivers.write() = Arc::new(receivers);
    }

    /// Queues the event of a session that ended (completed, failed or
    /// cancelled; other endings are not events), for every receiver that
    /// wants it. Read from the store, so what is sent is what was recorded;
    /// queued once per session and status, whoever reports it.
    pub async fn session_ended(&self, session_id: &str) {
        if self.receivers.read().is_empty() {
            return;
        }
        let session = match self.store.session(session_id).await {
            Ok(detail) => detail.session,
            Err(error) => {
                tracing::error!(%session_id, %error, "webhooks: cannot read the ended session");
                return;
            }
        };
        // By the stored text: `cancelled` is the control track's status.
        let event = match session.status_text.as_str() {
            "completed" => NotifyEvent::SessionCompleted,
            "failed" => NotifyEvent::SessionFailed,
            "cancelled" => NotifyEvent::SessionCancelled,
            _ => return,
        };
        let event_key = format!("session-{session_id}-{}", event.as_str());
        let occurred_at = session
            .end_time
            .clone()
            .unwrap_or_else(|| Utc::now().to_rfc3339());
        let payload = json!({
            "event": event.as_str(),
            "event_id": event_key,
            "occurred_at": occurred_at,
            "session": session,
        });
        self.enqueue(event, &event_key, &payload).await;
    }

    /// Queues a service's health transition: down (from up or unknown) or
    /// up again (from down). The first `up` of a service never seen down is
    /// not an event.
    pub async fn service_changed(&self, transition: &HealthTransition) {
        let event = match (transition.from, transition.to) {
            (_, HealthState::Down) => NotifyEvent::ServiceDown,
            (HealthState::Down, HealthState::Up) => NotifyEvent::ServiceUp,
            _ => return,
        };
        let node = self.store.node_id().map(str::to_string);
        let at = crate::store::timestamp(transition.at);
        let event_key = format!(
            "service-{}-{}-{at}-{}",
            transition.service,
            event.as_str(),
            node.as_deref().unwrap_or("local")
        );
        let payload = json!({
            "event": event.as_str(),
            "event_id": event_key,
            "occurred_at": at,
            "service": {
                "name": transition.service,
                "from": transition.from.as_str(),
                "to": transition.to.as_str(),
                "reason": transition.reason,
                "node": node,
            },
        });
        self.enqueue(event, &event_key, &payload).await;
    }

    /// Queues the health transitions `transitions` brings until it closes.
    pub async fn follow_health(
        self: Arc<Self>,
        mut transitions: mpsc::UnboundedReceiver<HealthTransition>,
    ) {
        while let Some(transition) = transitions.recv().await {
            self.service_changed(&transition).await;
        }
    }

    async fn enqueue(&self, event: NotifyEvent, event_key: &str, payload: &serde_json::Value) {
        let payload = payload.to_string();
        let rows: Vec<NewNotification> = self
            .receivers
            .read()
            .iter()
            .filter(|(_, receiver)| receiver.config.wants(event))
            .map(|(name, _)| NewNotification {
                receiver: name.clone(),
                event_key: event_key.to_string(),
                event: event.as_str().to_string(),
                payload: payload.clone(),
            })
            .collect();
        match self.store.enqueue_notifications(rows).await {
            Ok(0) => {}
            Ok(_) => self.queued.notify_one(),
            Err(error) => {
                tracing::error!(event = event.as_str(), %event_key, %error, "webhooks: cannot queue the event")
            }
        }
    }

    /// Delivers due events until `stop` becomes true.
    pub async fn deliver_until_stopped(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            while self.deliver_once().await == EVENTS_PER_PASS {}
            tokio::select! {
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = self.queued.notified() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One pass: claims due events and attempts each once. Returns how
    /// many were claimed.
    pub async fn deliver_once(&self) -> usize {
        let receivers = self.receivers.read().clone();
        let lease = receivers
            .values()
            .map(|receiver| Duration::from_millis(receiver.config.timeout_ms))
            .max()
            .unwrap_or_default()
            + Duration::from_secs(30);
        let claimed = match self.store.claim_notifications(EVENTS_PER_PASS, lease).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::error!(%error, "webhooks: cannot read the outbox");
                return 0;
            }
        };
        let count = claimed.len();
        // At once, so a receiver that hangs holds up only its own events
        // (each receiver's bulkhead bounds how many of them are in flight).
        let mut attempts = tokio::task::JoinSet::new();
        for entry in claimed {
            attempts.spawn(settle(receivers.clone(), self.store.clone(), entry));
        }
        while let Some(finished) = attempts.join_next().await {
            if let Err(error) = finished {
                tracing::error!(%error, "webhooks: a delivery attempt failed to finish");
            }
        }
        count
    }
}

/// One attempt of `entry`, recorded in the store.
async fn settle(
    receivers: Arc<BTreeMap<String, Receiver>>,
    store: StoreHandle,
    entry: NotificationEntry,
) {
    let attempt = match receivers.get(&entry.receiver) {
        Some(receiver) => receiver.attempt(&entry).await,
        None => NotificationAttempt::Abandoned {
            error: format!("no [[notify]] entry is named `{}` any more", entry.receiver),
        },
    };
    if let Err(error) = store.record_notification_attempt(entry.id, attempt).await {
        // The claim's lease runs out and the event is sent again: at least
        // once, under the same idempotency key.
        tracing::error!(event_key = %entry.event_key, %error, "webhooks: cannot record a delivery attempt");
    }
}

impl Receiver {
    /// The receiver's client; `None` (logged) when no HTTP client can be
    /// built (the system's TLS roots could not be read).
    fn new(name: &str, config: &NotifyConfig) -> Option<Self> {
        let (origin, path) = split_url(&config.url);
        // One request per call: the outbox retries, after its own backoff.
        let policy = PolicyConfig {
            max_attempts: 1,
            deadline_ms: config.timeout_ms + 1_000,
            ..PolicyConfig::quick_service()
        };
        let built = match crate::clients::http_builder(&[]) {
            Ok(builder) => builder
                .connect_timeout(Duration::from_millis(config.timeout_ms))
                .build()
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let http = match built {
            Ok(http) => http,
            Err(error) => {
                tracing::error!(receiver = %name, %error, "webhooks: no HTTP client for this receiver; its events are abandoned");
                return None;
            }
        };
        let client = ServiceClient::new(
            &format!("webhook:{name}"),
            &origin,
            Policy::new(config.timeout_ms, policy),
            http,
        )
        .with_max_reply_bytes(64 * 1024);
        Some(Self {
            config: config.clone(),
            client,
            path,
        })
    }

    /// One delivery attempt of `entry`, and what the store should record.
    async fn attempt(&self, entry: &NotificationEntry) -> NotificationAttempt {
        let name = self.client.name.trim_start_matches("webhook:").to_string();
        let body = entry.payload.as_bytes();
        let mut headers = vec![
            (IDEMPOTENCY_KEY_HEADER, entry.event_key.clone()),
            (TIMESTAMP_HEADER, Utc::now().timestamp().to_string()),
            (EVENT_HEADER, entry.event.clone()),
        ];
        if let Some(secret) = &self.config.secret {
            headers.push((
                SIGNATURE_HEADER,
                signature(secret.expose().as_bytes(), body),
            ));
        }
        let outcome = self
            .client
            .post_bytes("webhook", &self.path, body, &headers)
            .await;
        let attempts = entry.attempts + 1;
        let (attempt, outcome_label) = match outcome {
            Ok(()) => (NotificationAttempt::Delivered, "delivered"),
            Err(CallError::CircuitOpen { .. }) | Err(CallError::BulkheadFull { .. }) => {
                let retry_in = self
                    .client
                    .breaker_open_remaining()
                    .unwrap_or(FIRST_BACKOFF)
                    .max(FIRST_BACKOFF);
                return NotificationAttempt::Postponed { retry_in };
            }
            Err(error) if attempts >= i64::from(self.config.max_attempts) => {
                tracing::warn!(receiver = %name, event_key = %entry.event_key, attempts, %error, "webhook abandoned after its last attempt");
                metrics::counter!(names::NOTIFY_ABANDONED_TOTAL, "receiver" => name.clone())
                    .increment(1);
                let error = error.to_string();
                (NotificationAttempt::Abandoned { error }, "abandoned")
            }
            Err(error) => {
                let retry_in = backoff(attempts);
                tracing::info!(receiver = %name, event_key = %entry.event_key, attempts, %error, retry_in_ms = retry_in.as_millis() as u64, "webhook delivery failed; will try again");
                let error = error.to_string();
                (NotificationAttempt::Failed { error, retry_in }, "failed")
            }
        };
        metrics::counter!(names::NOTIFY_DELIVERIES_TOTAL, "receiver" => name, "outcome" => outcome_label)
            .increment(1);
        attempt
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(7 + digest.len() * 2);
    text.push_str("sha256=");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// The wait after failed attempt number `attempts` (1-based): 1 s, 2 s,
/// 4 s, ... at most [`MAX_BACKOFF`].
fn backoff(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// `http://host:port/a/b?c` as (`http://host:port`, `/a/b?c`): the client
/// keeps an origin and posts on a path.
fn split_url(url: &str) -> (String, String) {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            let origin = parsed.origin().ascii_serialization();
            let mut path = parsed.path().to_string();
            if let Some(query) = parsed.query() {
                path.push('?');
                path.push_str(query);
            }
            (origin, path)
        }
        // Validated at load; kept whole if it somehow is not a URL.
        Err(_) => (url.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_githubs_hmac_sha256_in_hex() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_fifteen_minutes() {
        let waits: Vec<u64> = [1, 2, 3, 4, 10, 11, 50]
            .map(|n| backoff(n).as_secs())
            .to_vec();
        assert_eq!(waits, vec![1, 2, 4, 8, 512, 900, 900]);
    }

    #[test]
    fn a_url_is_split_into_origin_and_path_with_its_query() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/hooks/heistd?team=ops"),
            (
                "http://127.0.0.1:9000".to_string(),
                "/hooks/heistd?team=ops".to_string()
            )
        );
        assert_eq!(
            split_url("http://example.test"),
            ("http://example.test".to_string(), "/".to_string())
        );
    }
}
