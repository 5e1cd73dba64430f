//! The limiter on paused time: each wait is exact, so each test asserts
//! when a request went, not that it went "soon".

use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn limiter(rpm: u32, tpm: u32) -> RateLimiter {
    RateLimiter::new("llm", "127.0.0.1:9", RateLimitConfig { rpm, tpm })
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// When each of `count` requests of `tokens`, one after the other, got
/// room, in whole seconds since the first asked.
async fn times_of(limiter: &RateLimiter, count: usize, tokens: u32) -> Vec<u64> {
    let started = Instant::now();
    let mut times = Vec::new();
    for _ in 0..count {
        let permit = limiter.acquire(tokens, far()).await.expect("room");
        assert_eq!(permit.tokens(), tokens);
        times.push(started.elapsed().as_secs());
    }
    times
}

#[tokio::test(start_paused = true)]
async fn rpm_lets_a_minutes_allowance_go_then_spaces_requests() {
    let limiter = limiter(2, 0);
    // Two at once (a minute's allowance), then one every 30 s.
    assert_eq!(times_of(&limiter, 5, 100).await, [0, 0, 30, 60, 90]);
}

#[tokio::test(start_paused = true)]
async fn a_tpm_limit_spaces_requests_by_their_token_charge() {
    // 6000 tokens a minute, 100 a second; each request charges 3000.
    let limiter = limiter(0, 6000);
    assert_eq!(times_of(&limiter, 5, 3000).await, [0, 0, 30, 60, 90]);
    // A smaller request waits only for its own charge.
    let started = Instant::now();
    let _permit = limiter.acquire(500, far()).await.expect("room");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn tpm_is_charged_the_estimate_and_corrected_by_usage() {
    // 6000 tokens a minute: 100 a second.
    let limiter = limiter(0, 6000);
    let permit = limiter.acquire(3600, far()).await.expect("room");
    // 2400 left: another 3600 would wait 12 s for 1200 more.
    assert_eq!(
        limiter.ready_at(3600),
        Some(Instant::now() + Duration::from_secs(12))
    );
    // The reply used 600: 3000 come back, and the next request goes now.
    limiter.correct(permit, 600);
    assert_eq!(limiter.ready_at(3600), None);
    let started = Instant::now();
    let permit = limiter.acquire(3600, far()).await.expect("room");
    assert_eq!(started.elapsed(), Duration::ZERO);
    // 1800 left; a reply that used 6000, more than its estimate, is
    // charged the other 2400: 600 in debt, so 100 tokens wait 7 s.
    limiter.correct(permit, 6000);
    assert_eq!(
        limiter.ready_at(100),
        Some(Instant::now() + Duration::from_secs(7))
    );
}

#[tokio::test(start_paused = true)]
async fn a_used_up_provider_allowance_holds_requests_until_its_reset() {
    let limiter = limiter(0, 0);
    let mut limits = ProviderLimits {
        remaining_requests: Some(3),
        reset_requests: Some(Duration::from_secs(5)),
        ..ProviderLimits::default()
    };
    limiter.observe(&limits);
    assert_eq!(limiter.ready_at(1), None, "3 remain: no hold");
    limits.remaining_requests = Some(0);
    limiter.observe(&limits);
    let reset = Instant::now() + Duration::from_secs(5);
    assert_eq!(limiter.ready_at(1), Some(reset));
    let _permit = limiter.acquire(10, far()).await.expect("room");
    assert_eq!(Instant::now(), reset, "sent at the reset, not before");
    // Tokens used up hold as well, until their own reset.
    limiter.observe(&ProviderLimits {
        remaining_tokens: Some(0),
        reset_tokens: Some(Duration::from_millis(1500)),
        remaining_requests: Some(9),
        reset_requests: Some(Duration::from_secs(40)),
        ..ProviderLimits::default()
    });
    assert_eq!(
        limiter.ready_at(1),
        Some(Instant::now() + Duration::from_millis(1500))
    );
}

#[tokio::test(start_paused = true)]
async fn room_after_the_deadline_fails_at_once_without_waiting() {
    let limiter = limiter(0, 0);
    limiter.observe(&ProviderLimits {
        remaining_requests: Some(0),
        reset_requests: Some(Duration::from_secs(10)),
        ..ProviderLimits::default()
    });
    let started = Instant::now();
    let refused = limiter
        .acquire(10, started + Duration::from_secs(3))
        .await
        .expect_err("the reset is past the deadline");
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait at all");
    assert_eq!(refused.wait, Duration::from_secs(10));
    assert!(refused.to_string().contains("127.0.0.1:9"), "{refused}");
    // Within the deadline it waits instead.
    let _permit = limiter
        .acquire(10, started + Duration::from_secs(10))
        .await
        .expect("room at the deadline");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_hold_set_while_a_request_waits_past_its_deadline_fails_it() {
    let limiter = std::sync::Arc::new(limiter(1, 0));
    let _first = limiter.acquire(1, far()).await.expect("room");
    let deadline = Instant::now() + Duration::from_secs(70);
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire(1, deadline).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    limiter.observe(&ProviderLimits {
        remaining_requests: Some(0),
        reset_requests: Some(Duration::from_secs(100)),
        ..ProviderLimits::default()
    });
    let refused = waiter
        .await
        .expect("joins")
        .expect_err("held past deadline");
    // Woken at 60 s by the rpm bucket, it found the hold (until 101 s).
    assert_eq!(refused.wait, Duration::from_secs(41));
    assert_eq!(
        limiter.ready_at(1),
        Some(Instant::now() + Duration::from_secs(41))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_gives_its_reservation_back() {
    let limiter = limiter(0, 600);
    let _first = limiter.acquire(600, far()).await.expect("room");
    // The next 600 needs a full minute; the caller gives up after 1 s.
    let gave_up = tokio::time::timeout(Duration::from_secs(1), limiter.acquire(600, far())).await;
    assert!(gave_up.is_err());
    // Only the refill since counts: 10 tokens, not a reservation of 600.
    assert_eq!(
        limiter.ready_at(20),
        Some(Instant::now() + Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_a_minutes_tokens_waits_for_a_full_bucket() {
    // 600 a minute, 10 tokens a second; 300 are left after the first.
    let limiter = limiter(0, 600);
    let _small = limiter.acquire(300, far()).await.expect("room");
    let started = Instant::now();
    let _large = limiter.acquire(5000, far()).await.expect("goes once full");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[test]
fn a_429_waits_for_the_used_up_allowance_else_the_later_reset() {
    let limits = ProviderLimits {
        remaining_requests: Some(0),
        reset_requests: Some(Duration::from_secs(2)),
        remaining_tokens: Some(100),
        reset_tokens: Some(Duration::from_secs(20)),
        ..ProviderLimits::default()
    };
    assert_eq!(limits.retry_delay(), Some(Duration::from_secs(2)));
    let nothing_used_up = ProviderLimits {
        remaining_requests: Some(4),
        ..limits
    };
    assert_eq!(nothing_used_up.exhausted_for(), None);
    assert_eq!(nothing_used_up.retry_delay(), Some(Duration::from_secs(20)));
    assert_eq!(ProviderLimits::default().retry_delay(), None);
}

#[tokio::test]
async fn a_refused_call_is_journaled_as_rate_limited_with_no_attempt() {
    let refused = RateLimited {
        service: "llm".into(),
        endpoint: "127.0.0.1:9".into(),
        wait: Duration::from_secs(30),
    };
    let (_, entries) = journal::scope(async { refused.end_call("chat/completions") }).await;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(
        (entry.service.as_str(), entry.operation.as_str()),
        ("llm", "chat/completions")
    );
    assert_eq!(entry.summary.outcome.as_str(), "rate_limited");
    assert_eq!(entry.summary.attempts, 0, "nothing was sent");
    assert!(entry
        .summary
        .last_error
        .as_deref()
        .is_some_and(|error| error.contains("30000 ms")));
}
