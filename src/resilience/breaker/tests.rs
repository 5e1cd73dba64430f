//! The breaker's state machine under paused tokio time.

use std::time::Duration;

use super::*;

const FAST: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_millis(150);

fn config() -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        window: WindowKind::Count,
        window_size: 10,
        minimum_calls: 5,
        failure_rate_threshold: 0.5,
        slow_call_duration_ms: 100,
        slow_call_rate_threshold: 1.0,
        wait_in_open_ms: 1_000,
        half_open_permits: 2,
        consecutive_failures: 0,
    }
}

fn call(breaker: &CircuitBreaker, failed: bool, duration: Duration) {
    breaker
        .try_acquire()
        .expect("admitted")
        .record(failed, duration);
}

fn open_it(breaker: &CircuitBreaker) {
    for _ in 0..5 {
        call(breaker, true, FAST);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_exactly_when_the_threshold_is_crossed_after_the_minimum() {
    let breaker = CircuitBreaker::new("test", config());
    for _ in 0..4 {
        call(&breaker, true, FAST);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "4 failures are below the minimum of 5 calls"
    );
    call(&breaker, true, FAST);
    assert_eq!(breaker.state(), BreakerState::Open);

    let mixed = CircuitBreaker::new("test", config());
    for failed in [true, false, true, false, false] {
        call(&mixed, failed, FAST);
    }
    assert_eq!(mixed.state(), BreakerState::Closed, "2 of 5 is under 50%");
    call(&mixed, true, FAST);
    assert_eq!(mixed.state(), BreakerState::Open, "3 of 6 reaches 50%");
}

#[tokio::test(start_paused = true)]
async fn rejects_for_the_whole_wait_then_admits_exactly_n_probes() {
    let breaker = CircuitBreaker::new("test", config());
    open_it(&breaker);
    assert!(breaker.try_acquire().is_none());
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(breaker.try_acquire().is_none(), "still inside the wait");
    tokio::time::advance(Duration::from_millis(1)).await;
    let first = breaker.try_acquire().expect("probe 1");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    let second = breaker.try_acquire().expect("probe 2");
    assert!(
        breaker.try_acquire().is_none(),
        "the third probe is refused"
    );
    first.record(false, FAST);
    assert_eq!(
        breaker.state(),
        BreakerState::HalfOpen,
        "one success of two"
    );
    second.record(false, FAST);
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(breaker.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_another_full_wait() {
    let breaker = CircuitBreaker::new("test", config());
    open_it(&breaker);
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let probe = breaker.try_acquire().expect("probe");
    let other = breaker.try_acquire().expect("probe");
    probe.record(true, FAST);
    assert_eq!(breaker.state(), BreakerState::Open);
    other.record(false, FAST);
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "a probe from the old half-open state does not count"
    );
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(breaker.try_acquire().is_none());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(breaker.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_permit_back() {
    let breaker = CircuitBreaker::new("test", config());
    open_it(&breaker);
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let kept = breaker.try_acquire().expect("probe 1");
    let cancelled = breaker.try_acquire().expect("probe 2");
    assert!(breaker.try_acquire().is_none());
    drop(cancelled);
    let replacement = breaker
        .try_acquire()
        .expect("the cancelled probe's permit is free again");
    kept.record(false, FAST);
    replacement.record(false, FAST);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count_when_over_the_slow_threshold() {
    let breaker = CircuitBreaker::new(
        "test",
        BreakerConfig {
            slow_call_rate_threshold: 0.6,
            ..config()
        },
    );
    for _ in 0..2 {
        call(&breaker, false, FAST);
    }
    for _ in 0..2 {
        call(&breaker, false, SLOW);
    }
    call(&breaker, false, Duration::from_millis(100));
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "exactly at the slow duration is not slow; 2 of 5 slow"
    );
    call(&breaker, false, SLOW);
    call(&breaker, false, SLOW);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "4 of 7 slow is under 60%"
    );
    call(&breaker, false, SLOW);
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "5 of 8 slow reaches 60%"
    );
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let breaker = CircuitBreaker::new(
        "test",
        BreakerConfig {
            window: WindowKind::Time,
            window_size: 2,
            ..config()
        },
    );
    for _ in 0..4 {
        call(&breaker, true, FAST);
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    call(&breaker, true, FAST);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "the first four left the 2 s window"
    );
    for _ in 0..4 {
        call(&breaker, true, FAST);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_count_window_keeps_only_the_last_calls() {
    let breaker = CircuitBreaker::new("test", config());
    for _ in 0..10 {
        call(&breaker, false, FAST);
    }
    for _ in 0..4 {
        call(&breaker, true, FAST);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "4 of the last 10 failed"
    );
    call(&breaker, true, FAST);
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "5 of the last 10 failed (5 of all 15 would not)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_never_rejects() {
    let breaker = CircuitBreaker::new(
        "test",
        BreakerConfig {
            enabled: false,
            ..config()
        },
    );
    for _ in 0..50 {
        call(&breaker, true, FAST);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_held_open_breaker_rejects_until_released() {
    let breaker = CircuitBreaker::new("test", config());
    breaker.hold_open();
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(
        breaker.try_acquire().is_none(),
        "no half-open probes while forced"
    );
    breaker.release_hold();
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(breaker.try_acquire().is_some());
    let disabled = CircuitBreaker::new(
        "test",
        BreakerConfig {
            enabled: false,
            ..config()
        },
    );
    disabled.hold_open();
    assert!(
        disabled.try_acquire().is_none(),
        "health still holds a disabled breaker open"
    );
}

#[tokio::test(start_paused = true)]
async fn open_remaining_counts_down_to_the_half_open_probe() {
    let breaker = CircuitBreaker::new("test", config());
    assert_eq!(breaker.open_remaining(), None, "closed");
    open_it(&breaker);
    assert_eq!(breaker.open_remaining(), Some(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_millis(400)).await;
    assert_eq!(breaker.open_remaining(), Some(Duration::from_millis(600)));
    tokio::time::advance(Duration::from_millis(600)).await;
    assert_eq!(
        breaker.open_remaining(),
        Some(Duration::ZERO),
        "the wait is over; the next call is a probe"
    );
    let _probe = breaker.try_acquire().expect("a probe is admitted");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert_eq!(breaker.open_remaining(), None, "half-open");

    let forced = CircuitBreaker::new("test", config());
    forced.hold_open();
    assert_eq!(
        forced.open_remaining(),
        Some(Duration::from_secs(1)),
        "held open: one configured open period"
    );
}

#[tokio::test(start_paused = true)]
async fn n_failures_in_a_row_open_it_before_the_minimum_and_a_success_resets_the_count() {
    let breaker = CircuitBreaker::new(
        "test",
        BreakerConfig {
            consecutive_failures: 3,
            minimum_calls: 10,
            ..config()
        },
    );
    for failed in [true, true, false, true, true] {
        call(&breaker, failed, FAST);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "two in a row, a success, two in a row"
    );
    call(&breaker, true, FAST);
    assert_eq!(breaker.state(), BreakerState::Open, "three in a row");
    tokio::time::advance(Duration::from_millis(1_000)).await;
    for _ in 0..2 {
        call(&breaker, false, FAST);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    call(&breaker, true, FAST);
    call(&breaker, true, FAST);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "the count starts again after closing"
    );

    let off = CircuitBreaker::new(
        "test",
        BreakerConfig {
            minimum_calls: 10,
            ..config()
        },
    );
    for _ in 0..9 {
        call(&off, true, FAST);
    }
    assert_eq!(off.state(), BreakerState::Closed, "0 turns the trip off");
}

#[tokio::test(start_paused = true)]
async fn backpressure_counts_neither_way_and_gives_a_probe_permit_back() {
    let breaker = CircuitBreaker::new(
        "test",
        BreakerConfig {
            consecutive_failures: 3,
            ..config()
        },
    );
    for _ in 0..20 {
        breaker
            .try_acquire()
            .expect("admitted")
            .judge(Verdict::Backpressure, FAST);
    }
    assert_eq!(breaker.state(), BreakerState::Closed, "429s never open it");
    for _ in 0..3 {
        call(&breaker, true, FAST);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let probe = breaker.try_acquire().expect("probe");
    probe.judge(Verdict::Backpressure, FAST);
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    for _ in 0..2 {
        breaker
            .try_acquire()
            .expect("the 429 gave its permit back")
            .judge(Verdict::Healthy, FAST);
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_now_ends_the_wait_and_releases_a_hold() {
    let breaker = CircuitBreaker::new("test", config());
    open_it(&breaker);
    assert!(breaker.try_acquire().is_none());
    breaker.half_open_now();
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert!(
        breaker.try_acquire().is_some(),
        "the next call is the probe"
    );

    let held = CircuitBreaker::new("test", config());
    held.hold_open();
    held.half_open_now();
    assert_eq!(held.state(), BreakerState::HalfOpen);
    assert!(held.try_acquire().is_some());

    let closed = CircuitBreaker::new("test", config());
    closed.half_open_now();
    assert_eq!(
        closed.state(),
        BreakerState::Closed,
        "only an open breaker moves"
    );
}
