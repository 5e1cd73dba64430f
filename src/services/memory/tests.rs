//! The memory service's handlers, called with `oneshot`: persistence,
//! retention, idempotency scoped by client, byte accounting and shares.

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::super::token::{unix_now, ISSUER};
use super::*;

fn bearer(key: &SigningKey, sub: &str, scope: &str) -> String {
    let now = unix_now();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: sub.into(),
        scope: scope.into(),
        iat: now - 10,
        exp: now + 300,
    };
    format!("Bearer {}", key.sign(&claims).expect("signed"))
}

fn admin(key: &SigningKey) -> String {
    bearer(key, "heistd", ADMIN_SCOPE)
}

async fn call(state: &MemoryState, request: Request<Body>) -> serde_json::Value {
    let (status, body) = answer(state, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn answer(state: &MemoryState, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("answers");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&body).expect("JSON"))
}

/// A `store_memory` request by `authorization`, with `key` if any.
fn write_request(
    authorization: &str,
    agent: &str,
    session: &str,
    turn_id: i64,
    message: &str,
    key: Option<&str>,
) -> Request<Body> {
    let body = serde_json::json!({
        "agent_id": agent, "turn_id": turn_id, "message": message, "game_session_id": session,
    });
    let mut request = Request::post(STORE_MEMORY_PATH)
        .header("authorization", authorization)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header(IDEMPOTENCY_KEY_HEADER, key);
    }
    request.body(Body::from(body.to_string())).expect("request")
}

async fn digest(state: &MemoryState, authorization: &str, session: &str) -> serde_json::Value {
    let request = Request::get(format!("/sessions/{session}/digest"))
        .header("authorization", authorization)
        .body(Body::empty())
        .expect("request");
    call(state, request).await
}

async fn store(state: &MemoryState, key: &SigningKey, turn_id: i64) -> serde_json::Value {
    let body = serde_json::json!({
        "agent_id": "mole", "turn_id": turn_id, "message": "In.", "game_session_id": "s1",
    });
    let request = Request::post(STORE_MEMORY_PATH)
        .header("authorization", admin(key))
        .header("content-type", "application/json")
        .header(IDEMPOTENCY_KEY_HEADER, format!("s1:{turn_id}"))
        .body(Body::from(body.to_string()))
        .expect("request");
    call(state, request).await
}

async fn count(state: &MemoryState, key: &SigningKey) -> u64 {
    let request = Request::get("/sessions/s1/count")
        .header("authorization", admin(key))
        .body(Body::empty())
        .expect("request");
    call(state, request).await["count"].as_u64().expect("count")
}

async fn instance(state: &MemoryState) -> String {
    let request = Request::get(HEALTH_PATH)
        .body(Body::empty())
        .expect("request");
    let body = call(state, request).await;
    assert_eq!(body["status"], "healthy");
    body["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_string()
}

#[tokio::test]
async fn a_restart_on_the_same_file_keeps_memories_keys_and_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::random();
    let limits = MemoryServiceConfig {
        path: Some(dir.path().join("memory.db")),
        ..MemoryServiceConfig::default()
    };
    let first = MemoryState::open(key.clone(), limits.clone()).expect("open");
    store(&first, &key, 1).await;
    store(&first, &key, 2).await;
    let id = instance(&first).await;
    drop(first);
    let second = MemoryState::open(key.clone(), limits).expect("reopen");
    assert_eq!(instance(&second).await, id);
    assert_eq!(count(&second, &key).await, 2);
    // The idempotency keys came back too: a retried write counts once.
    assert_eq!(store(&second, &key, 2).await["duplicate"], true);
    assert_eq!(count(&second, &key).await, 2);
}

#[tokio::test(start_paused = true)]
async fn memories_go_retention_hours_after_the_sessions_last_write() {
    let key = SigningKey::random();
    let limits = MemoryServiceConfig {
        retention_hours: 1,
        ..MemoryServiceConfig::default()
    };
    let state = MemoryState::new(key.clone(), limits);
    let write_elsewhere = |turn_id: i64| {
        let body = serde_json::json!({
            "agent_id": "mole", "turn_id": turn_id, "message": "Out.", "game_session_id": "s2",
        });
        Request::post(STORE_MEMORY_PATH)
            .header("authorization", admin(&key))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    store(&state, &key, 1).await;
    tokio::time::advance(Duration::from_secs(40 * 60)).await;
    store(&state, &key, 2).await;
    // 70 minutes after the first write, 30 after the last: kept.
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    call(&state, write_elsewhere(1)).await;
    assert_eq!(count(&state, &key).await, 2);
    // An hour and more after its last write: gone, the other session kept.
    tokio::time::advance(Duration::from_secs(31 * 60)).await;
    call(&state, write_elsewhere(2)).await;
    assert_eq!(count(&state, &key).await, 0);
}

#[tokio::test]
async fn in_memory_services_start_empty_with_a_new_instance() {
    let key = SigningKey::random();
    let first = MemoryState::new(key.clone(), MemoryServiceConfig::default());
    store(&first, &key, 1).await;
    assert_eq!(count(&first, &key).await, 1);
    let second = MemoryState::new(key.clone(), MemoryServiceConfig::default());
    assert_eq!(count(&second, &key).await, 0);
    assert_ne!(instance(&first).await, instance(&second).await);
}

#[tokio::test]
async fn an_agent_cannot_pre_empt_heistds_idempotency_keys() {
    let key = SigningKey::random();
    let state = MemoryState::new(key.clone(), MemoryServiceConfig::default());
    let hacker = bearer(&key, "hacker", "memory:write memory:read");
    for turn in 1..=3 {
        let key = format!("s1:{turn}");
        let request = write_request(&hacker, "hacker", "s1", turn, "", Some(&key));
        assert_eq!(call(&state, request).await["duplicate"], false);
    }
    // heistd's writes under the same keys are its own, and are stored.
    for turn in 1..=3 {
        let request = write_request(
            &admin(&key),
            "mole",
            "s1",
            turn,
            "In.",
            Some(&format!("s1:{turn}")),
        );
        assert_eq!(call(&state, request).await["duplicate"], false);
    }
    assert_eq!(count(&state, &key).await, 6);
    // The digest holds heistd's entries only, with their content hashes.
    let mine = digest(&state, &admin(&key), "s1").await;
    assert_eq!(mine["client_id"], "heistd");
    let entries = mine["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3, "{mine}");
    let expected = MemoryWrite {
        agent_id: "mole".into(),
        turn_id: 1,
        message: "In.".into(),
        game_session_id: "s1".into(),
    };
    assert_eq!(entries[0]["hash"], expected.content_hash().as_str());
    assert!(entries.iter().all(|entry| entry["agent_id"] == "mole"));
}

#[tokio::test]
async fn a_key_replayed_is_a_duplicate_and_reused_with_another_body_a_409() {
    let key = SigningKey::random();
    let state = MemoryState::new(key.clone(), MemoryServiceConfig::default());
    let first = write_request(&admin(&key), "mole", "s1", 1, "In.", Some("s1:1"));
    assert_eq!(call(&state, first).await["duplicate"], false);
    let replay = write_request(&admin(&key), "mole", "s1", 1, "In.", Some("s1:1"));
    assert_eq!(call(&state, replay).await["duplicate"], true);
    let other = write_request(&admin(&key), "mole", "s1", 1, "Out.", Some("s1:1"));
    let (status, body) = answer(&state, other).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        "Idempotency-Key s1:1 was used with a different body"
    );
    assert_eq!(count(&state, &key).await, 1);
}

#[tokio::test]
async fn long_ids_and_keys_are_refused_naming_the_limit() {
    let key = SigningKey::random();
    let state = MemoryState::new(key.clone(), MemoryServiceConfig::default());
    let long_key = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
    let long_agent = "a".repeat(MAX_AGENT_ID_BYTES + 1);
    let long_session = "s".repeat(MAX_SESSION_ID_BYTES + 1);
    let cases = [
        (
            write_request(&admin(&key), "mole", "s1", 1, "", Some(&long_key)),
            "Idempotency-Key is over 256 bytes",
        ),
        (
            write_request(&admin(&key), &long_agent, "s1", 1, "", None),
            "agent_id is over 128 bytes",
        ),
        (
            write_request(&admin(&key), "mole", &long_session, 1, "", None),
            "game_session_id is over 256 bytes",
        ),
    ];
    for (request, error) in cases {
        let (status, body) = answer(&state, request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["error"], error);
    }
}

#[tokio::test]
async fn every_stored_byte_counts_so_empty_writes_fill_the_quota() {
    let key = SigningKey::random();
    let limits = MemoryServiceConfig {
        max_bytes: 64 * 1024,
        ..MemoryServiceConfig::default()
    };
    let state = MemoryState::new(key.clone(), limits);
    let session = "s".repeat(MAX_SESSION_ID_BYTES);
    let mut stored = 0;
    let refused = loop {
        let request = write_request(&admin(&key), "mole", &session, stored, "", None);
        let (status, body) = answer(&state, request).await;
        if status != StatusCode::OK {
            break (status, body);
        }
        stored += 1;
        assert!(stored < 1_000, "empty writes are never refused");
    };
    assert_eq!(refused.0, StatusCode::INSUFFICIENT_STORAGE, "{}", refused.1);
    // Each was charged its session id, agent, client and overhead.
    let per_entry =
        MAX_SESSION_ID_BYTES + 2 * ("mole".len() + "heistd".len()) + 64 + ENTRY_OVERHEAD_BYTES;
    assert_eq!(stored as usize, 64 * 1024 / per_entry);
}

#[tokio::test]
async fn an_agent_filling_its_share_leaves_heistds_writes_succeeding() {
    let key = SigningKey::random();
    let limits = MemoryServiceConfig {
        max_bytes: 1024 * 1024,
        max_bytes_per_client: 256 * 1024,
        max_bytes_agents: Some(384 * 1024),
        ..MemoryServiceConfig::default()
    };
    let state = MemoryState::new(key.clone(), limits);
    let message = "x".repeat(60 * 1024);
    let fill = async |agent: &str| {
        let token = bearer(&key, agent, "memory:write");
        for session in 0.. {
            let request = write_request(
                &token,
                agent,
                &format!("{agent}-{session}"),
                1,
                &message,
                None,
            );
            let (status, body) = answer(&state, request).await;
            if status != StatusCode::OK {
                assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
                return (
                    session,
                    body["error_description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
        unreachable!()
    };
    let (held, why) = fill("hacker").await;
    assert_eq!(held, 4, "{why}");
    assert!(why.contains("max_bytes_per_client"), "{why}");
    // A second agent gets what is left of the agents' share, not more.
    let (held, why) = fill("accomplice").await;
    assert_eq!(held, 2, "{why}");
    assert!(why.contains("max_bytes_agents"), "{why}");
    // heistd's writes still have the rest of max_bytes.
    for session in 0..9 {
        let request = write_request(
            &admin(&key),
            "mole",
            &format!("heist-{session}"),
            1,
            &message,
            Some(&format!("heist-{session}:1")),
        );
        assert_eq!(call(&state, request).await["duplicate"], false, "{session}");
    }
    // Forgetting the hacker's sessions gives its share back.
    for session in 0..4 {
        let request = Request::delete(format!("/clear?game_session_id=hacker-{session}"))
            .header("authorization", admin(&key))
            .body(Body::empty())
            .expect("request");
        assert_eq!(call(&state, request).await["cleared"], 1);
    }
    let request = write_request(
        &bearer(&key, "hacker", "memory:write"),
        "hacker",
        "again",
        1,
        "Back.",
        None,
    );
    assert_eq!(call(&state, request).await["duplicate"], false);
}

#[tokio::test]
async fn an_agent_filling_heistds_session_leaves_heistds_writes_to_it_succeeding() {
    let key = SigningKey::random();
    let limits = MemoryServiceConfig {
        max_entries_per_session: 5,
        ..MemoryServiceConfig::default()
    };
    let state = MemoryState::new(key.clone(), limits);
    let hacker = bearer(&key, "hacker", "memory:write");
    for turn in 1..=5 {
        let request = write_request(&hacker, "hacker", "s1", turn, "", None);
        call(&state, request).await;
    }
    let (status, _) = answer(&state, write_request(&hacker, "hacker", "s1", 6, "", None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The session quota is per client: heistd's writes to s1 still land.
    for turn in 1..=5 {
        let request = write_request(
            &admin(&key),
            "mole",
            "s1",
            turn,
            "In.",
            Some(&format!("s1:{turn}")),
        );
        assert_eq!(call(&state, request).await["duplicate"], false, "{turn}");
    }
    assert_eq!(count(&state, &key).await, 10);
}
