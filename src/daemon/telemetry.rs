//! The daemon's own metrics beyond the events other modules count: every
//! series whose labels are known at start (session statuses, the
//! scenario's agents, the tools, the configured schedules, reload
//! outcomes) created at 0, so a fresh daemon's dashboard has data and
//! `rate()` sees the first event; and the gauges read when Prometheus
//! scrapes (readiness, store and WAL size, the outbox, the process).
//!
//! It records metrics and reads the store and `/proc/self`; it must not
//! change what the daemon does. Names and label values come from
//! `crate::metrics`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::state::DaemonState;
use crate::config::Config;
use crate::metrics::{self as names, labels};
use crate::scenario::Scenario;

/// Creates, at 0, the series of the daemon's own families whose label
/// values the config and scenario already say. Safe to call again after a
/// reload: adding 0 never changes a value that exists.
pub fn create_known_series(config: &Config, scenario: &Scenario) {
    names::record_build_info();
    for status in labels::SESSION_STATUSES {
        metrics::counter!(names::SESSIONS_TOTAL, "status" => status).increment(0);
    }
    metrics::gauge!(names::SESSIONS_RUNNING).increment(0.0);
    metrics::gauge!(names::EVENT_STREAMS).increment(0.0);
    for reason in labels::EVENT_STREAM_CLOSE_REASONS {
        metrics::counter!(names::EVENT_STREAMS_CLOSED_TOTAL, "reason" => reason).increment(0);
    }
    metrics::gauge!(names::STORE_UNAVAILABLE).increment(0.0);
    for reason in labels::WAITING_REASONS {
        metrics::gauge!(names::SESSIONS_WAITING, "reason" => reason).increment(0.0);
    }
    metrics::counter!(names::HTTP_CONNECTIONS_SHED, "listener" => "admin").increment(0);
    for outcome in labels::STORE_PAUSE_OUTCOMES {
        metrics::counter!(names::STORE_PAUSES_TOTAL, "outcome" => outcome).increment(0);
    }
    for model_counter in [
        names::MODEL_REPLIES_TRUNCATED_TOTAL,
        names::MODEL_PROMPTS_TRIMMED_TOTAL,
        names::MODEL_OUTAGE_PAUSE_SECONDS_TOTAL,
    ] {
        metrics::counter!(model_counter).increment(0);
    }
    // Each configured endpoint's tokens, and its cost only when priced:
    // without prices there is no cost series at all.
    let cost = config.llm.prices().map(|_| 0.0);
    for endpoint in config
        .llm
        .primary_endpoints()
        .iter()
        .chain(&config.llm.fallbacks)
    {
        names::count_model_usage(
            crate::config::LLM_SERVICE,
            &endpoint.label(),
            &endpoint.model,
            (0, 0),
            cost,
        );
    }
    for agent in &scenario.agents {
        for outcome in labels::TURN_OUTCOMES {
            metrics::counter!(names::TURNS_TOTAL, "agent" => agent.name.clone(), "outcome" => outcome)
                .increment(0);
        }
    }
    // Registering a histogram makes it render, with every bucket at 0.
    let _ = metrics::histogram!(names::TURN_DURATION_SECONDS);
    for tool in crate::wire::TOOL_NAMES {
        for outcome in labels::TOOL_CALL_OUTCOMES {
            metrics::counter!(names::TOOL_CALLS_TOTAL, "tool" => tool, "outcome" => outcome)
                .increment(0);
        }
    }
    for schedule in &config.schedule {
        for outcome in labels::SCHEDULE_OUTCOMES {
            metrics::counter!(names::SCHEDULE_RUNS_TOTAL, "schedule" => schedule.name.clone(), "outcome" => outcome)
                .increment(0);
        }
        // `increment(0.0)`, not `set(0.0)`: a reload must not forget the
        // slot a schedule last ran.
        metrics::gauge!(names::SCHEDULE_LAST_RUN_TIMESTAMP_SECONDS, "schedule" => schedule.name.clone())
            .increment(0.0);
        metrics::gauge!(names::SCHEDULE_NEXT_RUN_TIMESTAMP_SECONDS, "schedule" => schedule.name.clone())
            .increment(0.0);
        // The store's pause state is published by `daemon::control`.
        metrics::gauge!(names::SCHEDULE_PAUSED, "schedule" => schedule.name.clone()).increment(0.0);
    }
    create_daemon_counters();
}

/// The counters of the daemon's own work (budgets, reloads, retention,
/// reconciliation), whose labels no config decides.
fn create_daemon_counters() {
    for scope in labels::BUDGET_SCOPES {
        metrics::counter!(names::BUDGET_EXHAUSTED_TOTAL, "scope" => scope).increment(0);
    }
    for outcome in labels::RELOAD_OUTCOMES {
        metrics::counter!(names::CONFIG_RELOADS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(names::RETENTION_PRUNED_SESSIONS_TOTAL).increment(0);
    for outcome in ["exact", "redelivered", "error"] {
        metrics::counter!(names::MEMORY_RECONCILE_RUNS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(names::MEMORY_RECONCILE_REDELIVERED_TOTAL).increment(0);
    metrics::counter!(names::MEMORY_INSTANCE_CHANGES_TOTAL).increment(0);
}

/// Records a reload's outcome in the metrics (the admin API's copy is
/// [`DaemonState::record_reload`]).
pub fn record_reload(state: &DaemonState) {
    let status = state.config_status();
    let applied = status.last_reload_error.is_none();
    let outcome = if applied { "applied" } else { "refused" };
    metrics::counter!(names::CONFIG_RELOADS_TOTAL, "outcome" => outcome).increment(1);
    metrics::gauge!(names::CONFIG_LAST_RELOAD_SUCCESSFUL).set(if applied { 1.0 } else { 0.0 });
    metrics::gauge!(names::CONFIG_GENERATION).set(status.generation as f64);
}

/// The slot a schedule last handled, for the "schedule stopped firing"
/// alert; `None` leaves the gauge as it is.
pub fn record_schedule_slots(
    schedule: &str,
    last_slot: Option<DateTime<Utc>>,
    next_slot: Option<DateTime<Utc>>,
) {
    if let Some(slot) = last_slot {
        metrics::gauge!(names::SCHEDULE_LAST_RUN_TIMESTAMP_SECONDS, "schedule" => schedule.to_string())
            .set(unix_seconds(slot));
    }
    metrics::gauge!(names::SCHEDULE_NEXT_RUN_TIMESTAMP_SECONDS, "schedule" => schedule.to_string())
        .set(next_slot.map_or(0.0, unix_seconds));
}

/// Reads the gauges that are cheaper to read when asked than to keep up to
/// date: called by `GET /metrics` before it renders.
pub async fn refresh_scrape_gauges(state: &DaemonState) {
    let readiness = state.readiness().await;
    metrics::gauge!(names::READY).set(if readiness.ready { 1.0 } else { 0.0 });
    let status = state.config_status();
    metrics::gauge!(names::CONFIG_GENERATION).set(status.generation as f64);
    metrics::gauge!(names::CONFIG_LAST_RELOAD_SUCCESSFUL).set(
        if status.last_reload_error.is_none() {
            1.0
        } else {
            0.0
        },
    );
    record_store_sizes(state.store.path());
    match state.store.outbox_summary().await {
        Ok(summary) => {
            metrics::gauge!(names::MEMORY_OUTBOX_PENDING).set(summary.pending as f64);
            metrics::gauge!(names::MEMORY_OUTBOX_ABANDONED).set(summary.abandoned as f64);
            let age = summary
                .oldest_pending_created_at
                .as_deref()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map_or(0.0, |created| {
                    (Utc::now() - created.with_timezone(&Utc)).as_seconds_f64()
                });
            metrics::gauge!(names::MEMORY_OUTBOX_OLDEST_PENDING_AGE_SECONDS).set(age.max(0.0));
        }
        Err(error) => tracing::error!(%error, "cannot read the outbox for the metrics"),
    }
    record_process(state.started_at);
}

fn record_store_sizes(database: &Path) {
    let size = |path: &Path| std::fs::metadata(path).map_or(0.0, |meta| meta.len() as f64);
    let mut wal = PathBuf::from(database).into_os_string();
    wal.push("-wal");
    metrics::gauge!(names::STORE_SIZE_BYTES).set(size(database));
    metrics::gauge!(names::STORE_WAL_SIZE_BYTES).set(size(Path::new(&wal)));
}

/// The standard process metrics, from `/proc/self` (readable under the
/// unit's `ProtectProc=invisible` and `ProcSubset=pid`). Where `/proc` is
/// missing the values stay 0 rather than the family vanishing.
fn record_process(started_at: DateTime<Utc>) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    metrics::counter!(names::PROCESS_CPU_SECONDS_TOTAL).absolute(cpu_seconds(&stat) as u64);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    metrics::gauge!(names::PROCESS_RESIDENT_MEMORY_BYTES).set(resident_bytes(&status));
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    metrics::gauge!(names::PROCESS_OPEN_FDS).set(open as f64);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    metrics::gauge!(names::PROCESS_MAX_FDS).set(max_open_files(&limits));
    metrics::gauge!(names::PROCESS_START_TIME_SECONDS).set(unix_seconds(started_at));
}

/// Kernel clock ticks per second for `/proc/<pid>/stat`: `USER_HZ` is 100
/// on every Linux architecture heistd builds for (Prometheus' own procfs
/// library assumes the same).
const USER_HZ: f64 = 100.0;

/// User plus system time from `/proc/self/stat` (fields 14 and 15, counted
/// after the command name, which may itself hold spaces).
fn cpu_seconds(stat: &str) -> f64 {
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Field 3 (the state) is index 0 here, so utime (14) is 11.
    (ticks(11) + ticks(12)) / USER_HZ
}

fn resident_bytes(status: &str) -> f64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kilobytes| kilobytes.parse::<f64>().ok())
        .map_or(0.0, |kilobytes| kilobytes * 1024.0)
}

fn max_open_files(limits: &str) -> f64 {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn unix_seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "42 (heist d) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 777 0 0";
        assert_eq!(cpu_seconds(stat), 3.0);
        assert_eq!(cpu_seconds("garbage"), 0.0);
    }

    #[test]
    fn resident_memory_and_the_descriptor_limit_are_read_from_proc_text() {
        assert_eq!(
            resident_bytes("Name:\theistd\nVmRSS:\t    2048 kB\n"),
            2048.0 * 1024.0
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), 1024.0);
    }
}
