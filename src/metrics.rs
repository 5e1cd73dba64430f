//! Metric names, buckets and the Prometheus recorder. Every metric heistd
//! exports is named here, with its unit in the name and bounded labels
//! (`service` is a configured service name, never a URL), so the README's
//! catalogue has one source.
//!
//! It must not hold application state; other modules record through the
//! `metrics` macros with these names.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Logical calls (all attempts of one call) by outcome: success, error,
/// timeout, rejected_open, rejected_budget, rejected_bulkhead.
pub const SERVICE_REQUESTS_TOTAL: &str = "heistd_service_requests_total";
pub const SERVICE_REQUEST_DURATION_SECONDS: &str = "heistd_service_request_duration_seconds";
/// Attempts that reached the network, by the attempt's own outcome.
pub const SERVICE_ATTEMPTS_TOTAL: &str = "heistd_service_attempts_total";
pub const SERVICE_ATTEMPT_DURATION_SECONDS: &str = "heistd_service_attempt_duration_seconds";
/// Retries sent (attempts after the first).
pub const SERVICE_RETRIES_TOTAL: &str = "heistd_service_retries_total";
/// Logical calls by kind: successful_without_retry, successful_with_retry,
/// failed_without_retry, failed_with_retry.
pub const SERVICE_CALLS_BY_RETRY_TOTAL: &str = "heistd_service_calls_by_retry_total";
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "heistd_retry_budget_exhausted_total";
/// One series per state (closed, open, half_open), 1 for the current one.
pub const BREAKER_STATE: &str = "heistd_circuit_breaker_state";
pub const BREAKER_TRANSITIONS_TOTAL: &str = "heistd_circuit_breaker_transitions_total";
pub const SESSIONS_TOTAL: &str = "heistd_sessions_total";
pub const TURNS_TOTAL: &str = "heistd_turns_total";
pub const TURN_DURATION_SECONDS: &str = "heistd_turn_duration_seconds";
pub const TOOL_CALLS_TOTAL: &str = "heistd_tool_calls_total";
pub const SERVICE_UP: &str = "heistd_service_up";
pub const HEALTH_CHECK_DURATION_SECONDS: &str = "heistd_health_check_duration_seconds";
/// Periodic checks by result (`up`, `down`).
pub const HEALTH_CHECKS_TOTAL: &str = "heistd_health_checks_total";
/// Health state changes, by the state entered.
pub const HEALTH_TRANSITIONS_TOTAL: &str = "heistd_health_transitions_total";
/// Heists running now.
pub const SESSIONS_RUNNING: &str = "heistd_sessions_running";
/// Scheduled slots by outcome (`launched`, `skipped_overlap`, ...).
pub const SCHEDULE_RUNS_TOTAL: &str = "heistd_schedule_runs_total";
/// Audit rows pruned by retention (sessions).
pub const RETENTION_PRUNED_SESSIONS_TOTAL: &str = "heistd_retention_pruned_sessions_total";
pub const MEMORY_OUTBOX_PENDING: &str = "heistd_memory_outbox_pending";
/// Nodes that heartbeat within a lease period (1 on SQLite: this one).
pub const CLUSTER_NODES_ALIVE: &str = "heistd_cluster_nodes_alive";
/// Sessions this node took over from a node whose lease ran out.
pub const CLUSTER_TAKEOVERS_TOTAL: &str = "heistd_cluster_takeovers_total";
/// Heartbeats that failed, or found a session's lease gone.
pub const CLUSTER_LEASE_RENEWAL_FAILURES_TOTAL: &str =
    "heistd_cluster_lease_renewal_failures_total";
/// Turn commits refused because another node owns the session now.
pub const CLUSTER_FENCED_WRITES_TOTAL: &str = "heistd_cluster_fenced_writes_total";

/// Latency buckets from 1 ms to two minutes: tools answer in milliseconds,
/// an LLM in tens of seconds.
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later
/// calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &DURATION_BUCKETS_SECONDS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (a test harness);
            // the handle still renders what this recorder would have seen.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
