//! The daemon's shared, read-mostly state: what the admin API shows, the
//! one [`Registry`] of running sessions, and the door through which the API
//! asks for runs. The daemon's tasks own the behaviour; this only holds what
//! they publish.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::control::Steering;
use super::events::EventHub;
use crate::config::Config;
use crate::health::HealthBoard;
use crate::store::StoreHandle;

/// A schedule as `/api/v1/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScheduleStatus {
    pub name: String,
    /// `cron "0 2 * * *" Europe/London` or `every 30m`.
    pub trigger: String,
    pub enabled: bool,
    pub next_run: Option<DateTime<Utc>>,
}

/// A session running now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunningSession {
    pub session_id: String,
    pub schedule: Option<String>,
    pub started_at: DateTime<Utc>,
    pub planned_turns: u32,
}

/// A request to start a heist now (`POST /api/v1/runs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRequest {
    pub turns: Option<u32>,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StartRunError {
    #[error("{running} sessions are running, the configured maximum")]
    AtCapacity { running: usize },
    /// The cluster's run queue is full (a shared store only).
    #[error("the run queue holds {queued} requests waiting for a node, daemon.max_queued_runs = {max_queued}")]
    QueueFull { queued: u64, max_queued: u32 },
    /// A daily token budget is spent (`reason` names its key and figures)
    /// until the next UTC day, `retry_after_seconds` away.
    #[error("{reason}")]
    BudgetSpent {
        reason: String,
        retry_after_seconds: u64,
    },
    #[error("heistd is shutting down")]
    ShuttingDown,
    #[error("the audit store cannot take new runs: {0}")]
    StoreUnavailable(String),
    #[error("cannot start the session: {0}")]
    Failed(String),
}

/// A run request with the channel its answer (the session id) goes back on.
pub type RunCommand = (RunRequest, oneshot::Sender<Result<String, StartRunError>>);

/// Which config the daemon runs and how its last reload went, so that
/// `heistd reload` (systemd's `ExecReload=`) can wait for the outcome of
/// the SIGHUP it sent and fail when the config was refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigStatus {
    /// 1 at start, one more per applied reload.
    pub generation: u64,
    /// Reloads attempted, applied or refused: the number a waiting
    /// `heistd reload` watches move.
    pub reloads: u64,
    pub last_reload_at: Option<DateTime<Utc>>,
    /// Why the last reload was refused, naming the key at fault; `None`
    /// once one is applied.
    pub last_reload_error: Option<String>,
}

/// Why `/readyz` says what it says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    pub store_open: bool,
    /// Why the store cannot take writes, while it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_problem: Option<String>,
    /// Required services the health checker has marked down (or not yet up).
    pub services_not_up: Vec<String>,
}

pub struct DaemonState {
    pub version: &'static str,
    pub started_at: DateTime<Utc>,
    started: Instant,
    pub store: StoreHandle,
    pub health: Arc<HealthBoard>,
    pub metrics: PrometheusHandle,
    /// Live events for the admin API's event streams.
    pub events: Arc<EventHub>,
    config: RwLock<Arc<Config>>,
    schedules: RwLock<Vec<ScheduleStatus>>,
    registry: Registry,
    run_commands: mpsc::Sender<RunCommand>,
    /// The bearer token `POST /api/v1/runs` demands; `None` turns it off.
    admin_token: RwLock<Option<String>>,
    config_status: RwLock<ConfigStatus>,
    /// The config file the daemon reads (again on reload), for the status
    /// to name; `None`: built-in defaults and the environment.
    config_path: Option<PathBuf>,
    /// The model client the runs use, for the status to show what it has
    /// learned of each endpoint's model.
    llm: RwLock<Option<crate::clients::LlmClient>>,
    /// Cancels and schedule steering, set once the runs exist.
    steering: OnceLock<Arc<Steering>>,
}

impl DaemonState {
    pub fn new(
        config: Arc<Config>,
        store: StoreHandle,
        health: Arc<HealthBoard>,
        metrics: PrometheusHandle,
        run_commands: mpsc::Sender<RunCommand>,
        admin_token: Option<String>,
    ) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            started_at: Utc::now(),
            started: Instant::now(),
            store,
            health,
            metrics,
            events: Arc::new(EventHub::default()),
            config: RwLock::new(config),
            schedules: RwLock::new(Vec::new()),
            registry: Registry::default(),
            run_commands,
            admin_token: RwLock::new(admin_token),
            config_status: RwLock::new(ConfigStatus {
                generation: 1,
                reloads: 0,
                last_reload_at: None,
                last_reload_error: None,
            }),
            config_path: None,
            llm: RwLock::new(None),
            steering: OnceLock::new(),
        }
    }

    /// The model client the runs use (again after a reload).
    pub fn set_llm(&self, llm: crate::clients::LlmClient) {
        *self.llm.write() = Some(llm);
    }

    /// What the model client has learned of each endpoint's model: window,
    /// token ratio and where they came from.
    pub fn llm_endpoints(&self) -> Vec<crate::clients::EndpointKnowledge> {
        self.llm
            .read()
            .as_ref()
            .map(crate::clients::LlmClient::endpoints)
            .unwrap_or_default()
    }

    /// The model client's endpoints as they stand, before any health check
    /// has judged them (`up` unknown): what the status shows until one has.
    pub fn llm_endpoints_unchecked(&self) -> Vec<crate::health::EndpointHealth> {
        self.llm.read().as_ref().map_or_else(Vec::new, |llm| {
            llm.service
                .endpoints()
                .iter()
                .map(|endpoint| {
                    crate::health::EndpointHealth::of(endpoint, crate::health::HealthState::Unknown)
                })
                .collect()
        })
    }

    /// Hands the API the daemon's steering (once, when the runs exist).
    pub fn set_steering(&self, steering: Arc<Steering>) {
        let _ = self.steering.set(steering);
    }

    /// `None` until the daemon has set it (tests of the API alone).
    pub fn steering(&self) -> Option<Arc<Steering>> {
        self.steering.get().cloned()
    }

    /// Names the config file the daemon was started with.
    pub fn with_config_path(mut self, path: Option<PathBuf>) -> Self {
        self.config_path = path;
        self
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    pub fn set_config(&self, config: Arc<Config>, admin_token: Option<String>) {
        *self.config.write() = config;
        *self.admin_token.write() = admin_token;
    }

    pub fn config_status(&self) -> ConfigStatus {
        self.config_status.read().clone()
    }

    /// Records a reload's outcome: `Ok` when the new config was applied
    /// (through [`DaemonState::set_config`]), the reason when refused.
    pub fn record_reload(&self, outcome: Result<(), String>) {
        let mut status = self.config_status.write();
        status.reloads += 1;
        status.last_reload_at = Some(Utc::now());
        match outcome {
            Ok(()) => {
                status.generation += 1;
                status.last_reload_error = None;
            }
            Err(error) => status.last_reload_error = Some(error),
        }
    }

    pub fn admin_token(&self) -> Option<String> {
        self.admin_token.read().clone()
    }

    pub fn schedules(&self) -> Vec<ScheduleStatus> {
        self.schedules.read().clone()
    }

    pub fn set_schedules(&self, schedules: Vec<ScheduleStatus>) {
        *self.schedules.write() = schedules;
    }

    pub fn running_sessions(&self) -> Vec<RunningSession> {
        self.registry.sessions()
    }

    pub fn running_count(&self) -> usize {
        self.registry.count()
    }

    /// The running sessions, as `daemon::runs` registers them.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub async fn readiness(&self) -> Readiness {
        let services_not_up = self.health.required_not_up();
        let store_problem = self.store.readiness().await.err();
        let store_open = store_problem.is_none();
        Readiness {
            ready: services_not_up.is_empty() && store_open,
            store_open,
            store_problem,
            services_not_up,
        }
    }

    /// Asks the daemon to start a heist now; the answer is its session id.
    pub async fn start_run(&self, request: RunRequest) -> Result<String, StartRunError> {
        let (reply, answer) = oneshot::channel();
        self.run_commands
            .send((request, reply))
            .await
            .map_err(|_| StartRunError::ShuttingDown)?;
        answer.await.map_err(|_| StartRunError::ShuttingDown)?
    }
}

/// The one registry of running sessions: what `/api/v1/status` lists, what
/// the session cap counts, and the tasks the drain aborts when the grace
/// period runs out.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<String, RegisteredRun>>,
}

struct RegisteredRun {
    session: RunningSession,
    task: AbortHandle,
    /// Tells the run's session it is cancelled (the operator's reason).
    cancel: watch::Sender<Option<String>>,
}

impl Registry {
    /// Spawns a run's task and registers it under one lock, so that the
    /// task's own [`Registry::remove`] (when it ends) always follows this.
    pub fn spawn(
        &self,
        session: RunningSession,
        cancel: watch::Sender<Option<String>>,
        spawn: impl FnOnce() -> JoinHandle<()>,
    ) -> JoinHandle<()> {
        let mut entries = self.entries.lock();
        let handle = spawn();
        entries.insert(
            session.session_id.clone(),
            RegisteredRun {
                session,
                task: handle.abort_handle(),
                cancel,
            },
        );
        handle
    }

    /// Tells a session running here that it is cancelled; `false` when it
    /// does not run here. Telling it again changes nothing.
    pub fn cancel(&self, session_id: &str, reason: &str) -> bool {
        let entries = self.entries.lock();
        let Some(run) = entries.get(session_id) else {
            return false;
        };
        run.cancel.send_if_modified(|cancel| {
            if cancel.is_some() {
                return false;
            }
            *cancel = Some(reason.to_string());
            true
        });
        true
    }

    pub fn remove(&self, session_id: &str) {
        self.entries.lock().remove(session_id);
    }

    pub fn sessions(&self) -> Vec<RunningSession> {
        self.entries
            .lock()
            .values()
            .map(|run| run.session.clone())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn session_ids(&self) -> Vec<String> {
        self.entries.lock().keys().cloned().collect()
    }

    /// Takes every run out, with the handle to abort its task.
    pub fn drain(&self) -> Vec<(String, AbortHandle)> {
        std::mem::take(&mut *self.entries.lock())
            .into_iter()
            .map(|(session_id, run)| (session_id, run.task))
            .collect()
    }
}
