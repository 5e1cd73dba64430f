//! When a schedule's slots fall: the matches of a cron expression on the
//! wall clock of its IANA time zone, or the multiples of a fixed period since
//! the Unix epoch. The [`Trigger`] itself is parsed by `config` at load;
//! this module only evaluates it.

use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone as _, Timelike as _, Utc};
use croner::{Cron, JobType};

use crate::config::Trigger;

/// The slots of a parsed [`Trigger`].
pub trait Slots {
    /// The first slot strictly after `after`, or `None` when there is none
    /// (a cron expression that never matches again).
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>>;

    /// The last slot at or before `at`, for catching up after downtime.
    fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>>;
}

impl Slots for Trigger {
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
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

    fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
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

/// Periods are whole milliseconds of at least one (config's parse sees to it).
fn period_millis(period: Duration) -> i64 {
    i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1)
}
