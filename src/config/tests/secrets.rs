//! Secrets: read once from their variables and files, never shown, never shipped.

use super::*;

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

/// Companions that serve a daemon see all its sessions come from one
/// address: a per-source cap below its sessions would refuse its calls.
#[test]
fn a_per_source_cap_below_the_daemons_sessions_is_warned_about() {
    let mut config = Config::builtin();
    let warned = |config: &Config| {
        config
            .warnings()
            .iter()
            .any(|warning| warning.contains("http.max_connections_per_ip"))
    };
    assert!(!warned(&config), "the defaults (2 sessions, 64) fit");
    config.daemon.max_concurrent_sessions = 100;
    assert!(warned(&config));
    config.http.max_connections_per_ip = 116;
    assert!(!warned(&config));
}
