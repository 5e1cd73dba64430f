//! Strict types and checks: each bad value names its key, and one load reports every problem.

use super::*;

/// (a config file, the key its error must name).
const BAD_FILES: &[(&str, &str)] = &[
    ("[llm]\ntempreature = 0.5\n", "llm.tempreature"),
    ("[heist]\nturns = \"many\"\n", "heist.turns"),
    (
        "[services.memory]\nbase_url = \"http://x\"\ntimeout_ms = -5\n",
        "services.memory.timeout_ms",
    ),
    (
        "[services.calculator]\nbase_url = \"ftp://x\"\n",
        "services.calculator.base_url",
    ),
    ("[llm]\ntemperature = 7.0\n", "llm.temperature"),
    ("[llm]\nidle_timeout_ms = 0\n", "llm.idle_timeout_ms"),
    ("[llm]\nidle_timeout_ms = 240000\n", "llm.idle_timeout_ms"),
    ("[llm]\nstream = \"yes\"\n", "llm.stream"),
    (
        "[llm]\nprompt_price_per_million = -1.0\ncompletion_price_per_million = 1.0\n",
        "llm.prompt_price_per_million",
    ),
    (
        "[llm]\nprompt_price_per_million = 2.5\n",
        "llm.completion_price_per_million",
    ),
    (
        "[llm]\ncompletion_price_per_million = 10.0\n",
        "llm.prompt_price_per_million",
    ),
    (
        "[llm.policy.breaker]\nhalf_open_permits = 0\n",
        "llm.policy.breaker.half_open_permits",
    ),
    (
        "[services.memory.policy]\nretry_budget_ratio = 1.5\n",
        "services.memory.policy.retry_budget_ratio",
    ),
    (
        "[services.oauth.policy]\nmax_attempts = 0\n",
        "services.oauth.policy.max_attempts",
    ),
    (
        "[services.tools]\nbase_url = \"http://x\"\n",
        "services.tools",
    ),
    (
        "[llm.policy.breaker]\nwindow = \"sliding\"\n",
        "llm.policy.breaker.window",
    ),
    (
        "[companions.faults.calculator]\nerror_rate = 3.0\n",
        "companions.faults.calculator",
    ),
    (
        "[companions.faults.vault]\nhang = true\n",
        "companions.faults.vault",
    ),
    (
        "[companions.faults.memory]\nlatency = 5\n",
        "companions.faults.memory.latency",
    ),
    (
        "[companions.faults.memory]\nrefuse = true\n",
        "companions.faults.memory.refuse",
    ),
    ("surprise = 1\n", "surprise"),
    ("[[notify]]\nurl = \"ftp://x\"\n", "notify[0].url"),
    (
        "[[notify]]\nurl = \"http://x\"\nevents = [\"session_exploded\"]\n",
        "notify[0].events",
    ),
    (
        "[[notify]]\nurl = \"http://x\"\nevents = []\n",
        "notify[0].events",
    ),
    (
        "[[notify]]\nurl = \"http://x\"\nmax_attempts = 0\n",
        "notify[0].max_attempts",
    ),
    (
        "[[notify]]\nurl = \"http://x\"\n[[notify]]\nurl = \"http://x/other\"\n",
        "notify[1].name",
    ),
    (
        "[[notify]]\nurl = \"http://x\"\nsecret_file = \"/nonexistent/heistd-webhook-secret\"\n",
        "notify[0].secret_file",
    ),
    (
        "[services.file_reader]\ntimeout_ms = true\n",
        "services.file_reader.timeout_ms",
    ),
    ("[heist]\nturns = \"5\"\n", "heist.turns"),
    ("[store\npath = 1\n", "store"),
    ("[store]\ncommit_delay_ms = 5000\n", "store.commit_delay_ms"),
    (
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://h@db.example.com/x?sslmode=require\"\ntls = \"disable\"\n",
        "store.tls",
    ),
    (
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://h@db.example.com/x?sslmode=prefer\"\n",
        "store.url",
    ),
    (
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://h@db.example.com/x\"\ntls = \"require\"\nca_file = \"/etc/ca.pem\"\n",
        "store.ca_file",
    ),
    (
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://h@db.example.com/x\"\ntls = \"verify-full\"\nca_file = \"/nonexistent/ca.pem\"\n",
        "store.ca_file",
    ),
    ("[store]\ntls = \"verify-ca\"\n", "store.tls"),
    (
        "[[oauth.clients]]\nclient_id = \"a\"\nclient_secret = \"short\"\nscopes = []\n",
        "oauth.clients[0].client_secret",
    ),
];

#[test]
fn bad_config_names_the_key_and_the_file() {
    for (contents, key) in BAD_FILES {
        let file = write(contents);
        let error = load(Some(file.path()), Vec::new())
            .expect_err(contents)
            .to_string();
        assert!(!error.contains(&format!("{key}.{key}")), "{error}");
        assert!(
            error.contains(key),
            "{contents:?}: `{error}` does not name {key}"
        );
        assert!(
            error.contains(&file.path().display().to_string()),
            "{contents:?}: `{error}` does not name the file"
        );
    }
}

#[test]
fn an_https_model_url_loads_and_a_bad_ca_file_names_the_key_and_the_file() {
    let file = write("[llm]\nbase_url = \"https://api.example.com/v1\"\n");
    let config = load(Some(file.path()), Vec::new()).expect("https is spoken by every build");
    assert_eq!(config.llm.base_url, "https://api.example.com/v1");

    let directory = tempfile::tempdir().expect("temp dir");
    let missing = directory.path().join("corp-ca.pem");
    let not_pem = directory.path().join("notes.txt");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    for ca_file in [&missing, &not_pem] {
        let file = write(&format!(
            "[llm]\nbase_url = \"https://llm.internal/v1\"\nca_file = {:?}\n",
            ca_file.display().to_string()
        ));
        let error = load(Some(file.path()), Vec::new())
            .expect_err("a bad CA file")
            .to_string();
        assert!(
            error.contains("llm.ca_file") && error.contains(&ca_file.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn store_tls_defaults_to_require_off_this_machine_and_disable_on_loopback() {
    let mode = |url: &str, tls: Option<StoreTls>| {
        StoreConfig {
            backend: StoreBackend::Postgres,
            url: url.into(),
            tls,
            ..StoreConfig::default()
        }
        .tls_mode()
        .expect(url)
    };
    assert_eq!(
        mode("postgres://h@db.example.com/x", None),
        StoreTls::Require
    );
    assert_eq!(
        mode("postgres://h@10.0.0.5:5432/x", None),
        StoreTls::Require
    );
    assert_eq!(
        mode("postgres://h@127.0.0.1:5432/x", None),
        StoreTls::Disable
    );
    assert_eq!(mode("postgres://h@localhost/x", None), StoreTls::Disable);
    assert_eq!(mode("postgres://h@[::1]:5432/x", None), StoreTls::Disable);
    assert_eq!(
        mode("postgres://h@db/x?host=/var/run/postgresql", None),
        StoreTls::Disable
    );
    assert_eq!(
        mode("postgres://h@db.example.com/x?sslmode=verify-full", None),
        StoreTls::VerifyFull
    );
    assert_eq!(
        mode("postgres://h@db.example.com/x?sslmode=disable", None),
        StoreTls::Disable
    );
    assert_eq!(
        mode("postgres://h@127.0.0.1/x", Some(StoreTls::VerifyFull)),
        StoreTls::VerifyFull
    );
    let (key, message) = StoreConfig {
        backend: StoreBackend::Postgres,
        url: "postgres://h@db.example.com/x?sslmode=disable".into(),
        tls: Some(StoreTls::VerifyFull),
        ..StoreConfig::default()
    }
    .tls_mode()
    .expect_err("contradiction");
    assert_eq!(key, "store.tls");
    assert!(
        message.contains("sslmode=disable") && message.contains("verify-full"),
        "{message}"
    );
}

#[test]
fn every_problem_is_reported_at_once_and_a_misspelt_key_gets_a_suggestion() {
    let file = write("[llm]\nbase_ur = \"x\"\nmodle = \"y\"\n[heist]\nturns = \"many\"\n");
    let error = load(Some(file.path()), Vec::new())
        .expect_err("three problems")
        .to_string();
    assert!(error.starts_with("3 problems in the config:"), "{error}");
    for expected in [
        "key `heist.turns`",
        "unknown key `llm.base_ur`",
        "did you mean `llm.base_url`?",
        "did you mean `llm.model`?",
    ] {
        assert!(
            error.contains(expected),
            "`{expected}` missing from: {error}"
        );
    }
    let one = write("[llm]\nflavour = 1\n");
    let error = load(Some(one.path()), Vec::new())
        .expect_err("unknown")
        .to_string();
    assert!(
        error.contains("unknown key `llm.flavour`") && !error.contains("did you mean"),
        "{error}"
    );
}

#[test]
fn each_invalid_part_is_reported_in_one_load() {
    let file =
        write("[heist]\nturns = 0\n[llm]\ntemperature = 9.0\n[oauth]\ntoken_ttl_seconds = 5\n");
    let error = load(Some(file.path()), Vec::new())
        .expect_err("invalid")
        .to_string();
    assert!(error.starts_with("3 problems in the config:"), "{error}");
    for key in ["heist.turns", "llm.temperature", "oauth.token_ttl_seconds"] {
        assert!(
            error.contains(&format!("key `{key}`")),
            "{key} missing from: {error}"
        );
    }
}

#[test]
fn the_outbox_reconciliation_has_defaults_and_bounds() {
    let defaults = load(None, Vec::new()).expect("defaults");
    assert_eq!(defaults.outbox.reconcile_interval_ms, 60_000);
    assert_eq!(defaults.outbox.reconcile_window_hours, 24);
    assert_eq!(defaults.companions.memory.path, None);
    for (text, key) in [
        (
            "[outbox]\nreconcile_interval_ms = 0\n",
            "outbox.reconcile_interval_ms",
        ),
        (
            "[outbox]\nreconcile_window_hours = 0\n",
            "outbox.reconcile_window_hours",
        ),
    ] {
        let file = write(text);
        let error = load(Some(file.path()), Vec::new())
            .expect_err(key)
            .to_string();
        assert!(error.contains(key), "{error}");
    }
}

#[test]
fn the_run_queue_limit_has_a_default_and_bounds() {
    let defaults = load(None, Vec::new()).expect("defaults");
    assert_eq!(defaults.daemon.max_queued_runs, 100);
    for text in [
        "[daemon]\nmax_queued_runs = 0\n",
        "[daemon]\nmax_queued_runs = 100001\n",
    ] {
        let file = write(text);
        let error = load(Some(file.path()), Vec::new())
            .expect_err(text)
            .to_string();
        assert!(error.contains("daemon.max_queued_runs"), "{error}");
    }
    let file = write("[daemon]\nmax_queued_runs = 5\n");
    let config = load(Some(file.path()), Vec::new()).expect("valid");
    assert_eq!(config.daemon.max_queued_runs, 5);
}
