//! Wires the long-running daemon (`heistd daemon`): [`App::build`] opens the
//! store, builds the clients, the shared state and the run registry, and
//! binds the admin API; [`App::run`] starts the tasks (admin API, health
//! checks, crash recovery, scheduler, retention, outbox deliverer, memory
//! reconciliation, the run-queue claimer on a shared store, the steering
//! watch that passes recorded cancels on, watchdog),
//! serves reloads and run requests, and stops them in order.
//!
//! This is the one place that knows every part of the daemon. It holds no
//! behaviour of its own beyond that order: each part lives in its module
//! (`daemon::runs` admits runs, `health::checker` checks, `scheduler`
//! decides when, `api` answers). It takes its stop and reload signals as
//! parameters and installs no signal handlers itself.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::clients::{ClientBuildError, Clients};
use crate::config::{self, Config, ConfigError, ScheduleConfig, SystemdEnvironment};
use crate::daemon::control::Steering;
use crate::daemon::notify::{self, Notifier};
use crate::daemon::runs::{RunContext, Runs, ScheduledRuns};
use crate::daemon::state::{DaemonState, RunCommand, ScheduleStatus, StartRunError};
use crate::daemon::webhooks::Webhooks;
use crate::daemon::{cluster, outbox, reconcile, retention, store_watch, telemetry};
use crate::health::{checker, HealthBoard, HealthState};
use crate::scenario::{Scenario, ScenarioError};
use crate::scheduler::{Clock, Scheduler};
use crate::store::{StoreError, StoreHandle};

/// How often `STATUS=` and the schedules shown by the API are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Clients(#[from] ClientBuildError),
    #[error("admin API cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// Everything the daemon starts from.
pub struct DaemonOptions {
    pub config: Config,
    /// Re-read on reload; `None` reloads defaults and environment only.
    pub config_path: Option<PathBuf>,
    pub systemd: SystemdEnvironment,
}

/// A daemon built and bound, not yet running.
pub struct App {
    parts: Parts,
    /// The admin API's socket, bound at build so a taken port fails early.
    listener: TcpListener,
}

/// What the running daemon's phases share.
struct Parts {
    config_path: Option<PathBuf>,
    notifier: Arc<Notifier>,
    store: StoreHandle,
    health: Arc<HealthBoard>,
    state: Arc<DaemonState>,
    runs: Arc<Runs>,
    /// The `[[notify]]` receivers; told of session ends by `runs` and of
    /// health transitions through the board.
    webhooks: Arc<Webhooks>,
    /// `stop` ends runs (between turns), schedules and checks.
    stop_sender: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    /// `finished` ends the admin API and the watchdog, which must outlive
    /// the drain.
    finish_sender: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
    run_requests: mpsc::Receiver<RunCommand>,
    bound: SocketAddr,
}

/// The tasks a running daemon owns, stopped in order by `Parts::stop`.
struct Tasks {
    api: JoinHandle<()>,
    health: Vec<JoinHandle<()>>,
    scheduler: Scheduler,
    retention: JoinHandle<()>,
    outbox: JoinHandle<()>,
    /// Heartbeats and takeovers on a shared store; ends after the drain.
    cluster: JoinHandle<()>,
    watchdog: JoinHandle<()>,
}

impl App {
    /// Opens the store, builds the shared state and binds the admin API.
    /// Nothing runs yet: a failure here leaves nothing to stop.
    pub async fn build(options: DaemonOptions) -> Result<Self, AppError> {
        let DaemonOptions {
            config,
            config_path,
            systemd,
        } = options;
        let config = Arc::new(config);
        let notifier = Arc::new(Notifier::from_values(
            systemd.notify_socket.as_deref(),
            systemd.watchdog_usec.as_deref(),
            systemd.watchdog_pid.as_deref(),
        ));
        let scenario = Arc::new(Scenario::from_config(config.heist.scenario.as_deref())?);
        let store = StoreHandle::open_configured(&config.store, &config.cluster).await?;
        // A store that cannot be written (read-only file or directory, a
        // full disk) stops the daemon here, before READY, with exit 2.
        store.probe_write().await?;
        let clients = Clients::from_config(&config)?;
        let (stop_sender, stop) = watch::channel(false);
        let (finish_sender, finished) = watch::channel(false);
        let health = Arc::new(HealthBoard::default());
        let (run_commands, run_requests) = mpsc::channel::<RunCommand>(16);
        let state = Arc::new(
            DaemonState::new(
                config.clone(),
                store.clone(),
                health.clone(),
                crate::metrics::install(),
                run_commands,
                admin_token(&config),
            )
            .with_config_path(config_path.clone()),
        );
        state.set_llm(clients.llm.clone());
        // After `DaemonState::new` has installed the recorder.
        telemetry::create_known_series(&config, &scenario);
        let webhooks = Webhooks::new(&config, store.clone());
        let runs = Runs::new(
            state.clone(),
            store.clone(),
            RunContext {
                config: config.clone(),
                scenario,
                clients,
            },
            stop.clone(),
            webhooks.clone(),
            // Which UTC day the daily token budgets count.
            Clock::system(),
        );
        state.set_steering(Arc::new(Steering::new(&runs, store.clone())));
        let (listener, bound) = bind_admin_api(&config.daemon.admin_address).await?;
        let parts = Parts {
            config_path,
            notifier,
            store,
            health,
            state,
            runs,
            webhooks,
            stop_sender,
            stop,
            finish_sender,
            finished,
            run_requests,
            bound,
        };
        Ok(Self { parts, listener })
    }

    /// Where the admin API listens (the port is known once bound).
    pub fn admin_address(&self) -> SocketAddr {
        self.parts.bound
    }

    /// Runs until `shutdown` resolves; each message on `reload` re-reads the
    /// config. Returns after a graceful stop.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        reload: mpsc::Receiver<()>,
    ) -> Result<(), AppError> {
        let Self {
            mut parts,
            listener,
        } = self;
        let mut tasks = parts.start(listener).await?;
        parts.announce_ready();
        parts.serve(shutdown, reload, &mut tasks).await;
        parts.stop(tasks).await;
        Ok(())
    }
}

impl Parts {
    /// Starts every task; sessions a crash left active are recovered before
    /// the scheduler can start new ones.
    async fn start(&self, listener: TcpListener) -> Result<Tasks, AppError> {
        let api = tokio::spawn(serve_api(
            listener,
            self.state.clone(),
            self.finished.clone(),
        ));
        tracing::info!(address = %self.bound, "admin API listening");
        let config = self.state.config();
        // Before the checkers, so their first transitions are heard.
        self.spawn_webhooks();
        let health = self.spawn_health_checks(&config);
        let recovered = self.runs.recover(config.daemon.recovery).await?;
        if recovered > 0 {
            tracing::warn!(
                sessions = recovered,
                recovery = config.daemon.recovery.as_str(),
                "sessions left active by a crash"
            );
        }
        let last_slots = last_slots(&self.store, &config.schedule).await;
        for (schedule, slot) in &last_slots {
            telemetry::record_schedule_slots(schedule, Some(*slot), None);
        }
        let scheduler = Scheduler::spawn(
            config.schedule.clone(),
            last_slots,
            Clock::system(),
            Arc::new(ScheduledRuns(self.runs.clone())),
        );
        // Ends by itself on stop; nothing waits for it.
        tokio::spawn(reconcile::run(
            self.runs.clone(),
            self.store.clone(),
            self.stop.clone(),
        ));
        if self.store.is_shared() {
            // Ends by itself on stop; nothing waits for it. Requests still
            // queued then stay in the store for the other nodes.
            tokio::spawn(
                self.runs
                    .clone()
                    .claim_queued_until_stopped(Duration::from_millis(config.cluster.heartbeat_ms)),
            );
        }
        // Ends by itself on stop; nothing waits for it. Recorded cancel
        // requests reach the sessions playing here within a heartbeat.
        if let Some(steering) = self.state.steering() {
            tokio::spawn(steering.watch_until_stopped(
                Duration::from_millis(config.cluster.heartbeat_ms),
                self.stop.clone(),
            ));
        }
        // Ends by itself on stop; nothing waits for it.
        tokio::spawn(store_watch::watch_store(
            self.store.clone(),
            self.stop.clone(),
        ));
        Ok(Tasks {
            api,
            health,
            scheduler,
            retention: self.spawn_retention(&config),
            outbox: tokio::spawn(outbox::deliver_left_behind(
                self.runs.clone(),
                self.store.clone(),
                self.stop.clone(),
            )),
            cluster: tokio::spawn(cluster::run(
                self.runs.clone(),
                self.store.clone(),
                config.cluster.clone(),
                self.stop.clone(),
                self.finished.clone(),
            )),
            watchdog: tokio::spawn(notify::run_watchdog(
                self.notifier.clone(),
                self.finished.clone(),
            )),
        })
    }

    fn announce_ready(&self) {
        let config = self.state.config();
        if self.state.admin_token().is_none() {
            tracing::warn!(variable = %config.daemon.admin_token_env, "no admin token set: POST /api/v1/runs is refused");
        }
        self.notifier.ready();
        self.notifier
            .status(&format!("admin API on {}; starting", self.bound));
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            schedules = config.schedule.len(),
            "heistd ready"
        );
    }

    /// The main loop: reloads, run requests and status until `shutdown`.
    async fn serve(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut reload: mpsc::Receiver<()>,
        tasks: &mut Tasks,
    ) {
        tokio::pin!(shutdown);
        let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                Some(()) = reload.recv() => self.reload(tasks).await,
                Some((request, reply)) = self.run_requests.recv() => {
                    // The requester may have gone (its connection closed):
                    // the run stands all the same, and nobody is left to tell.
                    let _ = reply.send(self.runs.start_requested(request).await);
                }
                _ = status_tick.tick() => self.publish_status(&tasks.scheduler),
            }
        }
    }

    /// Applies a new config, or keeps the running one and says why.
    async fn reload(&self, tasks: &mut Tasks) {
        self.notifier.reloading();
        let previous_clients = self.runs.context().clients.clone();
        let outcome = self.apply_reload(&mut tasks.scheduler).await;
        self.state
            .record_reload(outcome.as_ref().map(|_| ()).map_err(Clone::clone));
        telemetry::record_reload(&self.state);
        match outcome {
            Ok(config) => {
                // Awaited, so no old checker can hold a breaker open after
                // the release below.
                for task in tasks.health.drain(..) {
                    task.abort();
                    if let Err(error) = task.await {
                        if !error.is_cancelled() {
                            tracing::error!(%error, "a health checker failed before reload");
                        }
                    }
                }
                // Sessions still running on the previous clients must not
                // keep breakers that no checker will release.
                for service in previous_clients.all() {
                    service.release_breaker_hold();
                }
                tasks.health = self.spawn_health_checks(&config);
                tasks.retention.abort();
                tasks.retention = self.spawn_retention(&config);
                tracing::info!(schedules = config.schedule.len(), "config reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "reload refused; still running on the previous config");
                self.notifier.status(&format!("reload refused: {error}"));
            }
        }
        self.notifier.ready();
    }

    /// Re-reads and applies the config; on any error the running one stays.
    async fn apply_reload(&self, scheduler: &mut Scheduler) -> Result<Arc<Config>, String> {
        let new = config::load(self.config_path.as_deref(), config::process_environment())
            .map_err(|error| error.to_string())?;
        let scenario = Scenario::from_config(new.heist.scenario.as_deref())
            .map_err(|error| error.to_string())?;
        let old = self.state.config();
        if new.daemon.admin_address != old.daemon.admin_address {
            tracing::warn!(old = %old.daemon.admin_address, new = %new.daemon.admin_address, "daemon.admin_address changes at the next restart");
        }
        if new.store.path != old.store.path {
            tracing::warn!("store.path changes at the next restart");
        }
        let new = Arc::new(new);
        telemetry::create_known_series(&new, &scenario);
        let clients = Clients::from_config(&new).map_err(|error| error.to_string())?;
        self.state.set_llm(clients.llm.clone());
        self.runs.replace_context(RunContext {
            config: new.clone(),
            scenario: Arc::new(scenario),
            clients,
        });
        scheduler.replace(new.schedule.clone());
        if let Some(steering) = self.state.steering() {
            steering.forget_removed(&old, &new).await;
        }
        self.webhooks.replace_config(&new);
        self.state.set_config(new.clone(), admin_token(&new));
        Ok(new)
    }

    /// The shutdown order ARCHITECTURE.md gives: no new runs, queued
    /// requests answered, runs drained within the grace period, and only
    /// then the admin API and the watchdog.
    async fn stop(mut self, tasks: Tasks) {
        tracing::info!("stopping: no new runs; letting turns in flight finish");
        self.notifier.stopping();
        // Receivers live in `self` and in every task: nobody can have gone.
        let _ = self.stop_sender.send(true);
        tasks.scheduler.shutdown().await;
        // Requests already queued get an answer rather than waiting forever.
        self.run_requests.close();
        while let Ok((_, reply)) = self.run_requests.try_recv() {
            let _ = reply.send(Err(StartRunError::ShuttingDown));
        }
        let grace = Duration::from_millis(self.state.config().daemon.shutdown_grace_ms);
        self.runs.drain(grace).await;
        for task in tasks.health {
            task.abort();
        }
        // Delivery is idempotent and resumes at the next start: no need to
        // wait out a hanging memory service here.
        tasks.outbox.abort();
        if let Err(error) = tasks.retention.await {
            tracing::error!(%error, "retention task failed");
        }
        // Event streams end first: each is one long answer, which the
        // admin API's drain would otherwise wait for.
        self.state.events.close();
        let _ = self.finish_sender.send(true);
        for (name, task) in [
            ("admin API", tasks.api),
            ("cluster", tasks.cluster),
            ("watchdog", tasks.watchdog),
        ] {
            if let Err(error) = task.await {
                tracing::error!(%error, task = name, "task failed while stopping");
            }
        }
        tracing::info!("stopped");
    }

    /// The webhook deliverer ends by itself on stop; events still due
    /// stay in the store for the next start (or another node). The health
    /// follower ends with the board, which lives as long as the daemon.
    fn spawn_webhooks(&self) {
        tokio::spawn(
            self.webhooks
                .clone()
                .deliver_until_stopped(self.stop.clone()),
        );
        tokio::spawn(
            self.webhooks
                .clone()
                .follow_health(self.health.subscribe_transitions()),
        );
    }

    fn spawn_health_checks(&self, config: &Config) -> Vec<JoinHandle<()>> {
        checker::spawn_all(
            config,
            &self.runs.context().clients,
            &self.health,
            &self.store,
            &self.stop,
        )
    }

    fn spawn_retention(&self, config: &Config) -> JoinHandle<()> {
        tokio::spawn(retention::run(
            config.retention.clone(),
            self.store.clone(),
            self.stop.clone(),
        ))
    }

    fn publish_status(&self, scheduler: &Scheduler) {
        self.state.set_schedules(
            scheduler
                .next_runs()
                .into_iter()
                .map(|(name, trigger, enabled, next_run)| {
                    telemetry::record_schedule_slots(&name, None, next_run);
                    ScheduleStatus {
                        name,
                        trigger,
                        enabled,
                        next_run,
                    }
                })
                .collect(),
        );
        let down: Vec<String> = self
            .health
            .snapshot()
            .into_iter()
            .filter(|health| health.state == HealthState::Down)
            .map(|health| health.service)
            .collect();
        let services = if down.is_empty() {
            "all services up".to_string()
        } else {
            format!("down: {}", down.join(", "))
        };
        self.notifier.status(&format!(
            "{} sessions running; {services}; admin API on {}",
            self.state.running_count(),
            self.bound
        ));
    }
}

async fn bind_admin_api(address: &str) -> Result<(TcpListener, SocketAddr), AppError> {
    let bind_error = |source| AppError::Bind {
        address: address.to_string(),
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

async fn serve_api(
    listener: TcpListener,
    state: Arc<DaemonState>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = state.config().http.limits();
    let router = crate::api::router(state);
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    crate::http::serve(listener, router, limits, "admin", stopped).await;
}

/// The last slot each schedule ran for, so a restart neither repeats nor
/// forgets one. A slot that cannot be read is logged and treated as none.
async fn last_slots(
    store: &StoreHandle,
    schedules: &[ScheduleConfig],
) -> HashMap<String, DateTime<Utc>> {
    let mut slots = HashMap::new();
    for schedule in schedules {
        match store.last_scheduled_time(&schedule.name).await {
            Ok(Some(text)) => match DateTime::parse_from_rfc3339(&text) {
                Ok(slot) => {
                    slots.insert(schedule.name.clone(), slot.with_timezone(&Utc));
                }
                Err(error) => {
                    tracing::error!(schedule = %schedule.name, %text, %error, "unreadable last slot")
                }
            },
            Ok(None) => {}
            Err(error) => {
                tracing::error!(schedule = %schedule.name, %error, "cannot read the last slot")
            }
        }
    }
    slots
}

fn admin_token(config: &Config) -> Option<String> {
    config
        .daemon
        .admin_token
        .as_ref()
        .map(|token| token.expose().to_string())
}
