//! Property tests of the parsers that take hostile input: the calculator,
//! the SQL guard, the `[TOOL:...]` parser, token verification and config
//! loading. Each must never panic and must answer quickly, whatever it is
//! given. Case counts and input sizes are modest so CI stays fast.

use std::sync::OnceLock;
use std::time::Duration;

use heistd::config::DatabaseToolConfig;
use heistd::services::database::ShiftDatabase;
use heistd::services::token::SigningKey;
use proptest::prelude::*;

/// Every call must finish within this, even on a slow CI machine.
const QUICK: Duration = Duration::from_secs(2);

fn timed<T>(run: impl FnOnce() -> T) -> (T, Duration) {
    let started = tokio::time::Instant::now();
    let value = run();
    (value, started.elapsed())
}

fn database() -> &'static ShiftDatabase {
    static DATABASE: OnceLock<ShiftDatabase> = OnceLock::new();
    DATABASE.get_or_init(|| {
        let limits = DatabaseToolConfig {
            time_limit_ms: 500,
            ..DatabaseToolConfig::default()
        };
        ShiftDatabase::build(&heistd::scenario::Scenario::embedded().shifts_sql, &limits)
            .expect("loads")
    })
}

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(SigningKey::random)
}

/// Text made of the pieces each parser cares about, so cases reach deep.
fn calculator_input() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("("),
            Just(")"),
            Just("+"),
            Just("-"),
            Just("*"),
            Just("/"),
            Just("%"),
            Just("^"),
            Just("."),
            Just("9"),
            Just("1e308"),
            Just(" "),
            Just("0"),
            Just("x"),
        ],
        0..200,
    )
    .prop_map(|pieces| pieces.concat())
}

fn sql_input() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("SELECT "),
            Just("WITH "),
            Just("RECURSIVE "),
            Just("n(i) AS "),
            Just("("),
            Just(")"),
            Just(";"),
            Just("* "),
            Just("FROM guards "),
            Just("UNION ALL "),
            Just("randomblob(100000000) "),
            Just("printf('%.*c', 99999999, 'x') "),
            Just("ATTACH 'x' AS y "),
            Just("PRAGMA "),
            Just("DELETE "),
            Just("-- "),
            Just("/* "),
            Just("'"),
            Just("1 "),
            Just(", "),
        ],
        0..40,
    )
    .prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_calculator_never_panics_and_answers_quickly(expression in calculator_input()) {
        let (_, took) = timed(|| heistd::services::calculator::evaluate(&expression));
        prop_assert!(took < QUICK, "{expression}: {took:?}");
    }

    #[test]
    fn the_calculator_takes_any_text(expression in ".{0,300}") {
        let (_, took) = timed(|| heistd::services::calculator::evaluate(&expression));
        prop_assert!(took < QUICK);
    }

    #[test]
    fn the_sql_guard_never_writes_never_panics_and_stops_in_time(sql in sql_input()) {
        let (outcome, took) = timed(|| database().query(&sql));
        prop_assert!(took < QUICK, "{sql}: {took:?}");
        if let Ok(rows) = outcome {
            prop_assert!(rows.as_array().is_some_and(|rows| rows.len() <= 100));
        }
        let guards = database().query("SELECT COUNT(*) AS n FROM guards").expect("reads");
        prop_assert!(guards[0]["n"].as_i64().unwrap_or(0) > 0);
    }

    #[test]
    fn the_tool_parser_takes_any_reply(
        reply in prop::collection::vec(
            prop_oneof![Just("[TOOL:"), Just("]"), Just(":"), Just("calculator"), Just("["), Just("x"), Just("\n"), Just("é")],
            0..200,
        ).prop_map(|pieces| pieces.concat())
    ) {
        let (requests, took) = timed(|| heistd::wire::parse_tool_requests(&reply));
        prop_assert!(took < QUICK);
        prop_assert!(requests.len() <= reply.len());
    }

    #[test]
    fn token_verification_refuses_garbage_without_panicking(token in "[A-Za-z0-9_.=-]{0,400}") {
        prop_assert!(key().verify(&token, 0).is_err());
    }

    #[test]
    fn a_token_tampered_anywhere_is_refused(position in 0usize..200, replacement in "[A-Za-z0-9_-]") {
        let token = key().sign(&heistd::services::token::Claims {
            iss: heistd::services::token::ISSUER.into(),
            sub: "mole".into(),
            scope: "memory:read".into(),
            iat: 0,
            exp: i64::MAX,
        }).expect("signed");
        let position = position % token.len();
        let mut bytes = token.clone().into_bytes();
        bytes[position] = replacement.as_bytes()[0];
        let tampered = String::from_utf8(bytes).expect("ascii");
        if tampered != token {
            prop_assert!(key().verify(&tampered, 0).is_err(), "{position}");
        }
    }

    #[test]
    fn config_loading_names_a_key_or_succeeds_never_panics(
        text in prop::collection::vec(
            prop_oneof![
                Just("[http]\n"), Just("[oauth]\n"), Just("[companions.memory]\n"), Just("[llm]\n"),
                Just("token_ttl_seconds = 9223372036854775807\n"), Just("max_connections = 0\n"),
                Just("header_timeout_ms = 1\n"), Just("max_bytes = -1\n"), Just("base_url = \"x\"\n"),
                Just("api_key_file = \"relative\"\n"), Just("x = \n"), Just("\"\n"), Just("[[oauth.clients]]\n"),
                Just("client_id = \"a\"\n"), Just("client_secret = \"short\"\n"),
            ],
            0..12,
        ).prop_map(|pieces| pieces.concat())
    ) {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("heistd.toml");
        std::fs::write(&path, &text).expect("write");
        let (outcome, took) = timed(|| heistd::config::load(Some(&path), Vec::new()));
        prop_assert!(took < QUICK);
        if let Ok(config) = outcome {
            prop_assert!((60..=86_400).contains(&config.oauth.token_ttl_seconds));
            prop_assert!(config.http.max_connections > 0);
        }
    }
}
