//! Who may call what: bearer tokens on the tools and memory, and the OAuth
//! service that issues them.

use heistd::services::token::SigningKey;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use serde_json::{json, Value};

use crate::support::{self, TestStack};

/// (companion, path, a valid body, the scope it demands)
#[rustfmt::skip]
const TOOLS: [(&str, &str, &str, &str); 3] = [
    ("calculator", "/tools/calculator", r#"{"expression": "1+1"}"#, "calculator:use"),
    ("file_reader", "/tools/read_file", r#"{"filename": "vault_specs.txt"}"#, "file_reader:use"),
    ("database_query", "/tools/query_db", r#"{"query": "SELECT 1"}"#, "database_query:use"),
];

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn text(&self, field: &str) -> String {
        let text = self.body[field].as_str().unwrap_or_default();
        assert!(!text.is_empty(), "no `{field}` in {}", self.body);
        text.to_string()
    }
}

async fn send(request: reqwest::RequestBuilder, token: Option<&str>) -> Reply {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("reply is JSON");
    Reply {
        status,
        headers,
        body,
    }
}

async fn post(url: String, token: Option<&str>, body: &Value) -> Reply {
    send(support::http().post(url).json(body), token).await
}

/// The stack's OAuth reply for `client`; `scope: None` asks for the default.
async fn oauth_token(stack: &TestStack, client: &str, scope: Option<&str>) -> Reply {
    let mut request = json!({
        "grant_type": "client_credentials",
        "client_id": client,
        "client_secret": format!("{client}-rehearsal-secret"),
    });
    if let Some(scope) = scope {
        request["scope"] = json!(scope);
    }
    post(format!("{}/token", stack.url("oauth")), None, &request).await
}

/// Asserts a refusal in the tools' shape, with the Bearer challenge on 401.
fn assert_refused(reply: &Reply, status: u16, context: &str) {
    assert_eq!(reply.status, status, "{context}: {}", reply.body);
    assert_eq!(
        reply.body["success"],
        json!(false),
        "{context}: {}",
        reply.body
    );
    reply.text("error");
    if status == 401 {
        let challenge = reply
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|value| value.to_str().ok());
        assert_eq!(challenge, Some("Bearer"), "{context}");
    }
}

fn assert_ok(reply: &Reply, context: &str) {
    assert_eq!(reply.status, 200, "{context}: {}", reply.body);
    assert_eq!(
        reply.body["success"],
        json!(true),
        "{context}: {}",
        reply.body
    );
    assert_eq!(reply.body["error"], Value::Null, "{context}");
}

#[tokio::test]
async fn tools_demand_a_valid_token_with_their_scope() {
    let stack = TestStack::start().await;
    let key = stack.signing_key();
    let stranger = SigningKey::random();
    let forge = |key: &SigningKey, scope: &str, ttl| Some(support::token(key, scope, ttl));
    for (tool, path, body, scope) in TOOLS {
        let url = format!("{}{path}", stack.url(tool));
        let body: Value = serde_json::from_str(body).expect("case body is JSON");
        let other = if tool == "calculator" {
            "file_reader:use"
        } else {
            "calculator:use"
        };
        let refusals = [
            ("no token", None, 401),
            ("garbage token", Some("not-a-token".to_string()), 401),
            ("foreign key", forge(&stranger, scope, 300), 401),
            ("expired", forge(&key, scope, -60), 401),
            ("wrong scope", forge(&key, other, 300), 403),
            ("admin scope", forge(&key, "memory:admin", 300), 403),
        ];
        for (case, token, status) in refusals {
            let reply = post(url.clone(), token.as_deref(), &body).await;
            assert_refused(&reply, status, &format!("{tool}, {case}"));
        }
        let basic = support::http()
            .post(url.clone())
            .json(&body)
            .basic_auth("planner", Some("x"));
        assert_refused(
            &send(basic, None).await,
            401,
            &format!("{tool}, basic auth"),
        );

        let reply = post(url.clone(), forge(&key, scope, 300).as_deref(), &body).await;
        assert_ok(&reply, tool);
        // Several scopes in one token: the tool's is among them.
        let broad = format!("memory:admin {scope}");
        assert_ok(
            &post(url, forge(&key, &broad, 300).as_deref(), &body).await,
            &broad,
        );
    }
}

#[tokio::test]
async fn an_oauth_token_opens_exactly_the_clients_tools() {
    let stack = TestStack::start().await;
    let granted = oauth_token(&stack, "hacker", None).await;
    assert_eq!(granted.status, 200, "{}", granted.body);
    let token = granted.text("access_token");
    for (tool, path, body, _) in TOOLS {
        let body: Value = serde_json::from_str(body).expect("case body is JSON");
        let reply = post(format!("{}{path}", stack.url(tool)), Some(&token), &body).await;
        if tool == "file_reader" {
            assert_refused(&reply, 403, "hacker on file_reader");
        } else {
            assert_ok(&reply, &format!("hacker on {tool}"));
        }
    }
}

#[tokio::test]
async fn oauth_refuses_what_it_must_and_grants_what_was_asked() {
    let stack = TestStack::start().await;
    let url = format!("{}/token", stack.url("oauth"));
    let (secret, grant) = ("hacker-rehearsal-secret", "client_credentials");
    #[rustfmt::skip]
    let cases = [
        ("unknown client", "nobody", "nobody-rehearsal-secret", grant, "", 401, "invalid_client"),
        ("wrong secret", "hacker", "planner-rehearsal-secret", grant, "", 401, "invalid_client"),
        ("empty secret", "hacker", "", grant, "", 401, "invalid_client"),
        ("scope outside allowance", "hacker", secret, grant, "file_reader:use", 400, "invalid_scope"),
        ("a bad scope among good", "hacker", secret, grant, "calculator:use memory:admin", 400, "invalid_scope"),
        ("password grant", "hacker", secret, "password", "", 400, "unsupported_grant_type"),
    ];
    for (case, client, secret, grant, scope, status, code) in cases {
        let request = json!({ "grant_type": grant, "client_id": client, "client_secret": secret, "scope": scope });
        let reply = post(url.clone(), None, &request).await;
        assert_eq!(reply.status, status, "{case}: {}", reply.body);
        assert_eq!(reply.body["error"], json!(code), "{case}: {}", reply.body);
        assert!(reply.body.get("access_token").is_none(), "{case}");
    }
    // A body that is not JSON gets a JSON error, not plain text.
    let garbled = support::http()
        .post(url)
        .header("content-type", "application/json")
        .body("{not json");
    let reply = send(garbled, None).await;
    assert!((400..500).contains(&reply.status), "{}", reply.status);
    reply.text("error");

    let reply = oauth_token(&stack, "hacker", Some("calculator:use")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.text("scope"), "calculator:use");
    assert_eq!(reply.text("token_type"), "bearer");
    assert!(
        reply.body["expires_in"]
            .as_i64()
            .is_some_and(|seconds| seconds > 0),
        "{}",
        reply.body
    );
    reply.text("access_token");

    let clients = support::base_config().oauth.clients;
    for client in ["planner", "hacker", "safecracker", "mole", "operator"] {
        let reply = oauth_token(&stack, client, None).await;
        assert_eq!(reply.status, 200, "{client}: {}", reply.body);
        let granted = reply.text("scope");
        let mut granted: Vec<&str> = granted.split_whitespace().collect();
        let allowed = &clients
            .iter()
            .find(|known| known.client_id == client)
            .expect("default client")
            .scopes;
        let mut expected: Vec<&str> = allowed.iter().map(String::as_str).collect();
        granted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(granted, expected, "{client}");
    }
}

fn memory_entry(session: &str, turn_id: i64, message: &str) -> Value {
    json!({ "agent_id": "mole", "turn_id": turn_id, "message": message, "game_session_id": session })
}

#[tokio::test]
async fn only_memory_admins_may_clear_memory() {
    let stack = TestStack::start().await;
    let memory = stack.url("memory");
    let admin = support::memory_admin_token(&stack);
    let entry = memory_entry("clear-me", 1, "The vault opens at nine.");
    assert_eq!(
        post(format!("{memory}/tools/store_memory"), Some(&admin), &entry)
            .await
            .status,
        200
    );
    let total = || {
        let stats = support::http().get(format!("{memory}/stats"));
        let admin = admin.clone();
        async move { send(stats, Some(&admin)).await.body["total_memories"].clone() }
    };
    assert_eq!(total().await, json!(1));

    let clear = || support::http().delete(format!("{memory}/clear"));
    let key = stack.signing_key();
    let tools = "calculator:use file_reader:use database_query:use";
    let refusals = [
        ("no token", None, 401),
        ("garbage token", Some("garbage".to_string()), 401),
        (
            "expired admin",
            Some(support::token(&key, "memory:admin", -60)),
            401,
        ),
        (
            "foreign admin",
            Some(support::token(&SigningKey::random(), "memory:admin", 300)),
            401,
        ),
        ("tool token", Some(support::token(&key, tools, 300)), 403),
    ];
    for (case, token, status) in refusals {
        assert_refused(
            &send(clear(), token.as_deref()).await,
            status,
            &format!("clear, {case}"),
        );
        assert_eq!(total().await, json!(1), "{case} must not clear");
    }
    // Every client but the operator is refused with its real OAuth token too.
    for client in ["planner", "hacker", "safecracker", "mole"] {
        let token = oauth_token(&stack, client, None).await.text("access_token");
        assert_refused(&send(clear(), Some(&token)).await, 403, client);
    }

    let token = oauth_token(&stack, "operator", None)
        .await
        .text("access_token");
    let reply = send(clear(), Some(&token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["cleared"], json!(1), "{}", reply.body);
    assert_eq!(total().await, json!(0));
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retried_write_count_once() {
    let stack = TestStack::start().await;
    let memory = stack.url("memory");
    let admin = support::memory_admin_token(&stack);
    let store = |key: &str, entry: &Value| {
        let request = support::http().post(format!("{memory}/tools/store_memory"));
        send(
            request.header("Idempotency-Key", key).json(entry),
            Some(&admin),
        )
    };
    let listed = |session: &str| {
        let url = format!("{memory}/sessions/{session}/memories");
        let admin = admin.clone();
        async move {
            send(support::http().get(url), Some(&admin)).await.body["memories"]
                .as_array()
                .expect("memories")
                .len()
        }
    };

    let entry = memory_entry("retried", 1, "Guard change at midnight.");
    let first = store("outbox-1", &entry).await;
    assert_eq!(
        (first.status, &first.body["duplicate"]),
        (200, &json!(false)),
        "{}",
        first.body
    );
    let second = store("outbox-1", &entry).await;
    assert_eq!(
        (second.status, &second.body["duplicate"]),
        (200, &json!(true)),
        "{}",
        second.body
    );
    assert_eq!(listed("retried").await, 1);

    let entry = memory_entry("distinct", 1, "Guard change at midnight.");
    for key in ["outbox-2", "outbox-3"] {
        let reply = store(key, &entry).await;
        assert_eq!(
            reply.body["duplicate"],
            json!(false),
            "{key}: {}",
            reply.body
        );
    }
    assert_eq!(listed("distinct").await, 2);
    assert_eq!(listed("retried").await, 1, "other sessions untouched");
}

#[tokio::test]
async fn compressed_memory_answers_under_both_names() {
    let stack = TestStack::start().await;
    let memory = stack.url("memory");
    let admin = support::memory_admin_token(&stack);
    for turn_id in 1..=5 {
        let message = format!("Point {turn_id} about the vault. Then a long tail nobody needs.");
        let entry = memory_entry("compressed", turn_id, &message);
        assert_eq!(
            post(format!("{memory}/tools/store_memory"), Some(&admin), &entry)
                .await
                .status,
            200
        );
    }
    let compressed = |request: Value| {
        let url = format!("{memory}/tools/get_compressed_memory");
        let admin = admin.clone();
        async move { post(url, Some(&admin), &request).await }
    };
    let reply = compressed(
        json!({ "agent_id": "mole", "game_session_id": "compressed", "recent_count": 2 }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let summary = reply.text("summary");
    assert_eq!(reply.text("compressed_summary"), summary);
    assert_eq!(reply.body["memories_count"], json!(5));
    assert!(
        summary.contains("Turn 5: Point 5 about the vault. Then a long tail"),
        "{summary}"
    );
    assert!(
        summary.contains("Turn 1: Point 1 about the vault.\n"),
        "older turns cut: {summary}"
    );

    let reply = compressed(json!({ "agent_id": "nobody", "game_session_id": "compressed" })).await;
    assert_eq!(reply.body["memories_count"], json!(0), "{}", reply.body);
    assert_eq!(
        (&reply.body["summary"], &reply.body["compressed_summary"]),
        (&json!(""), &json!(""))
    );
}

#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read() {
    let stack = TestStack::start().await;
    let key = stack.signing_key();
    for (service, path, _, scope) in TOOLS {
        let url = format!("{}{path}", stack.url(service));
        let malformed = json!({ "unexpected": true });
        assert_refused(&post(url.clone(), None, &malformed).await, 401, service);
        let wrong_scope = support::token(&key, "memory:admin", 60);
        assert_refused(
            &post(url.clone(), Some(&wrong_scope), &malformed).await,
            403,
            service,
        );
        // With the right token, the same body is a bad request, not an auth failure.
        let right = support::token(&key, scope, 60);
        let reply = post(url.clone(), Some(&right), &malformed).await;
        assert!(
            (400..500).contains(&reply.status) && reply.status != 401 && reply.status != 403,
            "{service}: {}",
            reply.status
        );
        // The scheme name is case-insensitive (RFC 7235).
        let shouted = support::http()
            .post(url)
            .header("authorization", format!("BEARER {right}"))
            .json(&json!({}));
        let reply = send(shouted, None).await;
        assert_ne!(reply.status, 401, "{service}: BEARER is a bearer token");
    }
}
