//! Starting, tracking and stopping the daemon's heists: the one place that
//! admits runs under the global session cap, for API requests, schedules
//! and crash recovery alike, and (on a shared store) the one place that
//! queues API requests in the cluster's run queue and claims them when
//! this node has room. Every run is a task with its own `HeistRunner`
//! sharing the current clients (so breakers and budgets are per service,
//! not per run) and the daemon's stop signal.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use tokio::sync::{watch, MutexGuard, Notify};
use tokio::task::JoinHandle;

use super::events::LiveEvent;
use super::state::{DaemonState, RunRequest, RunningSession, StartRunError};
use super::webhooks::Webhooks;
use crate::clients::Clients;
use crate::config::{Config, Recovery, ScheduleConfig};
use crate::heist::{self, HeistError, HeistRunner, RunOptions};
use crate::metrics as names;
use crate::scenario::Scenario;
use crate::scheduler::Clock;
use crate::store::{RunTrigger, SessionRow, SessionStatus, StoreError, StoreHandle};

mod budget;
mod launcher;
mod manual;
mod queue;

pub use launcher::ScheduledRuns;

/// What a new run is built from; replaced as a whole on reload, so a
/// running session keeps the context it started with.
pub struct RunContext {
    pub config: Arc<Config>,
    pub scenario: Arc<Scenario>,
    pub clients: Clients,
}

pub struct Runs {
    state: Arc<DaemonState>,
    store: StoreHandle,
    context: RwLock<Arc<RunContext>>,
    stop: watch::Receiver<bool>,
    /// Held while checking capacity and starting a run, so the cap holds
    /// and nothing starts once the stop signal is seen under it.
    admission: tokio::sync::Mutex<()>,
    /// Woken whenever a run ends, for runs waiting for capacity.
    capacity_freed: Notify,
    /// Woken when this node queues a run request (a shared store), so it
    /// claims it at once when it has room rather than at the next poll.
    queued_here: Notify,
    /// Told of every run that ends here, for `[[notify]]` receivers.
    webhooks: Arc<Webhooks>,
    /// Says which UTC day a daily token budget counts; the scheduler's
    /// kind of clock, so tests move it with tokio time.
    clock: Clock,
}

impl Runs {
    pub fn new(
        state: Arc<DaemonState>,
        store: StoreHandle,
        context: RunContext,
        stop: watch::Receiver<bool>,
        webhooks: Arc<Webhooks>,
        clock: Clock,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            store,
            context: RwLock::new(Arc::new(context)),
            stop,
            admission: tokio::sync::Mutex::new(()),
            capacity_freed: Notify::new(),
            queued_here: Notify::new(),
            webhooks,
            clock,
        })
    }

    pub fn context(&self) -> Arc<RunContext> {
        self.context.read().clone()
    }

    pub fn replace_context(&self, context: RunContext) {
        *self.context.write() = Arc::new(context);
    }

    /// `POST /api/v1/runs`: start now, or refuse at capacity. On a shared
    /// store the request goes into the cluster's run queue instead, for
    /// whichever node has room (this one first, if it has).
    pub async fn start_requested(
        self: &Arc<Self>,
        request: RunRequest,
    ) -> Result<String, StartRunError> {
        let context = self.context();
        let options = RunOptions::new(
            request.turns.unwrap_or(context.config.heist.turns),
            request
                .seed
                .or(context.config.heist.seed)
                .unwrap_or_else(heist::random_seed),
        );
        self.refuse_if_budget_spent(&context, None).await?;
        if self.store.is_shared() {
            return self.enqueue(&context, options).await;
        }
        self.start_now(context, options).await
    }

    /// Starts a run here now, or refuses at this node's cap.
    async fn start_now(
        self: &Arc<Self>,
        context: Arc<RunContext>,
        options: RunOptions,
    ) -> Result<String, StartRunError> {
        let _admission = self.admission.lock().await;
        let running = self.state.running_count();
        if running >= context.config.daemon.max_concurrent_sessions as usize {
            return Err(StartRunError::AtCapacity { running });
        }
        self.spawn_run(context, options)
            .await
            .map(|(session_id, _)| session_id)
            .map_err(StartRunError::from)
    }

    /// A schedule's slot: waits for capacity, then runs; resolves when the
    /// run has ended. A slot that already has a session is not run again,
    /// and one that comes due while the schedule is paused (the store says
    /// so, for every node) is skipped.
    pub async fn run_scheduled(self: Arc<Self>, schedule: ScheduleConfig, slot: DateTime<Utc>) {
        match self.store.schedule_pauses().await {
            Ok(pauses) if pauses.iter().any(|pause| pause.schedule == schedule.name) => {
                tracing::info!(schedule = %schedule.name, slot = %slot.to_rfc3339(), "skipping a slot: the schedule is paused");
                metrics::counter!(names::SCHEDULE_RUNS_TOTAL, "schedule" => schedule.name.clone(), "outcome" => "skipped_paused")
                    .increment(1);
                return;
            }
            Ok(_) => {}
            // Not knowing is not a pause: the run's own start meets the
            // store outage rule.
            Err(error) => {
                tracing::warn!(schedule = %schedule.name, %error, "cannot read whether the schedule is paused")
            }
        }
        self.run_slot(schedule, slot, RunTrigger::Schedule).await;
    }

    /// Runs one slot of a schedule (its own, or one an operator asked to
    /// backfill), once: waits for capacity, runs, and resolves when the run
    /// has ended. Another run of that slot (another node's, or an earlier
    /// request's) leaves this one nothing to do.
    pub async fn run_slot(
        self: Arc<Self>,
        schedule: ScheduleConfig,
        slot: DateTime<Utc>,
        trigger: RunTrigger,
    ) {
        let Some(context) = self.schedule_context(&schedule).await else {
            return;
        };
        let options = RunOptions {
            turns: schedule.turns,
            seed: context.config.heist.seed.unwrap_or_else(heist::random_seed),
            schedule: Some(schedule.name.clone()),
            scheduled_time: Some(slot.to_rfc3339()),
            trigger: Some(trigger),
        };
        let Some(admission) = self.admit().await else {
            return;
        };
        if self.skip_for_budget(&context, &schedule, slot).await {
            return;
        }
        let started = self.spawn_run(context, options).await;
        drop(admission);
        match started {
            Ok((session_id, handle)) => {
                tracing::info!(schedule = %schedule.name, slot = %slot.to_rfc3339(), %session_id, trigger = trigger.as_str(), "launched a scheduled run");
                metrics::counter!(names::SCHEDULE_RUNS_TOTAL, "schedule" => schedule.name.clone(), "outcome" => "launched")
                    .increment(1);
                let _ = handle.await;
            }
            // Another node claimed this slot first: expected with several
            // daemons, and not worth a warning.
            Err(SpawnError::Start(HeistError::Store(StoreError::DuplicateRun { .. }))) => {
                tracing::debug!(schedule = %schedule.name, slot = %slot.to_rfc3339(), "slot already claimed by another node")
            }
            Err(error) => {
                let error = StartRunError::from(error);
                tracing::warn!(schedule = %schedule.name, slot = %slot.to_rfc3339(), %error, "scheduled run not started")
            }
        }
    }

    /// The context a schedule's run starts from: its own scenario when it
    /// names one; `None` (logged) when that cannot be loaded.
    pub(super) async fn schedule_context(
        &self,
        schedule: &ScheduleConfig,
    ) -> Option<Arc<RunContext>> {
        let context = self.context();
        let Some(directory) = schedule.scenario.clone() else {
            return Some(context);
        };
        match tokio::task::spawn_blocking(move || Scenario::load(&directory)).await {
            Ok(Ok(scenario)) => Some(Arc::new(RunContext {
                config: context.config.clone(),
                scenario: Arc::new(scenario),
                clients: context.clients.clone(),
            })),
            Ok(Err(error)) => {
                tracing::error!(schedule = %schedule.name, %error, "cannot load the schedule's scenario; slot skipped");
                None
            }
            Err(_) => None,
        }
    }

    /// Crash recovery: sessions left `active` with nobody playing them are
    /// resumed (each waiting for capacity like any run) or marked
    /// interrupted. On SQLite that is every active session; on a shared
    /// store, those whose lease ran out, as many as there is room for (the
    /// cluster task takes the rest over as room frees). Returns how many.
    pub async fn recover(self: &Arc<Self>, recovery: Recovery) -> Result<usize, StoreError> {
        let limit = if self.store.is_shared() {
            self.free_capacity()
        } else {
            10_000
        };
        let active = self.store.claim_orphaned_sessions(limit).await?;
        let count = active.len();
        self.handle_orphans(active, recovery).await;
        Ok(count)
    }

    /// Sessions taken over from a node that stopped heartbeating: handled
    /// as crash recovery handles sessions left active.
    pub async fn take_over(self: &Arc<Self>, sessions: Vec<SessionRow>) {
        let recovery = self.context().config.daemon.recovery;
        self.handle_orphans(sessions, recovery).await;
    }

    /// Runs that could start now under this node's cap.
    pub fn free_capacity(&self) -> usize {
        (self.context().config.daemon.max_concurrent_sessions as usize)
            .saturating_sub(self.state.running_count())
    }

    async fn handle_orphans(self: &Arc<Self>, active: Vec<SessionRow>, recovery: Recovery) {
        for session in &active {
            match recovery {
                Recovery::Interrupt => {
                    tracing::warn!(session_id = %session.session_id, "left active by a crash: marking it interrupted");
                    self.finish_if_active(
                        &session.session_id,
                        SessionStatus::Interrupted,
                        "heistd stopped unexpectedly (found active at start)",
                    )
                    .await;
                }
                Recovery::Resume => {
                    let this = self.clone();
                    let session = session.clone();
                    tokio::spawn(async move { this.resume_when_admitted(session).await });
                }
            }
        }
    }

    /// Waits for every run to end, up to `grace`; then aborts the rest and
    /// marks their sessions interrupted. Call after the stop signal is set.
    pub async fn drain(&self, grace: Duration) {
        // Whoever holds admission has seen the stop signal or finishes
        // registering before we look; nothing is admitted after.
        drop(self.admission.lock().await);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let freed = self.capacity_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.state.registry().count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break;
            }
        }
        for (session_id, handle) in self.state.registry().drain() {
            handle.abort();
            tracing::warn!(%session_id, "grace period over mid-turn: interrupted");
            self.finish_if_active(
                &session_id,
                SessionStatus::Interrupted,
                "heistd stopped; the grace period ran out mid-turn",
            )
            .await;
        }
    }

    /// Resumes one crashed session once there is capacity, on the scenario
    /// it was started with; a session whose scenario is gone is interrupted.
    async fn resume_when_admitted(self: Arc<Self>, session: SessionRow) {
        let Some(context) = self.context_for_resume(&session).await else {
            let reason = match &session.scenario {
                Some(scenario) if session.seed.is_some() => {
                    format!("cannot resume: scenario `{scenario}` is not configured any more")
                }
                _ => "cannot resume: the session has no seed or plan (heistd did not start it)"
                    .to_string(),
            };
            tracing::error!(session_id = %session.session_id, %reason);
            self.finish_if_active(&session.session_id, SessionStatus::Interrupted, &reason)
                .await;
            return;
        };
        let Some(admission) = self.admit().await else {
            // Stopping: let another node (or the next start) resume it.
            self.store.release(&session.session_id);
            return;
        };
        tracing::warn!(session_id = %session.session_id, turns = session.num_turns, "left active by a crash: resuming");
        let running = RunningSession {
            session_id: session.session_id.clone(),
            schedule: session.schedule.clone(),
            started_at: Utc::now(),
            planned_turns: session.planned_turns.unwrap_or_default().max(0) as u32,
        };
        let (runner, cancel) = self.runner(&context);
        let runner = self.live(runner, &session.session_id);
        let (this, id) = (self.clone(), session.session_id.clone());
        self.track(running, cancel, async move {
            let observer = this.state.events.committed_by(&id);
            let outcome = runner.resume(&id, Some(&observer)).await;
            this.settle(&id, outcome).await;
        });
        drop(admission);
    }

    async fn context_for_resume(&self, session: &SessionRow) -> Option<Arc<RunContext>> {
        // A session heistd did not start (the prototype's, in an adopted
        // database) has no seed or plan to resume from.
        if session.seed.is_none() || session.planned_turns.unwrap_or(0) <= 0 {
            return None;
        }
        let context = self.context();
        let wanted = session
            .scenario
            .as_deref()
            .unwrap_or(&context.scenario.name);
        if wanted == context.scenario.name {
            return Some(context);
        }
        let schedule = context
            .config
            .schedule
            .iter()
            .find(|schedule| Some(&schedule.name) == session.schedule.as_ref())?;
        let directory = schedule.scenario.clone()?;
        let scenario = tokio::task::spawn_blocking(move || Scenario::load(&directory))
            .await
            .ok()?
            .ok()?;
        (scenario.name == wanted).then(|| {
            Arc::new(RunContext {
                config: context.config.clone(),
                scenario: Arc::new(scenario),
                clients: context.clients.clone(),
            })
        })
    }

    /// Waits until a run may start; `None` once the daemon is stopping.
    /// The guard must be held until the run is registered.
    async fn admit(&self) -> Option<MutexGuard<'_, ()>> {
        loop {
            let freed = self.capacity_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let admission = self.admission.lock().await;
                if *self.stop.borrow() {
                    return None;
                }
                if self.state.running_count()
                    < self.context().config.daemon.max_concurrent_sessions as usize
                {
                    return Some(admission);
                }
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = freed => {}
                _ = stop.wait_for(|stop| *stop) => return None,
            }
        }
    }

    /// Creates the session and starts its task; call with admission held.
    async fn spawn_run(
        self: &Arc<Self>,
        context: Arc<RunContext>,
        options: RunOptions,
    ) -> Result<(String, JoinHandle<()>), SpawnError> {
        if *self.stop.borrow() {
            return Err(SpawnError::ShuttingDown);
        }
        // The store outage rule: no run starts while the store cannot take
        // its turns, so none makes a service call it could not record.
        self.state
            .store
            .readiness()
            .await
            .map_err(SpawnError::StoreUnavailable)?;
        let (runner, cancel) = self.runner(&context);
        let session_id = runner.start(&options).await.map_err(SpawnError::Start)?;
        let runner = self.live(runner, &session_id);
        let running = RunningSession {
            session_id: session_id.clone(),
            schedule: options.schedule.clone(),
            started_at: Utc::now(),
            planned_turns: options.turns,
        };
        let (this, id) = (self.clone(), session_id.clone());
        let handle = self.track(running, cancel, async move {
            let observer = this.state.events.committed_by(&id);
            let outcome = runner.play(&id, &options, Some(&observer)).await;
            this.settle(&id, outcome).await;
        });
        Ok((session_id, handle))
    }

    /// Spawns a run's task and registers it; the registration is undone
    /// when the task ends, however it ends (a panic included).
    fn track(
        self: &Arc<Self>,
        running: RunningSession,
        cancel: watch::Sender<Option<String>>,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let registration = Registration {
            runs: self.clone(),
            session_id: running.session_id.clone(),
        };
        let (webhooks, session_id) = (self.webhooks.clone(), running.session_id.clone());
        let handle = self.state.registry().spawn(running, cancel, || {
            tokio::spawn(async move {
                let _registration = registration;
                work.await;
                // However it ended (a fenced run reads another node's
                // ending, which is queued once under its key).
                webhooks.session_ended(&session_id).await;
            })
        });
        metrics::gauge!(names::SESSIONS_RUNNING).set(self.state.running_count() as f64);
        handle
    }

    /// A run that ended in an error (the store failed mid-session) must not
    /// stay `active`: it is marked failed if the store still can.
    async fn settle(&self, session_id: &str, outcome: Result<heist::RunReport, HeistError>) {
        match outcome {
            Ok(report) => {
                tracing::info!(%session_id, status = report.status.as_str(), turns = report.turns, "run ended")
            }
            Err(HeistError::Store(StoreError::Fenced { owner, epoch, .. })) => {
                // The lease ran out here (a pause, a partition) and another
                // node resumed the session: it is theirs to finish.
                metrics::counter!(names::CLUSTER_FENCED_WRITES_TOTAL).increment(1);
                tracing::warn!(%session_id, %owner, epoch, "fenced: another node took the session over while this one was not renewing its lease; stopped here, nothing written");
            }
            Err(error) => {
                tracing::error!(%session_id, %error, "run stopped by an error");
                self.finish_if_active(
                    session_id,
                    SessionStatus::Failed,
                    &format!("run stopped: {error}"),
                )
                .await;
            }
        }
    }

    async fn finish_if_active(&self, session_id: &str, status: SessionStatus, reason: &str) {
        let outcome = self
            .store
            .finish_session(session_id, status, Some(reason))
            .await;
        match outcome {
            Ok(true) => {
                metrics::counter!(names::SESSIONS_TOTAL, "status" => status.as_str()).increment(1)
            }
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%session_id, status = status.as_str(), %error, "cannot record how the session ended")
            }
        }
    }

    /// Tells a session running here that an operator cancelled it (it
    /// ends after its current turn); `false` when it does not run here.
    pub fn cancel_running(&self, session_id: &str, reason: &str) -> bool {
        self.state.registry().cancel(session_id, reason)
    }

    /// Sessions with a task now (their own turns deliver their outbox).
    pub fn running_session_ids(&self) -> Vec<String> {
        self.state.registry().session_ids()
    }

    /// Delivers a session's pending memory writes with the current clients.
    pub async fn deliver_outbox(&self, session_id: &str) -> Result<usize, HeistError> {
        self.runner(&self.context())
            .0
            .deliver_outbox(session_id)
            .await
    }

    /// A session's runner with its waits published as live events.
    fn live(&self, runner: HeistRunner, session_id: &str) -> HeistRunner {
        runner.with_notices(self.state.events.notices_of(session_id))
    }

    /// A runner for one run, and the sender that cancels its session
    /// (registered with the run by [`Self::track`]).
    fn runner(&self, context: &RunContext) -> (HeistRunner, watch::Sender<Option<String>>) {
        let (cancel, cancelled) = watch::channel(None);
        let runner = HeistRunner::new(
            context.config.clone(),
            context.scenario.clone(),
            context.clients.clone(),
            self.store.clone(),
        )
        .with_stop(self.stop.clone())
        .with_cancel(cancelled);
        (runner, cancel)
    }
}

/// Why a run did not start, before it becomes the API's [`StartRunError`]:
/// a scheduled slot must tell "another node has it" from a failure.
enum SpawnError {
    ShuttingDown,
    /// The store cannot take writes now (the store outage rule).
    StoreUnavailable(String),
    Start(HeistError),
}

impl From<SpawnError> for StartRunError {
    fn from(error: SpawnError) -> Self {
        match error {
            SpawnError::ShuttingDown => Self::ShuttingDown,
            SpawnError::StoreUnavailable(reason) => Self::StoreUnavailable(reason),
            SpawnError::Start(HeistError::Store(error)) if error.is_outage() => {
                Self::StoreUnavailable(error.to_string())
            }
            SpawnError::Start(HeistError::Store(StoreError::ClusterFull { running })) => {
                Self::AtCapacity {
                    running: running as usize,
                }
            }
            SpawnError::Start(error) => Self::Failed(error.to_string()),
        }
    }
}

/// Unregisters a run when its task ends or unwinds.
struct Registration {
    runs: Arc<Runs>,
    session_id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let runs = &self.runs;
        runs.state.registry().remove(&self.session_id);
        // Its lease is no longer renewed: if the session is still active
        // (its task died), another node, or this one, may resume it later.
        runs.store.release(&self.session_id);
        metrics::gauge!(names::SESSIONS_RUNNING).set(runs.state.running_count() as f64);
        runs.capacity_freed.notify_waiters();
        runs.state.events.publish(LiveEvent::Ended {
            session_id: self.session_id.clone(),
        });
    }
}
