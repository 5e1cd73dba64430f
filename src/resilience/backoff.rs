//! Backoff between attempts: exponential with full jitter (the AWS
//! architecture blog's "full jitter": `random(0, min(cap, base * 2^n))`),
//! and the server's `Retry-After`, in seconds or as an HTTP date, capped.

use std::time::Duration;

use rand::Rng;

/// The full-jitter bound for retry `retry_index` (0 for the first retry).
pub fn ceiling(base: Duration, cap: Duration, retry_index: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry_index.min(31));
    base.saturating_mul(factor).min(cap)
}

/// A random delay in `[0, ceiling]` from `random`.
pub fn full_jitter(
    base: Duration,
    cap: Duration,
    retry_index: u32,
    random: &mut impl Rng,
) -> Duration {
    let bound = ceiling(base, cap, retry_index);
    if bound.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(random.random_range(0..=bound.as_nanos().min(u128::from(u64::MAX)) as u64))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date relative to
/// `now`. A date in the past means "now"; anything unparsable is ignored.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = date.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn full_jitter_stays_within_its_bounds_and_follows_the_seed() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..12)
            .map(|retry| full_jitter(base, cap, retry, &mut random))
            .collect();
        for (retry, delay) in delays.iter().enumerate() {
            let bound = ceiling(base, cap, retry as u32);
            assert!(*delay <= bound, "retry {retry}: {delay:?} > {bound:?}");
        }
        assert_eq!(ceiling(base, cap, 0), Duration::from_millis(100));
        assert_eq!(ceiling(base, cap, 3), Duration::from_millis(800));
        assert_eq!(ceiling(base, cap, 5), cap);
        assert_eq!(ceiling(base, cap, 40), cap, "no overflow for large n");
        let mut again = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let repeated: Vec<Duration> = (0..12)
            .map(|retry| full_jitter(base, cap, retry, &mut again))
            .collect();
        assert_eq!(delays, repeated);
        assert!(
            delays.windows(2).any(|pair| pair[0] != pair[1]),
            "jitter varies"
        );
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:30Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        let cases: &[(&str, Option<Duration>)] = &[
            ("5", Some(Duration::from_secs(5))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Wed, 21 Oct 2015 07:28:00 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(Duration::ZERO)),
            ("-3", None),
            ("soon", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), *expected, "{value:?}");
        }
    }
}
