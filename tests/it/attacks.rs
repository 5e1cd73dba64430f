//! Hostile clients: every probe of the security review as a table row
//! (request, expected status, expected error), each companion still
//! answering `/health` afterwards, memory growth within its caps, and the
//! HTTP limits (slowloris, a thousand idle connections) measured with small
//! configured limits so the test runs in seconds.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::{self, TestStack};

/// Limits small enough to be reached in a test.
fn hostile_config() -> heistd::config::Config {
    let mut config = support::base_config();
    config.http.header_timeout_ms = 500;
    config.http.max_connections = 64;
    config.companions.memory.max_entries_per_session = 20;
    config.companions.memory.max_bytes_per_session = 64 * 1024;
    config.companions.memory.max_bytes = 256 * 1024;
    config.companions.database_query.time_limit_ms = 1_000;
    config
}

enum Credential {
    None,
    Garbage,
    /// A token for client `sub` with these scopes.
    Token(&'static str, &'static str),
}

struct Probe {
    name: &'static str,
    service: &'static str,
    method: &'static str,
    path: &'static str,
    credential: Credential,
    body: Value,
    status: u16,
    /// A piece of the reply's `error` (or `error_description`).
    error: &'static str,
}

fn probes() -> Vec<Probe> {
    use Credential::*;
    let printf_bomb = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) SELECT printf('%.*c', 20000000, 'x') AS x FROM n";
    let wide = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) SELECT printf('%.*c', 900000, 'x') AS x FROM n";
    let write = |agent: &str, session: &str| json!({"agent_id": agent, "turn_id": 1, "message": "plant", "game_session_id": session});
    let read = |agent: &str| json!({"agent_id": agent, "game_session_id": "s"});
    let db = "database_query:use";
    let agent_memory = "memory:write memory:read";
    vec![
        Probe {
            name: "printf bomb",
            service: "database_query",
            method: "POST",
            path: "/tools/query_db",
            credential: Token("hacker", db),
            body: json!({"query": printf_bomb}),
            status: 413,
            error: "max_value_bytes",
        },
        Probe {
            name: "wide reply",
            service: "database_query",
            method: "POST",
            path: "/tools/query_db",
            credential: Token("hacker", db),
            body: json!({"query": wide}),
            status: 413,
            error: "bytes",
        },
        Probe {
            name: "randomblob",
            service: "database_query",
            method: "POST",
            path: "/tools/query_db",
            credential: Token("hacker", db),
            body: json!({"query": "SELECT length(hex(randomblob(100000000)))"}),
            status: 413,
            error: "max_value_bytes",
        },
        Probe {
            name: "zeroblob",
            service: "database_query",
            method: "POST",
            path: "/tools/query_db",
            credential: Token("hacker", db),
            body: json!({"query": "SELECT zeroblob(100000000)"}),
            status: 413,
            error: "max_value_bytes",
        },
        Probe {
            name: "attach",
            service: "database_query",
            method: "POST",
            path: "/tools/query_db",
            credential: Token("hacker", db),
            body: json!({"query": "ATTACH DATABASE '/tmp/x' AS x"}),
            status: 400,
            error: "read-only",
        },
        Probe {
            name: "array body",
            service: "database_query",
            method: "POST",
            path: "/tools/query_db",
            credential: Token("hacker", db),
            body: json!(["SELECT 1"]),
            status: 422,
            error: "JSON object",
        },
        Probe {
            name: "store without token",
            service: "memory",
            method: "POST",
            path: "/tools/store_memory",
            credential: None,
            body: write("mole", "s"),
            status: 401,
            error: "missing bearer token",
        },
        Probe {
            name: "read without token",
            service: "memory",
            method: "POST",
            path: "/tools/get_compressed_memory",
            credential: None,
            body: read("mole"),
            status: 401,
            error: "missing bearer token",
        },
        Probe {
            name: "list without token",
            service: "memory",
            method: "GET",
            path: "/sessions/s/memories",
            credential: None,
            body: Value::Null,
            status: 401,
            error: "missing bearer token",
        },
        Probe {
            name: "stats without token",
            service: "memory",
            method: "GET",
            path: "/stats",
            credential: None,
            body: Value::Null,
            status: 401,
            error: "missing bearer token",
        },
        Probe {
            name: "garbage token",
            service: "memory",
            method: "GET",
            path: "/stats",
            credential: Garbage,
            body: Value::Null,
            status: 401,
            error: "malformed",
        },
        Probe {
            name: "another agent's memories",
            service: "memory",
            method: "POST",
            path: "/tools/get_compressed_memory",
            credential: Token("hacker", agent_memory),
            body: read("mole"),
            status: 403,
            error: "own agent",
        },
        Probe {
            name: "planting another agent's memory",
            service: "memory",
            method: "POST",
            path: "/tools/store_memory",
            credential: Token("hacker", agent_memory),
            body: write("mole", "s"),
            status: 403,
            error: "own agent",
        },
        Probe {
            name: "stats with an agent token",
            service: "memory",
            method: "GET",
            path: "/stats",
            credential: Token("hacker", agent_memory),
            body: Value::Null,
            status: 403,
            error: "memory:admin",
        },
        Probe {
            name: "list with an agent token",
            service: "memory",
            method: "GET",
            path: "/sessions/s/memories",
            credential: Token("hacker", agent_memory),
            body: Value::Null,
            status: 403,
            error: "memory:admin",
        },
        Probe {
            name: "own memories",
            service: "memory",
            method: "POST",
            path: "/tools/store_memory",
            credential: Token("hacker", agent_memory),
            body: write("hacker", "s"),
            status: 200,
            error: "",
        },
        Probe {
            name: "calculator bomb",
            service: "calculator",
            method: "POST",
            path: "/tools/calculator",
            credential: Token("hacker", "calculator:use"),
            body: json!({"expression": "9^9^9^9^9"}),
            status: 400,
            error: "",
        },
        Probe {
            name: "traversal",
            service: "file_reader",
            method: "POST",
            path: "/tools/read_file",
            credential: Token("planner", "file_reader:use"),
            body: json!({"filename": "../../etc/passwd"}),
            status: 404,
            error: "no document",
        },
        Probe {
            name: "array body to /token",
            service: "oauth",
            method: "POST",
            path: "/token",
            credential: None,
            body: json!([1, 2]),
            status: 422,
            error: "JSON object",
        },
    ]
}

async fn send(stack: &TestStack, probe: &Probe) -> (u16, Value) {
    let url = format!("{}{}", stack.url(probe.service), probe.path);
    let client = support::http();
    let mut request = match probe.method {
        "GET" => client.get(url),
        _ => client.post(url).json(&probe.body),
    };
    request = match probe.credential {
        Credential::None => request,
        Credential::Garbage => request.bearer_auth("garbage"),
        Credential::Token(sub, scope) => request.bearer_auth(token_for(stack, sub, scope)),
    };
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn token_for(stack: &TestStack, sub: &str, scope: &str) -> String {
    let now = heistd::services::token::unix_now();
    stack
        .signing_key()
        .sign(&heistd::services::token::Claims {
            iss: heistd::services::token::ISSUER.into(),
            sub: sub.into(),
            scope: scope.into(),
            iat: now,
            exp: now + 300,
        })
        .expect("signed")
}

async fn all_healthy(stack: &TestStack) {
    for service in [
        "oauth",
        "memory",
        "calculator",
        "file_reader",
        "database_query",
    ] {
        let reply = support::http()
            .get(format!("{}/health", stack.url(service)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap_or_else(|error| panic!("{service} /health: {error}"));
        assert_eq!(reply.status(), 200, "{service} /health");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_is_refused_as_it_should_be_and_every_service_stays_up() {
    let stack = TestStack::start_with(hostile_config()).await;
    for probe in probes() {
        let started = tokio::time::Instant::now();
        let (status, body) = send(&stack, &probe).await;
        assert_eq!(status, probe.status, "{}: {body}", probe.name);
        let error = format!("{} {}", body["error"], body["error_description"]);
        assert!(error.contains(probe.error), "{}: {body}", probe.name);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{} took {:?}",
            probe.name,
            started.elapsed()
        );
    }
    all_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_quotas_hold_and_the_service_stays_up() {
    let stack = TestStack::start_with(hostile_config()).await;
    let memory = stack.url("memory");
    let admin = support::memory_admin_token(&stack);
    let store = |session: String, turn: i64, size: usize| {
        let body = json!({"agent_id": "mole", "turn_id": turn, "message": "x".repeat(size), "game_session_id": session});
        support::http()
            .post(format!("{memory}/tools/store_memory"))
            .bearer_auth(admin.clone())
            .json(&body)
            .send()
    };
    // Entries per session: the 21st write is refused for good.
    for turn in 1..=20 {
        assert_eq!(
            store("entries".into(), turn, 10)
                .await
                .expect("answered")
                .status(),
            200
        );
    }
    let refused = store("entries".into(), 21, 10).await.expect("answered");
    assert_eq!(refused.status(), 413);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "quota_exceeded", "{body}");
    // Bytes per session: 64 KiB, in 60 KiB messages.
    assert_eq!(
        store("bytes".into(), 1, 60 * 1024)
            .await
            .expect("answered")
            .status(),
        200
    );
    assert_eq!(
        store("bytes".into(), 2, 60 * 1024)
            .await
            .expect("answered")
            .status(),
        413
    );
    // In total: 256 KiB, then 507 (a transient refusal).
    let mut statuses = Vec::new();
    for session in 0..8 {
        statuses.push(
            store(format!("total-{session}"), 1, 60 * 1024)
                .await
                .expect("answered")
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&507), "{statuses:?}");
    let stats: Value = support::http()
        .get(format!("{memory}/stats"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert!(
        stats["total_bytes"].as_u64().unwrap_or(u64::MAX) <= 256 * 1024,
        "{stats}"
    );
    all_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_1_answers_while_ten_slow_queries_run() {
    let stack = TestStack::start_with(hostile_config()).await;
    let url = format!("{}/tools/query_db", stack.url("database_query"));
    let token = token_for(&stack, "hacker", "database_query:use");
    let slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 40) SELECT sum(length(hex(randomblob(400000)))) AS s FROM n, n AS m, n AS k";
    let runaways: Vec<_> = (0..10)
        .map(|_| {
            let request = support::http()
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"query": slow}));
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let status = request.send().await.expect("answered").status().as_u16();
                (status, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    let quick = support::http()
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"query": "SELECT 1 AS one"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(quick.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "SELECT 1 took {:?}",
        started.elapsed()
    );
    for runaway in runaways {
        let (status, took) = runaway.await.expect("joined");
        assert_eq!(status, 400, "interrupted");
        assert!(
            took < Duration::from_secs(3),
            "a runaway query ran {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_cut_and_a_thousand_idle_connections_are_shed() {
    // The test process holds both ends of every connection.
    heistd::http::raise_open_files_limit(4096);
    let stack = TestStack::start_with(hostile_config()).await;
    let address = stack
        .url("calculator")
        .trim_start_matches("http://")
        .to_string();

    // One header byte every 100 ms: cut by the 500 ms header timeout.
    let mut slow = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    let started = tokio::time::Instant::now();
    let request = b"POST /tools/calculator HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut cut = false;
    for byte in request.iter().chain(std::iter::repeat(&b'a')).take(100) {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(cut, "the slowloris connection was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A thousand idle connections: beyond 64 closed at once, the rest at
    // the header timeout; /health answers right after.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(stream) = tokio::net::TcpStream::connect(&address).await {
            idle.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    all_healthy(&stack).await;
    let mut closed = 0;
    for stream in &mut idle {
        let mut buffer = [0u8; 1];
        match tokio::time::timeout(
            Duration::from_millis(50),
            tokio::io::AsyncReadExt::read(stream, &mut buffer),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, idle.len(), "every idle connection is closed by now");
}

#[test]
fn services_on_every_address_with_built_in_secrets_exit_1_naming_the_fix() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("open.toml");
    std::fs::write(&path, "[companions]\nhost = \"0.0.0.0\"\n").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(["services", "all", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("client_secret_file") && stderr.contains("127.0.0.1"),
        "{stderr}"
    );
}

#[test]
fn config_check_warns_about_built_in_secrets() {
    let directory = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_heistd"))
        .args(["config", "check"])
        .current_dir(directory.path())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("# WARNING: clients planner"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guessing_is_limited_and_a_newline_in_client_id_is_escaped() {
    let stack = TestStack::start_with(hostile_config()).await;
    let url = format!("{}/token", stack.url("oauth"));
    let guess = |secret: String| {
        support::http().post(&url).json(&json!({
            "grant_type": "client_credentials", "client_id": "operator\nforged", "client_secret": secret,
        }))
    };
    let mut statuses = Vec::new();
    for attempt in 0..12 {
        statuses.push(
            guess(format!("guess-{attempt}"))
                .send()
                .await
                .expect("answered"),
        );
    }
    let last = statuses.pop().expect("12");
    assert_eq!(last.status(), 429);
    assert!(last.headers().contains_key("retry-after"));
    assert!(statuses.iter().take(10).all(|reply| reply.status() == 401));
    assert_eq!(
        heistd::wire::loggable("operator\nforged"),
        "operator\\nforged"
    );
}
