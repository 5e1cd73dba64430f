//! Health checks: whether each configured service answers its health
//! endpoint (`GET /health` for companions, `GET /models` for the LLM, which
//! the prototype never checked at all). The periodic checker of the daemon
//! builds on [`check_all`].
//!
//! It reports, and (the checker) holds a down service's breaker open; it
//! must not change how calls are otherwise made.

pub mod checker;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::time::Instant;

use crate::clients::{CallError, Clients, ServiceClient};
use crate::metrics as names;

#[derive(Debug, Clone)]
pub struct HealthReport {
    pub service: String,
    pub base_url: String,
    pub up: bool,
    pub latency_ms: f64,
    pub detail: String,
    /// The service's circuit breaker as this process sees it.
    pub breaker: &'static str,
}

/// How a service shows it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A companion: `GET /health` answers `{"status": "healthy"}`.
    Health,
    /// A model server has no standard health endpoint: `GET /models`
    /// answering at all is up, and the models it lists are the detail.
    ModelList,
}

/// Every service of `clients` with the probe that fits it.
pub fn probes(clients: &Clients) -> Vec<(ServiceClient, Probe)> {
    let mut probes: Vec<(ServiceClient, Probe)> = clients
        .companions()
        .into_iter()
        .map(|service| (service.clone(), Probe::Health))
        .collect();
    probes.push((clients.llm.service.clone(), Probe::ModelList));
    probes
}

/// Checks every service once, concurrently.
pub async fn check_all(clients: &Clients) -> Vec<HealthReport> {
    let mut checks = tokio::task::JoinSet::new();
    for (index, (service, kind)) in probes(clients).into_iter().enumerate() {
        checks.spawn(async move {
            let report = probe(&service, kind, crate::clients::PROBE_TIMEOUT).await;
            (index, report)
        });
    }
    let mut reports: Vec<(usize, HealthReport)> = checks.join_all().await;
    reports.sort_by_key(|(index, _)| *index);
    reports.into_iter().map(|(_, report)| report).collect()
}

/// Probes one service once within `limit`.
pub async fn probe(
    service: &ServiceClient,
    kind: Probe,
    limit: std::time::Duration,
) -> HealthReport {
    let started = Instant::now();
    let path = match kind {
        Probe::Health => "/health",
        Probe::ModelList => "/models",
    };
    let outcome: Result<serde_json::Value, CallError> =
        service.probe_json_within(path, limit).await;
    let seconds = started.elapsed().as_secs_f64();
    // The probe's raw result goes to the check metrics only; `service_up`
    // has one writer, the checker's thresholded state.
    metrics::histogram!(names::HEALTH_CHECK_DURATION_SECONDS, "service" => service.name.clone())
        .record(seconds);
    let (up, detail) = match outcome {
        Ok(body) => judge(kind, &body),
        Err(error) => (false, error.to_string()),
    };
    HealthReport {
        service: service.name.clone(),
        base_url: service.base_url.clone(),
        up,
        latency_ms: seconds * 1000.0,
        detail,
        breaker: service.breaker_state().as_str(),
    }
}

/// Whether a probe's answer means up, and what to show of it.
fn judge(kind: Probe, body: &serde_json::Value) -> (bool, String) {
    match kind {
        Probe::ModelList => {
            let models: Vec<&str> = body["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|model| model["id"].as_str())
                .collect();
            let listed = if models.is_empty() {
                "none listed".to_string()
            } else {
                models.join(", ")
            };
            (true, format!("models: {listed}"))
        }
        Probe::Health => {
            let status = body["status"].as_str().unwrap_or("unknown");
            (status == "healthy", format!("status: {status}"))
        }
    }
}

/// What the health checker last concluded about a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not yet checked enough to say.
    Unknown,
    Up,
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// One service on the health board.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceHealth {
    pub service: String,
    pub state: HealthState,
    /// When the service entered `state`.
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<f64>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Counts for `/readyz`.
    pub required: bool,
    /// The service's circuit breaker: closed, open or half_open (with
    /// several endpoints: closed while any endpoint's is).
    pub breaker: String,
    /// Each endpoint as of the last check, primaries first.
    pub endpoints: Vec<EndpointHealth>,
}

/// One endpoint of a service on the health board.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointHealth {
    pub name: String,
    pub base_url: String,
    /// The model it runs; empty for a tool service.
    pub model: String,
    /// 0: a primary; 1, 2, ..: the fallback lists in order.
    pub tier: u32,
    /// Its own health check's verdict.
    pub up: HealthState,
    /// When its outlier ejection ends; null when it is not ejected.
    pub ejected_until: Option<DateTime<Utc>>,
    /// Attempts in flight to it.
    pub outstanding: u32,
    /// Its bulkhead: configured, or the slots its server reported.
    pub max_concurrent: u32,
    pub breaker: String,
}

impl EndpointHealth {
    /// What `endpoint` shows now, with its checker's verdict `up`.
    pub fn of(endpoint: &crate::resilience::Endpoint, up: HealthState) -> Self {
        let snapshot = endpoint.snapshot();
        Self {
            name: snapshot.name,
            base_url: snapshot.base_url,
            model: snapshot.model,
            tier: snapshot.tier,
            up,
            ejected_until: snapshot.ejected_for.and_then(|left| {
                chrono::Duration::from_std(left)
                    .ok()
                    .map(|left| Utc::now() + left)
            }),
            outstanding: snapshot.outstanding,
            max_concurrent: snapshot.max_concurrent,
            breaker: snapshot.breaker.to_string(),
        }
    }
}

/// Every service's health, published by the checker, read by the API.
#[derive(Debug, Default)]
pub struct HealthBoard {
    services: RwLock<BTreeMap<String, ServiceHealth>>,
}

impl HealthBoard {
    pub fn snapshot(&self) -> Vec<ServiceHealth> {
        self.services.read().values().cloned().collect()
    }

    pub fn get(&self, service: &str) -> Option<ServiceHealth> {
        self.services.read().get(service).cloned()
    }

    pub fn publish(&self, health: ServiceHealth) {
        self.services.write().insert(health.service.clone(), health);
    }

    /// Required services that are not known to be up.
    pub fn required_not_up(&self) -> Vec<String> {
        self.snapshot()
            .into_iter()
            .filter(|health| health.required && health.state != HealthState::Up)
            .map(|health| health.service)
            .collect()
    }
}
