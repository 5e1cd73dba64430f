//! Tests of config loading: layering, strict types, errors that name the key.
use super::*;

fn write(contents: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(contents.as_bytes()).expect("write");
    file
}

#[test]
fn defaults_load_without_a_file() {
    let config = load(None, Vec::new()).expect("defaults are valid");
    assert_eq!(config.heist.turns, 12);
    assert_eq!(config.services.memory.base_url, "http://127.0.0.1:8005");
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    let file = write(
        "[llm]\nbase_url = \"http://10.0.0.1:1234/v1\"\nmodel = \"qwen\"\n[heist]\nturns = 4\n",
    );
    let environment = vec![
        (
            "HEISTD_LLM__BASE_URL".to_string(),
            "http://127.0.0.1:9999/v1".to_string(),
        ),
        (
            "HEISTD_LLM_API_KEY".to_string(),
            "not an override".to_string(),
        ),
        (
            "HEISTD_SERVICES__MEMORY__TIMEOUT_MS".to_string(),
            "750".to_string(),
        ),
    ];
    let config = load(Some(file.path()), environment).expect("valid");
    assert_eq!(config.llm.base_url, "http://127.0.0.1:9999/v1");
    assert_eq!(config.llm.model, "qwen");
    assert_eq!(config.heist.turns, 4);
    assert_eq!(config.services.memory.timeout_ms, 750);
    assert_eq!(config.services.memory.base_url, "http://127.0.0.1:8005");
}

#[test]
fn a_listed_table_replaces_the_default_list() {
    let file = write("[[oauth.clients]]\nclient_id = \"solo\"\nclient_secret = \"long enough secret\"\nscopes = [\"calculator:use\"]\n");
    let config = load(Some(file.path()), Vec::new()).expect("valid");
    assert_eq!(config.oauth.clients.len(), 1);
    assert_eq!(config.client_secret("solo"), Some("long enough secret"));
}

#[test]
fn bad_config_names_the_key_and_the_file() {
    let cases: &[(&str, &str)] = &[
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
        (
            "[services.file_reader]\ntimeout_ms = true\n",
            "services.file_reader.timeout_ms",
        ),
        ("[heist]\nturns = \"5\"\n", "heist.turns"),
        ("[store\npath = 1\n", "store"),
        ("[store]\ncommit_delay_ms = 5000\n", "store.commit_delay_ms"),
        (
            "[[oauth.clients]]\nclient_id = \"a\"\nclient_secret = \"short\"\nscopes = []\n",
            "oauth.clients[0].client_secret",
        ),
    ];
    for (contents, key) in cases {
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
fn a_bad_environment_override_names_the_variable() {
    let environment = vec![("HEISTD_HEIST__TURNS".to_string(), "lots".to_string())];
    let error = load(None, environment).expect_err("invalid").to_string();
    assert!(
        error.contains("heist.turns") && error.contains("HEISTD_HEIST__TURNS"),
        "{error}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let error = load(Some(Path::new("/nonexistent/heistd.toml")), Vec::new())
        .expect_err("missing")
        .to_string();
    assert!(error.contains("/nonexistent/heistd.toml"), "{error}");
}

#[test]
fn redacted_output_hides_secrets() {
    let config = load(None, Vec::new()).expect("valid");
    let shown = config.redacted_toml();
    assert!(!shown.contains("rehearsal-secret"), "{shown}");
    // The built-in clients are what no [[oauth.clients]] means.
    assert!(!shown.contains("\n[[oauth.clients]]"), "{shown}");
    let file = write(
        "[[oauth.clients]]\nclient_id = \"planner\"\nclient_secret = \"an-inline-secret-0123\"\nscopes = [\"calculator:use\"]\n",
    );
    let inline = load(Some(file.path()), Vec::new()).expect("valid");
    let shown = inline.redacted_toml();
    assert!(
        shown.contains(REDACTED) && !shown.contains("an-inline-secret"),
        "{shown}"
    );
}

#[test]
fn the_install_config_is_the_defaults_with_the_store_under_var_lib_and_no_secret() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/heistd.toml");
    // The credentials the README's install steps make, as systemd hands them over.
    let credentials = tempfile::tempdir().expect("temp dir");
    let names = [
        "admin-token",
        "oauth-signing-key",
        "planner",
        "hacker",
        "safecracker",
        "mole",
        "operator",
        "heistd",
    ];
    for name in names {
        std::fs::write(
            credentials.path().join(name),
            format!("{name}-0123456789abcdef0123456789\n"),
        )
        .expect("write");
    }
    let environment = vec![(
        "CREDENTIALS_DIRECTORY".to_string(),
        credentials.path().display().to_string(),
    )];
    let loaded = load(Some(&example), environment).expect("the example is valid");
    let mut expected = Config::builtin();
    expected.store.path = "/var/lib/heistd/heistd.db".into();
    expected.daemon.admin_token_file = Some("admin-token".into());
    expected.daemon.admin_token = Some(Secret::new("admin-token-0123456789abcdef0123456789"));
    expected.oauth.signing_key_file = Some("oauth-signing-key".into());
    expected.oauth.signing_key = Some(Secret::new("oauth-signing-key-0123456789abcdef0123456789"));
    for client in &mut expected.oauth.clients {
        client.client_secret_file = Some(client.client_id.clone().into());
        client.client_secret =
            Secret::new(format!("{}-0123456789abcdef0123456789", client.client_id));
    }
    assert_eq!(loaded.redacted_toml(), expected.redacted_toml());
    assert_eq!(loaded.daemon.admin_token, expected.daemon.admin_token);
    assert_eq!(loaded.oauth.signing_key, expected.oauth.signing_key);
    let secrets = |config: &Config| -> Vec<(String, String)> {
        config
            .oauth
            .clients
            .iter()
            .map(|client| {
                (
                    client.client_id.clone(),
                    client.client_secret.expose().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(secrets(&loaded), secrets(&expected));
    assert!(loaded.warnings().is_empty(), "{:?}", loaded.warnings());
    let text = std::fs::read_to_string(&example).expect("read");
    // Secrets are named by file (a credential) or variable; no line that
    // is read sets one itself.
    let settings = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'));
    for line in settings {
        assert!(
            !line.trim_start().starts_with("client_secret =") && !line.contains("rehearsal-secret"),
            "the install config ships no secret: {line}"
        );
    }
    assert!(!text.contains("rehearsal-secret"));
}

#[test]
fn a_redacted_secret_copied_from_printed_output_is_refused() {
    let file = write(
        "[[oauth.clients]]\nclient_id = \"planner\"\nclient_secret = \"<redacted>\"\nscopes = [\"calculator:use\"]\n",
    );
    let error = load(Some(file.path()), Vec::new())
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("oauth.clients[0].client_secret") && error.contains("client_secret_file"),
        "{error}"
    );
}

#[test]
fn every_unreadable_secret_is_named_at_once() {
    let file = write(
        "[daemon]\nadmin_token_file = \"/nonexistent/admin\"\n[oauth]\nsigning_key_file = \"/nonexistent/key\"\n\
         [[oauth.clients]]\nclient_id = \"planner\"\nclient_secret_file = \"/nonexistent/planner\"\nscopes = [\"calculator:use\"]\n",
    );
    let error = load(Some(file.path()), Vec::new())
        .expect_err("refused")
        .to_string();
    for key in [
        "daemon.admin_token_file",
        "oauth.signing_key_file",
        "oauth.clients[0].client_secret_file",
    ] {
        assert!(error.contains(key), "{key} missing from: {error}");
    }
    assert!(!error.contains("at least 8 characters"), "{error}");
    // A client with no secret at all is told to give one, once.
    let file = write("[[oauth.clients]]\nclient_id = \"planner\"\nscopes = [\"calculator:use\"]\n");
    let error = load(Some(file.path()), Vec::new())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("give exactly one of"), "{error}");
    assert!(!error.contains("at least 8 characters"), "{error}");
}

#[test]
fn the_printed_defaults_load_back_as_the_defaults() {
    let file = write(&Config::builtin().redacted_toml());
    let loaded = load(Some(file.path()), Vec::new()).expect("the defaults are valid");
    assert_eq!(loaded.redacted_toml(), Config::builtin().redacted_toml());
}

#[test]
#[cfg(not(feature = "tls"))]
fn https_without_tls_is_refused_with_the_fix() {
    let file = write("[llm]\nbase_url = \"https://api.example.com/v1\"\n");
    let error = load(Some(file.path()), Vec::new())
        .expect_err("no TLS in this build")
        .to_string();
    assert!(
        error.contains("llm.base_url") && error.contains("--features tls"),
        "{error}"
    );
}

#[test]
fn a_bad_trigger_names_its_key_and_says_why() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[schedule]]\nname = \"nightly\"\ncron = \"61 * * * *\"\n",
            "schedule[0].cron",
            "`61 * * * *`: ",
        ),
        (
            "[[schedule]]\nname = \"a\"\nevery = \"1h\"\n[[schedule]]\nname = \"b\"\nevery = \"10x\"\n",
            "schedule[1].every",
            "`10x`: unknown unit `x`; use d, h, m, s or ms",
        ),
        (
            "[[schedule]]\nname = \"nightly\"\ncron = \"0 2 * * *\"\ntimezone = \"Europe/Atlantis\"\n",
            "schedule[0].timezone",
            "`Europe/Atlantis` is not an IANA time zone such as `Europe/London` or `UTC`",
        ),
        (
            "[[schedule]]\nname = \"nightly\"\n",
            "schedule[0].cron",
            "set one of `cron` or `every`",
        ),
    ];
    for (contents, key, message) in cases {
        let file = write(contents);
        let error = load(Some(file.path()), Vec::new()).expect_err(contents);
        let ConfigError::InvalidValue {
            key: got_key,
            origin,
            message: got_message,
        } = &error
        else {
            panic!("{contents:?}: {error}");
        };
        assert_eq!(got_key, key, "{error}");
        assert_eq!(origin, &file.path().display().to_string(), "{error}");
        assert!(got_message.starts_with(message), "{error}");
        assert!(!got_message.contains("invalid trigger field"), "{error}");
    }
}

#[test]
fn a_schedule_holds_its_parsed_trigger_and_shows_it_as_written() {
    let file = write("[[schedule]]\nname = \"half\"\nevery = \"90m\"\n");
    let config = load(Some(file.path()), Vec::new()).expect("valid");
    assert_eq!(config.schedule[0].trigger().describe(), "every 1h30m");
    assert!(
        config.redacted_toml().contains("every = \"90m\""),
        "{}",
        config.redacted_toml()
    );
}

#[test]
fn an_error_is_blamed_on_the_variable_that_set_that_key_only() {
    /// (variable, value) pairs.
    type Variables<'a> = &'a [(&'a str, &'a str)];
    // (variables, file, key at fault, origin named)
    let cases: &[(Variables, &str, &str, &str)] = &[
        (
            &[("HEISTD_HEIST__TURNS", "0")],
            "",
            "heist.turns",
            "HEISTD_HEIST__TURNS",
        ),
        // `window` is a prefix of `window_size` as text, not as a key.
        (
            &[("HEISTD_LLM__POLICY__BREAKER__WINDOW", "time")],
            "[llm.policy.breaker]\nwindow_size = 0\n",
            "llm.policy.breaker.window_size",
            "file",
        ),
        (
            &[("HEISTD_LLM__POLICY__BREAKER__WINDOW_SIZE", "0")],
            "",
            "llm.policy.breaker.window_size",
            "HEISTD_LLM__POLICY__BREAKER__WINDOW_SIZE",
        ),
        // An override of `llm.timeout` (no such key) is its own error,
        // blamed on its variable; `llm.timeout_ms` from the file is not.
        (
            &[("HEISTD_LLM__TIMEOUT", "5")],
            "[llm]\ntimeout_ms = 0\n",
            "llm.timeout",
            "HEISTD_LLM__TIMEOUT",
        ),
        // A variable that sets a key inside the table at fault is blamed.
        (
            &[("HEISTD_COMPANIONS__FAULTS__VAULT__HANG", "true")],
            "",
            "companions.faults.vault",
            "HEISTD_COMPANIONS__FAULTS__VAULT__HANG",
        ),
    ];
    for (variables, contents, key, origin) in cases {
        let file = write(contents);
        let environment = variables
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()));
        let error = load(Some(file.path()), environment)
            .expect_err(key)
            .to_string();
        let origin = if *origin == "file" {
            file.path().display().to_string()
        } else {
            format!("environment variable {origin}")
        };
        assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        assert!(
            error.contains(&origin),
            "{key}: `{error}` should name {origin}"
        );
    }
    assert!(!is_same_or_below("llm.timeout_ms", "llm.timeout"));
    assert!(!is_same_or_below("llm.timeout", "llm.timeout_ms"));
    assert!(is_same_or_below("llm.policy.breaker", "llm.policy"));
    assert!(is_same_or_below(
        "oauth.clients[0].client_secret",
        "oauth.clients"
    ));
    assert!(is_same_or_below("llm.timeout_ms", "llm.timeout_ms"));
}

#[test]
fn secrets_are_read_once_from_the_named_variables_and_never_shown() {
    let environment = vec![
        (
            "HEISTD_ADMIN_TOKEN".to_string(),
            "admin-token-value".to_string(),
        ),
        ("MY_LLM_KEY".to_string(), "llm-key-value".to_string()),
        (
            "HEISTD_LLM__API_KEY_ENV".to_string(),
            "MY_LLM_KEY".to_string(),
        ),
        (
            "HEISTD_OAUTH_SIGNING_KEY".to_string(),
            "signing-key-value-of-32-bytes-or-more".to_string(),
        ),
    ];
    let config = load(None, environment).expect("valid");
    let exposed =
        |secret: &Option<Secret>| secret.as_ref().map(|secret| secret.expose().to_string());
    assert_eq!(
        exposed(&config.daemon.admin_token).as_deref(),
        Some("admin-token-value")
    );
    assert_eq!(
        exposed(&config.llm.api_key).as_deref(),
        Some("llm-key-value")
    );
    assert_eq!(
        exposed(&config.oauth.signing_key).as_deref(),
        Some("signing-key-value-of-32-bytes-or-more")
    );
    let debug = format!("{config:?}");
    let shown = config.redacted_toml();
    for value in [
        "admin-token-value",
        "llm-key-value",
        "signing-key-value",
        "rehearsal-secret",
    ] {
        assert!(!debug.contains(value), "Debug shows {value}");
        assert!(!shown.contains(value), "redacted_toml shows {value}");
    }
    assert_eq!(
        shown,
        load(None, Vec::new())
            .expect("valid")
            .redacted_toml()
            .replace(
                "api_key_env = \"HEISTD_LLM_API_KEY\"",
                "api_key_env = \"MY_LLM_KEY\""
            ),
        "resolved secrets are not part of the file's shape"
    );
    let without = load(None, Vec::new()).expect("valid");
    assert!(without.daemon.admin_token.is_none() && without.llm.api_key.is_none());
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
fn the_postgres_password_is_read_like_every_other_secret() {
    let base = "[store]\nbackend = \"postgres\"\nurl = \"postgres://heistd@127.0.0.1/heistd\"\n";
    let unset = write(&format!(
        "{base}password_env = \"HEISTD_TEST_PG_PASSWORD\"\n"
    ));
    let error = load(Some(unset.path()), Vec::new())
        .expect_err("unset")
        .to_string();
    assert!(
        error.contains("store.password_env") && error.contains("not set"),
        "{error}"
    );
    let set = vec![(
        "HEISTD_TEST_PG_PASSWORD".to_string(),
        "hunter22".to_string(),
    )];
    let loaded = load(Some(unset.path()), set).expect("set");
    assert_eq!(
        loaded.store.password.as_ref().map(Secret::expose),
        Some("hunter22")
    );
    let relative = write(&format!("{base}password_file = \"pg-password\"\n"));
    let error = load(Some(relative.path()), Vec::new())
        .expect_err("no credentials")
        .to_string();
    assert!(
        error.contains("store.password_file") && error.contains("CREDENTIALS_DIRECTORY"),
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
