//! Hostile clients against `heistd services all` in its own process, as an
//! operator runs it: a request body sent slower than `http.request_timeout_ms`
//! is cut, a `client_id` with a newline and an escape code is escaped in the
//! log the process writes, and the issue's printf query leaves the process's
//! peak RSS (VmHWM from /proc) under 150 MB.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::services_process::ServicesProcess;

/// The configured request timeout: small, so the test runs in a second.
const REQUEST_TIMEOUT_MS: u64 = 500;

/// The services with [`REQUEST_TIMEOUT_MS`], the other timeouts long.
fn start_services() -> ServicesProcess {
    ServicesProcess::start_with(
        &format!(
            "[http]\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\nheader_timeout_ms = 5000\n\
             idle_timeout_ms = 5000"
        ),
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_slower_than_the_request_timeout_is_cut() {
    let services = start_services();
    let token = services.token("hacker", "calculator:use").await;
    let mut slow = tokio::net::TcpStream::connect(services.address("calculator"))
        .await
        .expect("connects");
    let body = json!({ "expression": format!("1{}", "+1".repeat(200)) }).to_string();
    let head = format!(
        "POST /tools/calculator HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("headers sent");
    let started = tokio::time::Instant::now();
    // One body byte every 50 ms: the whole body would take 20 s, and each
    // byte keeps the (5 s) idle timeout from being the one that cuts.
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for byte in body.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
            }
            // An answer's head and its (small JSON) body: the cut is seen.
            if answer.windows(4).any(|window| window == b"\r\n\r\n") && answer.ends_with(b"}") {
                return;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickle.abort();
    read.unwrap_or_else(|_| panic!("not cut after {elapsed:?}"));
    let answer = String::from_utf8_lossy(&answer);
    // Cut by the request timeout: not before it, and within a margin.
    assert!(
        elapsed >= Duration::from_millis(REQUEST_TIMEOUT_MS - 50)
            && elapsed < Duration::from_millis(REQUEST_TIMEOUT_MS + 1_500),
        "cut after {elapsed:?}: {answer}"
    );
    // Closed with no answer, or answered 408/503 naming the limit.
    if !answer.is_empty() {
        assert!(
            answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 503"),
            "{answer}"
        );
        assert!(
            answer.contains(&format!("{REQUEST_TIMEOUT_MS} ms")),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_with_a_newline_and_an_escape_code_is_escaped_in_the_log() {
    let mut services = start_services();
    let forged = "operator\n2026-01-01T00:00:00Z  INFO token issued client_id=operator scope=memory:admin\u{1b}[2K";
    let reply = crate::support::http()
        .post(format!("{}/token", services.url("oauth")))
        .json(&json!({
            "grant_type": "client_credentials", "client_id": forged, "client_secret": "a-wrong-secret-of-some-length",
        }))
        .send()
        .await
        .expect("answered");
    assert_eq!(reply.status(), 401);
    assert!(services.stop().success());
    let log = services.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("token refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    let line = refused[0];
    // One line, with the newline and the escape shown, not obeyed.
    assert!(
        line.contains(r"operator\n2026-01-01T00:00:00Z  INFO token issued"),
        "{line}"
    );
    assert!(line.contains(r"\u{1b}[2K"), "{line}");
    assert!(
        !log.contains('\u{1b}'),
        "a raw escape code in the log: {log:?}"
    );
    assert!(
        !log.lines()
            .any(|line| line.starts_with("2026-01-01T00:00:00Z")),
        "a forged line: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printf_query_leaves_the_companions_rss_under_150_mb() {
    let services = start_services();
    let token = services.token("hacker", "database_query:use").await;
    let printf_bomb = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) \
                       SELECT printf('%.*c', 20000000, 'x') AS x FROM n";
    let client = crate::support::http();
    // Sent a few times: what one query could keep must not add up either.
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let reply = client
            .post(format!("{}/tools/query_db", services.url("database_query")))
            .bearer_auth(&token)
            .json(&json!({ "query": printf_bomb }))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("answered");
        let status = reply.status();
        let body = reply.bytes().await.expect("body");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // SQLITE_LIMIT_LENGTH stops each 20 MB value at 1 MiB: refused.
        assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
        let error: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|text| text.contains("max_value_bytes")),
            "{error}"
        );
    }
    let (rss_kb, peak_kb) = services.memory_kb();
    assert!(
        peak_kb < 150 * 1024,
        "VmHWM {peak_kb} kB (VmRSS {rss_kb} kB) is over 150 MB"
    );
    let health = client
        .get(format!("{}/health", services.url("database_query")))
        .send()
        .await
        .expect("health answered");
    assert_eq!(health.status(), 200);
}
