//! The store outage rule, for a session: a commit that fails because the
//! store is unusable (full, read-only, deleted, failing I/O) pauses the
//! session in place. It retries the same commit with backoff and goes on
//! when the store takes it; after `store.max_outage_ms` it ends `failed`
//! with the cause when that can be recorded, and otherwise is left
//! `active` for crash recovery at the next start. It never skips a turn and
//! never marks a session ended that the store has not recorded.
//!
//! It knows nothing about SQLite: the store says what is an outage
//! (`StoreError::is_outage`).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{HeistError, HeistRunner};
use crate::metrics as names;
use crate::store::{SessionStatus, StoreError};

/// The first wait after a failed commit; doubled after each further one.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a paused commit.
const LONGEST_RETRY: Duration = Duration::from_secs(10);

impl HeistRunner {
    /// Runs `commit` until it succeeds, pausing through a store outage of
    /// up to `store.max_outage_ms`. A refusal that is not an outage, an
    /// outage that lasts too long, or a stop request ends the wait with
    /// the last error.
    pub(super) async fn through_store_outage<T, Commit, Attempt>(
        &self,
        what: &str,
        mut commit: Commit,
    ) -> Result<T, StoreError>
    where
        Commit: FnMut() -> Attempt,
        Attempt: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let longest = Duration::from_millis(self.config.store.max_outage_ms);
        let mut wait = FIRST_RETRY;
        let mut paused = false;
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
            if left.is_zero() || self.stop_requested() {
                metrics::counter!(names::STORE_PAUSES_TOTAL, "outcome" => "gave_up").increment(1);
                return Err(error);
            }
            if !paused {
                tracing::error!(what, %error, max_outage_ms = longest.as_millis() as u64,
                    "cannot commit; the session pauses until the store is back");
                paused = true;
            }
            self.sleep_unless_stopped(wait.min(left)).await;
            wait = (wait * 2).min(LONGEST_RETRY);
        }
    }

    /// After an outage outlasted its limit: ends the session `failed` with
    /// the cause if the store can record that now, and otherwise leaves it
    /// `active`, for crash recovery at the next start. Metrics count only
    /// what the store recorded.
    pub(super) async fn end_after_store_outage(
        &self,
        session_id: &str,
        what: &str,
        error: StoreError,
    ) -> HeistError {
        // Another node owns the session now, or it has already ended: this
        // run writes nothing more (fencing), not even its failure.
        if matches!(
            error,
            StoreError::Fenced { .. } | StoreError::SessionEnded { .. }
        ) {
            tracing::warn!(%error, "{what} not recorded; this run stops and writes nothing more");
            return error.into();
        }
        let reason = format!("{what} could not be recorded: {error}");
        match self
            .store
            .finish_session(session_id, SessionStatus::Failed, Some(&reason))
            .await
        {
            Ok(true) => {
                metrics::counter!(names::SESSIONS_TOTAL, "status" => "failed").increment(1);
                tracing::error!(%reason, "session failed: the store outage lasted too long");
            }
            // Its first ending stuck (another path ended it first).
            Ok(false) => tracing::warn!(%reason, "the session had already ended"),
            Err(finish_error) => tracing::error!(
                %reason, %finish_error,
                "cannot record the session's end either; it is left for crash recovery at the next start"
            ),
        }
        error.into()
    }

    fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| *stop.borrow())
    }
}
