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

use crate::clients::Clients;
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
    let store_path = config.store.path.clone();
    let synchronous = config.store.synchronous;
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(&store_path, synchronous))
            .await
            .map_err(|error| StoreError::Worker(error.to_string()))??,
    );
    let clients = Clients::from_config(&config);
    let (stop_sender, stop) = watch::channel(false);
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
    let api = tokio::spawn(serve_api(listener, state.clone(), stop.clone()));
    tracing::info!(address = %bound, "admin API listening");

    let mut health_tasks = spawn_health_checks(&config, &clients, &health, &store, &stop);
    let recovered = runs.recover(config.daemon.recovery).await?;
    if recovered > 0 {
        tracing::warn!(sessions = recovered, recovery = ?config.daemon.recovery, "recovered sessions left active by a crash");
    }
    let mut scheduler = Scheduler::spawn(
        config.schedule.clone(),
        last_slots(&store, &config.schedule).await,
        Clock::system(),
        Arc::new(RunsLauncher(runs.clone())),
    );
    let retention = tokio::spawn(retention::run(
        config.retention.clone(),
        store.clone(),
        stop.clone(),
    ));
    let watchdog = tokio::spawn(notify::run_watchdog(notifier.clone(), stop.clone()));

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
                match apply_reload(config_path.as_deref(), &state, &runs, &mut scheduler).await {
                    Ok(new_config) => {
                        for task in health_tasks.drain(..) {
                            task.abort();
                        }
                        let clients = runs.context().clients.clone();
                        health_tasks = spawn_health_checks(&new_config, &clients, &health, &store, &stop);
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
    scheduler.shutdown().await;
    run_requests.close();
    let _ = stop_sender.send(true);
    let grace = Duration::from_millis(state.config().daemon.shutdown_grace_ms);
    runs.drain(grace).await;
    for task in health_tasks {
        task.abort();
    }
    let _ = tokio::join!(api, retention, watchdog);
    tracing::info!("stopped");
    Ok(())
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
    runs.replace_context(RunContext {
        config: new.clone(),
        scenario: Arc::new(scenario),
        clients: Clients::from_config(&new),
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
