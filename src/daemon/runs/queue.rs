//! The cluster's run queue as `Runs` uses it, on a shared store only:
//! an API request is queued in the store (not started here), and this
//! node's claimer takes queued requests whenever it has room, under the
//! same admission lock and cap as every other run. It decides when to
//! look; the store claims atomically (`FOR UPDATE SKIP LOCKED`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{RunContext, Runs};
use crate::daemon::state::{RunningSession, StartRunError};
use crate::heist::RunOptions;
use crate::store::{NewSession, SessionRow, StoreError};

impl Runs {
    /// Queues a run request in the cluster's run queue; its session shows
    /// `queued` until a node claims it.
    pub(super) async fn enqueue(
        &self,
        context: &RunContext,
        options: RunOptions,
    ) -> Result<String, StartRunError> {
        if *self.stop.borrow() {
            return Err(StartRunError::ShuttingDown);
        }
        self.state
            .store
            .readiness()
            .await
            .map_err(StartRunError::StoreUnavailable)?;
        let new = NewSession {
            scenario: context.scenario.name.clone(),
            seed: options.seed,
            planned_turns: options.turns,
            schedule: None,
            scheduled_time: None,
            trigger: None,
        };
        let max_queued = context.config.daemon.max_queued_runs;
        let session_id =
            self.store
                .enqueue_run(new, max_queued)
                .await
                .map_err(|error| match error {
                    StoreError::QueueFull { queued, max_queued } => {
                        StartRunError::QueueFull { queued, max_queued }
                    }
                    error if error.is_outage() => {
                        StartRunError::StoreUnavailable(error.to_string())
                    }
                    error => StartRunError::Failed(error.to_string()),
                })?;
        tracing::info!(%session_id, turns = options.turns, "run request queued");
        self.queued_here.notify_one();
        Ok(session_id)
    }

    /// On a shared store, until the stop signal: claims queued run requests
    /// whenever this node has room (after a run here ends, after a request
    /// is queued here, and every `poll` for requests other nodes queued),
    /// and plays them. A node at capacity claims nothing, so a request
    /// waits in the store, never in a node, for whichever node frees first.
    pub async fn claim_queued_until_stopped(self: Arc<Self>, poll: Duration) {
        let mut stop = self.stop.clone();
        loop {
            let freed = self.capacity_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            self.claim_queued().await;
            tokio::select! {
                _ = freed => {}
                _ = self.queued_here.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Claims as many queued runs as this node has room for and starts
    /// them; returns how many. Under admission, so the cap holds.
    async fn claim_queued(self: &Arc<Self>) -> usize {
        let _admission = self.admission.lock().await;
        let room = self.free_capacity();
        if *self.stop.borrow() || room == 0 {
            return 0;
        }
        let context = self.context();
        let claimed = match self
            .store
            .claim_queued_runs(&context.scenario.name, room)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "cannot claim queued run requests; trying again later");
                return 0;
            }
        };
        for session in &claimed {
            self.play_claimed(&context, session);
        }
        claimed.len()
    }

    /// Starts a claimed queued run: its session exists, leased here.
    fn play_claimed(self: &Arc<Self>, context: &RunContext, session: &SessionRow) {
        let options = RunOptions {
            turns: session.planned_turns.unwrap_or_default().max(0) as u32,
            seed: session.seed.unwrap_or_default() as u64,
            schedule: None,
            scheduled_time: None,
            trigger: None,
        };
        tracing::info!(session_id = %session.session_id, "queued run claimed: playing it here");
        let running = RunningSession {
            session_id: session.session_id.clone(),
            schedule: None,
            started_at: Utc::now(),
            planned_turns: options.turns,
        };
        let (runner, cancel) = self.runner(context);
        let runner = self.live(runner, &session.session_id);
        let (this, id) = (self.clone(), session.session_id.clone());
        self.track(running, cancel, async move {
            let observer = this.state.events.committed_by(&id);
            let outcome = runner.play(&id, &options, Some(&observer)).await;
            this.settle(&id, outcome).await;
        });
    }
}
