//! Metric names, their help text, the label values known in advance,
//! buckets and the Prometheus recorder. Every metric heistd exports is named
//! here, with its unit in the name and bounded labels (`service` is a
//! configured service name, never a URL), so the README's catalogue has one
//! source, and [`describe`] gives every family the HELP line `promtool
//! check metrics` asks for.
//!
//! It must not hold application state; other modules record through the
//! `metrics` macros with these names, and the daemon creates the series it
//! knows at start (see `daemon::telemetry`) with the label values below.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Logical calls (all attempts of one call) by outcome: success, error,
/// timeout, rejected_open, rejected_budget, rejected_bulkhead, rate_limited.
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
/// The health checker's thresholded state; written by the checker only.
pub const SERVICE_UP: &str = "heistd_service_up";
pub const HEALTH_CHECK_DURATION_SECONDS: &str = "heistd_health_check_duration_seconds";
/// Periodic checks by result (`up`, `down`).
pub const HEALTH_CHECKS_TOTAL: &str = "heistd_health_checks_total";
/// Health state changes, by the state entered.
pub const HEALTH_TRANSITIONS_TOTAL: &str = "heistd_health_transitions_total";
/// Heists running now.
pub const SESSIONS_RUNNING: &str = "heistd_sessions_running";
/// Scheduled slots by outcome (`launched`, `skipped_overlap`,
/// `skipped_paused`, `skipped_budget`).
pub const SCHEDULE_RUNS_TOTAL: &str = "heistd_schedule_runs_total";
/// Token budgets found spent, by scope (`session`, `schedule`, `daemon`):
/// a session ended, a slot skipped or a run request refused for one.
pub const BUDGET_EXHAUSTED_TOTAL: &str = "heistd_budget_exhausted_total";
/// The slot a schedule last handled (launched or skipped), Unix seconds.
pub const SCHEDULE_LAST_RUN_TIMESTAMP_SECONDS: &str = "heistd_schedule_last_run_timestamp_seconds";
/// The slot a schedule waits for next, Unix seconds; in the past when the
/// schedule has stopped firing.
pub const SCHEDULE_NEXT_RUN_TIMESTAMP_SECONDS: &str = "heistd_schedule_next_run_timestamp_seconds";
/// Audit rows pruned by retention (sessions).
pub const RETENTION_PRUNED_SESSIONS_TOTAL: &str = "heistd_retention_pruned_sessions_total";
pub const MEMORY_OUTBOX_PENDING: &str = "heistd_memory_outbox_pending";
/// Age of the oldest memory write still waiting, 0 when none waits.
pub const MEMORY_OUTBOX_OLDEST_PENDING_AGE_SECONDS: &str =
    "heistd_memory_outbox_oldest_pending_age_seconds";
/// Memory writes set aside for good (data the memory service never got).
pub const MEMORY_OUTBOX_ABANDONED: &str = "heistd_memory_outbox_abandoned";
/// Reconciliation passes by outcome: `exact` (every count matched),
/// `redelivered` (some session was short), `error` (a count could not be read).
pub const MEMORY_RECONCILE_RUNS_TOTAL: &str = "heistd_memory_reconcile_runs_total";
/// Memory writes marked for delivery again because the memory service no
/// longer held them.
pub const MEMORY_RECONCILE_REDELIVERED_TOTAL: &str = "heistd_memory_reconcile_redelivered_total";
/// New memory service instance ids seen (it started empty).
pub const MEMORY_INSTANCE_CHANGES_TOTAL: &str = "heistd_memory_instance_changes_total";
/// Webhook delivery attempts, by receiver and outcome (`delivered`,
/// `failed`: to be tried again, `abandoned`: given up).
pub const NOTIFY_DELIVERIES_TOTAL: &str = "heistd_notify_deliveries_total";
/// Webhook events given up after the receiver's `max_attempts`, by receiver.
pub const NOTIFY_ABANDONED_TOTAL: &str = "heistd_notify_abandoned_total";
pub const STORE_SIZE_BYTES: &str = "heistd_store_size_bytes";
pub const STORE_WAL_SIZE_BYTES: &str = "heistd_store_wal_size_bytes";
/// 1 when `/readyz` would answer 200.
pub const READY: &str = "heistd_ready";
/// Reloads by outcome (`applied`, `refused`).
pub const CONFIG_RELOADS_TOTAL: &str = "heistd_config_reloads_total";
/// 1 unless the last reload was refused.
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "heistd_config_last_reload_successful";
/// The applied config's generation, the number `heistd reload` waits on.
pub const CONFIG_GENERATION: &str = "heistd_config_generation";
/// Always 1; the labels carry the version and commit.
pub const BUILD_INFO: &str = "heistd_build_info";
// The process collector's conventional names (as every Prometheus client
// library exports them), so standard dashboards and alerts find them.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// The limit beside the count, as the Go and Python clients export it, so
/// an alert can compare the two.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Model replies the server cut at `max_tokens` (`finish_reason: length`).
pub const MODEL_REPLIES_TRUNCATED_TOTAL: &str = "heistd_model_replies_truncated_total";
/// Prompts trimmed to fit the model's context window.
pub const MODEL_PROMPTS_TRIMMED_TOTAL: &str = "heistd_model_prompts_trimmed_total";
/// Time sessions spent paused while the model was unavailable.
pub const MODEL_OUTAGE_PAUSE_SECONDS_TOTAL: &str = "heistd_model_outage_pause_seconds_total";
/// Requests an endpoint's rate limits (its `rpm`, `tpm`, or the provider's
/// hold) refused because room came only after the call's deadline (labels
/// `service`, `endpoint`); none of them reached the network.
pub const MODEL_RATE_LIMITED_TOTAL: &str = "heistd_model_rate_limited_total";
/// 1 while the audit store cannot take writes (full, read-only, deleted).
pub const STORE_UNAVAILABLE: &str = "heistd_store_unavailable";
/// Sessions that paused for a store outage, by how the pause ended.
pub const STORE_PAUSES_TOTAL: &str = "heistd_store_pauses_total";
/// Connections closed because a listener or one source was at its cap.
pub const HTTP_CONNECTIONS_SHED: &str = "heistd_http_connections_shed_total";
/// Event streams open on the admin API now.
pub const EVENT_STREAMS: &str = "heistd_event_streams";
/// Event streams the daemon closed, by why (a client that left is not one).
pub const EVENT_STREAMS_CLOSED_TOTAL: &str = "heistd_event_streams_closed_total";
/// Nodes that heartbeat within a lease period (1 on SQLite: this one).
pub const CLUSTER_NODES_ALIVE: &str = "heistd_cluster_nodes_alive";
/// Nodes that stopped heartbeating without a clean stop, in the last hour.
pub const CLUSTER_NODES_LOST: &str = "heistd_cluster_nodes_lost";
/// Sessions this node took over from a node whose lease ran out.
pub const CLUSTER_TAKEOVERS_TOTAL: &str = "heistd_cluster_takeovers_total";
/// Heartbeats that failed, or found a session's lease gone.
pub const CLUSTER_LEASE_RENEWAL_FAILURES_TOTAL: &str =
    "heistd_cluster_lease_renewal_failures_total";
/// Turn commits refused because another node owns the session now.
pub const CLUSTER_FENCED_WRITES_TOTAL: &str = "heistd_cluster_fenced_writes_total";
/// Model tokens by service, endpoint, model and kind (`prompt`, `completion`): the
/// server's `usage`, or heistd's estimate for a reply without one.
pub const MODEL_TOKENS_TOTAL: &str = "heistd_model_tokens_total";
/// What those tokens cost at the configured prices, by service, endpoint
/// and model;
/// no series at all without prices. A fraction, so it is kept by
/// [`add_to_cost`] and written by [`render`], not by the recorder (whose
/// counters count whole numbers).
pub const MODEL_COST_TOTAL: &str = "heistd_model_cost_total";
/// Sessions waiting out an outage now, by what they wait for (`model`,
/// `store`).
pub const SESSIONS_WAITING: &str = "heistd_sessions_waiting";
/// 1 while a schedule is paused (the store's state, on every node).
pub const SCHEDULE_PAUSED: &str = "heistd_schedule_paused";
/// Per endpoint of a service (labels `service`, `endpoint`): the health
/// checker's verdict on it.
pub const ENDPOINT_UP: &str = "heistd_endpoint_up";
/// 1 while outlier detection keeps the endpoint out of the pick.
pub const ENDPOINT_EJECTED: &str = "heistd_endpoint_ejected";
pub const ENDPOINT_EJECTIONS_TOTAL: &str = "heistd_endpoint_ejections_total";
/// Attempts in flight to the endpoint now (what the pick compares).
pub const ENDPOINT_OUTSTANDING: &str = "heistd_endpoint_outstanding";
pub const ENDPOINT_ATTEMPT_DURATION_SECONDS: &str = "heistd_endpoint_attempt_duration_seconds";
/// Model replies a fallback endpoint gave (labels `from`, the primary
/// model, and `to`, the fallback's model).
pub const MODEL_FALLBACKS_TOTAL: &str = "heistd_model_fallbacks_total";

/// Label values known before the first event, so their series can start at
/// 0 and `rate()` sees the first increment. Each list is the whole set the
/// recording code writes for that label.
pub mod labels {
    pub const REQUEST_OUTCOMES: [&str; 7] = [
        "success",
        "error",
        "timeout",
        "rejected_open",
        "rejected_budget",
        "rejected_bulkhead",
        "rate_limited",
    ];
    pub const ATTEMPT_OUTCOMES: [&str; 7] = [
        "success",
        "timeout",
        "connect_error",
        "server_error",
        "client_error",
        "decode_error",
        "refused",
    ];
    pub const RETRY_KINDS: [&str; 4] = [
        "successful_without_retry",
        "successful_with_retry",
        "failed_without_retry",
        "failed_with_retry",
    ];
    pub const HEALTH_OUTCOMES: [&str; 2] = ["up", "down"];
    pub const SESSION_STATUSES: [&str; 4] = ["completed", "failed", "interrupted", "cancelled"];
    pub const TURN_OUTCOMES: [&str; 2] = ["ok", "failed"];
    pub const TOOL_CALL_OUTCOMES: [&str; 3] = ["success", "failure", "refused"];
    pub const SCHEDULE_OUTCOMES: [&str; 4] = [
        "launched",
        "skipped_overlap",
        "skipped_paused",
        "skipped_budget",
    ];
    pub const BUDGET_SCOPES: [&str; 3] = ["session", "schedule", "daemon"];
    /// What a waiting session waits for (`heistd_sessions_waiting`).
    pub const WAITING_REASONS: [&str; 2] = ["model", "store"];
    pub const RELOAD_OUTCOMES: [&str; 2] = ["applied", "refused"];
    pub const STORE_PAUSE_OUTCOMES: [&str; 2] = ["resumed", "gave_up"];
    pub const TOKEN_KINDS: [&str; 2] = ["prompt", "completion"];
    /// Why the daemon closed an event stream (the `closed` event's `reason`).
    pub const EVENT_STREAM_CLOSE_REASONS: [&str; 5] = [
        "slow_reader",
        "max_duration",
        "shutting_down",
        "lagged",
        "store_failed",
    ];
}

/// Every family with its type and help text: what [`describe`] announces
/// and what the tests hold the README and the exporter to.
pub const FAMILIES: [(&str, Kind, &str); 67] = [
    (SERVICE_REQUESTS_TOTAL, Kind::Counter, "Logical calls to a service (all attempts of one call), by outcome."),
    (SERVICE_REQUEST_DURATION_SECONDS, Kind::Histogram, "Logical call latency, retries and waits included."),
    (SERVICE_ATTEMPTS_TOTAL, Kind::Counter, "Attempts that reached the network, by the attempt's outcome."),
    (SERVICE_ATTEMPT_DURATION_SECONDS, Kind::Histogram, "Latency of one attempt."),
    (SERVICE_RETRIES_TOTAL, Kind::Counter, "Retries sent (attempts after the first)."),
    (SERVICE_CALLS_BY_RETRY_TOTAL, Kind::Counter, "Logical calls by whether they succeeded and whether they needed retries."),
    (RETRY_BUDGET_EXHAUSTED_TOTAL, Kind::Counter, "Retries refused by the retry budget."),
    (BREAKER_STATE, Kind::Gauge, "Circuit breaker state: 1 for the current state, 0 for the others."),
    (BREAKER_TRANSITIONS_TOTAL, Kind::Counter, "Circuit breaker transitions."),
    (HEALTH_CHECK_DURATION_SECONDS, Kind::Histogram, "Health probe latency."),
    (SERVICE_UP, Kind::Gauge, "1 while the health checker holds the service up (after its thresholds), else 0."),
    (HEALTH_CHECKS_TOTAL, Kind::Counter, "Periodic health checks, by result."),
    (HEALTH_TRANSITIONS_TOTAL, Kind::Counter, "Health state changes, by the state entered."),
    (SESSIONS_TOTAL, Kind::Counter, "Finished sessions, by status."),
    (SESSIONS_RUNNING, Kind::Gauge, "Heists running now."),
    (SCHEDULE_RUNS_TOTAL, Kind::Counter, "Scheduled slots, by outcome."),
    (BUDGET_EXHAUSTED_TOTAL, Kind::Counter, "Token budgets found spent, by scope (session, schedule, daemon): a session ended, a slot skipped or a run request refused."),
    (SCHEDULE_LAST_RUN_TIMESTAMP_SECONDS, Kind::Gauge, "The slot a schedule last handled (launched or skipped), in Unix seconds; 0 before the first."),
    (SCHEDULE_NEXT_RUN_TIMESTAMP_SECONDS, Kind::Gauge, "The slot a schedule waits for next, in Unix seconds; 0 when disabled."),
    (RETENTION_PRUNED_SESSIONS_TOTAL, Kind::Counter, "Sessions deleted by retention."),
    (TURNS_TOTAL, Kind::Counter, "Turns, by agent and outcome."),
    (TURN_DURATION_SECONDS, Kind::Histogram, "Turn latency."),
    (TOOL_CALLS_TOTAL, Kind::Counter, "Tool calls, by tool and outcome."),
    (MEMORY_OUTBOX_PENDING, Kind::Gauge, "Memory writes waiting for delivery."),
    (MEMORY_OUTBOX_OLDEST_PENDING_AGE_SECONDS, Kind::Gauge, "Age of the oldest memory write waiting for delivery; 0 when none waits."),
    (MEMORY_OUTBOX_ABANDONED, Kind::Gauge, "Memory writes the memory service refused for good (never delivered)."),
    (NOTIFY_DELIVERIES_TOTAL, Kind::Counter, "Webhook delivery attempts, by receiver and outcome (delivered, failed, abandoned)."),
    (NOTIFY_ABANDONED_TOTAL, Kind::Counter, "Webhook events given up after the receiver's max_attempts."),
    (MEMORY_RECONCILE_RUNS_TOTAL, Kind::Counter, "Reconciliations of the memory service with the store, by outcome (exact, redelivered, error)."),
    (MEMORY_RECONCILE_REDELIVERED_TOTAL, Kind::Counter, "Memory writes delivered again because the memory service no longer held them."),
    (MEMORY_INSTANCE_CHANGES_TOTAL, Kind::Counter, "New memory service instance ids seen (the service started empty)."),
    (STORE_SIZE_BYTES, Kind::Gauge, "Size of the audit database file."),
    (STORE_WAL_SIZE_BYTES, Kind::Gauge, "Size of the audit database's write-ahead log."),
    (READY, Kind::Gauge, "1 when the store answers and every required service is up (/readyz answers 200)."),
    (CONFIG_RELOADS_TOTAL, Kind::Counter, "Config reloads (SIGHUP), by outcome."),
    (CONFIG_LAST_RELOAD_SUCCESSFUL, Kind::Gauge, "0 when the last config reload was refused, else 1."),
    (BUILD_INFO, Kind::Gauge, "Always 1; the version and commit of the running binary are its labels."),
    (PROCESS_CPU_SECONDS_TOTAL, Kind::Counter, "User and system CPU time spent, in seconds."),
    (PROCESS_RESIDENT_MEMORY_BYTES, Kind::Gauge, "Resident memory size."),
    (PROCESS_OPEN_FDS, Kind::Gauge, "Open file descriptors."),
    (PROCESS_START_TIME_SECONDS, Kind::Gauge, "Start time of the process since the Unix epoch, in seconds."),
    (PROCESS_MAX_FDS, Kind::Gauge, "Maximum number of open file descriptors."),
    (CONFIG_GENERATION, Kind::Gauge, "The applied config's generation: 1 at start, one more per applied reload."),
    (MODEL_REPLIES_TRUNCATED_TOTAL, Kind::Counter, "Model replies the server cut at max_tokens (finish_reason length)."),
    (MODEL_PROMPTS_TRIMMED_TOTAL, Kind::Counter, "Prompts trimmed to fit the model's context window."),
    (MODEL_OUTAGE_PAUSE_SECONDS_TOTAL, Kind::Counter, "Seconds sessions spent paused while the model was unavailable."),
    (STORE_UNAVAILABLE, Kind::Gauge, "1 while the audit store cannot take writes (full, read-only, deleted), else 0."),
    (STORE_PAUSES_TOTAL, Kind::Counter, "Sessions that paused for a store outage, by how the pause ended."),
    (HTTP_CONNECTIONS_SHED, Kind::Counter, "Connections closed because a listener was at max_connections or a source at max_connections_per_ip: a new one refused, or an idle one replaced."),
    (EVENT_STREAMS, Kind::Gauge, "Event streams (GET /api/v1/events, /api/v1/sessions/{id}/events) open now."),
    (EVENT_STREAMS_CLOSED_TOTAL, Kind::Counter, "Event streams the daemon closed with a closed event, by reason: slow_reader, max_duration, shutting_down, lagged, store_failed."),
    (CLUSTER_NODES_ALIVE, Kind::Gauge, "Nodes that heartbeat within a lease period (1 on SQLite: this one)."),
    (CLUSTER_NODES_LOST, Kind::Gauge, "Nodes whose heartbeat stopped without a clean stop within the last hour (0 on SQLite)."),
    (CLUSTER_TAKEOVERS_TOTAL, Kind::Counter, "Sessions this node took over from a node whose lease ran out."),
    (CLUSTER_LEASE_RENEWAL_FAILURES_TOTAL, Kind::Counter, "Heartbeats that failed, or found a session's lease gone."),
    (CLUSTER_FENCED_WRITES_TOTAL, Kind::Counter, "Turn commits refused because another node owns the session now."),
    (MODEL_TOKENS_TOTAL, Kind::Counter, "Model tokens, by service, endpoint, model and kind (prompt, completion): the server's usage, or heistd's estimate when a reply has none."),
    (MODEL_COST_TOTAL, Kind::Counter, "What the model's tokens cost at the configured prices, by service, endpoint and model; absent when no price is configured."),
    (SESSIONS_WAITING, Kind::Gauge, "Sessions waiting out an outage now, by what they wait for (model, store)."),
    (SCHEDULE_PAUSED, Kind::Gauge, "1 while the schedule is paused (on every node), else 0."),
    (ENDPOINT_UP, Kind::Gauge, "1 while the health checker holds the endpoint up, else 0."),
    (ENDPOINT_EJECTED, Kind::Gauge, "1 while outlier detection keeps the endpoint out of the pick, else 0."),
    (ENDPOINT_EJECTIONS_TOTAL, Kind::Counter, "Outlier ejections of the endpoint (consecutive gateway failures)."),
    (ENDPOINT_OUTSTANDING, Kind::Gauge, "Attempts in flight to the endpoint now."),
    (ENDPOINT_ATTEMPT_DURATION_SECONDS, Kind::Histogram, "Latency of one attempt on the endpoint."),
    (MODEL_FALLBACKS_TOTAL, Kind::Counter, "Model replies given by a fallback endpoint, by primary model and fallback model."),
    (MODEL_RATE_LIMITED_TOTAL, Kind::Counter, "Model requests an endpoint's rate limits refused before the network: no room before the call's deadline."),
];

/// What kind of family a name is, for [`describe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Latency buckets from 0.25 ms to four minutes without a wide gap: the
/// calculator answers in well under a millisecond, probes time out at
/// 2–5 s, and a model call may take minutes.
pub const DURATION_BUCKETS_SECONDS: [f64; 21] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5,
    10.0, 15.0, 30.0, 60.0, 120.0, 240.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once, announces every family's help
/// text and returns its handle; later calls return the same handle.
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
            describe();
            handle
        })
        .clone()
}

/// Gives every family in [`FAMILIES`] its HELP text.
pub fn describe() {
    for (name, kind, help) in FAMILIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Counts a model reply's tokens by the service, the endpoint that
/// answered and its model (every per-endpoint series carries `service` and
/// `endpoint`), and their cost when the endpoint is priced (`None`: no
/// cost series).
pub fn count_model_usage(
    service: &str,
    endpoint: &str,
    model: &str,
    tokens: (u64, u64),
    cost: Option<f64>,
) {
    let (prompt_tokens, completion_tokens) = tokens;
    for (kind, tokens) in [("prompt", prompt_tokens), ("completion", completion_tokens)] {
        metrics::counter!(MODEL_TOKENS_TOTAL, "service" => service.to_string(), "endpoint" => endpoint.to_string(), "model" => model.to_string(), "kind" => kind)
            .increment(tokens);
    }
    if let Some(cost) = cost {
        add_to_cost([service, endpoint, model], cost);
    }
}

/// The running `heistd_model_cost_total` of each (service, endpoint, model).
static COSTS: parking_lot::Mutex<std::collections::BTreeMap<[String; 3], f64>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());

/// The cost family's labels, in the order [`add_to_cost`] takes them.
const COST_LABELS: [&str; 3] = ["service", "endpoint", "model"];

/// Adds `cost` (at least 0) to
/// `heistd_model_cost_total{service, endpoint, model}`.
pub fn add_to_cost(labels: [&str; 3], cost: f64) {
    if !cost.is_finite() || cost < 0.0 {
        return;
    }
    *COSTS.lock().entry(labels.map(str::to_string)).or_default() += cost;
}

/// The recorder's text, then `heistd_model_cost_total` when any cost has
/// been counted (nothing at all otherwise: no price, no series).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    let costs = COSTS.lock();
    if costs.is_empty() {
        return text;
    }
    let help = FAMILIES
        .iter()
        .find(|(name, _, _)| *name == MODEL_COST_TOTAL)
        .map_or("", |(_, _, help)| help);
    text.push_str(&format!(
        "# HELP {MODEL_COST_TOTAL} {help}\n# TYPE {MODEL_COST_TOTAL} counter\n"
    ));
    for (values, cost) in costs.iter() {
        let labels: Vec<String> = COST_LABELS
            .iter()
            .zip(values)
            .map(|(name, value)| format!("{name}=\"{}\"", label_value(value)))
            .collect();
        text.push_str(&format!(
            "{MODEL_COST_TOTAL}{{{}}} {cost}\n",
            labels.join(",")
        ));
    }
    text
}

/// A label value escaped as the Prometheus text format asks (backslash,
/// double quote, line feed).
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The commit this binary was built from: HEAD's short hash when built in
/// a git checkout, else `HEISTD_GIT_COMMIT` at build time, else `unknown`
/// (`build.rs` decides).
pub const BUILD_COMMIT: &str = env!("HEISTD_BUILD_COMMIT");

/// Sets `heistd_build_info` (version and commit) once.
pub fn record_build_info() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => BUILD_COMMIT)
        .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cost_renders_as_a_counter_with_escaped_labels_after_the_recorders_text() {
        let handle = install();
        let labels = ["llm", "a:1", "model \"x\"\\y"];
        add_to_cost(labels, 0.25);
        add_to_cost(labels, 0.5);
        add_to_cost(labels, -1.0);
        let text = render(&handle);
        assert!(
            text.contains("# TYPE heistd_model_cost_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "heistd_model_cost_total{service=\"llm\",endpoint=\"a:1\",model=\"model \\\"x\\\"\\\\y\"} 0.75\n"
            ),
            "{text}"
        );
        assert_eq!(label_value("a\nb"), "a\\nb");
    }
}
