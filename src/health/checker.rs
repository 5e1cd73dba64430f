//! The periodic health checker: one task per service probes it every
//! interval (plus jitter, so checks do not align), and a [`Tracker`] turns
//! results into states like Envoy's active health checks: N consecutive
//! failures mark a service down, M consecutive successes mark it up again.
//! Transitions are logged, written to the audit store's `health_events`,
//! exported as metrics and, when configured, hold the service's circuit
//! breaker open while it is down. Checks run beside heist turns and never
//! block them. A failed probe of a service that answered a call within the
//! last interval, or was busy with one throughout, does not count: a
//! one-slot model server is busy, not down, so its breaker is never forced
//! open while it answers.
//!
//! A service of several endpoints has each probed every interval, each
//! with its own tracker (`heistd_endpoint_up`), its breaker held open while
//! it is down, and its outlier ejection ended when it answers; the service
//! is up while any endpoint is.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{probe, EndpointHealth, HealthBoard, HealthState, Probe, ServiceHealth};
use crate::clients::{Clients, ServiceClient};
use crate::config::{Config, HealthCheckConfig};
use crate::metrics as names;
use crate::store::StoreHandle;

/// Consecutive results in, state transitions out.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub state: HealthState,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
}

impl Tracker {
    pub fn new(config: &HealthCheckConfig) -> Self {
        Self {
            state: HealthState::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
            unhealthy_threshold: config.unhealthy_threshold,
            healthy_threshold: config.healthy_threshold,
        }
    }

    /// Records one check; returns `(from, to)` when the state changes. An
    /// unknown service is up at its first success (so a daemon is ready at
    /// once) and down after N failures like an up one.
    pub fn observe(&mut self, healthy: bool) -> Option<(HealthState, HealthState)> {
        if healthy {
            self.consecutive_successes += 1;
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures += 1;
            self.consecutive_successes = 0;
        }
        let next = match self.state {
            HealthState::Unknown if healthy => HealthState::Up,
            HealthState::Down if self.consecutive_successes >= self.healthy_threshold => {
                HealthState::Up
            }
            HealthState::Unknown | HealthState::Up
                if self.consecutive_failures >= self.unhealthy_threshold =>
            {
                HealthState::Down
            }
            unchanged => unchanged,
        };
        let from = std::mem::replace(&mut self.state, next);
        (from != next).then_some((from, next))
    }
}

/// Starts one checker per service of `clients`, each with its configured
/// settings, until `shutdown` becomes true.
pub fn spawn_all(
    config: &Config,
    clients: &Clients,
    board: &Arc<HealthBoard>,
    store: &StoreHandle,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    super::probes(clients)
        .into_iter()
        .map(|(service, kind)| {
            let settings = config.health_check(&service.name);
            tokio::spawn(watch_service(
                service,
                kind,
                settings,
                board.clone(),
                store.clone(),
                shutdown.clone(),
            ))
        })
        .collect()
}

/// Checks `service` until `shutdown` becomes true. The first check runs at
/// once, so readiness is known quickly.
pub async fn watch_service(
    service: ServiceClient,
    kind: Probe,
    config: HealthCheckConfig,
    board: Arc<HealthBoard>,
    store: StoreHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tracker = Tracker::new(&config);
    let name = service.name.clone();
    let mut since = Utc::now();
    // After a reload the checker restarts with new clients: carry the
    // service's known state over, so a reload is not a health transition,
    // and hold the new breaker open if the service is down.
    if let Some(previous) = board.get(&name) {
        tracker.state = previous.state;
        tracker.consecutive_failures = previous.consecutive_failures;
        tracker.consecutive_successes = previous.consecutive_successes;
        since = previous.since.unwrap_or(since);
        if config.breaker_follows_health && previous.state == HealthState::Down {
            service.hold_breaker_open();
        }
    }
    board.publish(health_of(
        &service,
        &tracker,
        &config,
        since,
        None,
        None,
        Vec::new(),
    ));
    create_series(&name, tracker.state);
    let mut endpoints: Vec<Tracker> = service
        .endpoints()
        .iter()
        .map(|_| tracker.clone())
        .collect();
    loop {
        let report = probe_each_endpoint(&service, kind, &config, &mut endpoints).await;
        let endpoint_health = endpoints_now(&service, &endpoints);
        let error = (!report.up).then(|| report.detail.clone());
        metrics::counter!(names::HEALTH_CHECKS_TOTAL, "service" => name.clone(), "outcome" => if report.up { "up" } else { "down" })
            .increment(1);
        if let Some((from, to)) = tracker.observe(report.up) {
            since = Utc::now();
            let reason = error.clone().unwrap_or_else(|| {
                format!("{} consecutive good checks", tracker.consecutive_successes)
            });
            if to == HealthState::Down {
                tracing::warn!(service = %name, from = from.as_str(), to = to.as_str(), %reason, "service health changed");
            } else {
                tracing::info!(service = %name, from = from.as_str(), to = to.as_str(), %reason, "service health changed");
            }
            metrics::counter!(names::HEALTH_TRANSITIONS_TOTAL, "service" => name.clone(), "to" => to.as_str()).increment(1);
            if let Err(error) = store
                .record_health_event(&name, from.as_str(), to.as_str(), &reason)
                .await
            {
                tracing::error!(service = %name, %error, "cannot record a health event in the audit store");
            }
        }
        export_up(&name, tracker.state);
        board.publish(health_of(
            &service,
            &tracker,
            &config,
            since,
            error,
            Some(report.latency_ms),
            endpoint_health,
        ));
        tokio::select! {
            _ = tokio::time::sleep(pause_before_next_check(&config)) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}

/// The interval plus a random jitter, so checks do not align.
fn pause_before_next_check(config: &HealthCheckConfig) -> Duration {
    let jitter = if config.jitter_ms == 0 {
        0
    } else {
        rand::rng().random_range(0..=config.jitter_ms)
    };
    Duration::from_millis(config.interval_ms + jitter)
}

/// Probes every endpoint of `service`: each endpoint's tracker moves, its
/// breaker follows it (when configured) and an ejected endpoint that
/// answers returns; the service's report is up when any endpoint is, with
/// the first endpoint's details (or the first one up).
async fn probe_each_endpoint(
    service: &ServiceClient,
    kind: Probe,
    config: &HealthCheckConfig,
    trackers: &mut [Tracker],
) -> super::HealthReport {
    let alone = trackers.len() == 1;
    let mut reports = Vec::with_capacity(trackers.len());
    for (index, tracker) in trackers.iter_mut().enumerate() {
        let target = service.on_endpoint(index);
        let endpoint = &service.endpoints()[index];
        let busy_before = endpoint.outstanding() > 0;
        let mut report = if alone {
            probe_with_passive_health(&target, kind, config).await
        } else {
            probe(&target, kind, Duration::from_millis(config.timeout_ms)).await
        };
        if !alone && !report.up && busy_before && endpoint.outstanding() > 0 {
            report.up = true;
            report.detail = format!("busy with calls (probe: {})", report.detail);
        }
        if report.up {
            service.guard().end_ejection(index);
        }
        if let Some((_, to)) = tracker.observe(report.up) {
            if config.breaker_follows_health {
                if to == HealthState::Down {
                    service.guard().hold_endpoint_open(index);
                } else {
                    service.guard().release_endpoint_hold(index);
                }
            }
        }
        let up = if tracker.state == HealthState::Up {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(names::ENDPOINT_UP, "service" => service.name.clone(), "endpoint" => endpoint.name().to_string()).set(up);
        reports.push(report);
    }
    let first_up = reports.iter().position(|report| report.up).unwrap_or(0);
    reports.swap_remove(first_up)
}

/// Each endpoint of `service` as it is now, with its checker's verdict.
fn endpoints_now(service: &ServiceClient, trackers: &[Tracker]) -> Vec<EndpointHealth> {
    service
        .endpoints()
        .iter()
        .zip(trackers)
        .map(|(endpoint, tracker)| EndpointHealth::of(endpoint, tracker.state))
        .collect()
}

/// One probe, corrected by passive health (Envoy's outlier detection): a
/// service that just answered a call, or was busy with one throughout (a
/// one-slot model server answers `/models` only when its slot is free), is
/// up, whatever a late probe says.
async fn probe_with_passive_health(
    service: &ServiceClient,
    kind: Probe,
    config: &HealthCheckConfig,
) -> super::HealthReport {
    let busy_before = service.stats.busy();
    let mut report = probe(service, kind, Duration::from_millis(config.timeout_ms)).await;
    if !report.up && answered_lately(service, busy_before, config) {
        report.up = true;
        report.detail = format!("busy or answering calls (probe: {})", report.detail);
    }
    report
}

/// The service completed a call within the last probe interval, or a call
/// to it was under way through the probe.
fn answered_lately(service: &ServiceClient, busy_before: bool, config: &HealthCheckConfig) -> bool {
    let window = Duration::from_millis(config.interval_ms + config.timeout_ms);
    service.stats.answered_within(window) || (busy_before && service.stats.busy())
}

fn health_of(
    service: &ServiceClient,
    tracker: &Tracker,
    config: &HealthCheckConfig,
    since: chrono::DateTime<Utc>,
    last_error: Option<String>,
    last_latency_ms: Option<f64>,
    endpoints: Vec<EndpointHealth>,
) -> ServiceHealth {
    ServiceHealth {
        service: service.name.clone(),
        state: tracker.state,
        since: Some(since),
        last_error,
        last_latency_ms,
        consecutive_failures: tracker.consecutive_failures,
        consecutive_successes: tracker.consecutive_successes,
        required: config.required,
        breaker: service.breaker_state().as_str().to_string(),
        endpoints,
    }
}

/// The only writer of `heistd_service_up`: the thresholded state, not one
/// probe's result.
fn export_up(service: &str, state: HealthState) {
    let up = if state == HealthState::Up { 1.0 } else { 0.0 };
    metrics::gauge!(names::SERVICE_UP, "service" => service.to_string()).set(up);
}

/// The service's health series exist before the first check, so the first
/// transition shows in `increase()` and the dashboard lists the service.
fn create_series(service: &str, state: HealthState) {
    export_up(service, state);
    for outcome in names::labels::HEALTH_OUTCOMES {
        metrics::counter!(names::HEALTH_CHECKS_TOTAL, "service" => service.to_string(), "outcome" => outcome)
            .increment(0);
        metrics::counter!(names::HEALTH_TRANSITIONS_TOTAL, "service" => service.to_string(), "to" => outcome)
            .increment(0);
    }
    let _ =
        metrics::histogram!(names::HEALTH_CHECK_DURATION_SECONDS, "service" => service.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(unhealthy: u32, healthy: u32) -> Tracker {
        Tracker::new(&HealthCheckConfig {
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            ..HealthCheckConfig::quick_service()
        })
    }

    #[test]
    fn down_after_exactly_n_failures_up_after_exactly_m_successes() {
        let mut tracker = tracker(3, 2);
        assert_eq!(
            tracker.observe(true),
            Some((HealthState::Unknown, HealthState::Up))
        );
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.observe(false), None);
        assert_eq!(
            tracker.observe(true),
            None,
            "a success resets the failure count"
        );
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.observe(false), None);
        assert_eq!(
            tracker.observe(false),
            Some((HealthState::Up, HealthState::Down))
        );
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.observe(true), None);
        assert_eq!(
            tracker.observe(true),
            Some((HealthState::Down, HealthState::Up))
        );
    }

    #[test]
    fn an_unknown_service_goes_down_after_n_failures() {
        let mut tracker = tracker(2, 5);
        assert_eq!(tracker.observe(false), None);
        assert_eq!(
            tracker.observe(false),
            Some((HealthState::Unknown, HealthState::Down))
        );
    }
}
