//! The long-running daemon (`heistd daemon`): schedules, periodic health
//! checks, the admin API, systemd notification, reload on SIGHUP, graceful
//! stop, crash recovery and retention. It wires the other modules together
//! and owns the tasks; it takes its stop and reload signals as parameters
//! and installs no signal handlers itself.

pub mod notify;
pub mod retention;
pub mod runs;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use state::{
    DaemonState, Readiness, RunCommand, RunRequest, RunningSession, ScheduleStatus, StartRunError,
};

use crate::clients::{ClientBuildError, Clients};
use crate::config::{self, Config, ConfigError, ScheduleConfig, SystemdEnvironment};
use crate::health::{checker, HealthBoard};
use crate::scenario::{Scenario, ScenarioError};
use crate::scheduler::{Clock, Launcher, Scheduler};
use crate::store::{Store, StoreError};
use notify::Notifier;
use runs::{RunContext, Runs};

/// How often `STATUS=` and the schedules shown by the API are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
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

/// Runs until `shutdown` resolves; each message on `reload` re-reads the
/// config. Returns after a graceful stop.
pub async fn run(
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
    mut reload: mpsc::Receiver<()>,
) -> Result<(), DaemonError> {
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
    let store_config = config.store.clone();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open_configured(&store_config))
            .await
            .map_err(|error| StoreError::Worker(error.to_string()))??,
    );
    let clients = Clients::from_config(&config)?;
    // `stop` ends runs (between turns), schedules and checks; `finished`
    // ends the admin API and the watchdog, which must outlive the drain.
    let (stop_sender, stop) = watch::channel(false);
    let (finish_sender, finished) = watch::channel(false);
    let health = Arc::new(HealthBoard::default());
    let (run_commands, mut run_requests) = mpsc::channel::<RunCommand>(16);
    let state = Arc::new(DaemonState::new(
        config.clone(),
        store.clone(),
        health.clone(),
        crate::metrics::install(),
        run_commands,
        admin_token(&config),
    ));
    let runs = Runs::new(
        state.clone(),
        store.clone(),
        RunContext {
            config: config.clone(),
            scenario,
            clients: clients.clone(),
        },
        stop.clone(),
    );

    let address = config.daemon.admin_address.clone();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| DaemonError::Bind {
            address: address.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| DaemonError::Bind {
        address: address.clone(),
        source,
    })?;
    let api = tokio::spawn(serve_api(listener, state.clone(), finished.clone()));
    tracing::info!(address = %bound, "admin API listening");

    let mut health_tasks = spawn_health_checks(&config, &clients, &health, &store, &stop);
    let recovered = runs.recover(config.daemon.recovery).await?;
    if recovered > 0 {
        tracing::warn!(
            sessions = recovered,
            recovery = config.daemon.recovery.as_str(),
            "sessions left active by a crash"
        );
    }
    let mut scheduler = Scheduler::spawn(
        config.schedule.clone(),
        last_slots(&store, &config.schedule).await,
        Clock::system(),
        Arc::new(RunsLauncher(runs.clone())),
    );
    let mut retention = tokio::spawn(retention::run(
        config.retention.clone(),
        store.clone(),
        stop.clone(),
    ));
    let outbox = tokio::spawn(deliver_outboxes(runs.clone(), store.clone(), stop.clone()));
    let watchdog = tokio::spawn(notify::run_watchdog(notifier.clone(), finished.clone()));

    if state.admin_token().is_none() {
        tracing::warn!(variable = %config.daemon.admin_token_env, "no admin token set: POST /api/v1/runs is refused");
    }
    notifier.ready();
    notifier.status(&format!("admin API on {bound}; starting"));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        schedules = config.schedule.len(),
        "heistd ready"
    );

    tokio::pin!(shutdown);
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reload.recv() => {
                notifier.reloading();
                let previous_clients = runs.context().clients.clone();
                match apply_reload(config_path.as_deref(), &state, &runs, &mut scheduler).await {
                    Ok(new_config) => {
                        // Awaited, so no old checker can hold a breaker open
                        // after the release below.
                        for task in health_tasks.drain(..) {
                            task.abort();
                            let _ = task.await;
                        }
                        // Sessions still running on the previous clients must
                        // not keep breakers that no checker will release.
                        for service in previous_clients.all() {
                            service.force_breaker_open(false);
                        }
                        let clients = runs.context().clients.clone();
                        health_tasks = spawn_health_checks(&new_config, &clients, &health, &store, &stop);
                        retention.abort();
                        retention = tokio::spawn(retention::run(new_config.retention.clone(), store.clone(), stop.clone()));
                        tracing::info!(schedules = new_config.schedule.len(), "config reloaded");
                    }
                    Err(error) => {
                        tracing::error!(%error, "reload refused; still running on the previous config");
                        notifier.status(&format!("reload refused: {error}"));
                    }
                }
                notifier.ready();
            }
            Some((request, reply)) = run_requests.recv() => {
                let _ = reply.send(runs.start_requested(request).await);
            }
            _ = status_tick.tick() => {
                publish_status(&state, &scheduler, &notifier, bound);
            }
        }
    }

    tracing::info!("stopping: no new runs; letting turns in flight finish");
    notifier.stopping();
    let _ = stop_sender.send(true);
    scheduler.shutdown().await;
    // Requests already queued get an answer rather than waiting forever.
    run_requests.close();
    while let Ok((_, reply)) = run_requests.try_recv() {
        let _ = reply.send(Err(StartRunError::ShuttingDown));
    }
    let grace = Duration::from_millis(state.config().daemon.shutdown_grace_ms);
    runs.drain(grace).await;
    for task in health_tasks {
        task.abort();
    }
    // Delivery is idempotent and resumes at the next start: no need to
    // wait out a hanging memory service here.
    outbox.abort();
    let _ = retention.await;
    let _ = finish_sender.send(true);
    let _ = tokio::join!(api, watchdog);
    tracing::info!("stopped");
    Ok(())
}

/// How often memory writes left in any session's outbox are retried.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(15);

/// Delivers memory writes that outlived their session's turns (a memory
/// outage over its last turns, or a session interrupted), so the memory
/// service catches up with the store whenever it comes back.
async fn deliver_outboxes(runs: Arc<Runs>, store: Arc<Store>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(OUTBOX_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let pending_store = store.clone();
        let Ok(Ok(sessions)) =
            tokio::task::spawn_blocking(move || pending_store.sessions_with_pending_outbox(100))
                .await
        else {
            continue;
        };
        let running: Vec<String> = runs.running_session_ids();
        for session_id in sessions.into_iter().filter(|id| !running.contains(id)) {
            if let Err(error) = runs.deliver_outbox(&session_id).await {
                tracing::warn!(%session_id, %error, "outbox delivery failed");
            }
        }
        // Counted here, every pass, rather than after every turn's delivery:
        // a gauge read every scrape need not cost each turn a query.
        let count_store = store.clone();
        if let Ok(Ok(total)) =
            tokio::task::spawn_blocking(move || count_store.pending_outbox_total()).await
        {
            metrics::gauge!(crate::metrics::MEMORY_OUTBOX_PENDING).set(total as f64);
        }
    }
}

/// The launcher the scheduler calls: a run through the daemon's `Runs`.
struct RunsLauncher(Arc<Runs>);

impl Launcher for RunsLauncher {
    fn launch(
        &self,
        schedule: &ScheduleConfig,
        scheduled_time: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(
            self.0
                .clone()
                .run_scheduled(schedule.clone(), scheduled_time),
        )
    }
}

async fn serve_api(
    listener: tokio::net::TcpListener,
    state: Arc<DaemonState>,
    mut stop: watch::Receiver<bool>,
) {
    let router = crate::api::router(state);
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "admin API stopped");
    }
}

fn spawn_health_checks(
    config: &Config,
    clients: &Clients,
    board: &Arc<HealthBoard>,
    store: &Arc<Store>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let settings = |name: &str| match name {
        "llm" => config.llm.health.clone(),
        _ => config
            .services
            .iter()
            .find(|(service, _)| *service == name)
            .map(|(_, service)| service.health.clone())
            .unwrap_or_else(crate::config::HealthCheckConfig::quick_service),
    };
    clients
        .all()
        .into_iter()
        .map(|service| {
            tokio::spawn(checker::watch_service(
                service.clone(),
                settings(&service.name),
                board.clone(),
                store.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

/// Re-reads and applies the config; on any error the running one stays.
async fn apply_reload(
    path: Option<&std::path::Path>,
    state: &Arc<DaemonState>,
    runs: &Arc<Runs>,
    scheduler: &mut Scheduler,
) -> Result<Arc<Config>, String> {
    let new =
        config::load(path, config::process_environment()).map_err(|error| error.to_string())?;
    let scenario =
        Scenario::from_config(new.heist.scenario.as_deref()).map_err(|error| error.to_string())?;
    let old = state.config();
    if new.daemon.admin_address != old.daemon.admin_address {
        tracing::warn!(old = %old.daemon.admin_address, new = %new.daemon.admin_address, "daemon.admin_address changes at the next restart");
    }
    if new.store.path != old.store.path {
        tracing::warn!("store.path changes at the next restart");
    }
    let new = Arc::new(new);
    let clients = Clients::from_config(&new).map_err(|error| error.to_string())?;
    runs.replace_context(RunContext {
        config: new.clone(),
        scenario: Arc::new(scenario),
        clients,
    });
    scheduler.replace(new.schedule.clone());
    state.set_config(new.clone(), admin_token(&new));
    Ok(new)
}

fn publish_status(
    state: &DaemonState,
    scheduler: &Scheduler,
    notifier: &Notifier,
    bound: std::net::SocketAddr,
) {
    state.set_schedules(
        scheduler
            .next_runs()
            .into_iter()
            .map(|(name, trigger, enabled, next_run)| ScheduleStatus {
                name,
                trigger,
                enabled,
                next_run,
            })
            .collect(),
    );
    let down: Vec<String> = state
        .health
        .snapshot()
        .into_iter()
        .filter(|health| health.state == crate::health::HealthState::Down)
        .map(|health| health.service)
        .collect();
    let services = if down.is_empty() {
        "all services up".to_string()
    } else {
        format!("down: {}", down.join(", "))
    };
    notifier.status(&format!(
        "{} sessions running; {services}; admin API on {bound}",
        state.running_count()
    ));
}

async fn last_slots(
    store: &Arc<Store>,
    schedules: &[ScheduleConfig],
) -> HashMap<String, DateTime<Utc>> {
    let mut slots = HashMap::new();
    for schedule in schedules {
        let (store, name) = (store.clone(), schedule.name.clone());
        let last = tokio::task::spawn_blocking(move || store.last_scheduled_time(&name)).await;
        if let Ok(Ok(Some(text))) = last {
            if let Ok(slot) = DateTime::parse_from_rfc3339(&text) {
                slots.insert(schedule.name.clone(), slot.with_timezone(&Utc));
            }
        }
    }
    slots
}

fn admin_token(config: &Config) -> Option<String> {
    config::secret_from_environment(&config.daemon.admin_token_env)
}
