//! Metric names, buckets and the Prometheus recorder. Every metric heistd
//! exports is named here, with its unit in the name and bounded labels
//! (`service` is a configured service name, never a URL), so the README's
//! catalogue has one source.
//!
//! It must not hold application state; other modules record through the
//! `metrics` macros with these names.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const SERVICE_REQUESTS_TOTAL: &str = "heistd_service_requests_total";
pub const SERVICE_REQUEST_DURATION_SECONDS: &str = "heistd_service_request_duration_seconds";
pub const SESSIONS_TOTAL: &str = "heistd_sessions_total";
pub const TURNS_TOTAL: &str = "heistd_turns_total";
pub const TURN_DURATION_SECONDS: &str = "heistd_turn_duration_seconds";
pub const TOOL_CALLS_TOTAL: &str = "heistd_tool_calls_total";
pub const SERVICE_UP: &str = "heistd_service_up";
pub const HEALTH_CHECK_DURATION_SECONDS: &str = "heistd_health_check_duration_seconds";
pub const MEMORY_OUTBOX_PENDING: &str = "heistd_memory_outbox_pending";

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
