//! The rate-limit headers OpenAI-style servers send on every answer
//! (success or error), read into resilience's [`ProviderLimits`]:
//! `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
//! `x-ratelimit-reset-requests` and the same three for `-tokens`. A reset
//! is a Go duration (`"1s"`, `"6m0s"`, `"59.5s"`, `"20ms"`, `"1h2m3s"`),
//! or plain seconds as some compatible servers write it.
//!
//! A value that cannot be read is left out, as if not sent: a server's
//! odd header must never fail a call, nor hold an endpoint on a guess.

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::resilience::rate_limit::MAX_WAIT;
use crate::resilience::ProviderLimits;

const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";

/// The answer's rate-limit headers; `None` when it sent none we can read.
pub fn provider_limits(headers: &HeaderMap) -> Option<ProviderLimits> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let count = |name: &str| text(name).and_then(|value| value.trim().parse::<u64>().ok());
    let reset = |name: &str| text(name).and_then(parse_reset);
    let limits = ProviderLimits {
        limit_requests: count(LIMIT_REQUESTS),
        limit_tokens: count(LIMIT_TOKENS),
        remaining_requests: count(REMAINING_REQUESTS),
        remaining_tokens: count(REMAINING_TOKENS),
        reset_requests: reset(RESET_REQUESTS),
        reset_tokens: reset(RESET_TOKENS),
    };
    (limits != ProviderLimits::default()).then_some(limits)
}

/// A reset as OpenAI writes it: a Go duration (units `h`, `m`, `s`, `ms`,
/// `us`/`µs`, `ns`, each number possibly decimal), or bare seconds. More
/// than a day is not believed (`None`).
pub fn parse_reset(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return within_a_day(seconds);
    }
    let mut seconds = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        seconds += number * scale;
        rest = &rest[unit_end..];
    }
    within_a_day(seconds)
}

fn within_a_day(seconds: f64) -> Option<Duration> {
    let duration = Duration::try_from_secs_f64(seconds).ok()?;
    (duration <= MAX_WAIT).then_some(duration)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn openais_resets_are_read() {
        for (text, expected) in [
            ("1s", Duration::from_secs(1)),
            ("6m0s", Duration::from_secs(360)),
            ("59.5s", Duration::from_millis(59_500)),
            ("20ms", Duration::from_millis(20)),
            ("1h2m3s", Duration::from_secs(3723)),
            ("0s", Duration::ZERO),
            ("1.5µs", Duration::from_nanos(1500)),
            ("2", Duration::from_secs(2)),
            (" 7.25 ", Duration::from_millis(7250)),
        ] {
            assert_eq!(parse_reset(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn unreadable_or_unbelievable_resets_are_left_out() {
        for text in [
            "", "s", "1x", "1.2.3s", "-1s", "ms", "1s2", "25h", "NaN", "inf",
        ] {
            assert_eq!(parse_reset(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_six_headers_are_read_and_odd_values_left_out() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (LIMIT_REQUESTS, "60"),
            (REMAINING_REQUESTS, "0"),
            (RESET_REQUESTS, "1s"),
            (LIMIT_TOKENS, "150000"),
            (REMAINING_TOKENS, "149984"),
            (RESET_TOKENS, "later"),
        ] {
            headers.insert(name, value.parse().expect("header value"));
        }
        assert_eq!(
            provider_limits(&headers),
            Some(ProviderLimits {
                limit_requests: Some(60),
                limit_tokens: Some(150_000),
                remaining_requests: Some(0),
                remaining_tokens: Some(149_984),
                reset_requests: Some(Duration::from_secs(1)),
                reset_tokens: None,
            })
        );
        assert_eq!(provider_limits(&HeaderMap::new()), None);
    }

    /// A duration as Go's `time.Duration.String` writes it (what OpenAI
    /// sends): `1h2m3.5s`, `6m0s`, `20ms`, `0s`.
    fn go_duration(duration: Duration) -> String {
        let nanos = duration.as_nanos();
        if nanos == 0 {
            return "0s".into();
        }
        if nanos < 1_000_000_000 {
            let (unit, size) = match nanos {
                n if n < 1_000 => ("ns", 1u128),
                n if n < 1_000_000 => ("µs", 1_000),
                _ => ("ms", 1_000_000),
            };
            return format!("{}{unit}", decimal(nanos, size));
        }
        let hours = nanos / 3_600_000_000_000;
        let minutes = nanos / 60_000_000_000 % 60;
        let seconds = decimal(nanos % 60_000_000_000, 1_000_000_000);
        match (hours, minutes) {
            (0, 0) => format!("{seconds}s"),
            (0, minutes) => format!("{minutes}m{seconds}s"),
            (hours, minutes) => format!("{hours}h{minutes}m{seconds}s"),
        }
    }

    /// `value / size` with its fraction, trailing zeros dropped.
    fn decimal(value: u128, size: u128) -> String {
        let whole = value / size;
        let fraction = value % size;
        if fraction == 0 {
            return whole.to_string();
        }
        let width = size.to_string().len() - 1;
        let digits = format!("{fraction:0width$}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }

    proptest! {
        /// Every reset Go writes, up to a day, is read back to within a
        /// nanosecond per unit (the decimal's rounding).
        #[test]
        fn go_durations_read_back(nanos in 0u64..=86_400_000_000_000) {
            let duration = Duration::from_nanos(nanos);
            let text = go_duration(duration);
            let read = parse_reset(&text).expect("readable");
            let error = read.abs_diff(duration);
            prop_assert!(error <= Duration::from_nanos(4), "{text}: {read:?} for {duration:?}");
        }

        /// Whatever a server sends, reading it never panics, and what is
        /// read is at most a day.
        #[test]
        fn any_text_reads_safely(text in "\\PC{0,24}") {
            if let Some(reset) = parse_reset(&text) {
                prop_assert!(reset <= MAX_WAIT);
            }
        }

        #[test]
        fn unit_soup_reads_safely(text in "[0-9.]{0,6}(h|m|s|ms|us|µs|ns|x)?[0-9.]{0,6}(h|m|s|ms)?") {
            if let Some(reset) = parse_reset(&text) {
                prop_assert!(reset <= MAX_WAIT);
            }
        }
    }
}
