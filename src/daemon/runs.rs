//! Starting, tracking and stopping the daemon's heists: the one place that
//! enforces the global session cap, for API requests, schedules and crash
//! recovery alike. Every run is a task with its own `HeistRunner` sharing
//! the current clients (so breakers and budgets are per service, not per
//! run) and the daemon's stop signal.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};

use super::state::{DaemonState, RunRequest, RunningSession, StartRunError};
use crate::clients::Clients;
use crate::config::{Config, Recovery, ScheduleConfig};
use crate::heist::{self, HeistError, HeistRunner, RunOptions};
use crate::metrics as names;
use crate::scenario::Scenario;
use crate::store::{SessionStatus, Store, StoreError};

/// What a new run is built from; replaced as a whole on reload, so a
/// running session keeps the context it started with.
pub struct RunContext {
    pub config: Arc<Config>,
    pub scenario: Arc<Scenario>,
    pub clients: Clients,
}

pub struct Runs {
    state: Arc<DaemonState>,
    store: Arc<Store>,
    context: RwLock<Arc<RunContext>>,
    stop: watch::Receiver<bool>,
    /// Serialises the check-then-start of a run, so the cap holds.
    admission: tokio::sync::Mutex<()>,
    /// Woken whenever a run ends, for launches waiting for capacity.
    capacity_freed: Notify,
    /// Running tasks by session id, to abort what the grace period leaves.
    tasks: Mutex<HashMap<String, AbortHandle>>,
}

impl Runs {
    pub fn new(
        state: Arc<DaemonState>,
        store: Arc<Store>,
        context: RunContext,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            store,
            context: RwLock::new(Arc::new(context)),
            stop,
            admission: tokio::sync::Mutex::new(()),
            capacity_freed: Notify::new(),
            tasks: Mutex::new(HashMap::new()),
        })
    }

    pub fn context(&self) -> Arc<RunContext> {
        self.context
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn replace_context(&self, context: RunContext) {
        *self
            .context
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(context);
    }

    /// `POST /api/v1/runs`: start now or refuse at capacity.
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
        let _admission = self.admission.lock().await;
        let running = self.state.running_count();
        if running >= context.config.daemon.max_concurrent_sessions as usize {
            return Err(StartRunError::AtCapacity { running });
        }
        self.spawn_run(context, options)
            .await
            .map(|(session_id, _)| session_id)
    }

    /// A schedule's slot: waits for capacity, then runs; resolves when the
    /// run has ended. A slot that already has a session is not run again.
    pub async fn run_scheduled(self: Arc<Self>, schedule: ScheduleConfig, slot: DateTime<Utc>) {
        let handle = loop {
            if *self.stop.borrow() {
                return;
            }
            let freed = self.capacity_freed.notified();
            {
                let _admission = self.admission.lock().await;
                let context = self.context();
                if self.state.running_count()
                    < context.config.daemon.max_concurrent_sessions as usize
                {
                    let mut context = context;
                    if let Some(directory) = &schedule.scenario {
                        match Scenario::load(directory) {
                            Ok(scenario) => {
                                context = Arc::new(RunContext {
                                    config: context.config.clone(),
                                    scenario: Arc::new(scenario),
                                    clients: context.clients.clone(),
                                })
                            }
                            Err(error) => {
                                tracing::error!(schedule = %schedule.name, %error, "cannot load the schedule's scenario; slot skipped");
                                return;
                            }
                        }
                    }
                    let options = RunOptions {
                        turns: schedule.turns,
                        seed: context.config.heist.seed.unwrap_or_else(heist::random_seed),
                        schedule: Some(schedule.name.clone()),
                        scheduled_time: Some(slot.to_rfc3339()),
                    };
                    match self.spawn_run(context, options).await {
                        Ok((_, handle)) => break handle,
                        Err(error) => {
                            tracing::warn!(schedule = %schedule.name, slot = %slot.to_rfc3339(), %error, "scheduled run not started");
                            return;
                        }
                    }
                }
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = freed => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        };
        let _ = handle.await;
    }

    /// Crash recovery: sessions left `active` are resumed or interrupted.
    pub async fn recover(self: &Arc<Self>, recovery: Recovery) -> Result<usize, StoreError> {
        let store = self.store.clone();
        let active =
            tokio::task::spawn_blocking(move || store.find_sessions(Some("active"), None, 10_000))
                .await
                .map_err(|error| StoreError::Worker(error.to_string()))??;
        for session in &active {
            match recovery {
                Recovery::Interrupt => {
                    let (store, id) = (self.store.clone(), session.session_id.clone());
                    tokio::task::spawn_blocking(move || {
                        store.finish_session(
                            &id,
                            SessionStatus::Interrupted,
                            Some("heistd stopped unexpectedly (found active at start)"),
                        )
                    })
                    .await
                    .map_err(|error| StoreError::Worker(error.to_string()))??;
                    tracing::warn!(session_id = %session.session_id, "left active by a crash: marked interrupted");
                }
                Recovery::Resume => {
                    tracing::warn!(session_id = %session.session_id, turns = session.num_turns, "left active by a crash: resuming");
                    let running = RunningSession {
                        session_id: session.session_id.clone(),
                        schedule: session.schedule.clone(),
                        started_at: Utc::now(),
                        planned_turns: session.planned_turns.unwrap_or_default().max(0) as u32,
                    };
                    let this = self.clone();
                    let id = session.session_id.clone();
                    self.track(running, async move {
                        let runner = this.runner(&this.context());
                        let outcome = runner.resume(&id, None).await;
                        log_outcome(&id, outcome);
                    });
                }
            }
        }
        Ok(active.len())
    }

    /// Waits for every run to end, up to `grace`; then aborts the rest and
    /// marks their sessions interrupted. Call after the stop signal is set.
    pub async fn drain(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let freed = self.capacity_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .is_empty()
            {
                return;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break;
            }
        }
        let unfinished: Vec<(String, AbortHandle)> = self
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain()
            .collect();
        for (session_id, handle) in unfinished {
            handle.abort();
            tracing::warn!(%session_id, "grace period over mid-turn: interrupted");
            let store = self.store.clone();
            let id = session_id.clone();
            let marked = tokio::task::spawn_blocking(move || {
                store.finish_session(
                    &id,
                    SessionStatus::Interrupted,
                    Some("heistd stopped; the grace period ran out mid-turn"),
                )
            })
            .await;
            if !matches!(marked, Ok(Ok(()))) {
                tracing::error!(%session_id, "cannot mark the session interrupted");
            }
            self.state.session_ended(&session_id);
        }
    }

    async fn spawn_run(
        self: &Arc<Self>,
        context: Arc<RunContext>,
        options: RunOptions,
    ) -> Result<(String, JoinHandle<()>), StartRunError> {
        let runner = self.runner(&context);
        let session_id = runner.start(&options).await.map_err(|error| match error {
            HeistError::Store(StoreError::DuplicateRun { .. }) => {
                StartRunError::Failed(error.to_string())
            }
            other => StartRunError::Failed(other.to_string()),
        })?;
        let running = RunningSession {
            session_id: session_id.clone(),
            schedule: options.schedule.clone(),
            started_at: Utc::now(),
            planned_turns: options.turns,
        };
        let id = session_id.clone();
        let handle = self.track(running, async move {
            let outcome = runner.play(&id, &options, None).await;
            log_outcome(&id, outcome);
        });
        Ok((session_id, handle))
    }

    /// Spawns a run's task, registers it, and unregisters it when it ends.
    fn track(
        self: &Arc<Self>,
        running: RunningSession,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let session_id = running.session_id.clone();
        self.state.session_started(running);
        metrics::gauge!(names::SESSIONS_RUNNING).set(self.state.running_count() as f64);
        let this = self.clone();
        let id = session_id.clone();
        // Registered before the task can finish, so its removal always
        // follows its insertion.
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let handle = tokio::spawn(async move {
            work.await;
            this.state.session_ended(&id);
            metrics::gauge!(names::SESSIONS_RUNNING).set(this.state.running_count() as f64);
            this.tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&id);
            this.capacity_freed.notify_waiters();
        });
        tasks.insert(session_id, handle.abort_handle());
        handle
    }

    fn runner(&self, context: &RunContext) -> HeistRunner {
        HeistRunner::new(
            context.config.clone(),
            context.scenario.clone(),
            context.clients.clone(),
            self.store.clone(),
        )
        .with_stop(self.stop.clone())
    }
}

fn log_outcome(session_id: &str, outcome: Result<heist::RunReport, HeistError>) {
    match outcome {
        Ok(report) => {
            tracing::info!(%session_id, status = report.status.as_str(), turns = report.turns, "run ended")
        }
        Err(error) => tracing::error!(%session_id, %error, "run stopped"),
    }
}

/// A boxed future, for the scheduler's launcher.
pub type BoxedRun = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
