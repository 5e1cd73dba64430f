//! What a session is told from outside while it plays: the stop signal
//! (the daemon is stopping: the session ends `interrupted` before its next
//! turn, and a pause is cut short), an operator's cancel (the session ends
//! `cancelled`, with the operator's reason, after its current turn) and
//! where its notices go (the CLI prints them; the daemon logs them). Every
//! waiting part of the runner sleeps through
//! [`RunControl::sleep_unless_stopped`], so neither is missed in a pause.
//!
//! It holds no session state and touches neither the store nor a service.

use std::time::Duration;

use tokio::sync::watch;

use super::{NoticeSink, RunNotice};

/// The stop signal and the notice sink of a runner, both optional.
#[derive(Clone, Default)]
pub(super) struct RunControl {
    /// Set to true when the daemon stops: the session ends `interrupted`
    /// before its next turn.
    pub stop: Option<watch::Receiver<bool>>,
    /// Set to the operator's reason when the session is cancelled: it ends
    /// `cancelled` after its current turn.
    pub cancel: Option<watch::Receiver<Option<String>>>,
    /// Told of pauses and fallbacks, besides the log.
    pub notices: Option<NoticeSink>,
}

impl RunControl {
    /// Whether the session has been told to stop.
    pub fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| *stop.borrow())
    }

    /// The operator's reason, once the session has been cancelled.
    pub fn cancel_requested(&self) -> Option<String> {
        self.cancel
            .as_ref()
            .and_then(|cancel| cancel.borrow().clone())
    }

    /// Sleeps `pause`; false when told to stop, or cancelled, first.
    pub async fn sleep_unless_stopped(&self, pause: Duration) -> bool {
        let mut stop = self.stop.clone();
        let mut cancel = self.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = async {
                match stop.as_mut() {
                    Some(stop) => { let _ = stop.wait_for(|stop| *stop).await; }
                    None => std::future::pending::<()>().await,
                }
            } => false,
            _ = async {
                match cancel.as_mut() {
                    Some(cancel) => { let _ = cancel.wait_for(Option::is_some).await; }
                    None => std::future::pending::<()>().await,
                }
            } => false,
        }
    }

    /// Tells the notice sink, if there is one.
    pub fn notify(&self, notice: &RunNotice) {
        if let Some(notices) = &self.notices {
            notices(notice);
        }
    }
}
