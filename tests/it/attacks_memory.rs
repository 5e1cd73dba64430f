//! Hostile clients against the memory service, with real processes (issue
//! #20, defects 1, 5 and 6): an agent that pre-empts the daemon's
//! idempotency keys does not suppress its writes (memory equals the store,
//! in content), a full quota refuses empty writes and long keys and the
//! services process's peak RSS stays bounded, and an agent filling its
//! share leaves heistd's writes succeeding.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use heistd::config::Fault;
use heistd::services::token::{unix_now, Claims, SigningKey, ISSUER};
use heistd::store::{SessionStatus, StoreHandle};
use heistd::wire::MemoryWrite;
use serde_json::{json, Value};

use crate::daemon::{eventually, services_text, Daemon};
use crate::services_process::ServicesProcess;
use crate::support::{self, TestStack};

const KEY: &str = "attacks-memory-test-signing-key-0123456789";

/// A token for client `sub` with `scope`, signed with `key`.
fn token_as(key: &SigningKey, sub: &str, scope: &str) -> String {
    let now = unix_now();
    key.sign(&Claims {
        iss: ISSUER.into(),
        sub: sub.into(),
        scope: scope.into(),
        iat: now - 10,
        exp: now + 300,
    })
    .expect("signed")
}

/// `POST /tools/store_memory`: the status and the body.
async fn store_memory(
    url: &str,
    token: &str,
    body: &Value,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut request = support::http()
        .post(format!("{url}/tools/store_memory"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The memory service's entries of `session_id`, as (client, agent, turn,
/// message), sorted.
async fn entries(url: &str, admin: &str, session_id: &str) -> Vec<(String, String, i64, String)> {
    let body: Value = support::http()
        .get(format!("{url}/sessions/{session_id}/memories"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    let mut entries: Vec<_> = body["memories"]
        .as_array()
        .expect("memories")
        .iter()
        .map(|entry| {
            let text = |name: &str| entry[name].as_str().unwrap_or_default().to_string();
            (
                text("client_id"),
                text("agent_id"),
                entry["turn_id"].as_i64().unwrap_or_default(),
                text("message"),
            )
        })
        .collect();
    entries.sort();
    entries
}

/// The writes the store delivered for `session_id`, as (agent, turn,
/// message), sorted.
async fn delivered(store: &StoreHandle, session_id: &str) -> Vec<(String, i64, String)> {
    let mut writes: Vec<_> = store
        .delivered_payloads(session_id)
        .await
        .expect("payloads")
        .iter()
        .map(|payload| {
            let write: MemoryWrite = serde_json::from_str(payload).expect("a memory write");
            (write.agent_id, write.turn_id, write.message)
        })
        .collect();
    writes.sort();
    writes
}

/// A daemon on `stack`'s companions with its store in `directory`, turns
/// slow enough (150 ms) that an attacker acts mid-run.
async fn daemon_on(stack: &TestStack, directory: &Path) -> Daemon {
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 150,
            ..Fault::default()
        },
    );
    let config = format!(
        "[store]\npath = \"{}\"\n[outbox]\nreconcile_interval_ms = 500\n{}",
        directory.join("audit.db").display(),
        services_text(stack, "")
    );
    Daemon::start_with_config(&config).await
}

async fn wait_ended(store_path: &Path, session_id: &str) -> (StoreHandle, SessionStatus) {
    eventually(Duration::from_secs(60), "the heist ends", async || {
        let store = StoreHandle::open_read_only(store_path).await.ok()?;
        let status = store.session(session_id).await.ok()?.session.status;
        (status != SessionStatus::Active).then_some((store, status))
    })
    .await
}

/// The daemon's writes and its memory once `session_id` ended: memory
/// holds exactly the store's delivered writes under heistd's client.
async fn assert_memory_equals_store(
    stack: &TestStack,
    store_path: &Path,
    session_id: &str,
    turns: usize,
) -> Vec<(String, String, i64, String)> {
    let (store, status) = wait_ended(store_path, session_id).await;
    assert_eq!(status, SessionStatus::Completed);
    let memory = stack.url("memory");
    let admin = support::memory_admin_token(stack);
    eventually(
        Duration::from_secs(10),
        "memory equals the store",
        async || {
            let expected = delivered(&store, session_id).await;
            let held = entries(&memory, &admin, session_id).await;
            let mine: Vec<_> = held
                .iter()
                .filter(|(client, ..)| client == "heistd")
                .map(|(_, agent, turn, message)| (agent.clone(), *turn, message.clone()))
                .collect();
            (expected.len() == turns && mine == expected).then_some(held)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pre_empting_the_daemons_keys_does_not_suppress_its_writes() {
    let stack = TestStack::start().await;
    let directory = tempfile::tempdir().expect("temp dir");
    let daemon = daemon_on(&stack, directory.path()).await;
    let session_id = daemon.start_run(12).await;
    // The running session's id is public (`GET /api/v1/status`).
    let (_, status) = daemon.get("/api/v1/status").await;
    assert!(status.to_string().contains(&session_id), "{status}");

    // The issue's repro: the hacker's token takes every key the daemon
    // will use, with empty messages under its own agent id.
    let memory = stack.url("memory");
    let hacker = token_as(&stack.signing_key(), "hacker", "memory:write memory:read");
    for turn in 1..=12 {
        let body = json!({"agent_id": "hacker", "turn_id": turn, "message": "", "game_session_id": session_id});
        let key = format!("{session_id}:{turn}");
        let (status, reply) = store_memory(&memory, &hacker, &body, Some(&key)).await;
        assert_eq!(status, 200, "{reply}");
    }
    // The same key with another body is refused, naming the key.
    let other = json!({"agent_id": "hacker", "turn_id": 1, "message": "other", "game_session_id": session_id});
    let key = format!("{session_id}:1");
    let (status, reply) = store_memory(&memory, &hacker, &other, Some(&key)).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(
        reply["error"],
        format!("Idempotency-Key {key} was used with a different body")
    );

    let held =
        assert_memory_equals_store(&stack, &directory.path().join("audit.db"), &session_id, 12)
            .await;
    // The hacker's entries are there too, as its own.
    let hackers = held
        .iter()
        .filter(|(client, ..)| client == "hacker")
        .count();
    assert_eq!(hackers, 12, "{held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_filling_its_share_leaves_heistds_writes_succeeding() {
    let mut config = support::base_config();
    config.companions.memory.max_bytes = 4 * 1024 * 1024;
    config.companions.memory.max_bytes_agents = Some(2 * 1024 * 1024);
    config.companions.memory.max_bytes_per_client = 1024 * 1024;
    let stack = TestStack::start_with(config).await;
    let memory = stack.url("memory");
    let message = "x".repeat(60 * 1024);
    // Two agents write 60 KiB messages across sessions until refused.
    let mut refusals = Vec::new();
    for agent in ["hacker", "accomplice", "third"] {
        let token = token_as(&stack.signing_key(), agent, "memory:write");
        let mut held = 0;
        loop {
            let body = json!({"agent_id": agent, "turn_id": 1, "message": message, "game_session_id": format!("{agent}-{held}")});
            let (status, reply) = store_memory(&memory, &token, &body, None).await;
            if status != 200 {
                assert_eq!(status, 507, "{reply}");
                refusals.push((agent, held, reply["error_description"].to_string()));
                break;
            }
            held += 1;
            assert!(held <= 64, "{agent} is never refused");
        }
    }
    assert!(
        refusals[0].2.contains("max_bytes_per_client"),
        "{refusals:?}"
    );
    assert!(refusals[2].2.contains("max_bytes_agents"), "{refusals:?}");
    let directory = tempfile::tempdir().expect("temp dir");
    let daemon = daemon_on(&stack, directory.path()).await;
    let session_id = daemon.start_run(6).await;
    assert_memory_equals_store(&stack, &directory.path().join("audit.db"), &session_id, 6).await;
    let log = daemon.log();
    assert!(!log.contains("quota_exceeded"), "{log}");
}

/// `heistd services all` on ephemeral ports with `[companions.memory]` as
/// given, signing tokens with [`KEY`].
fn start_services(memory: &str) -> ServicesProcess {
    ServicesProcess::start_with(
        &format!("[companions.memory]\n{memory}"),
        &[("HEISTD_OAUTH_SIGNING_KEY", KEY)],
    )
}

/// Sends `count` writes made by `make`, `parallel` at a time; the
/// statuses seen, with how often.
async fn flood(
    url: &str,
    token: &str,
    count: usize,
    parallel: usize,
    make: impl Fn(usize) -> (Value, Option<String>) + Sync,
) -> BTreeMap<u16, usize> {
    let client = support::http();
    let mut statuses = BTreeMap::new();
    for start in (0..count).step_by(parallel) {
        let requests = (start..(start + parallel).min(count)).map(|index| {
            let (body, key) = make(index);
            let mut request = client
                .post(format!("{url}/tools/store_memory"))
                .bearer_auth(token)
                .json(&body);
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            tokio::spawn(request.send())
        });
        let handles: Vec<_> = requests.collect();
        for handle in handles {
            let response = handle.await.expect("joined").expect("answered");
            *statuses.entry(response.status().as_u16()).or_default() += 1;
        }
    }
    statuses
}

fn report(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_writes_and_long_keys_at_a_full_quota_are_refused_and_rss_stays_bounded() {
    const MAX_BYTES: usize = 4 * 1024 * 1024;
    let services = start_services(&format!("max_bytes = {MAX_BYTES}"));
    let key = SigningKey::from_bytes(KEY.as_bytes().to_vec()).expect("key");
    let admin = token_as(&key, "heistd", "memory:admin");
    let hacker = token_as(&key, "hacker", "memory:write");
    let url = services.url("memory").to_string();
    let (_, before) = services.memory_kb();
    // Fill the total with heistd's 48 KiB writes, one session each.
    let message = "m".repeat(48 * 1024);
    let filled = flood(&url, &admin, 200, 8, |index| {
        let body = json!({"agent_id": "mole", "turn_id": 1, "message": message, "game_session_id": format!("fill-{index}")});
        (body, Some(format!("fill-{index}:1")))
    })
    .await;
    assert!(filled.get(&507).copied().unwrap_or(0) > 0, "{filled:?}");
    // And the last room with small ones, one at a time, until refused.
    for index in 0.. {
        let body = json!({"agent_id": "mole", "turn_id": 1, "message": "m".repeat(512), "game_session_id": format!("top-{index}")});
        if store_memory(&url, &admin, &body, None).await.0 == 507 {
            break;
        }
        assert!(index < 1_000, "small writes are never refused");
    }
    // Empty writes with 256-byte session ids: refused, by heistd's client
    // and by an agent's.
    let long_session = |index: usize| format!("{index:0>256}");
    for (token, agent) in [(&admin, "mole"), (&hacker, "hacker")] {
        let empty = flood(&url, token, 5_000, 16, |index| {
            let body = json!({"agent_id": agent, "turn_id": index, "message": "", "game_session_id": long_session(index)});
            (body, Some(format!("{index}")))
        })
        .await;
        assert_eq!(
            empty.keys().copied().collect::<Vec<_>>(),
            vec![507],
            "{agent}: {empty:?}"
        );
    }
    // 60,000-byte idempotency keys: refused whatever room there is.
    let long_keys = flood(&url, &hacker, 500, 16, |index| {
        let body =
            json!({"agent_id": "hacker", "turn_id": index, "message": "", "game_session_id": "s"});
        (body, Some(format!("{index:x<60000}")))
    })
    .await;
    assert_eq!(
        long_keys.keys().copied().collect::<Vec<_>>(),
        vec![413],
        "{long_keys:?}"
    );
    let stats: Value = support::http()
        .get(format!("{url}/stats"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert!(
        stats["total_bytes"].as_u64().expect("total") <= MAX_BYTES as u64,
        "{stats}"
    );
    let (rss, peak) = services.memory_kb();
    report(&format!(
        "memory quota: VmHWM before {before} kB, after {peak} kB (VmRSS {rss} kB); max_bytes {} kB; {filled:?}",
        MAX_BYTES / 1024
    ));
    // The configured total plus a fixed overhead (buffers in flight, the
    // allocator's arenas): unbounded, the 5,000 x 2 empty writes and 500
    // long keys alone would add ~45 MB.
    let overhead_kb = 24 * 1024;
    assert!(
        peak <= before + (MAX_BYTES / 1024) as u64 + overhead_kb,
        "VmHWM {peak} kB (before {before} kB)"
    );
}
