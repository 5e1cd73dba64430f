//! The three tools over real HTTP: what they answer, what they refuse, and
//! the fault injection every companion carries.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{self, TestStack};

/// A started stack with a token for every tool.
struct Tools {
    stack: TestStack,
    token: String,
}

impl Tools {
    async fn start() -> Self {
        let stack = TestStack::start().await;
        let token = support::token(
            &stack.signing_key(),
            "calculator:use file_reader:use database_query:use",
            300,
        );
        Self { stack, token }
    }

    fn url(&self, tool: &str) -> String {
        let path = match tool {
            "calculator" => "/tools/calculator",
            "file_reader" => "/tools/read_file",
            "database_query" => "/tools/query_db",
            other => panic!("no tool {other}"),
        };
        format!("{}{path}", self.stack.url(tool))
    }

    async fn call(&self, tool: &str, body: Value) -> (StatusCode, Value) {
        self.send(support::http().post(self.url(tool)).json(&body))
            .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request is answered");
        let status = response.status();
        (status, response.json().await.expect("reply is JSON"))
    }
}

/// The error of a refusal, after checking its shape.
fn refusal(status: StatusCode, body: &Value, context: &str) -> String {
    assert!(status.is_client_error(), "{context}: {status} {body}");
    refusal_shape(body, context)
}

/// The error of a `{success: false, result: null, error}` reply.
fn refusal_shape(body: &Value, context: &str) -> String {
    assert_eq!(body["success"], json!(false), "{context}: {body}");
    assert_eq!(body["result"], Value::Null, "{context}: {body}");
    let error = body["error"].as_str().unwrap_or_default().to_string();
    assert!(!error.is_empty(), "{context}: no error in {body}");
    error
}

#[tokio::test]
async fn calculator_evaluates_expressions() {
    let tools = Tools::start().await;
    let cases = [
        ("2 + 3 * 4", "14"),
        ("(1 + 2) ^ 2", "9"),
        ("-2 ^ 2", "-4"),
        ("2 ^ 3 ^ 2", "512"),
        ("7 % 3", "1"),
        ("1 / 4", "0.25"),
        ("10 - 4 - 3", "3"),
        ("  42  ", "42"),
        ("1.5 * 2", "3"),
        ("-(3 - 5)", "2"),
    ];
    for (expression, expected) in cases {
        let (status, body) = tools
            .call("calculator", json!({ "expression": expression }))
            .await;
        assert_eq!(status, StatusCode::OK, "{expression}: {body}");
        assert_eq!(body["success"], json!(true), "{expression}: {body}");
        assert_eq!(body["result"], json!(expected), "{expression}: {body}");
        assert_eq!(body["error"], Value::Null, "{expression}");
    }
}

#[tokio::test]
async fn calculator_refuses_bad_expressions_with_a_reason() {
    let tools = Tools::start().await;
    let long = format!("1{}", " + 1".repeat(75));
    let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
    let cases: [(&str, &str); 9] = [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("2 +", "ended unexpectedly"),
        ("(1 + 2", "parenthes"),
        ("1 + 2)", "parenthes"),
        ("abc", "unexpected character"),
        ("9^9^8", "too large"),
        (&long, "limit"),
        ("", "empty"),
    ];
    for (expression, telling) in cases.into_iter().chain([(deep.as_str(), "nested")]) {
        let (status, body) = tools
            .call("calculator", json!({ "expression": expression }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expression}: {body}");
        let error = refusal(status, &body, expression);
        assert!(
            error.to_lowercase().contains(telling),
            "{expression}: `{error}` should say {telling}"
        );
    }
    assert!(long.len() > 256);

    // Bodies the handler never sees still get the tool's JSON error shape.
    let calculator = || support::http().post(tools.url("calculator"));
    let json_type = ("content-type", "application/json");
    let malformed = [
        ("missing field", calculator().json(&json!({}))),
        (
            "wrong type",
            calculator().json(&json!({ "expression": 14 })),
        ),
        (
            "not JSON",
            calculator().header(json_type.0, json_type.1).body("2 + 2"),
        ),
        (
            "no content type",
            calculator().body(r#"{"expression": "1"}"#),
        ),
    ];
    for (case, request) in malformed {
        let (status, body) = tools.send(request).await;
        refusal(status, &body, case);
    }
}

#[tokio::test]
async fn file_reader_serves_only_its_documents() {
    let tools = Tools::start().await;
    for name in ["bank_layout.txt", "security_specs.txt", "vault_specs.txt"] {
        let (status, body) = tools.call("file_reader", json!({ "filename": name })).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["success"], json!(true), "{name}");
        assert!(
            body["result"]
                .as_str()
                .is_some_and(|text| !text.trim().is_empty()),
            "{name}: {body}"
        );
    }
    let escapes = [
        "../Cargo.toml",
        "/etc/passwd",
        "documents/../../Cargo.toml",
        "bank_layout.txt/../vault_specs.txt",
        "./bank_layout.txt",
        "..",
        "BANK_LAYOUT.TXT",
        "",
        "   ",
    ];
    let too_long = "a".repeat(200);
    for name in escapes.into_iter().chain([too_long.as_str()]) {
        let (status, body) = tools.call("file_reader", json!({ "filename": name })).await;
        assert!(
            matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND),
            "{name}: {status} {body}"
        );
        refusal(status, &body, name);
        assert!(
            !body.to_string().contains("[package]"),
            "{name} leaked a file: {body}"
        );
    }

    let (status, body) = tools
        .call("file_reader", json!({ "filename": "nope.txt" }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let error = refusal(status, &body, "nope.txt");
    for name in [
        "nope.txt",
        "bank_layout.txt",
        "security_specs.txt",
        "vault_specs.txt",
    ] {
        assert!(error.contains(name), "`{error}` should name {name}");
    }
}

#[tokio::test]
async fn database_query_is_read_only() {
    let tools = Tools::start().await;
    let count = || {
        tools.call(
            "database_query",
            json!({ "query": "SELECT COUNT(*) AS n FROM guards" }),
        )
    };
    let (status, body) = count().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let guards = body["result"][0]["n"].as_i64().expect("a count");
    assert!(guards > 0, "{body}");

    let (status, body) = tools
        .call(
            "database_query",
            json!({ "query": "SELECT * FROM guards ORDER BY 1 LIMIT 2" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body["result"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{body}");
    assert!(
        rows.iter()
            .all(|row| row.as_object().is_some_and(|row| !row.is_empty())),
        "{body}"
    );

    let writes = [
        "DELETE FROM guards",
        "delete from guards where 1 = 1",
        "UPDATE guards SET name = 'nobody'",
        "INSERT INTO guards SELECT * FROM guards",
        "DROP TABLE guards",
        "CREATE TABLE loot (gold INTEGER)",
        "ATTACH DATABASE '/tmp/heistd-loot.db' AS loot",
        "PRAGMA query_only = OFF",
        "REPLACE INTO guards SELECT * FROM guards",
    ];
    for query in writes {
        let (status, body) = tools
            .call("database_query", json!({ "query": query }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = refusal(status, &body, query);
        assert!(
            error.to_lowercase().contains("read-only"),
            "{query}: `{error}`"
        );
    }
    let sneaky = [
        "SELECT 1; DELETE FROM guards",
        "SELECT 1; DROP TABLE guards;",
        "WITH gone AS (DELETE FROM guards RETURNING *) SELECT * FROM gone",
        "SELECT * FROM no_such_table",
        "",
        &format!("SELECT 1{}", " ".repeat(2_100)),
        &format!("SELECT '{}'", "x".repeat(3_000)),
    ];
    for query in sneaky {
        let (status, body) = tools
            .call("database_query", json!({ "query": query }))
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}: {body}",
            &query[..query.len().min(40)]
        );
        refusal(status, &body, query);
    }

    let (status, body) = count().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"][0]["n"].as_i64(),
        Some(guards),
        "writes must not have landed"
    );
}

/// A request to a `/fault` control route, which needs no token.
async fn control(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("control route answers");
    (
        response.status(),
        response.json().await.expect("reply is JSON"),
    )
}

#[tokio::test]
async fn injected_faults_come_and_go() {
    let tools = Tools::start().await;
    let base = tools.stack.url("calculator");
    let fault = format!("{base}/fault");
    let set = |setting: Value| control(support::http().post(&fault).json(&setting));
    let calculate = || tools.call("calculator", json!({ "expression": "1 + 1" }));
    assert_eq!(calculate().await.0, StatusCode::OK);

    let (status, _) = set(json!({ "error_rate": 1.0, "error_status": 503 })).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = calculate().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    refusal_shape(&body, "injected 503");
    let (status, body) = control(support::http().get(format!("{base}/health"))).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "faults cover every route: {body}"
    );
    let (_, shown) = control(support::http().get(&fault)).await;
    assert_eq!(shown["error_rate"], json!(1.0), "{shown}");

    assert_eq!(
        control(support::http().delete(&fault)).await.0,
        StatusCode::OK
    );
    let (status, body) = calculate().await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!("2")),
        "{body}"
    );

    let invalid = [
        json!({ "error_rate": 2.0 }),
        json!({ "error_rate": -0.5 }),
        json!({ "error_rate": 1.0, "error_status": 42 }),
        json!({ "error_rat": 1.0 }),
    ];
    for setting in invalid {
        let (status, body) = set(setting.clone()).await;
        refusal(status, &body, &setting.to_string());
        if setting.get("error_rate").is_some() {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{setting}");
        }
        assert_eq!(
            calculate().await.0,
            StatusCode::OK,
            "{setting} must not have been set"
        );
    }

    assert_eq!(set(json!({ "refuse": true })).await.0, StatusCode::OK);
    // A fresh client, so no pooled connection predates the refusal.
    let request = support::http()
        .post(tools.url("calculator"))
        .bearer_auth(&tools.token);
    let error = request
        .json(&json!({ "expression": "1" }))
        .send()
        .await
        .expect_err("refused");
    assert!(error.is_connect() || error.is_request(), "{error:?}");
    assert!(
        support::http().get(&fault).send().await.is_err(),
        "the control route is refused too"
    );

    let calculator = tools
        .stack
        .stack
        .companions
        .get("calculator")
        .expect("calculator runs");
    calculator.fault.clear();
    let (status, body) = tools
        .call("calculator", json!({ "expression": "2 * 3" }))
        .await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!("6")),
        "{body}"
    );
}

#[tokio::test]
async fn faults_can_be_set_at_start_from_the_config() {
    let mut config = support::base_config();
    config.companions.faults.insert(
        "calculator".into(),
        heistd::config::Fault {
            fail_next: 1,
            error_status: 418,
            ..Default::default()
        },
    );
    let stack = TestStack::start_with(config).await;
    let token = support::token(&stack.signing_key(), "calculator:use", 60);
    let call = || {
        support::http()
            .post(format!("{}/tools/calculator", stack.url("calculator")))
            .bearer_auth(&token)
            .json(&json!({ "expression": "2 * 21" }))
    };
    assert_eq!(
        call().send().await.expect("answers").status(),
        StatusCode::IM_A_TEAPOT
    );
    let second: Value = call()
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(
        second["result"], "42",
        "fail_next counted down to normal service"
    );
}
