//! The daemon as an operator meets it: `/metrics` on a fresh daemon and
//! after a heist (every family, HELP text, explicit buckets, the series
//! that must exist before their first event, clean under `promtool check
//! metrics`), and `heistd reload`, the command systemd's `ExecReload=`
//! runs, against the real binary.

use std::process::Command;
use std::time::Duration;

use heistd::metrics::{Kind, FAMILIES};
use heistd::store::SessionStatus;

use super::{eventually, Daemon};
use crate::support::{self, TestStack};

impl Daemon {
    async fn metrics_text(&self) -> String {
        support::http()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("text")
    }

    /// `heistd reload` aimed at this daemon; (exit code, stdout + stderr).
    fn reload_command(&self, extra: &[&str]) -> (Option<i32>, String) {
        let address = self.admin.trim_start_matches("http://").to_string();
        let output = Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args([
                "reload",
                "--admin-address",
                &address,
                "--timeout-seconds",
                "20",
            ])
            .args(extra)
            .output()
            .expect("heistd reload runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), said)
    }
}

/// The value of the series of `name` whose labels include all of `labels`.
fn series_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// HEAD's short hash when the package is a git checkout (a `.git` beside
/// `Cargo.toml`): what `build.rs` put in `heistd_build_info`, not `unknown`.
fn checkout_head() -> Option<String> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if !manifest.join(".git").exists() {
        return None;
    }
    let output = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(manifest)
        .output()
        .expect("git runs in a checkout");
    assert!(output.status.success(), "git rev-parse: {output:?}");
    let head = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    Some(head)
}

fn assert_every_family_has_help_and_type(text: &str) {
    // A cost series exists only where prices are configured.
    for (name, kind, _) in FAMILIES
        .into_iter()
        .filter(|(name, _, _)| *name != heistd::metrics::MODEL_COST_TOTAL)
    {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
}

#[tokio::test]
async fn a_fresh_daemon_shows_every_family_at_zero_and_all_have_help_and_type_after_a_heist() {
    let stack = TestStack::start().await;
    // A schedule and a fallback model: their families exist only with one.
    let daemon = Daemon::start(
        &stack,
        "[[schedule]]\nname = \"hourly\"\nevery = \"1h\"\n\
         [[llm.fallbacks]]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"spare\"\n",
    )
    .await;
    // The status lists each service's endpoints: the model's primary, and
    // the fallback a tier below.
    let llm = eventually(
        Duration::from_secs(10),
        "status lists the model's endpoints",
        async || {
            let (_, status) = daemon.get("/api/v1/status").await;
            let llm = status["services"]
                .as_array()?
                .iter()
                .find(|service| service["service"] == "llm")?
                .clone();
            (llm["endpoints"].as_array()?.len() == 2).then_some(llm)
        },
    )
    .await;
    let fallback = &llm["endpoints"][1];
    assert_eq!(
        (&fallback["name"], &fallback["tier"], &fallback["model"]),
        (
            &serde_json::json!("127.0.0.1:9"),
            &serde_json::json!(1),
            &serde_json::json!("spare")
        ),
        "{llm}"
    );
    assert_eq!(llm["endpoints"][0]["tier"], 0);
    assert!(
        llm["endpoints"][0]["max_concurrent"].as_u64() > Some(0),
        "{llm}"
    );
    let fresh = daemon.metrics_text().await;
    assert_every_family_has_help_and_type(&fresh);
    assert!(
        series_value(
            &fresh,
            "heistd_endpoint_ejected",
            &[("service", "llm"), ("endpoint", "127.0.0.1:9")]
        ) == Some(0.0),
        "each endpoint's series exists at 0"
    );
    let commit = checkout_head().unwrap_or_else(|| heistd::metrics::BUILD_COMMIT.to_string());
    assert_eq!(
        series_value(&fresh, "heistd_build_info", &[("commit", &commit)]),
        Some(1.0),
        "heistd_build_info names the commit built ({commit}):\n{fresh}"
    );
    // The dashboard's `service` variable comes from here.
    for service in heistd::config::SERVICE_NAMES.into_iter().chain(["llm"]) {
        assert!(
            series_value(&fresh, "heistd_service_up", &[("service", service)]).is_some(),
            "no heistd_service_up for {service}"
        );
    }
    // The first event of each kind must move a series that already exists.
    for (name, labels) in [
        ("heistd_sessions_total", vec![("status", "failed")]),
        (
            "heistd_turns_total",
            vec![("agent", "mole"), ("outcome", "failed")],
        ),
        (
            "heistd_tool_calls_total",
            vec![("tool", "calculator"), ("outcome", "refused")],
        ),
        (
            "heistd_schedule_runs_total",
            vec![("schedule", "hourly"), ("outcome", "launched")],
        ),
        (
            "heistd_health_transitions_total",
            vec![("service", "memory"), ("to", "down")],
        ),
        (
            "heistd_service_requests_total",
            vec![("service", "llm"), ("outcome", "timeout")],
        ),
        (
            "heistd_circuit_breaker_transitions_total",
            vec![("service", "memory"), ("to", "open")],
        ),
        ("heistd_config_reloads_total", vec![("outcome", "refused")]),
    ] {
        assert_eq!(
            series_value(&fresh, name, &labels),
            Some(0.0),
            "{name} {labels:?}"
        );
    }
    assert_eq!(
        series_value(&fresh, "heistd_sessions_running", &[]),
        Some(0.0)
    );
    assert_eq!(
        series_value(&fresh, "heistd_config_generation", &[]),
        Some(1.0)
    );
    assert!(series_value(&fresh, "heistd_store_size_bytes", &[]).is_some_and(|size| size > 0.0));
    assert!(series_value(&fresh, "process_resident_memory_bytes", &[]).is_some_and(|rss| rss > 0.0));
    // Sub-millisecond calls resolve, and 2.5 s to 10 s has steps between.
    for bound in ["0.00025", "0.0005", "2.5", "5", "7.5", "10", "240"] {
        assert_eq!(
            series_value(
                &fresh,
                "heistd_turn_duration_seconds_bucket",
                &[("le", bound)]
            ),
            Some(0.0),
            "bucket le={bound}"
        );
    }

    let session_id = daemon.start_run(3).await;
    let store = daemon.store().await;
    eventually(Duration::from_secs(30), "the heist completes", async || {
        let detail = store.session(&session_id).await.ok()?;
        (detail.session.status == SessionStatus::Completed).then_some(())
    })
    .await;
    let busy = eventually(
        Duration::from_secs(10),
        "the heist is counted",
        async || {
            let text = daemon.metrics_text().await;
            (series_value(&text, "heistd_sessions_total", &[("status", "completed")]) == Some(1.0))
                .then_some(text)
        },
    )
    .await;
    assert_every_family_has_help_and_type(&busy);
}

/// `promtool check metrics` (the exposition format and its naming lints)
/// finds nothing on a fresh daemon's `/metrics` nor after a heist.
#[tokio::test]
#[ignore = "needs promtool (Debian's prometheus package)"]
async fn promtool_check_metrics_finds_nothing_before_or_after_a_heist() {
    let promtool =
        support::promtool("promtool_check_metrics_finds_nothing_before_or_after_a_heist");
    let stack = TestStack::start().await;
    // A schedule and a fallback model: their families exist only with one.
    let daemon = Daemon::start(
        &stack,
        "[[schedule]]\nname = \"hourly\"\nevery = \"1h\"\n\
         [[llm.fallbacks]]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"spare\"\n",
    )
    .await;
    let fresh = daemon.metrics_text().await;
    if let Some(said) = support::promtool_check_metrics(promtool, &fresh) {
        panic!("promtool check metrics on a fresh daemon:\n{said}");
    }
    daemon.start_run(3).await;
    let busy = eventually(
        Duration::from_secs(30),
        "the heist is counted",
        async || {
            let text = daemon.metrics_text().await;
            (series_value(&text, "heistd_sessions_total", &[("status", "completed")]) == Some(1.0))
                .then_some(text)
        },
    )
    .await;
    if let Some(said) = support::promtool_check_metrics(promtool, &busy) {
        panic!("promtool check metrics after a heist:\n{said}");
    }
}

#[tokio::test]
async fn heistd_reload_exits_0_when_applied_and_1_naming_the_key_when_refused() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(&stack, "[[schedule]]\nname = \"hourly\"\nevery = \"1h\"\n").await;
    let pid = daemon.child.id().to_string();

    let text = std::fs::read_to_string(&daemon.config_path).expect("config");
    std::fs::write(&daemon.config_path, text.replace("\"hourly\"", "\"daily\"")).expect("rewrite");
    let (code, said) = daemon.reload_command(&["--pid", &pid]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("generation 2"), "{said}");
    let (_, status) = daemon.get("/api/v1/status").await;
    assert_eq!(status["config"]["generation"], 2);
    // The schedules shown are refreshed every 2 s.
    eventually(Duration::from_secs(10), "status shows daily", async || {
        let (_, status) = daemon.get("/api/v1/status").await;
        (status["schedules"][0]["name"] == "daily").then_some(())
    })
    .await;

    let valid = std::fs::read_to_string(&daemon.config_path).expect("config");
    std::fs::write(
        &daemon.config_path,
        format!("{valid}\n[heist]\nturnz = 3\n"),
    )
    .expect("break the config");
    // Without --pid: the pid the daemon reports.
    let (code, said) = daemon.reload_command(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("reload refused") && said.contains("heist.turnz"),
        "{said}"
    );
    let (_, status) = daemon.get("/api/v1/status").await;
    assert_eq!(status["config"]["generation"], 2, "the old config stays");
    assert_eq!(status["config"]["reloads"], 2);
    assert_eq!(status["schedules"][0]["name"], "daily");
    let metrics = daemon.metrics_text().await;
    assert_eq!(
        series_value(&metrics, "heistd_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        series_value(
            &metrics,
            "heistd_config_reloads_total",
            &[("outcome", "refused")]
        ),
        Some(1.0)
    );

    // A pid that is not the daemon's is refused before anything is sent.
    let (code, said) = daemon.reload_command(&["--pid", "1"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("not 1"), "{said}");
}
