//! The `[events]` section: the admin API's event streams
//! (`GET /api/v1/events`, `GET /api/v1/sessions/{id}/events`): how many at
//! once, how long one lasts, how often it looks for new turns, and when a
//! client that reads too slowly is cut off.
//!
//! This is only configuration; `api` serves the streams.

use serde::{Deserialize, Serialize};

/// `[events]`: the admin API's server-sent event streams. A stream is
/// exempt from `http.request_timeout_ms` (it is one long answer) and is
/// bounded by these instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Event streams open at once (1 to 10000); one more is answered 503.
    pub max_streams: u32,
    /// The longest one stream lasts, in seconds (at least 10): then it is
    /// closed with a `closed` event and the client resumes with
    /// `Last-Event-ID`.
    pub max_stream_seconds: u64,
    /// How often a stream reads the store for new turns, in milliseconds
    /// (50 to 60000): a turn committed on this node wakes it at once; one
    /// committed by another node (PostgreSQL) is seen within this.
    pub poll_ms: u64,
    /// Events one stream holds for a client that has not read them yet (1
    /// to 10000).
    pub buffer_events: usize,
    /// A stream whose buffer stays full this long, in milliseconds (at
    /// least 100), has a client that cannot keep up: it is closed with a
    /// `closed` event rather than buffered without bound.
    pub slow_reader_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_streams: 64,
            max_stream_seconds: 3600,
            poll_ms: 1000,
            buffer_events: 64,
            slow_reader_ms: 10_000,
        }
    }
}

impl EventsConfig {
    /// Checks the values; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let problem = |key: &str, why: &str| Err((format!("events.{key}"), why.to_string()));
        if !(1..=10_000).contains(&self.max_streams) {
            return problem("max_streams", "must be between 1 and 10000");
        }
        if self.max_stream_seconds < 10 {
            return problem("max_stream_seconds", "must be at least 10");
        }
        if !(50..=60_000).contains(&self.poll_ms) {
            return problem("poll_ms", "must be between 50 and 60000");
        }
        if !(1..=10_000).contains(&self.buffer_events) {
            return problem("buffer_events", "must be between 1 and 10000");
        }
        if self.slow_reader_ms < 100 {
            return problem("slow_reader_ms", "must be at least 100");
        }
        Ok(())
    }
}
