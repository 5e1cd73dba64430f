//! What the daemon tells the admin API's event streams as it happens: a
//! turn committed here (a wake-up: the stream reads the turn from the
//! store, which stays the source), a session waiting out an outage and
//! resuming (live only: no store row says so), and a run that ended here.
//! One `broadcast` channel carries them; each stream subscribes. It also
//! counts the streams open (the cap `events.max_streams`) and tells them
//! when the daemon stops, so a stream never holds the admin API's drain.
//!
//! It publishes and counts only: framing and JSON are `api`'s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::heist::{NoticeSink, RunNotice, TurnView};
use crate::metrics as names;

/// Live events a slow stream may fall behind by before it is told it lagged.
const CHANNEL_CAPACITY: usize = 1024;

/// Something that happened to a session played on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// A turn was committed: streams read it from the store now.
    Committed { session_id: String },
    /// The session waits before `turn_id` for `reason` (`model`), giving up
    /// after `gives_up_in`.
    Waiting {
        session_id: String,
        turn_id: u32,
        reason: &'static str,
        detail: String,
        gives_up_in: Duration,
    },
    /// The outage is over after `waited`; `turn_id` is played now.
    Resumed {
        session_id: String,
        turn_id: u32,
        waited: Duration,
    },
    /// The run's task here ended (its status is in the store).
    Ended { session_id: String },
}

impl LiveEvent {
    pub fn session_id(&self) -> &str {
        match self {
            Self::Committed { session_id }
            | Self::Waiting { session_id, .. }
            | Self::Resumed { session_id, .. }
            | Self::Ended { session_id } => session_id,
        }
    }
}

/// The daemon's live events and its open streams.
pub struct EventHub {
    sender: broadcast::Sender<LiveEvent>,
    open: Arc<AtomicUsize>,
    closing: watch::Sender<bool>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            open: Arc::new(AtomicUsize::new(0)),
            closing: watch::channel(false).0,
        }
    }
}

/// One open stream, counted until dropped.
pub struct StreamSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!(names::EVENT_STREAMS).set(open as f64);
    }
}

impl StreamSlot {
    /// The daemon closes this stream with a `closed` event, for `reason`.
    pub fn closed(&self, reason: &'static str) {
        metrics::counter!(names::EVENT_STREAMS_CLOSED_TOTAL, "reason" => reason).increment(1);
    }
}

impl EventHub {
    /// Tells every stream; nobody listening is fine.
    pub fn publish(&self, event: LiveEvent) {
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.sender.subscribe()
    }

    /// A slot for one more stream, or `None` when `max` are open.
    pub fn open_stream(&self, max: usize) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < max).then_some(open + 1)
            })
            .map(|open| metrics::gauge!(names::EVENT_STREAMS).set((open + 1) as f64))
            .ok()?;
        Some(StreamSlot {
            open: self.open.clone(),
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Resolves (`true`) once the daemon stops serving streams.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every stream (the daemon stops): before the admin API drains.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Where a run's notices go: its waits and resumptions as live events.
    pub fn notices_of(self: &Arc<Self>, session_id: &str) -> NoticeSink {
        let (hub, session_id) = (self.clone(), session_id.to_string());
        Arc::new(move |notice: &RunNotice| {
            let event = match notice {
                RunNotice::ModelPaused {
                    turn_id,
                    remaining,
                    last_error,
                } => LiveEvent::Waiting {
                    session_id: session_id.clone(),
                    turn_id: *turn_id,
                    reason: "model",
                    detail: last_error.clone(),
                    gives_up_in: *remaining,
                },
                RunNotice::ModelBack { turn_id, paused } => LiveEvent::Resumed {
                    session_id: session_id.clone(),
                    turn_id: *turn_id,
                    waited: *paused,
                },
                RunNotice::TextToolsFallback { .. } => return,
            };
            hub.publish(event);
        })
    }

    /// A run's turn observer: each committed turn wakes the streams.
    pub fn committed_by(&self, session_id: &str) -> impl Fn(&TurnView<'_>) + Sync + '_ {
        let session_id = session_id.to_string();
        move |_: &TurnView<'_>| {
            self.publish(LiveEvent::Committed {
                session_id: session_id.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_up_to_the_cap_and_freed_when_dropped() {
        let hub = EventHub::default();
        let first = hub.open_stream(2).expect("room");
        let _second = hub.open_stream(2).expect("room");
        assert!(hub.open_stream(2).is_none());
        assert_eq!(hub.open_streams(), 2);
        drop(first);
        assert!(hub.open_stream(2).is_some());
    }

    #[test]
    fn a_runs_waits_become_live_events_of_its_session() {
        let hub = Arc::new(EventHub::default());
        let mut events = hub.subscribe();
        let notices = hub.notices_of("s-1");
        notices(&RunNotice::ModelPaused {
            turn_id: 4,
            remaining: Duration::from_secs(30),
            last_error: "503".into(),
        });
        notices(&RunNotice::TextToolsFallback { model: "m".into() });
        notices(&RunNotice::ModelBack {
            turn_id: 4,
            paused: Duration::from_secs(2),
        });
        let waiting = events.try_recv().expect("waiting");
        assert!(
            matches!(&waiting, LiveEvent::Waiting { turn_id: 4, reason: "model", detail, .. } if detail == "503")
        );
        assert_eq!(waiting.session_id(), "s-1");
        assert!(matches!(
            events.try_recv(),
            Ok(LiveEvent::Resumed { turn_id: 4, .. })
        ));
        assert!(events.try_recv().is_err());
    }
}
