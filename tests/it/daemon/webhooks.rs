//! Webhooks (`[[notify]]`) from a real daemon to a real receiver on
//! loopback: the receiver answers 500 to the first two deliveries of each
//! event, stores an event once by its `Idempotency-Key`, and checks every
//! signature with the shared secret, as a receiver following the docs
//! would. A second receiver refuses everything and is given up on after
//! its `max_attempts`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use heistd::config::Fault;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;

use super::{eventually, Daemon};
use crate::support::TestStack;

const SECRET: &str = "webhook-secret-for-tests";

/// What the receiver saw, by idempotency key.
#[derive(Default)]
struct Seen {
    /// Requests per key, refused or not.
    requests: BTreeMap<String, u32>,
    /// The events accepted: each key once, with its body.
    accepted: BTreeMap<String, Value>,
    /// Requests whose signature did not verify (or was missing).
    bad_signatures: u32,
    /// Requests to the receiver that refuses everything.
    refused_forever: u32,
}

type Shared = Arc<Mutex<Seen>>;

async fn hook(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let mut seen = seen.lock();
    let signed = header("x-heistd-signature").is_some_and(|signature| verify(&signature, &body));
    let timestamp_recent = header("x-heistd-timestamp")
        .and_then(|text| text.parse::<i64>().ok())
        .is_some_and(|seconds| (chrono::Utc::now().timestamp() - seconds).abs() < 60);
    if !signed || !timestamp_recent {
        seen.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Some(key) = header("idempotency-key") else {
        return StatusCode::BAD_REQUEST;
    };
    let count = seen.requests.entry(key.clone()).or_default();
    *count += 1;
    if *count <= 2 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    // Stored once, whatever comes again under the same key.
    if let std::collections::btree_map::Entry::Vacant(slot) = seen.accepted.entry(key) {
        let event: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(
            header("x-heistd-event").as_deref(),
            event["event"].as_str(),
            "the event header names the body's event"
        );
        slot.insert(event);
    }
    StatusCode::NO_CONTENT
}

async fn refuse(State(seen): State<Shared>) -> StatusCode {
    seen.lock().refused_forever += 1;
    StatusCode::SERVICE_UNAVAILABLE
}

/// The receiver's check, as docs/operations.md shows it: HMAC-SHA256 of
/// the raw body under the secret, compared in constant time.
fn verify(signature: &str, body: &[u8]) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

async fn start_receiver() -> (String, Shared) {
    let seen = Shared::default();
    let router = Router::new()
        .route("/hooks/heistd", post(hook))
        .route("/hooks/broken", post(refuse))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), seen)
}

fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_delivered_once_each_and_abandoned_after_max_attempts() {
    let (receiver, seen) = start_receiver().await;
    let secret = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret.path(), format!("{SECRET}\n")).expect("write secret");
    let stack = TestStack::start().await;
    let extra = format!(
        "[[notify]]\nname = \"ops\"\nurl = \"{receiver}/hooks/heistd\"\nsecret_file = \"{}\"\nmax_attempts = 5\n\
         [[notify]]\nname = \"broken\"\nurl = \"{receiver}/hooks/broken\"\nevents = [\"session_completed\"]\nmax_attempts = 2\n",
        secret.path().display()
    );
    let daemon = Daemon::start(&stack, &extra).await;
    let session_id = daemon.start_run(2).await;
    let completed_key = format!("session-{session_id}-session_completed");

    // 500, 500, then accepted: three requests, one event stored.
    let event = eventually(Duration::from_secs(30), "the session's event", async || {
        seen.lock().accepted.get(&completed_key).cloned()
    })
    .await;
    assert_eq!(event["event"], "session_completed");
    assert_eq!(event["event_id"], completed_key.as_str());
    assert_eq!(event["session"]["session_id"], session_id.as_str());
    assert_eq!(event["session"]["status"], "completed");
    assert_eq!(event["session"]["num_turns"], 2);

    // A service going down and coming back: one event each, the same way.
    stack.set_fault(
        "calculator",
        Fault {
            refuse: true,
            ..Fault::default()
        },
    );
    let down = eventually(Duration::from_secs(30), "service_down", async || {
        accepted_event(&seen, "service_down")
    })
    .await;
    assert_eq!(down["service"]["name"], "calculator");
    assert_eq!(down["service"]["to"], "down");
    stack.set_fault("calculator", Fault::default());
    let up = eventually(Duration::from_secs(30), "service_up", async || {
        accepted_event(&seen, "service_up")
    })
    .await;
    assert_eq!(up["service"]["name"], "calculator");
    assert_eq!(up["service"]["from"], "down");

    // The receiver that refuses everything: two attempts, then abandoned
    // and counted; and every delivered event counted once.
    let metrics = eventually(
        Duration::from_secs(30),
        "abandoned and counted",
        async || {
            let text = daemon.get_text("/metrics").await;
            (metric(
                &text,
                "heistd_notify_abandoned_total",
                "receiver=\"broken\"",
            ) == Some(1.0))
            .then_some(text)
        },
    )
    .await;
    assert_eq!(seen.lock().refused_forever, 2);
    let delivered = metric(
        &metrics,
        "heistd_notify_deliveries_total",
        "outcome=\"delivered\",receiver=\"ops\"",
    )
    .or_else(|| {
        metric(
            &metrics,
            "heistd_notify_deliveries_total",
            "receiver=\"ops\",outcome=\"delivered\"",
        )
    });
    let seen = seen.lock();
    assert_eq!(delivered, Some(seen.accepted.len() as f64), "{metrics}");
    // Every event accepted was sent exactly three times (two refused, one
    // accepted), none again after it was accepted, all correctly signed.
    assert_eq!(seen.bad_signatures, 0);
    for (key, requests) in &seen.requests {
        if seen.accepted.contains_key(key) {
            assert_eq!(*requests, 3, "{key} was sent {requests} times");
        }
    }
    assert_eq!(seen.requests.get(&completed_key), Some(&3));
}

/// The first accepted event named `event`, if any.
fn accepted_event(seen: &Shared, event: &str) -> Option<Value> {
    seen.lock()
        .accepted
        .values()
        .find(|accepted| accepted["event"] == event)
        .cloned()
}
