//! The composed stack under paused tokio time, with attempts that are
//! closures (no network) failing with [`TestError`]: what is retried, when,
//! and what is refused.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::config::PolicyConfig;

fn policy(configure: impl FnOnce(&mut PolicyConfig)) -> Policy {
    let mut config = PolicyConfig::quick_service();
    configure(&mut config);
    Policy {
        attempt_timeout: Duration::from_secs(1),
        config,
        jitter_seed: Some(11),
    }
}

/// A service's error as a caller would classify it: the stack sees it only
/// through [`Classify`].
#[derive(Debug, Clone, PartialEq)]
enum TestError {
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    Connect,
    Decode,
}

impl std::fmt::Display for TestError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status { code, .. } => write!(formatter, "svc: HTTP {code}"),
            Self::Connect => formatter.write_str("svc: cannot connect"),
            Self::Decode => formatter.write_str("svc: unreadable reply"),
        }
    }
}

impl Classify for TestError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Status { code, .. } => *code == 408 || *code == 429 || *code >= 500,
            Self::Connect => true,
            Self::Decode => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn is_backpressure(&self) -> bool {
        matches!(self, Self::Status { code: 429, .. })
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Status { code, .. } if *code >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Connect => "connect_error",
            Self::Decode => "decode_error",
        }
    }
}

fn status(code: u16, retry_after: Option<Duration>) -> TestError {
    TestError::Status { code, retry_after }
}

/// An attempt that never answers, for timeouts and cancellation.
fn hanging() -> std::future::Pending<Result<(), TestError>> {
    std::future::pending()
}

/// An attempt closure that fails with `error` every time and counts calls.
fn failing(
    counter: &Arc<AtomicU32>,
    error: TestError,
) -> impl FnMut() -> std::future::Ready<Result<(), TestError>> + '_ {
    move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(error.clone()))
    }
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_retried() {
    for code in [400, 401, 403, 404, 409, 422] {
        let guard = Guard::new("svc", policy(|_| {}));
        let counter = Arc::new(AtomicU32::new(0));
        let (result, summary) = guard
            .call("op", failing(&counter, status(code, None)))
            .await;
        assert!(
            matches!(result, Err(GuardError::Service(TestError::Status { code: status, .. })) if status == code)
        );
        assert_eq!(counter.load(Ordering::SeqCst), 1, "HTTP {code}");
        assert_eq!(summary.attempts, 1);
    }
    let guard = Guard::new("svc", policy(|_| {}));
    let counter = Arc::new(AtomicU32::new(0));
    let _ = guard.call("op", failing(&counter, TestError::Decode)).await;
    assert_eq!(
        counter.load(Ordering::SeqCst),
        1,
        "a decode error is not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_full_jitter_delays() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 5;
            config.backoff_base_ms = 100;
            config.backoff_cap_ms = 300;
        }),
    );
    let times = Mutex::new(Vec::new());
    let (result, summary) = guard
        .call("op", || {
            times.lock().push(Instant::now());
            std::future::ready(Err::<(), _>(status(503, None)))
        })
        .await;
    assert!(result.is_err());
    assert_eq!(summary.attempts, 5);
    let times = times.into_inner();
    let bounds = [100, 200, 300, 300];
    for (index, pair) in times.windows(2).enumerate() {
        let delay = pair[1] - pair[0];
        assert!(
            delay <= Duration::from_millis(bounds[index]),
            "retry {index}: {delay:?}"
        );
    }
    // The same seed gives the same delays.
    let again = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 5;
            config.backoff_base_ms = 100;
            config.backoff_cap_ms = 300;
        }),
    );
    let repeat = Mutex::new(Vec::new());
    let _ = again
        .call("op", || {
            repeat.lock().push(Instant::now());
            std::future::ready(Err::<(), _>(status(503, None)))
        })
        .await;
    let repeat = repeat.into_inner();
    let gaps = |times: &[Instant]| {
        times
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .collect::<Vec<_>>()
    };
    assert_eq!(gaps(&times), gaps(&repeat));
}

#[tokio::test(start_paused = true)]
async fn retry_after_overrides_the_backoff_and_is_capped() {
    for (retry_after, expected) in [
        (Duration::from_secs(3), Duration::from_secs(3)),
        (Duration::from_secs(30), Duration::from_secs(10)),
    ] {
        let guard = Guard::new(
            "svc",
            policy(|config| {
                config.max_attempts = 2;
                config.retry_after_cap_ms = 10_000;
                config.deadline_ms = 60_000;
            }),
        );
        let times = Mutex::new(Vec::new());
        let _ = guard
            .call("op", || {
                times.lock().push(Instant::now());
                std::future::ready(Err::<(), _>(status(429, Some(retry_after))))
            })
            .await;
        let times = times.into_inner();
        assert_eq!(times.len(), 2);
        assert_eq!(times[1] - times[0], expected, "Retry-After {retry_after:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_retried_past_the_deadline() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.deadline_ms = 1_000;
            config.max_attempts = 10;
        }),
    );
    let counter = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let (_, summary) = guard
        .call(
            "op",
            failing(&counter, status(503, Some(Duration::from_secs(2)))),
        )
        .await;
    assert_eq!(
        summary.attempts, 1,
        "a 2 s Retry-After does not fit a 1 s deadline"
    );
    assert_eq!(started.elapsed(), Duration::ZERO);

    // A hanging attempt is cut by whichever comes first, timeout or deadline.
    let guard = Guard::new(
        "svc",
        Policy {
            attempt_timeout: Duration::from_secs(5),
            ..policy(|config| config.deadline_ms = 1_500)
        },
    );
    let started = Instant::now();
    let (result, summary) = guard.call("op", hanging).await;
    assert!(matches!(result, Err(GuardError::Timeout { .. })));
    assert_eq!(started.elapsed(), Duration::from_millis(1_500));
    assert_eq!(summary.attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_rejects_without_attempting_and_is_not_retried() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 1;
            config.breaker.minimum_calls = 3;
            config.breaker.window_size = 3;
        }),
    );
    let counter = Arc::new(AtomicU32::new(0));
    for _ in 0..3 {
        let _ = guard.call("op", failing(&counter, status(500, None))).await;
    }
    assert_eq!(guard.breaker_state(), BreakerState::Open);
    let before = counter.load(Ordering::SeqCst);
    let started = Instant::now();
    let (result, summary) = guard.call("op", failing(&counter, status(500, None))).await;
    assert!(matches!(result, Err(GuardError::CircuitOpen { .. })));
    assert_eq!(
        counter.load(Ordering::SeqCst),
        before,
        "no attempt was made"
    );
    assert_eq!(summary.attempts, 0);
    assert_eq!(summary.outcome, CallOutcome::RejectedOpen);
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff either");
}

#[tokio::test(start_paused = true)]
async fn timeouts_count_as_breaker_failures() {
    let guard = Guard::new(
        "svc",
        Policy {
            attempt_timeout: Duration::from_millis(100),
            ..policy(|config| {
                config.max_attempts = 1;
                config.breaker.minimum_calls = 2;
            })
        },
    );
    for _ in 0..2 {
        let (result, _) = guard.call("op", hanging).await;
        assert!(matches!(result, Err(GuardError::Timeout { .. })));
    }
    assert_eq!(guard.breaker_state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_attempts_under_a_total_outage() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 5;
            config.retry_budget_ratio = 0.2;
            config.retry_budget_min_per_second = 1.0;
            config.breaker.enabled = false;
            // No backoff: every call lands in one budget window, the worst case.
            config.backoff_base_ms = 0;
            config.backoff_cap_ms = 0;
        }),
    );
    let counter = Arc::new(AtomicU32::new(0));
    let mut exhausted = 0;
    for _ in 0..1000 {
        let (result, _) = guard
            .call("op", failing(&counter, TestError::Connect))
            .await;
        if matches!(result, Err(GuardError::BudgetExhausted { .. })) {
            exhausted += 1;
        }
    }
    let attempts = counter.load(Ordering::SeqCst) as f64;
    let bound = (1.0 + 0.2) * 1000.0 + 1.0 * budget::WINDOW.as_secs_f64();
    assert!(attempts <= bound, "{attempts} attempts > {bound}");
    assert!(attempts > 1000.0, "some retries were allowed");
    assert!(exhausted > 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_rejects_after_its_queue_wait() {
    let guard = Arc::new(Guard::new(
        "svc",
        Policy {
            attempt_timeout: Duration::from_secs(60),
            ..policy(|config| {
                config.max_concurrent = 1;
                config.max_queue_wait_ms = 100;
                config.deadline_ms = 120_000;
            })
        },
    ));
    let holder = guard.clone();
    let holding = tokio::spawn(async move { holder.call("op", hanging).await });
    tokio::task::yield_now().await;
    let started = Instant::now();
    let counter = Arc::new(AtomicU32::new(0));
    let (result, summary) = guard.call("op", failing(&counter, status(500, None))).await;
    assert!(matches!(result, Err(GuardError::BulkheadFull { .. })));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(counter.load(Ordering::SeqCst), 0);
    assert_eq!(summary.outcome, CallOutcome::RejectedBulkhead);
    holding.abort();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_half_open_call_frees_its_probe() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 1;
            config.breaker.minimum_calls = 1;
            config.breaker.half_open_permits = 1;
            config.breaker.wait_in_open_ms = 1_000;
        }),
    );
    let counter = Arc::new(AtomicU32::new(0));
    let _ = guard.call("op", failing(&counter, status(500, None))).await;
    assert_eq!(guard.breaker_state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    // The probe's caller gives up before the service answers.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(10), guard.call("op", hanging)).await;
    assert!(cancelled.is_err());
    let (result, _) = guard
        .call("op", || std::future::ready(Ok::<_, TestError>(())))
        .await;
    assert!(result.is_ok(), "the freed permit admitted a new probe");
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_short_by_the_deadline_is_not_held_against_the_service() {
    // Attempts may take 1 s; the call may take 1.5 s: the second attempt is
    // cut at 0.5 s by the deadline, which is no evidence about the service.
    let guard = Guard::new(
        "svc",
        Policy {
            attempt_timeout: Duration::from_secs(1),
            ..policy(|config| {
                config.deadline_ms = 1_500;
                config.max_attempts = 2;
                config.backoff_base_ms = 0;
                config.backoff_cap_ms = 0;
                config.breaker.minimum_calls = 2;
                config.breaker.failure_rate_threshold = 1.0;
            })
        },
    );
    let (result, summary) = guard.call("op", hanging).await;
    assert!(
        matches!(result, Err(GuardError::Timeout { after, .. }) if after == Duration::from_millis(500))
    );
    assert_eq!(summary.attempts, 2);
    assert_eq!(
        guard.breaker_state(),
        BreakerState::Closed,
        "only the first, full-length timeout counted"
    );
    let (_, _) = guard.call("op", hanging).await;
    assert_eq!(
        guard.breaker_state(),
        BreakerState::Open,
        "a second full-length timeout makes two failures"
    );
}

#[tokio::test(start_paused = true)]
async fn each_call_outcome_keeps_its_label() {
    let guard = Guard::new(
        "svc",
        Policy {
            attempt_timeout: Duration::from_millis(100),
            ..policy(|config| {
                config.max_attempts = 1;
                config.breaker.enabled = false;
            })
        },
    );
    let (_, success) = guard
        .call("op", || std::future::ready(Ok::<_, TestError>(())))
        .await;
    let counter = Arc::new(AtomicU32::new(0));
    let (_, error) = guard.call("op", failing(&counter, status(503, None))).await;
    let (result, timeout) = guard.call("op", hanging).await;
    let labels = [success.outcome, error.outcome, timeout.outcome].map(CallOutcome::as_str);
    assert_eq!(labels, ["success", "error", "timeout"]);
    assert_eq!(
        result.expect_err("timed out").to_string(),
        "svc: no answer within 100 ms"
    );
    assert_eq!(
        [
            CallOutcome::RejectedOpen,
            CallOutcome::RejectedBulkhead,
            CallOutcome::RejectedBudget
        ]
        .map(CallOutcome::as_str),
        ["rejected_open", "rejected_bulkhead", "rejected_budget"]
    );
}

#[test]
fn the_stack_classifies_its_own_errors() {
    let service = GuardError::Service(status(429, Some(Duration::from_secs(2))));
    assert!(service.is_transient());
    assert_eq!(service.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(service.label(), "client_error");
    assert_eq!(
        service.to_string(),
        "svc: HTTP 429",
        "the service's own text"
    );
    let timeout = GuardError::<TestError>::Timeout {
        service: "svc".into(),
        after: Duration::from_millis(250),
    };
    assert!(timeout.is_transient() && timeout.is_timeout());
    assert_eq!(timeout.label(), "timeout");
    let budget = GuardError::<TestError>::BudgetExhausted {
        service: "svc".into(),
        last: "svc: HTTP 503".into(),
    };
    assert!(!budget.is_transient(), "a refusal is never retried");
    assert_eq!(
        budget.to_string(),
        "svc: retry budget exhausted; last error: svc: HTTP 503"
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_that_opens_mid_call_leaves_the_real_error_as_the_calls_error() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 5;
            config.breaker.consecutive_failures = 2;
        }),
    );
    let counter = Arc::new(AtomicU32::new(0));
    let (result, summary) = guard
        .call("op", failing(&counter, TestError::Connect))
        .await;
    assert_eq!(guard.breaker_state(), BreakerState::Open);
    assert_eq!(
        counter.load(Ordering::SeqCst),
        2,
        "the third attempt was refused"
    );
    assert_eq!(summary.attempts, 2);
    assert!(
        matches!(result, Err(GuardError::Service(TestError::Connect))),
        "{result:?}"
    );
    assert_eq!(summary.last_error.as_deref(), Some("svc: cannot connect"));
    assert_eq!(summary.outcome, CallOutcome::Error);
}

#[tokio::test(start_paused = true)]
async fn a_hung_service_opens_the_breaker_after_n_timeouts() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 1;
            config.breaker.consecutive_failures = 3;
            config.breaker.minimum_calls = 10;
        }),
    );
    for _ in 0..3 {
        let (result, _) = guard.call("op", hanging).await;
        assert!(matches!(result, Err(GuardError::Timeout { .. })));
    }
    assert_eq!(guard.breaker_state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn http_429_is_retried_after_retry_after_but_never_opens_the_breaker() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 2;
            config.retry_budget_min_per_second = 100.0;
        }),
    );
    for _ in 0..20 {
        let started = Instant::now();
        let counter = Arc::new(AtomicU32::new(0));
        let (result, summary) = guard
            .call(
                "op",
                failing(&counter, status(429, Some(Duration::from_millis(700)))),
            )
            .await;
        assert!(result.is_err());
        assert_eq!(summary.attempts, 2, "a 429 is retried");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(700),
            "after Retry-After"
        );
    }
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
}

/// An attempt whose reply streams in: `pieces` pieces `every` apart, then
/// the end, or nothing more when it `stalls`.
async fn streaming(
    progress: Progress,
    every: Duration,
    pieces: u32,
    stalls: bool,
) -> Result<u32, TestError> {
    for _ in 0..pieces {
        tokio::time::sleep(every).await;
        progress.mark();
    }
    if stalls {
        std::future::pending::<()>().await;
    }
    Ok(pieces)
}

#[tokio::test(start_paused = true)]
async fn a_streaming_attempt_is_judged_by_its_gaps_not_by_the_attempt_timeout() {
    // The attempt timeout is 1 s; a steady 5 s stream completes.
    let guard = Guard::new("svc", policy(|config| config.max_attempts = 1));
    let idle = Some(Duration::from_millis(700));
    let every = Duration::from_millis(500);
    let (result, summary) = guard
        .call_streaming("op", idle, |progress| streaming(progress, every, 10, false))
        .await;
    assert_eq!(result.ok(), Some(10));
    assert_eq!(summary.duration, Duration::from_secs(5));

    // One that stops is cut 700 ms after its last piece, as a timeout.
    let (result, summary) = guard
        .call_streaming("op", idle, |progress| streaming(progress, every, 3, true))
        .await;
    let error = result.expect_err("stalled");
    assert!(
        matches!(error, GuardError::Stalled { idle, .. } if idle == Duration::from_millis(700))
    );
    assert!(error.is_timeout() && error.is_transient());
    assert_eq!(summary.outcome, CallOutcome::Timeout);
    assert_eq!(summary.duration, Duration::from_millis(2_200));

    // Without an idle timeout, the attempt timeout caps the whole.
    let (result, _) = guard
        .call_streaming("op", None, |progress| streaming(progress, every, 10, false))
        .await;
    assert!(
        matches!(result, Err(GuardError::Timeout { after, .. }) if after == Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_as_slow_as_its_first_piece_for_the_breaker() {
    let guard = Guard::new(
        "svc",
        policy(|config| {
            config.max_attempts = 1;
            config.breaker.minimum_calls = 2;
            config.breaker.window_size = 2;
            config.breaker.slow_call_duration_ms = 300;
            config.breaker.slow_call_rate_threshold = 1.0;
        }),
    );
    let idle = Some(Duration::from_millis(700));
    // Each reply takes 5 s, its first piece 200 ms: not slow.
    for _ in 0..3 {
        let (result, summary) = guard
            .call_streaming("op", idle, |progress| {
                streaming(progress, Duration::from_millis(200), 25, false)
            })
            .await;
        assert!(result.is_ok());
        assert_eq!(summary.duration, Duration::from_secs(5));
    }
    assert_eq!(guard.breaker_state(), BreakerState::Closed);
    // First pieces after 500 ms are slow: two of two open the breaker.
    for _ in 0..2 {
        let (result, _) = guard
            .call_streaming("op", idle, |progress| {
                streaming(progress, Duration::from_millis(500), 2, false)
            })
            .await;
        assert!(result.is_ok());
    }
    assert_eq!(guard.breaker_state(), BreakerState::Open);
}
