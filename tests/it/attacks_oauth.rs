//! Issue 20, defects 2, 8 and 9: guessing secrets over real HTTP on
//! loopback. Wrong-secret guesses for `planner` from 127.0.0.1 leave
//! `planner` and heistd's own client getting tokens at once while the
//! guesser gets 429; junk client ids from many 127/8 source addresses (client
//! sockets bound to them) do not reset the per-client limit on `hacker`;
//! wrong admin tokens get 429 past the limit while the right one works; and
//! the logs of `heistd services all` and `heistd daemon` hold summary
//! lines, not one line per refusal.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{json, Value};

use crate::daemon::{services_text, Daemon, ADMIN_TOKEN};
use crate::services_process::ServicesProcess;
use crate::support::{self, TestStack};

/// `POST /token` for `client_id` with `secret`, from `client`'s address.
async fn token_request(
    client: &reqwest::Client,
    oauth: &str,
    client_id: &str,
    secret: &str,
) -> reqwest::Response {
    client
        .post(format!("{oauth}/token"))
        .json(&json!({
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        }))
        .send()
        .await
        .expect("token answered")
}

/// A client whose sockets are bound to `address` (any of 127/8 on Linux).
fn client_from(address: Ipv4Addr) -> reqwest::Client {
    heistd::clients::http_builder(&[])
        .expect("TLS roots")
        .local_address(Some(IpAddr::V4(address)))
        .build()
        .expect("client")
}

/// Eleven-plus wrong guesses from 127.0.0.1: the guesser is refused 429
/// with `Retry-After` past the tenth; planner's and heistd's correct secrets,
/// from the same address, get their tokens at once, and planner's tool call
/// with its token succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_guesses_for_planner_leave_planner_and_heistd_getting_tokens_at_once() {
    let stack = TestStack::start().await;
    let oauth = stack.url("oauth");
    let client = support::http();
    let mut statuses = Vec::new();
    for attempt in 0..15 {
        let reply = token_request(&client, &oauth, "planner", &format!("guess-{attempt}")).await;
        statuses.push(reply.status().as_u16());
        if attempt >= 10 {
            assert!(reply.headers().contains_key("retry-after"), "{attempt}");
        }
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 5], "{statuses:?}");
    let config = &stack.stack.config;
    for client_id in ["planner", "heistd", "hacker"] {
        let secret = config.client_secret(client_id).expect("configured");
        let started = tokio::time::Instant::now();
        let reply = token_request(&client, &oauth, client_id, secret).await;
        assert_eq!(reply.status(), 200, "{client_id} locked out");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{client_id}: {:?}",
            started.elapsed()
        );
        let body: Value = reply.json().await.expect("JSON");
        if client_id == "planner" {
            let token = body["access_token"].as_str().expect("token");
            let answer: Value = client
                .post(format!("{}/tools/calculator", stack.url("calculator")))
                .bearer_auth(token)
                .json(&json!({ "expression": "6*7" }))
                .send()
                .await
                .expect("calculator answers")
                .json()
                .await
                .expect("JSON");
            assert_eq!(answer["success"], true, "{answer}");
        }
    }
    // The guesser is still refused, from this address and from another.
    let reply = token_request(&client, &oauth, "planner", "guess-again").await;
    assert_eq!(reply.status(), 429);
    let elsewhere = client_from(Ipv4Addr::new(127, 0, 2, 1));
    let reply = token_request(&elsewhere, &oauth, "planner", "guess-again").await;
    assert_eq!(
        reply.status(),
        429,
        "the per-client limit holds across sources"
    );
}

/// The bypass: 10,000+ junk client ids from many 127/8 addresses
/// (which cleared the old shared table). The per-client count on `hacker`
/// survives: guesses from fresh addresses are still 429, and hacker's own
/// secret still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_client_ids_from_many_addresses_do_not_reset_the_limit_on_hacker() {
    let stack = TestStack::start().await;
    let oauth = stack.url("oauth");
    let first = client_from(Ipv4Addr::new(127, 0, 3, 1));
    for attempt in 0..10 {
        let reply = token_request(&first, &oauth, "hacker", &format!("guess-{attempt}")).await;
        assert_eq!(reply.status(), 401, "{attempt}");
    }
    // 10,100 junk ids from 101 addresses, eight senders at once.
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..8u8 {
        let oauth = oauth.clone();
        senders.spawn(async move {
            let mut answered = 0;
            for source in (sender..101).step_by(8) {
                let client = client_from(Ipv4Addr::new(127, 1, 0, source + 1));
                for junk in 0..100 {
                    let client_id = format!("junk-{source}-{junk}");
                    token_request(&client, &oauth, &client_id, "x").await;
                    answered += 1;
                }
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(sent) = senders.join_next().await {
        answered += sent.expect("sender");
    }
    assert_eq!(answered, 10_100);
    for source in 1..=5u8 {
        let fresh = client_from(Ipv4Addr::new(127, 2, 0, source));
        let reply = token_request(&fresh, &oauth, "hacker", "guess-after-junk").await;
        assert_eq!(
            reply.status(),
            429,
            "a fresh address {source} guessed freely"
        );
        assert!(reply.headers().contains_key("retry-after"));
    }
    let secret = stack.stack.config.client_secret("hacker").expect("hacker");
    let fresh = client_from(Ipv4Addr::new(127, 2, 0, 9));
    let reply = token_request(&fresh, &oauth, "hacker", secret).await;
    assert_eq!(reply.status(), 200, "hacker's own secret is refused");
}

/// 2,000 wrong guesses from one address write a line for the first and a
/// summary for the rest, not 2,000 lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_refused_token_requests_make_a_summary_not_two_thousand_lines() {
    let mut services = ServicesProcess::start();
    let client = support::http();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for attempt in 0..2_000 {
        let reply = token_request(
            &client,
            services.url("oauth"),
            "planner",
            &format!("g{attempt}"),
        )
        .await;
        *statuses.entry(reply.status().as_u16()).or_default() += 1;
    }
    assert_eq!(statuses, [(401, 10), (429, 1_990)].into(), "{statuses:?}");
    assert!(services.stop().success());
    let log = services.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("token refused"))
        .collect();
    // The first in full; the rest in one summary per 10 s interval (the
    // loop may straddle an interval or two on a slow machine).
    assert!(
        (2..=8).contains(&refused.len()),
        "{} lines:\n{log}",
        refused.len()
    );
    assert!(refused[0].contains("client_id=planner"), "{}", refused[0]);
    let summarised: u64 = refused
        .iter()
        .filter_map(|line| {
            let (_, rest) = line.split_once("token refused: ")?;
            rest.split_once(" more requests from 127.0.0.1")?
                .0
                .parse::<u64>()
                .ok()
        })
        .sum();
    let logged_in_full = refused.len() as u64
        - refused
            .iter()
            .filter(|line| line.contains(" more requests from "))
            .count() as u64;
    assert_eq!(summarised + logged_in_full, 2_000, "{log}");
}

/// Wrong admin tokens from one address: 403 up to the limit, then 429 with
/// `Retry-After`; the right token from the same address is answered at
/// once; the daemon's log summarises the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guesses_get_429_past_the_limit_while_the_right_token_works() {
    let stack = TestStack::start().await;
    let directory = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[store]\npath = \"{}\"\n{}",
        directory.path().join("audit.db").display(),
        services_text(&stack, "[daemon]\nread_requires_token = true\n")
    );
    let mut daemon = Daemon::start_with_config(&config).await;
    let sessions = format!("{}/api/v1/sessions", daemon.admin_url());
    let client = support::http();
    let mut statuses = Vec::new();
    for attempt in 0..500 {
        let reply = client
            .get(&sessions)
            .bearer_auth(format!("guess-{attempt}"))
            .send()
            .await
            .expect("answered");
        if attempt >= 10 {
            assert!(reply.headers().contains_key("retry-after"), "{attempt}");
        }
        statuses.push(reply.status().as_u16());
    }
    assert_eq!(statuses[..10], [403; 10]);
    assert!(statuses[10..].iter().all(|status| *status == 429));
    let started = tokio::time::Instant::now();
    let reply = client
        .get(&sessions)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("answered");
    assert_eq!(reply.status(), 200, "the operator is locked out");
    assert!(started.elapsed() < Duration::from_secs(1));
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(20)).await.success());
    let log = daemon.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("admin API refused"))
        .collect();
    assert!(
        (2..=8).contains(&refused.len()),
        "{} lines:\n{log}",
        refused.len()
    );
    assert!(
        refused
            .iter()
            .any(|line| line.contains("more requests from 127.0.0.1")),
        "{log}"
    );
}
