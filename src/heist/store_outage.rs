//! The store outage rule, for a session: a commit that fails because the
//! store is unusable (full, read-only, deleted, failing I/O) pauses the
//! session in place. It retries the same commit with backoff and goes on
//! when the store takes it; after `store.max_outage_ms` it ends `failed`
//! with the cause when that can be recorded, and otherwise is left
//! `active` for crash recovery at the next start. It never skips a turn and
//! never marks a session ended that the store has not recorded.
//!
//! [`StoreOutageRule`] only retries the commit it is given; it holds no
//! store handle. Ending the session after a too-long outage is the session
//! loop's (`SessionLoop::end_after_store_outage`). It knows nothing about
//! SQLite: the store says what is an outage (`StoreError::is_outage`).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::control::RunControl;
use crate::metrics as names;
use crate::store::StoreError;

/// The first wait after a failed commit; doubled after each further one.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a paused commit.
const LONGEST_RETRY: Duration = Duration::from_secs(10);

/// How a session waits out a store that cannot take its commits.
pub(super) struct StoreOutageRule {
    /// `store.max_outage_ms`: how long one commit may be retried.
    pub longest: Duration,
}

impl StoreOutageRule {
    /// Runs `commit` until it succeeds, pausing through a store outage of
    /// up to `store.max_outage_ms`. A refusal that is not an outage, an
    /// outage that lasts too long, or a stop request ends the wait with
    /// the last error.
    pub async fn through<T, Commit, Attempt>(
        &self,
        what: &str,
        control: &RunControl,
        mut commit: Commit,
    ) -> Result<T, StoreError>
    where
        Commit: FnMut() -> Attempt,
        Attempt: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let longest = self.longest;
        let mut wait = FIRST_RETRY;
        let mut paused = false;
        // Counts the session as waiting for the store while it pauses.
        let mut _waiting = None;
        loop {
            let error = match commit().await {
                Ok(value) => {
                    if paused {
                        tracing::warn!(what, "the store is back; the session goes on");
                        metrics::counter!(names::STORE_PAUSES_TOTAL, "outcome" => "resumed")
                            .increment(1);
                    }
                    return Ok(value);
                }
                Err(error) if !error.is_outage() => return Err(error),
                Err(error) => error,
            };
            let left = longest.saturating_sub(started.elapsed());
            if left.is_zero() || control.stop_requested() {
                metrics::counter!(names::STORE_PAUSES_TOTAL, "outcome" => "gave_up").increment(1);
                return Err(error);
            }
            if !paused {
                tracing::error!(what, %error, max_outage_ms = longest.as_millis() as u64,
                    "cannot commit; the session pauses until the store is back");
                paused = true;
                _waiting = Some(super::outage::Waiting::start("store"));
            }
            control.sleep_unless_stopped(wait.min(left)).await;
            wait = (wait * 2).min(LONGEST_RETRY);
        }
    }
}
