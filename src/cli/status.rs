//! `heistd status`: a running daemon's status page (`GET /api/v1/status`)
//! for a person (services and breakers, sessions running, schedules, the
//! cluster), or as the daemon's own JSON with `--output json`. Also the
//! one way every report command prints JSON (`json`).
//!
//! It reads the daemon's API and prints; fields it does not know are left
//! out of the text, never an error, so an older CLI reads a newer daemon.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::args::{DaemonArgs, Output, OutputArgs};
use super::remote::Remote;
use super::CliError;

/// A report as `--output json` prints it: pretty, one document, a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    format!("{text}\n")
}

/// `heistd status`.
pub async fn status(daemon: DaemonArgs, output: OutputArgs) -> Result<String, CliError> {
    let remote = Remote::from_config(daemon.config.as_deref(), daemon.admin_address.as_deref())?;
    let status: Value = remote.get("/api/v1/status").await?;
    Ok(match output.output {
        Output::Json => json(&status),
        Output::Text => status_text(&status, &remote.url("")),
    })
}

/// The status page for a person.
pub(crate) fn status_text(status: &Value, address: &str) -> String {
    let text = |value: &Value| match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heistd {} (pid {}) at {address}, up {} s; store {}",
        text(&status["version"]),
        text(&status["pid"]),
        text(&status["uptime_seconds"]),
        text(&status["store"]),
    );
    let config = &status["config"];
    let _ = writeln!(
        out,
        "config: {} (generation {}){}",
        text(&status["config_path"]),
        text(&config["generation"]),
        config["last_reload_error"]
            .as_str()
            .map_or(String::new(), |error| format!(
                "; last reload REFUSED: {error}"
            )),
    );
    out.push_str("\nSERVICE         STATE      BREAKER    LATENCY   LAST ERROR\n");
    for service in rows(&status["services"]) {
        let latency = service["last_latency_ms"]
            .as_f64()
            .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
        let _ = writeln!(
            out,
            "{:<15} {:<10} {:<10} {:>8}   {}",
            text(&service["service"]),
            text(&service["state"]),
            text(&service["breaker"]),
            latency,
            service["last_error"].as_str().unwrap_or(""),
        );
    }
    let running = rows(&status["running_sessions"]);
    let _ = writeln!(
        out,
        "\nSESSIONS RUNNING: {} of {}",
        running.len(),
        text(&status["max_concurrent_sessions"])
    );
    for session in running {
        let _ = writeln!(
            out,
            "  {:<32} {:>4} turns  started {}  {}",
            text(&session["session_id"]),
            text(&session["planned_turns"]),
            text(&session["started_at"]),
            session["schedule"]
                .as_str()
                .map_or(String::new(), |schedule| format!("schedule {schedule}")),
        );
    }
    schedules_text(&mut out, status, text);
    cluster_text(&mut out, &status["cluster"], text);
    out
}

fn schedules_text(out: &mut String, status: &Value, text: impl Fn(&Value) -> String) {
    let schedules = rows(&status["schedules"]);
    if schedules.is_empty() {
        out.push_str("\nSCHEDULES: none\n");
        return;
    }
    out.push_str("\nSCHEDULE             TRIGGER                   NEXT RUN\n");
    for schedule in schedules {
        let state = match (schedule["enabled"].as_bool(), schedule["paused"].as_bool()) {
            (_, Some(true)) => " (paused)",
            (Some(false), _) => " (disabled)",
            _ => "",
        };
        let _ = writeln!(
            out,
            "{:<20} {:<25} {}{state}",
            text(&schedule["name"]),
            text(&schedule["trigger"]),
            text(&schedule["next_run"]),
        );
    }
}

fn cluster_text(out: &mut String, cluster: &Value, text: impl Fn(&Value) -> String) {
    if cluster.is_null() {
        return;
    }
    let _ = writeln!(
        out,
        "\nCLUSTER: {} store; node {}; {} run requests queued",
        text(&cluster["backend"]),
        text(&cluster["node_id"]),
        text(&cluster["queued_runs"]),
    );
    for node in rows(&cluster["nodes"]) {
        let state = if node["alive"].as_bool() == Some(true) {
            "alive"
        } else if node["lost"].as_bool() == Some(true) {
            "LOST"
        } else {
            "stopped"
        };
        let _ = writeln!(
            out,
            "  {:<40} {:<8} {} pid {}, last heartbeat {}",
            text(&node["node_id"]),
            state,
            text(&node["host"]),
            text(&node["pid"]),
            text(&node["last_heartbeat"]),
        );
    }
}

fn rows(value: &Value) -> Vec<&Value> {
    value
        .as_array()
        .map(|rows| rows.iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_page_names_services_sessions_schedules_and_nodes() {
        let status = serde_json::json!({
            "version": "0.1.0", "pid": 42, "uptime_seconds": 7, "store": "/var/lib/heistd/audit.db",
            "config_path": null, "config": {"generation": 2, "last_reload_error": "bad key"},
            "services": [{"service": "memory", "state": "down", "breaker": "open",
                          "last_latency_ms": 1.5, "last_error": "refused"}],
            "running_sessions": [{"session_id": "heist_1", "planned_turns": 12,
                                  "started_at": "2026-01-01T00:00:00Z", "schedule": "nightly"}],
            "max_concurrent_sessions": 2,
            "schedules": [{"name": "nightly", "trigger": "every 1h", "enabled": true,
                           "next_run": "2026-01-01T01:00:00Z", "paused": true}],
            "cluster": {"backend": "postgres", "node_id": "n1", "queued_runs": 3,
                        "nodes": [{"node_id": "n1", "alive": true, "host": "h", "pid": 42,
                                   "last_heartbeat": "now"}]},
        });
        let page = status_text(&status, "http://127.0.0.1:9750");
        for expected in [
            "pid 42",
            "REFUSED: bad key",
            "memory          down       open",
            "1 of 2",
            "heist_1",
            "schedule nightly",
            "(paused)",
            "postgres store; node n1; 3 run requests queued",
            "alive",
        ] {
            assert!(
                page.contains(expected),
                "{expected:?} missing from:\n{page}"
            );
        }
        // A daemon with less to say prints what it has.
        let page = status_text(&serde_json::json!({}), "x");
        assert!(page.contains("SCHEDULES: none"), "{page}");
    }
}
