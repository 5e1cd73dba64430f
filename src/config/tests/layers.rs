//! Layering: defaults, the file and the environment, and which of them an error blames.

use super::*;

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
