//! Tests of the reply-body caps (`llm.max_reply_bytes`,
//! `services.<name>.max_reply_bytes`) against real loopback servers: an
//! axum server answering bodies of chosen sizes, and a raw socket that
//! streams a chunked body that never ends. A reply over the cap is a
//! clear error naming the limit, never a panic or an unbounded read.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{http_client, CallError, LlmClient, ServiceClient};
use crate::config::Config;

/// Long enough for any loopback exchange; an unbounded read never ends.
const BOUND: Duration = Duration::from_secs(10);

/// A JSON string of exactly `bytes` bytes (quotes included).
fn json_of_size(bytes: usize) -> String {
    format!("\"{}\"", "a".repeat(bytes - 2))
}

/// An axum server on 127.0.0.1:0: `/json/{bytes}` answers a JSON body of
/// that size (with `Content-Length`); `/models` a model listing whose body
/// is `models_bytes` long. Returns its base URL.
async fn sized_server(models_bytes: usize) -> String {
    let listing = format!(
        r#"{{"data":[{{"id":"m"}}],"padding":{}}}"#,
        json_of_size(models_bytes - r#"{"data":[{"id":"m"}],"padding":}"#.len())
    );
    assert_eq!(listing.len(), models_bytes);
    let app = Router::new()
        .route(
            "/json/{bytes}",
            get(|Path(bytes): Path<usize>| async move { json_of_size(bytes) }),
        )
        .route("/models", get(move || async move { listing }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// A server that answers every request with a chunked body that never
/// ends (no `Content-Length`, so only counting while reading can stop it).
async fn endless_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            transfer-encoding: chunked\r\n\r\n1\r\n\"\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
                // Ends only when the client hangs up.
                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    format!("http://{address}")
}

fn config() -> Config {
    crate::config::load(None, Vec::new()).expect("default config loads")
}

/// The calculator's client as the config builds it, at `base_url`, with
/// `services.calculator.max_reply_bytes = cap`.
fn calculator(base_url: &str, cap: usize) -> ServiceClient {
    let mut config = config();
    config.services.calculator.base_url = base_url.into();
    config.services.calculator.max_reply_bytes = cap;
    let http = http_client().expect("HTTP client");
    ServiceClient::from_config("calculator", &config.services.calculator, http)
}

fn assert_names_the_limit(result: Result<serde_json::Value, CallError>, cap: usize) {
    match result {
        Err(CallError::Decode { service, message }) => {
            assert_eq!(service, "calculator");
            assert!(
                message.contains(&format!("{cap}-byte limit"))
                    && message.contains("max_reply_bytes"),
                "{message}"
            );
        }
        other => panic!("expected a reply-too-large error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_service_reply_over_max_reply_bytes_is_refused_naming_the_limit() {
    let cap = 64 * 1024;
    let client = calculator(&sized_server(100).await, cap);
    for bytes in [cap - 1, cap] {
        let reply: Result<serde_json::Value, _> =
            tokio::time::timeout(BOUND, client.get_json(&format!("/json/{bytes}")))
                .await
                .expect("bounded");
        let text = reply.unwrap_or_else(|error| panic!("{bytes} bytes: {error}"));
        assert_eq!(text.as_str().map(str::len), Some(bytes - 2));
    }
    for bytes in [cap + 1, 4 * cap] {
        let reply = tokio::time::timeout(BOUND, client.get_json(&format!("/json/{bytes}")))
            .await
            .expect("bounded");
        assert_names_the_limit(reply, cap);
    }
}

#[tokio::test]
async fn an_endless_reply_is_cut_at_the_cap_not_read_forever() {
    let cap = 256 * 1024;
    let client = calculator(&endless_server().await, cap);
    let reply = tokio::time::timeout(BOUND, client.get_json("/anything"))
        .await
        .expect("the read stops at the cap instead of following an endless body");
    assert_names_the_limit(reply, cap);
}

#[tokio::test]
async fn the_model_clients_reply_cap_is_llm_max_reply_bytes() {
    let cap = 32 * 1024;
    let mut config = config();
    config.llm.max_reply_bytes = cap;
    for (models_bytes, fits) in [(cap - 1, true), (cap + 1, false)] {
        config.llm.base_url = sized_server(models_bytes).await;
        let llm = LlmClient::from_config(&config.llm, http_client().expect("HTTP client"));
        let reply = tokio::time::timeout(BOUND, llm.list_models())
            .await
            .expect("bounded");
        match reply {
            Ok(ids) => assert!(fits, "{models_bytes} bytes passed: {ids:?}"),
            Err(CallError::Decode { message, .. }) => {
                assert!(!fits, "{models_bytes} bytes refused: {message}");
                assert!(message.contains(&format!("{cap}-byte limit")), "{message}");
            }
            Err(other) => panic!("{models_bytes} bytes: unexpected {other}"),
        }
    }
}
