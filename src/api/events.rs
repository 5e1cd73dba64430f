//! Watching sessions live: `GET /api/v1/sessions/{id}/events` (one
//! session, from its first turn or after `Last-Event-ID`, ending with its
//! `ended` event) and `GET /api/v1/events` (every session's turns, from now
//! or after `Last-Event-ID`), as server-sent events (`wire::events`).
//!
//! Turns come from the store, never from memory: a stream reads the turns
//! after the last one it sent whenever a commit here wakes it and at least
//! every `events.poll_ms` (a commit on another node), so it resumes after a
//! dropped connection or a restart without a gap or a repeat, and any node
//! serves any session. `waiting` and `resumed` are live only (this node's
//! runs). Each stream is one task writing into a bounded buffer: a client
//! that leaves it full for `events.slow_reader_ms` is sent a `closed`
//! event and cut, so nothing is buffered without bound; a stream also ends
//! after `events.max_stream_seconds` and when the daemon stops, with a
//! `closed` event saying why. Streams open at once are capped
//! (`events.max_streams`, 503 beyond). The listener's per-request timeout
//! covers the answer's head only, and a keep-alive comment every 15 s (or
//! half the idle timeout) keeps the connection's bytes moving.
//!
//! It reads the store and the daemon's live events; it changes nothing.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::ApiError;
use crate::config::EventsConfig;
use crate::daemon::events::{LiveEvent, StreamSlot};
use crate::daemon::state::DaemonState;
use crate::store::{SessionRow, SessionStatus, StoreError, TurnRead};
use crate::wire::events::{self as wire, Frame};

/// Turns read from the store at once; a longer backlog is read page by page.
const PAGE: usize = 100;
/// The longest gap between keep-alive comments.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
/// Sessions the all-sessions stream watches for their ending at most.
const MAX_TRACKED: usize = 10_000;
/// The newest sessions the all-sessions stream looks among for endings.
const RECENT_SESSIONS: usize = 200;

/// `GET /api/v1/sessions/{id}/events`.
pub(super) async fn session_events(
    State(state): State<Arc<DaemonState>>,
    session_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(session_id) =
        session_id.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let after = last_event_id(&headers)?.unwrap_or(0);
    // An unknown session is a 404 before any stream opens.
    state
        .store
        .session_turns_after(&session_id, after, 0)
        .await?;
    let source = Source::Session {
        session_id,
        after_turn: after,
        previous: None,
    };
    open(state, source)
}

/// `GET /api/v1/events`.
pub(super) async fn all_events(
    State(state): State<Arc<DaemonState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = match last_event_id(&headers)? {
        Some(after) => after,
        None => state.store.last_message_id().await?,
    };
    let tracked = state
        .store
        .find_sessions(Some(SessionStatus::Active), None, MAX_TRACKED)
        .await?
        .into_iter()
        .map(|session| session.session_id)
        .collect();
    open(state, Source::All { after, tracked })
}

/// `Last-Event-ID`: a turn id (one session) or a `messages.id` (all).
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(wire::LAST_EVENT_ID) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Last-Event-ID `{}` is not an event id this stream sent (a whole number)",
                String::from_utf8_lossy(value.as_bytes())
                    .chars()
                    .take(64)
                    .collect::<String>()
            ))
        })
}

/// Starts a stream's task and answers with its body.
fn open(state: Arc<DaemonState>, source: Source) -> Result<Response, ApiError> {
    let config = state.config();
    let settings = config.events.clone();
    let slot = state
        .events
        .open_stream(settings.max_streams as usize)
        .ok_or(ApiError::TooManyStreams {
            max: settings.max_streams,
        })?;
    let idle = Duration::from_millis(config.http.idle_timeout_ms);
    let keepalive = KEEPALIVE_EVERY.min(idle / 2).max(Duration::from_millis(50));
    let (sender, receiver) = mpsc::channel(settings.buffer_events);
    let last_word = Arc::new(Mutex::new(None));
    let out = Out {
        sender,
        last_word: last_word.clone(),
        slow_reader: Duration::from_millis(settings.slow_reader_ms),
    };
    let live = state.events.subscribe();
    tokio::spawn(produce(state, settings, keepalive, source, out, live, slot));
    let body = futures_util::stream::unfold(Some((receiver, last_word)), |held| async move {
        let (mut receiver, last_word) = held?;
        // A stream closed with its buffer full (a slow reader, a stopping
        // daemon) says so next, whatever is still buffered: the client
        // resumes after what it has read.
        if let Some(word) = last_word.lock().take() {
            return Some((Ok::<Bytes, Infallible>(word), None));
        }
        let next = receiver.recv().await?;
        Some((Ok(next), Some((receiver, last_word))))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise hold events back to fill its buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Where a stream's bytes go: a bounded buffer, and the last word for a
/// client that does not read.
struct Out {
    sender: mpsc::Sender<Bytes>,
    last_word: Arc<Mutex<Option<Bytes>>>,
    slow_reader: Duration,
}

/// Why a stream stopped sending.
enum Stop {
    /// The client went away.
    Gone,
    /// The client was cut for reading too slowly (its last word is set).
    SlowReader,
}

impl Out {
    async fn send(&self, text: String) -> Result<(), Stop> {
        use mpsc::error::SendTimeoutError;
        match self
            .sender
            .send_timeout(Bytes::from(text), self.slow_reader)
            .await
        {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Closed(_)) => Err(Stop::Gone),
            Err(SendTimeoutError::Timeout(_)) => {
                let reason = format!(
                    "the client read nothing for {} ms with {} events waiting (events.slow_reader_ms); reconnect with Last-Event-ID",
                    self.slow_reader.as_millis(),
                    self.sender.max_capacity()
                );
                *self.last_word.lock() = Some(Bytes::from(closed("slow_reader", &reason)));
                Err(Stop::SlowReader)
            }
        }
    }

    /// The stream's last event, without waiting for room: a full buffer's
    /// client reads it next instead of what it holds (a stopping daemon
    /// must not wait on a slow reader).
    fn last(&self, text: String) {
        if let Err(mpsc::error::TrySendError::Full(text)) = self.sender.try_send(Bytes::from(text))
        {
            *self.last_word.lock() = Some(text);
        }
    }

    async fn frame(&self, event: &str, id: Option<String>, data: &Value) -> Result<(), Stop> {
        let frame = Frame {
            event: event.to_string(),
            id,
            data: data.to_string(),
        };
        self.send(frame.encode()).await
    }
}

/// The `closed` event's text.
fn closed(reason: &str, message: &str) -> String {
    Frame {
        event: wire::CLOSED.into(),
        id: None,
        data: json!({ "reason": reason, "message": message }).to_string(),
    }
    .encode()
}

/// What a stream follows, and how far it has read.
enum Source {
    Session {
        session_id: String,
        after_turn: i64,
        /// The previous turn's commit time, for each turn's duration.
        previous: Option<String>,
    },
    All {
        after: i64,
        /// Sessions seen active, whose ending the stream reports.
        tracked: HashSet<String>,
    },
}

impl Source {
    fn follows(&self, session_id: &str) -> bool {
        match self {
            Self::Session {
                session_id: followed,
                ..
            } => followed == session_id,
            Self::All { .. } => true,
        }
    }

    /// Watches `session_id` for its ending (the all-sessions stream): a
    /// session heard of live may end before it commits a turn.
    fn track(&mut self, session_id: &str) {
        if let Self::All { tracked, .. } = self {
            if tracked.len() < MAX_TRACKED {
                tracked.insert(session_id.to_string());
            }
        }
    }

    /// Sends what the store has that this stream has not sent; `true`
    /// once the stream is over (its session ended).
    async fn catch_up(&mut self, state: &DaemonState, out: &Out) -> Result<bool, Failed> {
        match self {
            Self::Session {
                session_id,
                after_turn,
                previous,
            } => loop {
                let read = state
                    .store
                    .session_turns_after(session_id, *after_turn, PAGE)
                    .await?;
                if previous.is_none() && *after_turn == 0 {
                    *previous = Some(read.session.start_time.clone());
                }
                let full = read.turns.len() == PAGE;
                for turn in &read.turns {
                    let data = turn_json(turn, previous.as_deref(), Some(&read.session));
                    let id = turn.message.turn_id.to_string();
                    out.frame(wire::TURN, Some(id), &data).await?;
                    *after_turn = turn.message.turn_id;
                    *previous = Some(turn.message.timestamp.clone());
                }
                if full {
                    continue;
                }
                if !matches!(
                    read.session.status,
                    SessionStatus::Active | SessionStatus::Queued
                ) {
                    out.frame(wire::ENDED, None, &ended_json(&read.session))
                        .await?;
                    return Ok(true);
                }
                return Ok(false);
            },
            Self::All { after, tracked } => {
                // Endings are read before turns: a session seen ended has
                // every turn committed, so its turns go out before it.
                let ended = ended_sessions(state, tracked).await?;
                let mut full = true;
                while full {
                    let turns = state.store.turns_after(*after, PAGE).await?;
                    full = turns.len() == PAGE;
                    for turn in &turns {
                        let data = turn_json(turn, None, None);
                        let id = turn.message.id.to_string();
                        out.frame(wire::TURN, Some(id), &data).await?;
                        *after = turn.message.id;
                        if tracked.len() < MAX_TRACKED {
                            tracked.insert(turn.message.session_id.clone());
                        }
                    }
                }
                for session in ended {
                    tracked.remove(&session.session_id);
                    out.frame(wire::ENDED, None, &ended_json(&session)).await?;
                }
                Ok(false)
            }
        }
    }
}

/// Tracked sessions that have ended, among the most recent ones.
async fn ended_sessions(
    state: &DaemonState,
    tracked: &HashSet<String>,
) -> Result<Vec<SessionRow>, Failed> {
    if tracked.is_empty() {
        return Ok(Vec::new());
    }
    let recent = state
        .store
        .find_sessions(None, None, RECENT_SESSIONS)
        .await?;
    Ok(recent
        .into_iter()
        .filter(|session| tracked.contains(&session.session_id))
        .filter(|session| {
            !matches!(
                session.status,
                SessionStatus::Active | SessionStatus::Queued
            )
        })
        .collect())
}

/// Why a stream's read failed: the client went, or the store failed.
enum Failed {
    Stop(Stop),
    Store(StoreError),
}

impl From<Stop> for Failed {
    fn from(stop: Stop) -> Self {
        Self::Stop(stop)
    }
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// One stream's task: catch up, then follow until the session ends, the
/// client goes, the stream has lasted its longest or the daemon stops.
async fn produce(
    state: Arc<DaemonState>,
    settings: EventsConfig,
    keepalive: Duration,
    mut source: Source,
    out: Out,
    mut live: broadcast::Receiver<LiveEvent>,
    slot: StreamSlot,
) {
    let deadline = Instant::now() + Duration::from_secs(settings.max_stream_seconds);
    let mut closing = state.events.closing();
    let mut poll = tokio::time::interval(Duration::from_millis(settings.poll_ms));
    let mut beat = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    for timer in [&mut poll, &mut beat] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut read = true;
    loop {
        if read {
            match source.catch_up(&state, &out).await {
                Ok(true) | Err(Failed::Stop(Stop::Gone)) => return,
                Err(Failed::Stop(Stop::SlowReader)) => return slot.closed("slow_reader"),
                Ok(false) => {}
                Err(Failed::Store(error)) => {
                    slot.closed("store_failed");
                    tracing::warn!(%error, "an event stream cannot read the store");
                    out.last(closed(
                        "store_failed",
                        "the audit store cannot be read now; reconnect with Last-Event-ID",
                    ));
                    return;
                }
            }
        }
        read = false;
        let outcome = tokio::select! {
            () = tokio::time::sleep_until(deadline) => Err(("max_duration", format!(
                "the stream lasted {} s (events.max_stream_seconds); reconnect with Last-Event-ID",
                settings.max_stream_seconds
            ))),
            _ = closing.wait_for(|closing| *closing) => Err(("shutting_down",
                "heistd is stopping; reconnect with Last-Event-ID".to_string())),
            _ = poll.tick() => { read = true; Ok(None) }
            _ = beat.tick() => Ok(Some(wire::KEEPALIVE.to_string())),
            event = live.recv() => match event {
                Ok(event) if source.follows(event.session_id()) => {
                    source.track(event.session_id());
                    read = matches!(event, LiveEvent::Committed { .. } | LiveEvent::Ended { .. });
                    Ok(live_frame(&event))
                }
                Ok(_) => Ok(None),
                Err(broadcast::error::RecvError::Lagged(missed)) => Err(("lagged", format!(
                    "the stream fell {missed} live events behind; reconnect with Last-Event-ID"
                ))),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let sent = match outcome {
            Ok(Some(text)) => out.send(text).await,
            Ok(None) => Ok(()),
            Err((reason, message)) => {
                slot.closed(reason);
                out.last(closed(reason, &message));
                return;
            }
        };
        match sent {
            Ok(()) => {}
            Err(Stop::SlowReader) => return slot.closed("slow_reader"),
            Err(Stop::Gone) => return,
        }
    }
}

/// A live event's frame: waits and resumptions; commits and endings are
/// read from the store instead.
fn live_frame(event: &LiveEvent) -> Option<String> {
    let (name, data) = match event {
        LiveEvent::Waiting {
            session_id,
            turn_id,
            reason,
            detail,
            gives_up_in,
        } => (
            wire::WAITING,
            json!({
                "session_id": session_id,
                "turn_id": turn_id,
                "reason": reason,
                "detail": detail,
                "gives_up_in_ms": gives_up_in.as_millis() as u64,
            }),
        ),
        LiveEvent::Resumed {
            session_id,
            turn_id,
            waited,
        } => (
            wire::RESUMED,
            json!({
                "session_id": session_id,
                "turn_id": turn_id,
                "waited_ms": waited.as_millis() as u64,
            }),
        ),
        LiveEvent::Committed { .. } | LiveEvent::Ended { .. } => return None,
    };
    let frame = Frame {
        event: name.into(),
        id: None,
        data: data.to_string(),
    };
    Some(frame.encode())
}

/// A turn event's data (docs/operations.md spells each field).
fn turn_json(turn: &TurnRead, previous: Option<&str>, session: Option<&SessionRow>) -> Value {
    let message = &turn.message;
    let duration_ms = previous.and_then(|previous| millis_between(previous, &message.timestamp));
    let retries: u32 = turn
        .service_calls
        .iter()
        .map(|call| call.attempts.saturating_sub(1))
        .sum();
    let tool_calls: Vec<Value> = turn
        .tool_calls
        .iter()
        .map(|call| {
            json!({
                "tool": call.tool_name,
                "params": call.tool_params,
                "result": call.tool_result,
                "success": call.success,
                "error": call.error,
                "duration_ms": call.duration_ms,
            })
        })
        .collect();
    json!({
        "id": message.id,
        "session_id": message.session_id,
        "turn_id": message.turn_id,
        "planned_turns": session.and_then(|session| session.planned_turns),
        "agent": message.agent_name,
        "role": message.agent_role,
        "message": message.message,
        "error": message.error,
        "timestamp": message.timestamp,
        "duration_ms": duration_ms,
        "tool_calls": tool_calls,
        "retries": retries,
        "service_calls": turn.service_calls,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "finish_reason": message.finish_reason,
    })
}

/// An `ended` event's data.
fn ended_json(session: &SessionRow) -> Value {
    json!({
        "session_id": session.session_id,
        "status": session.status_text,
        "reason": session.failure_reason,
        "turns": session.num_turns,
        "end_time": session.end_time,
    })
}

/// Milliseconds from one stored timestamp (RFC 3339) to another.
fn millis_between(from: &str, to: &str) -> Option<f64> {
    let from = chrono::DateTime::parse_from_rfc3339(from).ok()?;
    let to = chrono::DateTime::parse_from_rfc3339(to).ok()?;
    let micros = (to - from).num_microseconds()?;
    (micros >= 0).then(|| micros as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_must_be_a_whole_number() {
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers).ok(), Some(None));
        headers.insert(wire::LAST_EVENT_ID, HeaderValue::from_static(" 42 "));
        assert_eq!(last_event_id(&headers).ok(), Some(Some(42)));
        for bad in ["-1", "x", "4.2"] {
            headers.insert(wire::LAST_EVENT_ID, HeaderValue::from_static(bad));
            let error = last_event_id(&headers).expect_err(bad);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn a_turns_duration_is_the_time_since_the_one_before() {
        assert_eq!(
            millis_between("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.250Z"),
            Some(1250.0)
        );
        assert_eq!(millis_between("junk", "2026-01-01T00:00:01Z"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_cut_with_a_last_word() {
        let (sender, mut receiver) = mpsc::channel(2);
        let out = Out {
            sender,
            last_word: Arc::new(Mutex::new(None)),
            slow_reader: Duration::from_millis(500),
        };
        out.send("a".into()).await.ok().expect("room");
        out.send("b".into()).await.ok().expect("room");
        let started = Instant::now();
        assert!(out.send("c".into()).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        let word = out.last_word.lock().take().expect("a last word");
        let text = String::from_utf8_lossy(&word).to_string();
        assert!(
            text.starts_with("event: closed\n") && text.contains("slow_reader"),
            "{text}"
        );
        // Only what was buffered before: the buffer never grew.
        assert_eq!(receiver.recv().await.as_deref(), Some(&b"a"[..]));
        assert_eq!(receiver.recv().await.as_deref(), Some(&b"b"[..]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_last_event_never_waits_for_room() {
        let (sender, mut receiver) = mpsc::channel(1);
        let out = Out {
            sender,
            last_word: Arc::new(Mutex::new(None)),
            slow_reader: Duration::from_secs(10),
        };
        out.last("first".into());
        assert_eq!(receiver.recv().await.as_deref(), Some(&b"first"[..]));
        out.send("a".into()).await.ok().expect("room");
        let started = Instant::now();
        out.last("closed".into());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(out.last_word.lock().take().as_deref(), Some(&b"closed"[..]));
    }
}
