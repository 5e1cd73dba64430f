//! What an operator installs beside the binary, held to the code: the
//! alert rules (checked and unit-tested by `promtool`, each with a test
//! and a runbook entry in docs/alerts.md), the metric catalogue in
//! docs/metrics.md, and the Grafana dashboard's queries. Tests that need
//! `promtool` are ignored by a plain `cargo test` and fail without it
//! under `--include-ignored` (`.ci/run`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;

fn repository(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// (alert name, runbook anchor) for every alert in the rules file.
fn alerts() -> Vec<(String, String)> {
    let rules = read("dashboards/alerts.yml");
    let mut alerts = Vec::new();
    let mut current: Option<String> = None;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            current = Some(name.to_string());
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let name = current.take().expect("runbook_url follows an alert");
            let anchor = url.trim_matches('"').rsplit_once('#').expect("an anchor").1;
            alerts.push((name, anchor.to_string()));
        }
    }
    alerts
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package)"]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = support::promtool("alert_rules_pass_promtool_check_and_their_unit_tests");
    for arguments in [
        ["check", "rules", "dashboards/alerts.yml"],
        ["test", "rules", "dashboards/alerts.test.yml"],
        // The scrape config, and the rule files it loads.
        ["check", "config", "dashboards/prometheus.yml"],
    ] {
        let output = Command::new(promtool)
            .args(arguments)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Where `runbook_url`s point as shipped: the directory the install puts
/// `docs/alerts.md` in. The rules file documents it as its one setting.
const RUNBOOK_BASE: &str = "file:///usr/share/doc/heistd/docs";

/// Every runbook link is RUNBOOK_BASE, `/alerts.md#` and the alert's name
/// (or its family's) in lower case, so the sed the rules file documents
/// moves them all, and the scrape config loads the rules.
#[test]
fn runbook_links_share_the_documented_base_and_prometheus_yml_loads_the_rules() {
    let rules = read("dashboards/alerts.yml");
    let header: String = rules
        .lines()
        .take_while(|line| line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        header.contains(&format!("#     {RUNBOOK_BASE}\n"))
            && header.contains(&format!("sed 's|{RUNBOOK_BASE}|")),
        "the header documents the base and how to set it:\n{header}"
    );
    let mut current = None;
    let mut links = 0;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            current = Some(name);
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let name = current.take().expect("runbook_url follows an alert");
            let anchor = url
                .trim_matches('"')
                .strip_prefix(&format!("{RUNBOOK_BASE}/alerts.md#"))
                .unwrap_or_else(|| panic!("{name}: {url}"));
            // One entry may serve a family (HeistdErrorBudgetBurnFast and
            // ...Slow share #heistderrorbudgetburn).
            assert!(
                !anchor.is_empty() && name.to_lowercase().starts_with(anchor),
                "{name}: {url}"
            );
            links += 1;
        }
    }
    assert_eq!(
        links,
        rules.matches("- alert: ").count(),
        "one link per alert"
    );
    assert_eq!(
        rules.matches(RUNBOOK_BASE).count(),
        links + 2,
        "the base appears only in the links and the header's two examples"
    );
    let tests = read("dashboards/alerts.test.yml");
    for line in tests.lines().map(str::trim) {
        if let Some(url) = line.strip_prefix("runbook_url: ") {
            assert!(
                url.starts_with(&format!("\"{RUNBOOK_BASE}/alerts.md#")),
                "{url}"
            );
        }
    }
    let prometheus = read("dashboards/prometheus.yml");
    assert!(
        prometheus.contains("\nrule_files:\n  - alerts.yml\n"),
        "{prometheus}"
    );
}

#[test]
fn every_alert_has_a_firing_unit_test_and_a_runbook_entry() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let tests = read("dashboards/alerts.test.yml");
    let runbooks = read("docs/alerts.md");
    let headings: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    for (name, anchor) in alerts {
        let fires = tests.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {name}\n")) && case.contains("exp_labels")
        });
        assert!(fires, "{name}: no test in alerts.test.yml where it fires");
        assert!(
            headings.contains(&anchor),
            "{name}: docs/alerts.md has no `### ` heading for its runbook anchor #{anchor}"
        );
        assert!(
            runbooks.contains(&format!("`{name}`")),
            "{name}: the runbook in docs/alerts.md does not name it"
        );
    }
}

#[test]
fn the_metrics_reference_lists_every_metric_family_and_no_other() {
    let section = read("docs/metrics.md");
    let listed: BTreeSet<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let known: BTreeSet<&str> = heistd::metrics::FAMILIES
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    assert_eq!(
        listed, known,
        "docs/metrics.md's metric table vs metrics::FAMILIES"
    );
}

#[test]
fn the_dashboard_is_valid_json_and_queries_only_known_families() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("dashboards/heistd.json")).expect("valid JSON");
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() > 20, "{queries:?}");
    let known: BTreeSet<&str> = heistd::metrics::FAMILIES
        .iter()
        .map(|(name, _, _)| *name)
        .chain(["up", "ALERTS"])
        .collect();
    for query in &queries {
        for name in metric_names(query) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| known.contains(family))
                .unwrap_or(&name);
            assert!(known.contains(family), "{query}: unknown metric {name}");
        }
    }
    let service_variable = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|variable| variable["name"] == "service")
        .expect("a service variable");
    assert_eq!(
        service_variable["query"]["query"], "label_values(heistd_service_up, service)",
        "read from a family a fresh daemon already has"
    );
}

/// Every `expr` and variable query in the dashboard.
fn collect_queries(value: &serde_json::Value, queries: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr" | "query" | "definition", serde_json::Value::String(text)) => {
                        queries.push(text.clone())
                    }
                    _ => collect_queries(inner, queries),
                }
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|item| collect_queries(item, queries))
        }
        _ => {}
    }
}

/// Words in a query that name metrics (heistd's and the process collector's).
fn metric_names(query: &str) -> Vec<String> {
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| {
            word.starts_with("heistd_") || word.starts_with("process_") || *word == "ALERTS"
        })
        .map(str::to_string)
        .collect()
}
