//! When a schedule's slots fall: a cron expression in an IANA time zone, or
//! a fixed period aligned to the Unix epoch.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone as _, Timelike as _, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

use crate::config::ScheduleConfig;

/// What makes a schedule's slots come due.
// A parsed cron pattern is a few hundred bytes and a period sixteen; there
// is one trigger per schedule, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Slots are the cron expression's matches on the wall clock of `timezone`.
    Cron { cron: Cron, timezone: chrono_tz::Tz },
    /// Slots are the multiples of the period since the Unix epoch, so a slot
    /// time is the same before and after a restart and, with the schedule's
    /// name, identifies a run.
    Every(Duration),
}

impl Trigger {
    /// Reads the trigger of a schedule; the error is (field, why).
    pub fn parse(schedule: &ScheduleConfig) -> Result<Self, (&'static str, String)> {
        match (&schedule.cron, &schedule.every) {
            (Some(_), Some(_)) => Err(("cron", "set either `cron` or `every`, not both".into())),
            (None, None) => Err(("cron", "set one of `cron` or `every`".into())),
            (Some(expression), None) => {
                let timezone = chrono_tz::Tz::from_str(&schedule.timezone).map_err(|_| {
                    (
                        "timezone",
                        format!(
                            "`{}` is not an IANA time zone such as `Europe/London` or `UTC`",
                            schedule.timezone
                        ),
                    )
                })?;
                let cron = cron_parser()
                    .parse(expression)
                    .map_err(|error| ("cron", format!("`{expression}`: {error}")))?;
                Ok(Trigger::Cron { cron, timezone })
            }
            (None, Some(every)) => parse_every(every)
                .map(Trigger::Every)
                .map_err(|why| ("every", format!("`{every}`: {why}"))),
        }
    }

    /// The first slot strictly after `after`, or `None` when there is none
    /// (a cron expression that never matches again).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Every(period) => {
                let period_ms = period_millis(*period);
                let slot_index = after.timestamp_millis().div_euclid(period_ms);
                let next_ms = slot_index.checked_add(1)?.checked_mul(period_ms)?;
                DateTime::from_timestamp_millis(next_ms)
            }
            Trigger::Cron { cron, timezone } => {
                // croner works in whole seconds: searching exclusively from
                // the whole second at or before `after` gives the first match
                // strictly after `after`, even when `after` has a fraction.
                let mut cursor = truncate_to_second(after).with_timezone(timezone);
                loop {
                    let candidate = cron.find_next_occurrence(&cursor, false).ok()?;
                    if is_second_pass_of_fixed_time(cron, &candidate) {
                        // Defensive: croner 4.0.3 already runs a fixed-time
                        // job once in a repeated hour (tests below); were it
                        // to return the repeat, skip it rather than run twice.
                        cursor = candidate;
                        continue;
                    }
                    return Some(candidate.with_timezone(&Utc));
                }
            }
        }
    }

    /// The last slot at or before `at`, for catching up after downtime.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Every(period) => {
                let period_ms = period_millis(*period);
                let slot_ms = at
                    .timestamp_millis()
                    .div_euclid(period_ms)
                    .checked_mul(period_ms)?;
                DateTime::from_timestamp_millis(slot_ms)
            }
            Trigger::Cron { cron, timezone } => {
                let at_local = truncate_to_second(at).with_timezone(timezone);
                let candidate = cron.find_previous_occurrence(&at_local, true).ok()?;
                if is_second_pass_of_fixed_time(cron, &candidate) {
                    // The slot is the first pass of the repeated hour (the one
                    // `next_after` gives), which is earlier still.
                    if let LocalResult::Ambiguous(first_pass, _) =
                        timezone.from_local_datetime(&candidate.naive_local())
                    {
                        return Some(first_pass.with_timezone(&Utc));
                    }
                }
                Some(candidate.with_timezone(&Utc))
            }
        }
    }

    /// For logs and the status API: `cron "0 2 * * *" Europe/London`, `every 30m`.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Cron { cron, timezone } => format!("cron \"{}\" {}", cron.as_str(), timezone),
            Trigger::Every(period) => format!("every {}", format_period(*period)),
        }
    }
}

/// Five fields (minute first) or six (second first), as the config documents;
/// no year field.
fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// A fixed-time job (one second, minute and hour) runs once a day even when
/// its wall-clock time happens twice, at the first of the two.
fn is_second_pass_of_fixed_time(cron: &Cron, candidate: &DateTime<chrono_tz::Tz>) -> bool {
    if cron.determine_job_type() != JobType::FixedTime {
        return false;
    }
    matches!(
        candidate.timezone().from_local_datetime(&candidate.naive_local()),
        LocalResult::Ambiguous(first_pass, second_pass)
            if second_pass == *candidate && first_pass != *candidate
    )
}

fn truncate_to_second(time: DateTime<Utc>) -> DateTime<Utc> {
    time.with_nanosecond(0).unwrap_or(time)
}

/// Periods are whole milliseconds of at least one (`parse_every` sees to it).
fn period_millis(period: Duration) -> i64 {
    i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1)
}

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Reads `30m`, `1h30m`, `45s`, `2d`, `500ms`: numbers with units, largest
/// unit first, each unit at most once, and more than zero in total.
pub(crate) fn parse_every(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("is empty; write a period such as `30m` or `1h30m`".into());
    }
    let mut total_ms: u64 = 0;
    let mut previous_unit_ms: Option<u64> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_len == 0 {
            return Err("expected a number before each unit (d, h, m, s, ms)".into());
        }
        let (digits, after_digits) = rest.split_at(digits_len);
        let unit_len = after_digits
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after_digits.len());
        let (unit, after_unit) = after_digits.split_at(unit_len);
        let Some(&(_, unit_ms)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("`{digits}` needs a unit: d, h, m, s or ms")
            } else {
                format!("unknown unit `{unit}`; use d, h, m, s or ms")
            });
        };
        if previous_unit_ms.is_some_and(|previous| previous <= unit_ms) {
            return Err("units must go from largest to smallest, each once (`1h30m`)".into());
        }
        previous_unit_ms = Some(unit_ms);
        let amount: u64 = digits.parse().map_err(|_| "the number is too large")?;
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|ms| ms.checked_add(total_ms))
            .filter(|ms| i64::try_from(*ms).is_ok())
            .ok_or("the period is too long")?;
        rest = after_unit;
    }
    if total_ms == 0 {
        return Err("must be longer than zero".into());
    }
    Ok(Duration::from_millis(total_ms))
}

/// The inverse of `parse_every`, so `describe` reads like the config.
fn format_period(period: Duration) -> String {
    let mut remaining_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    if remaining_ms == 0 {
        return "0s".into();
    }
    let mut text = String::new();
    for (name, unit_ms) in UNITS {
        let amount = remaining_ms / unit_ms;
        if amount > 0 {
            text.push_str(&format!("{amount}{name}"));
            remaining_ms -= amount * unit_ms;
        }
    }
    text
}
