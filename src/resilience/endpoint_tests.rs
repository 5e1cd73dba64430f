//! Several endpoints under paused tokio time: the weighted power of two
//! choices, ejection (doubling, cap, max percent, never the last), retries
//! that go elsewhere, and tiers that fall through to the fallbacks.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::config::{OutlierConfig, PolicyConfig};

/// A failed attempt: a gateway failure (a 503), transient.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Gateway,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("svc: HTTP 503")
    }
}

impl Classify for Failure {
    fn is_transient(&self) -> bool {
        true
    }

    fn retry_after(&self) -> Option<Duration> {
        None
    }

    fn label(&self) -> &'static str {
        "server_error"
    }
}

fn spec(name: &str, tier: u32, weight: u32, max_concurrent: u32) -> EndpointSpec {
    EndpointSpec {
        name: name.into(),
        base_url: format!("http://{name}"),
        model: String::new(),
        tier,
        weight,
        max_concurrent,
    }
}

fn guard(
    specs: Vec<EndpointSpec>,
    outlier: OutlierConfig,
    configure: impl FnOnce(&mut PolicyConfig),
) -> Arc<Guard> {
    let mut config = PolicyConfig::quick_service();
    config.backoff_base_ms = 10;
    config.backoff_cap_ms = 10;
    config.breaker.enabled = false;
    // The budget is not what these tests are about.
    config.retry_budget_ratio = 1.0;
    config.retry_budget_min_per_second = 100.0;
    configure(&mut config);
    let policy = Policy {
        attempt_timeout: Duration::from_secs(1),
        config,
        jitter_seed: Some(7),
    };
    Arc::new(Guard::with_endpoints("svc", policy, outlier, specs))
}

fn outlier(consecutive_failures: u32, max_ejection_percent: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_failures,
        base_ejection_ms: 30_000,
        max_ejection_percent,
    }
}

/// Starts `calls` calls that never finish, one after another, and returns
/// how many each endpoint holds.
async fn park_calls(guard: &Arc<Guard>, calls: usize) -> Vec<u32> {
    for _ in 0..calls {
        let guard = guard.clone();
        tokio::spawn(async move {
            guard
                .call("op", std::future::pending::<Result<(), Failure>>)
                .await
        });
        // Let it pick before the next one does.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    guard
        .endpoints()
        .iter()
        .map(Endpoint::outstanding)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_pick_spreads_load_by_outstanding_requests_and_weight() {
    let even = guard(
        vec![
            spec("a", 0, 1, 32),
            spec("b", 0, 1, 32),
            spec("c", 0, 1, 32),
        ],
        OutlierConfig::default(),
        |_| {},
    );
    let held = park_calls(&even, 9).await;
    assert_eq!(held.iter().sum::<u32>(), 9);
    assert!(
        held.iter().all(|&count| (2..=4).contains(&count)),
        "equal weights share the load: {held:?}"
    );
    let weighted = guard(
        vec![spec("light", 0, 1, 32), spec("heavy", 0, 3, 32)],
        OutlierConfig::default(),
        |_| {},
    );
    let held = park_calls(&weighted, 8).await;
    assert!(
        (1..=3).contains(&held[0]) && (5..=7).contains(&held[1]),
        "weight 3 takes about three quarters: {held:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_endpoint_is_passed_over_while_another_has_a_free_slot() {
    let guard = guard(
        vec![spec("a", 0, 1, 1), spec("b", 0, 1, 1)],
        OutlierConfig::default(),
        |_| {},
    );
    let held = park_calls(&guard, 2).await;
    assert_eq!(held, [1, 1], "each one-slot endpoint holds one call");
}

#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_an_endpoint_the_call_has_not_tried() {
    let guard = guard(
        vec![spec("a", 0, 1, 8), spec("b", 0, 1, 8), spec("c", 0, 1, 8)],
        outlier(0, 50),
        |config| config.max_attempts = 3,
    );
    for _ in 0..10 {
        let tried = Mutex::new(Vec::new());
        let (result, summary) = guard
            .call_on("op", None, &|_| true, |endpoint, _| {
                tried.lock().push(endpoint.index());
                async { Err::<(), _>(Failure::Gateway) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(summary.attempts, 3);
        let mut tried = tried.into_inner();
        tried.sort_unstable();
        assert_eq!(tried, [0, 1, 2], "each attempt on another endpoint");
    }
}

#[tokio::test(start_paused = true)]
async fn ejections_double_up_to_the_cap() {
    let guard = guard(
        vec![spec("a", 0, 1, 8), spec("b", 0, 1, 8)],
        outlier(2, 50),
        |_| {},
    );
    let endpoint = &guard.endpoints()[0];
    let mut lengths = Vec::new();
    for _ in 0..6 {
        let length = endpoint.eject(&guard.outlier);
        assert!(!endpoint.can_serve(), "ejected");
        lengths.push(length.as_secs());
        tokio::time::advance(length).await;
        assert!(endpoint.can_serve(), "back when its time is over");
    }
    assert_eq!(lengths, [30, 60, 120, 240, 300, 300]);
    endpoint.eject(&guard.outlier);
    guard.end_ejection(0);
    assert!(endpoint.can_serve(), "a health check that answers ends it");
}

/// Calls until each has run, every attempt failing on `failing` endpoints.
async fn fail_on(guard: &Guard, failing: &[usize], calls: usize) {
    for _ in 0..calls {
        let _ = guard
            .call_on("op", None, &|_| true, |endpoint, _| {
                let fails = failing.contains(&endpoint.index());
                async move {
                    if fails {
                        Err(Failure::Gateway)
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
    }
}

fn ejected(guard: &Guard) -> Vec<bool> {
    guard
        .endpoints()
        .iter()
        .map(|endpoint| endpoint.ejected_for().is_some())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn ejection_stops_at_max_percent_and_never_takes_the_last() {
    let four = guard(
        (0..4)
            .map(|index| spec(&format!("e{index}"), 0, 1, 8))
            .collect(),
        outlier(1, 50),
        |config| config.max_attempts = 1,
    );
    fail_on(&four, &[0, 1, 2], 40).await;
    assert_eq!(
        ejected(&four).iter().filter(|out| **out).count(),
        2,
        "at 50 % of four, a third is not ejected: {:?}",
        ejected(&four)
    );
    assert!(!ejected(&four)[3], "the healthy one stays");

    let two = guard(
        vec![spec("a", 0, 1, 8), spec("b", 0, 1, 8)],
        outlier(1, 100),
        |config| config.max_attempts = 1,
    );
    fail_on(&two, &[0, 1], 20).await;
    assert_eq!(
        ejected(&two).iter().filter(|out| **out).count(),
        1,
        "the last one that can serve is never ejected"
    );
}

/// Runs `calls` calls, each attempt counted per endpoint in `hits` and
/// failing on endpoint 0; every call must succeed (a retry on the other).
async fn call_with_a_dead_first(guard: &Guard, hits: &Mutex<[u32; 2]>, calls: usize) {
    for _ in 0..calls {
        let (result, _) = guard
            .call_on("op", None, &|_| true, |endpoint, _| {
                hits.lock()[endpoint.index()] += 1;
                let dead = endpoint.index() == 0;
                async move {
                    if dead {
                        Err(Failure::Gateway)
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert!(result.is_ok(), "a retry on the good one saves each call");
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_endpoint_gets_at_most_the_threshold_per_ejection() {
    let guard = guard(
        vec![spec("dead", 0, 1, 8), spec("good", 0, 1, 8)],
        outlier(3, 50),
        |config| config.max_attempts = 3,
    );
    let hits = Mutex::new([0u32; 2]);
    call_with_a_dead_first(&guard, &hits, 50).await;
    assert_eq!(hits.lock()[0], 3, "three failures, then ejected for 30 s");
    tokio::time::advance(Duration::from_secs(31)).await;
    call_with_a_dead_first(&guard, &hits, 50).await;
    assert_eq!(hits.lock()[0], 6, "back after 30 s, three more, out again");
    let out_for = guard.endpoints()[0].ejected_for().expect("ejected again");
    assert!(
        out_for > Duration::from_secs(55),
        "the repeat lasts 60 s: {out_for:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn tiers_fall_through_to_the_fallbacks_and_come_back() {
    let guard = guard(
        vec![
            spec("a", 0, 1, 1),
            spec("b", 0, 1, 1),
            spec("fallback", 1, 1, 4),
        ],
        OutlierConfig::default(),
        |config| config.max_queue_wait_ms = 100,
    );
    let answered_by = |guard: Arc<Guard>| async move {
        let (result, summary) = guard.call("op", || async { Ok::<_, Failure>(()) }).await;
        assert!(result.is_ok());
        summary.endpoint
    };
    let first = answered_by(guard.clone()).await;
    assert!(matches!(first, Some(0 | 1)), "a primary first: {first:?}");
    guard.hold_endpoint_open(0);
    guard.hold_endpoint_open(1);
    assert_eq!(
        answered_by(guard.clone()).await,
        Some(2),
        "no primary can serve"
    );
    guard.release_endpoint_hold(0);
    assert_eq!(
        answered_by(guard.clone()).await,
        Some(0),
        "a primary is back"
    );
    guard.release_endpoint_hold(1);
    // Both primary slots busy past the queue wait: the fallback serves.
    let held = park_calls(&guard, 2).await;
    assert_eq!(&held[..2], [1, 1]);
    let started = Instant::now();
    assert_eq!(answered_by(guard.clone()).await, Some(2));
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "after the queue wait"
    );
    // Only the primaries eligible: refused as a full bulkhead.
    let (result, _) = guard
        .call_on("op", None, &|endpoint| endpoint.tier() == 0, |_, _| async {
            Ok::<_, Failure>(())
        })
        .await;
    assert!(matches!(result, Err(GuardError::BulkheadFull { .. })));
}
