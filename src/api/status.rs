//! The daemon's state over the admin API: the liveness and readiness
//! probes, `/metrics` for Prometheus and `GET /api/v1/status` (services,
//! schedules, running sessions, config, cluster), with the status JSON
//! shapes; and the readers `heistd check` and `heistd reload` use to ask a
//! running daemon for that status, since this module owns its shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::PROMETHEUS_CONTENT_TYPE;
use crate::clients::EndpointKnowledge;
use crate::daemon::state::{ConfigStatus, DaemonState, Readiness, RunningSession, ScheduleStatus};
use crate::store::{NodeRow, TokenTotals};

/// Each service's breaker state as a running daemon reports it in
/// `GET /api/v1/status`, if one answers at `address` within a moment (for
/// `heistd check`; this module owns the status shape it reads).
pub async fn breaker_states(address: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let client = crate::clients::http_builder(&[])
        .ok()?
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .ok()?;
    let status: serde_json::Value = client
        .get(format!("http://{address}/api/v1/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let services = status["services"].as_array()?;
    Some(
        services
            .iter()
            .filter_map(|service| {
                Some((
                    service["service"].as_str()?.to_string(),
                    service["breaker"].as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// The running daemon's pid and config status from `GET /api/v1/status`
/// at `address` (for `heistd reload`, which signals that pid and waits for
/// the reload count to move). The error says why the daemon could not be
/// read.
pub async fn config_status(address: &str) -> Result<(u32, ConfigStatus), String> {
    #[derive(Deserialize)]
    struct Wanted {
        pid: u32,
        config: ConfigStatus,
    }
    let url = format!("http://{address}/api/v1/status");
    let unreachable = |error: reqwest::Error| format!("no heistd answers at {url}: {error}");
    let client = crate::clients::http_builder(&[])
        .map_err(|error| error.to_string())?
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let wanted: Wanted = response.json().await.map_err(unreachable)?;
    Ok((wanted.pid, wanted.config))
}

// The status JSON shapes. Types other modules publish (`ServiceHealth`,
// `ScheduleStatus`, `RunningSession`, `Readiness`, the store's rows) are
// embedded as they serialize; the envelopes around them live here.

#[derive(Debug, Serialize)]
pub(super) struct Liveness {
    status: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct DaemonStatus {
    version: &'static str,
    /// The daemon's process id, which `heistd reload` signals.
    pid: u32,
    started_at: DateTime<Utc>,
    uptime_seconds: u64,
    /// The config file the daemon reads (again on reload); null: built-in
    /// defaults and the environment only.
    config_path: Option<String>,
    /// The audit store: the SQLite file, or the PostgreSQL URL without its
    /// password.
    store: String,
    /// Each service's health and circuit breaker state; the model's also
    /// what is known of each endpoint's model (`endpoints`).
    services: Vec<serde_json::Value>,
    schedules: Vec<ScheduleStatus>,
    running_sessions: Vec<RunningSession>,
    max_concurrent_sessions: u32,
    /// The applied config's generation and the last reload's outcome,
    /// which `heistd reload` waits on.
    config: ConfigStatus,
    /// The nodes sharing the store and who plays what (one node, no
    /// owners, on SQLite).
    cluster: ClusterStatus,
    /// Event streams open now (`GET /api/v1/events` and a session's), of
    /// at most `events.max_streams`.
    event_streams: usize,
    /// Today's tokens (UTC), from the store: every node's sessions on a
    /// shared store. Null when the store cannot answer.
    tokens: Option<TokensToday>,
}

/// The tokens of the sessions started today (UTC): all of them, and per
/// schedule. A session is counted on the day it started, whole.
#[derive(Debug, Serialize)]
struct TokensToday {
    /// The UTC day, `YYYY-MM-DD`.
    day: String,
    total: TokenTotals,
    /// Each configured schedule (at 0 when it ran nothing today), and any
    /// other schedule name found in today's sessions.
    schedules: BTreeMap<String, TokenTotals>,
    /// Runs no schedule started (`POST /api/v1/runs`).
    unscheduled: TokenTotals,
}

#[derive(Debug, Serialize)]
struct ClusterStatus {
    backend: &'static str,
    /// This daemon's node id; null on SQLite.
    node_id: Option<String>,
    nodes: Vec<NodeRow>,
    /// Every active session and the node that holds its lease.
    session_owners: Vec<SessionOwner>,
    max_concurrent_sessions: u32,
    /// Run requests waiting in the cluster's run queue (always 0 on
    /// SQLite, which has none).
    queued_runs: u64,
    /// Each configured schedule as the whole cluster sees it: the last
    /// slot any node claimed (from the store) and the next slot due.
    schedules: Vec<ClusterSchedule>,
}

#[derive(Debug, Serialize)]
struct ClusterSchedule {
    name: String,
    enabled: bool,
    /// The latest slot a session was created for, by any node.
    last_slot: Option<DateTime<Utc>>,
    /// The first slot after now and after `last_slot`; null when disabled
    /// or when the trigger never fires again.
    next_slot: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct SessionOwner {
    session_id: String,
    owner_node: Option<String>,
}

/// The process is up and its runtime answers; nothing else is checked, so
/// an orchestrator restarts heistd only when it is truly stuck.
pub(super) async fn liveness() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
}

/// 503 while a required service is not up; the body says which.
pub(super) async fn readiness(
    State(state): State<Arc<DaemonState>>,
) -> (StatusCode, Json<Readiness>) {
    let readiness = state.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

pub(super) async fn prometheus_metrics(State(state): State<Arc<DaemonState>>) -> Response {
    crate::daemon::telemetry::refresh_scrape_gauges(&state).await;
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        crate::metrics::render(&state.metrics),
    )
        .into_response()
}

pub(super) async fn daemon_status(State(state): State<Arc<DaemonState>>) -> Json<DaemonStatus> {
    Json(DaemonStatus {
        version: state.version,
        pid: std::process::id(),
        started_at: state.started_at,
        uptime_seconds: state.uptime().as_secs(),
        config_path: state.config_path().map(|path| path.display().to_string()),
        store: state.store.path().display().to_string(),
        services: service_statuses(&state),
        schedules: state.schedules(),
        running_sessions: state.running_sessions(),
        max_concurrent_sessions: state.config().daemon.max_concurrent_sessions,
        config: state.config_status(),
        cluster: cluster_status(&state).await,
        event_streams: state.events.open_streams(),
        tokens: tokens_today(&state).await,
    })
}

/// Each service's health; each endpoint of the model service also shows
/// what has been learned of its model (its context window, its characters
/// per token and where each came from), merged into that endpoint's entry.
fn service_statuses(state: &DaemonState) -> Vec<serde_json::Value> {
    state
        .health
        .snapshot()
        .into_iter()
        .map(|health| {
            let is_llm = health.service == crate::config::LLM_SERVICE;
            let mut value = serde_json::to_value(&health).unwrap_or_default();
            if is_llm {
                if health.endpoints.is_empty() {
                    let unchecked = state.llm_endpoints_unchecked();
                    value["endpoints"] = serde_json::to_value(unchecked).unwrap_or_default();
                }
                with_knowledge(&mut value, state.llm_endpoints());
            }
            value
        })
        .collect()
}

/// The model service's `endpoints`: one entry per endpoint the client
/// knows (a one-endpoint service has no health entries of its own), its
/// health fields (when the checker has them) and its model's knowledge.
fn with_knowledge(service: &mut serde_json::Value, knowledge: Vec<EndpointKnowledge>) {
    if knowledge.is_empty() {
        return;
    }
    let health: Vec<serde_json::Value> =
        service["endpoints"].as_array().cloned().unwrap_or_default();
    let merged: Vec<serde_json::Value> = knowledge
        .into_iter()
        .map(|known| {
            let mut entry = health
                .iter()
                .find(|endpoint| endpoint["name"].as_str() == Some(known.endpoint.as_str()))
                .cloned()
                .unwrap_or_else(|| serde_json::json!({ "name": known.endpoint }));
            if let (Some(entry), Ok(serde_json::Value::Object(known))) =
                (entry.as_object_mut(), serde_json::to_value(&known))
            {
                for (key, value) in known {
                    entry.entry(key).or_insert(value);
                }
            }
            entry
        })
        .collect();
    service["endpoints"] = serde_json::Value::Array(merged);
}

/// Today's token totals from the store (sessions started since 00:00 UTC).
async fn tokens_today(state: &DaemonState) -> Option<TokensToday> {
    let now = Utc::now();
    let midnight = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let rows = match state.store.token_totals_since(midnight).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "today's token totals could not be read");
            return None;
        }
    };
    let mut today = TokensToday {
        day: now.format("%Y-%m-%d").to_string(),
        total: TokenTotals::default(),
        schedules: state
            .config()
            .schedule
            .iter()
            .map(|schedule| (schedule.name.clone(), TokenTotals::default()))
            .collect(),
        unscheduled: TokenTotals::default(),
    };
    for row in rows {
        add_totals(&mut today.total, &row.totals);
        match row.schedule {
            Some(name) => today.schedules.insert(name, row.totals),
            None => Some(std::mem::replace(&mut today.unscheduled, row.totals)),
        };
    }
    Some(today)
}

fn add_totals(sum: &mut TokenTotals, more: &TokenTotals) {
    sum.sessions += more.sessions;
    sum.prompt_tokens += more.prompt_tokens;
    sum.completion_tokens += more.completion_tokens;
    sum.usage_estimated += more.usage_estimated;
    if let Some(cost) = more.cost {
        *sum.cost.get_or_insert(0.0) += cost;
    }
}

/// What the store says about the cluster; a store that cannot answer
/// shows no nodes rather than failing the whole status.
async fn cluster_status(state: &DaemonState) -> ClusterStatus {
    let config = state.config();
    let nodes = state.store.nodes().await.unwrap_or_default();
    let session_owners = state
        .store
        .session_owners()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(session_id, owner_node)| SessionOwner {
            session_id,
            owner_node,
        })
        .collect();
    ClusterStatus {
        backend: config.store.backend.as_str(),
        node_id: state.store.node_id().map(str::to_string),
        nodes,
        session_owners,
        max_concurrent_sessions: config.cluster.max_concurrent_sessions,
        queued_runs: state.store.queued_runs().await.unwrap_or_default(),
        schedules: cluster_schedules(state, &config).await,
    }
}

/// Every schedule's next slot from its trigger and the last slot claimed
/// in the store, so each node shows the same (a node's own scheduler may
/// be waiting out jitter, or not running the schedule at all).
async fn cluster_schedules(
    state: &DaemonState,
    config: &crate::config::Config,
) -> Vec<ClusterSchedule> {
    use crate::scheduler::Slots as _;
    let now = Utc::now();
    let mut schedules = Vec::with_capacity(config.schedule.len());
    for schedule in &config.schedule {
        let last_slot = state
            .store
            .last_scheduled_time(&schedule.name)
            .await
            .ok()
            .flatten()
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|slot| slot.with_timezone(&Utc));
        let after = last_slot.map_or(now, |last| last.max(now));
        let next_slot = schedule
            .enabled
            .then(|| schedule.trigger().next_after(after))
            .flatten();
        schedules.push(ClusterSchedule {
            name: schedule.name.clone(),
            enabled: schedule.enabled,
            last_slot,
            next_slot,
        });
    }
    schedules
}
