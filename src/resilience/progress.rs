//! How long one attempt may run. A plain attempt must end within the
//! per-attempt timeout. A streaming attempt reports [`Progress`] as its
//! reply comes in: the per-attempt timeout then caps only the wait for the
//! first piece, and after it the attempt is cut when nothing has come for
//! its idle timeout, so a slow producer that keeps producing is not cut,
//! and one that stops is cut promptly. The call's deadline caps both.
//!
//! It times and cuts; what a piece of the reply is, is the caller's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// An attempt's word to the stack that its reply is still coming. Clones
/// share one record; marks on a handle made without an idle timeout change
/// nothing.
#[derive(Debug, Clone)]
pub struct Progress {
    idle: Option<Duration>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    first_piece_at: Mutex<Option<Instant>>,
    last_piece: Mutex<Option<Instant>>,
    /// Told of the first piece, which may bring the cut nearer (an idle
    /// timeout shorter than the wait for the first piece); later pieces
    /// only move it on, and the timer sees that when it fires.
    first_piece: Notify,
}

/// Why an attempt was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// Nothing came before the per-attempt limit.
    NoAnswer,
    /// Pieces came, then nothing for the idle timeout.
    Stalled(Duration),
    /// Pieces came, and kept coming, until the call's deadline.
    Deadline,
}

impl Progress {
    pub(super) fn new(idle: Option<Duration>) -> Self {
        Self {
            idle,
            shared: Arc::new(Shared::default()),
        }
    }

    /// A piece of the reply arrived now.
    pub fn mark(&self) {
        if self.idle.is_some() {
            let now = Instant::now();
            let first = self.shared.last_piece.lock().replace(now).is_none();
            if first {
                *self.shared.first_piece_at.lock() = Some(now);
                self.shared.first_piece.notify_one();
            }
        }
    }

    /// How long after `started` the first piece came, if one did.
    pub(super) fn first_piece_after(&self, started: Instant) -> Option<Duration> {
        self.shared
            .first_piece_at
            .lock()
            .map(|at| at.saturating_duration_since(started))
    }

    /// When the attempt is cut if nothing more arrives, and why.
    fn cut_at(&self, first_piece_by: Instant, deadline: Instant) -> (Instant, Cut) {
        match (*self.shared.last_piece.lock(), self.idle) {
            (Some(last), Some(idle)) if last + idle < deadline => (last + idle, Cut::Stalled(idle)),
            (Some(_), Some(_)) => (deadline, Cut::Deadline),
            _ => (first_piece_by, Cut::NoAnswer),
        }
    }
}

/// Runs `attempt` until it ends, or until it is cut: at `first_piece_by`
/// when it has reported no progress, else an idle timeout after its last
/// piece, never past `deadline`. The attempt is dropped when cut, which
/// closes its connection, so the server can stop working on it.
pub(super) async fn run_timed<T>(
    attempt: impl Future<Output = T>,
    progress: &Progress,
    first_piece_by: Instant,
    deadline: Instant,
) -> Result<T, Cut> {
    let mut attempt = std::pin::pin!(attempt);
    loop {
        let (cut_at, _) = progress.cut_at(first_piece_by, deadline);
        tokio::select! {
            biased;
            output = &mut attempt => return Ok(output),
            () = progress.shared.first_piece.notified() => {}
            () = tokio::time::sleep_until(cut_at) => {
                // A piece may have come since the timer was set: wait on.
                let (cut_at, cut) = progress.cut_at(first_piece_by, deadline);
                if cut_at <= Instant::now() {
                    return Err(cut);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A producer that marks a piece every `every`, `pieces` times, then
    /// either ends or stalls forever.
    async fn producer(progress: Progress, every: Duration, pieces: u32, stall: bool) -> u32 {
        for _ in 0..pieces {
            tokio::time::sleep(every).await;
            progress.mark();
        }
        if stall {
            std::future::pending::<()>().await;
        }
        pieces
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_outlasts_the_first_piece_limit() {
        let progress = Progress::new(Some(2 * SECOND));
        let start = Instant::now();
        let result = run_timed(
            producer(progress.clone(), SECOND, 30, false),
            &progress,
            start + 5 * SECOND,
            start + 60 * SECOND,
        )
        .await;
        assert_eq!(result, Ok(30));
        assert_eq!(start.elapsed(), 30 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_stops_is_cut_one_idle_timeout_after_its_last_piece() {
        let progress = Progress::new(Some(2 * SECOND));
        let start = Instant::now();
        let result = run_timed(
            producer(progress.clone(), SECOND, 7, true),
            &progress,
            start + 5 * SECOND,
            start + 60 * SECOND,
        )
        .await;
        assert_eq!(result, Err(Cut::Stalled(2 * SECOND)));
        assert_eq!(start.elapsed(), 9 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_timeout_shorter_than_the_first_piece_limit_cuts_soon_after_a_stall() {
        let progress = Progress::new(Some(SECOND / 2));
        let start = Instant::now();
        let result = run_timed(
            producer(progress.clone(), SECOND / 4, 3, true),
            &progress,
            start + 10 * SECOND,
            start + 60 * SECOND,
        )
        .await;
        assert_eq!(result, Err(Cut::Stalled(SECOND / 2)));
        assert_eq!(start.elapsed(), SECOND + SECOND / 4);
    }

    #[tokio::test(start_paused = true)]
    async fn no_first_piece_and_the_deadline_cut_as_before() {
        let progress = Progress::new(Some(2 * SECOND));
        let start = Instant::now();
        let silent = run_timed(
            producer(progress.clone(), 10 * SECOND, 1, false),
            &progress,
            start + 5 * SECOND,
            start + 60 * SECOND,
        )
        .await;
        assert_eq!(silent, Err(Cut::NoAnswer));
        assert_eq!(start.elapsed(), 5 * SECOND);

        let progress = Progress::new(Some(2 * SECOND));
        let start = Instant::now();
        let endless = run_timed(
            producer(progress.clone(), SECOND, 1000, false),
            &progress,
            start + 5 * SECOND,
            start + 20 * SECOND,
        )
        .await;
        assert_eq!(endless, Err(Cut::Deadline));
        assert_eq!(start.elapsed(), 20 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_marks_change_nothing() {
        let progress = Progress::new(None);
        let start = Instant::now();
        let result = run_timed(
            producer(progress.clone(), SECOND, 30, false),
            &progress,
            start + 5 * SECOND,
            start + 60 * SECOND,
        )
        .await;
        assert_eq!(result, Err(Cut::NoAnswer));
        assert_eq!(start.elapsed(), 5 * SECOND);
    }
}
