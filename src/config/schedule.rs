//! The `[[schedule]]` entries: heists the daemon starts on its own. Each
//! entry's trigger (a cron expression in an IANA time zone, or a fixed
//! period aligned to the Unix epoch) is parsed once, as the config loads,
//! so a [`ScheduleConfig`] always holds a [`Trigger`] that works and a bad
//! one is a config error naming its key (`schedule[2].cron`); a cron number
//! out of range names its field and the field's range, which the cron
//! parser does not. Every entry is checked, so one load reports every bad
//! entry.
//!
//! This is only configuration: `scheduler` works out when the slots fall.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

/// One `[[schedule]]` entry, its trigger parsed. It is read as
/// [`ScheduleFields`] (see `config::load`, which parses each entry's trigger
/// after the rest of the config) and written as them, so `config check`
/// shows the trigger as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "ScheduleFields")]
pub struct ScheduleConfig {
    /// Identifies the schedule; with a scheduled time it identifies a run.
    pub name: String,
    pub turns: u32,
    /// A scenario directory for this schedule's heists; default the config's.
    pub scenario: Option<PathBuf>,
    pub overlap: Overlap,
    /// A random delay up to this before each run starts.
    pub jitter_ms: u64,
    /// After downtime: `skip` missed slots, or `run_once` for all of them.
    pub missed: Missed,
    pub enabled: bool,
    /// Tokens this schedule's runs may use per UTC day; 0: no limit.
    pub max_tokens_per_day: u64,
    /// Private, with the trigger as written beside it, so the two cannot
    /// disagree.
    trigger: Trigger,
    written: WrittenTrigger,
}

/// `[[schedule]]`: a heist the daemon starts on its own, on a cron
/// expression in a time zone or every fixed period.
///
/// This is the entry as the file spells it, before its trigger is parsed;
/// [`ScheduleConfig::try_from`] parses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFields {
    /// Identifies the schedule, unique among them; with a slot's time it
    /// identifies a run, so a slot is run once even across restarts.
    pub name: String,
    /// A cron expression: five fields (minute, hour, day of month, month,
    /// day of week) or six (a second first); exclusive with `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone whose wall clock `cron` follows, e.g.
    /// `Europe/London`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// A fixed period such as `30m`, `1h30m`, `45s`, `2d` or `500ms`,
    /// aligned to the Unix epoch; exclusive with `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Turns in each of this schedule's heists, 1 to 1000.
    #[serde(default = "default_schedule_turns")]
    pub turns: u32,
    /// A scenario directory for this schedule's heists; unset: the one
    /// `heist.scenario` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<PathBuf>,
    /// When the previous run of this schedule is still going at a slot:
    /// `skip` the slot, `queue` it to start when that run ends (one slot
    /// waits at most; a slot finding one waiting is skipped), or `allow`
    /// both to run.
    #[serde(default)]
    pub overlap: Overlap,
    /// Each run starts after a random delay of up to this, so schedules
    /// on the same slot do not all start at once.
    #[serde(default)]
    pub jitter_ms: u64,
    /// After downtime: `skip` the slots missed, or `run_once`: one run, at
    /// start, for the latest of them.
    #[serde(default)]
    pub missed: Missed,
    /// `false` keeps the schedule in the file (and the status API) but
    /// starts nothing.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Tokens this schedule's runs may use per UTC day (the sessions it
    /// started that day, counted from the store, so on PostgreSQL across
    /// the cluster); 0: no limit. Once reached, its slots are skipped
    /// (`heistd_schedule_runs_total{outcome="skipped_budget"}`) until the
    /// next UTC day, and its running sessions end `failed` after their
    /// current turn.
    #[serde(default)]
    pub max_tokens_per_day: u64,
}

/// When the previous run of the same schedule is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
    Allow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    #[default]
    Skip,
    RunOnce,
}

/// What makes a schedule's slots come due.
// A parsed cron pattern is a few hundred bytes and a period sixteen; there
// is one trigger per schedule, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Slots are the cron expression's matches on the wall clock of `timezone`.
    Cron { cron: Cron, timezone: chrono_tz::Tz },
    /// Slots are the multiples of the period since the Unix epoch, so a slot
    /// time is the same before and after a restart and, with the schedule's
    /// name, identifies a run.
    Every(Duration),
}

/// Why a trigger was refused: the field at fault (`cron`, `timezone` or
/// `every`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerError {
    pub field: &'static str,
    pub message: String,
}

impl ScheduleConfig {
    /// When this schedule's slots fall.
    pub fn trigger(&self) -> &Trigger {
        &self.trigger
    }
}

impl TryFrom<ScheduleFields> for ScheduleConfig {
    type Error = TriggerError;

    fn try_from(fields: ScheduleFields) -> Result<Self, TriggerError> {
        let trigger = Trigger::parse(&fields)?;
        Ok(Self {
            trigger,
            written: WrittenTrigger {
                cron: fields.cron,
                timezone: fields.timezone,
                every: fields.every,
            },
            name: fields.name,
            turns: fields.turns,
            scenario: fields.scenario,
            overlap: fields.overlap,
            jitter_ms: fields.jitter_ms,
            missed: fields.missed,
            enabled: fields.enabled,
            max_tokens_per_day: fields.max_tokens_per_day,
        })
    }
}

impl From<ScheduleConfig> for ScheduleFields {
    fn from(schedule: ScheduleConfig) -> Self {
        Self {
            name: schedule.name,
            cron: schedule.written.cron,
            timezone: schedule.written.timezone,
            every: schedule.written.every,
            turns: schedule.turns,
            scenario: schedule.scenario,
            overlap: schedule.overlap,
            jitter_ms: schedule.jitter_ms,
            missed: schedule.missed,
            enabled: schedule.enabled,
            max_tokens_per_day: schedule.max_tokens_per_day,
        }
    }
}

impl Trigger {
    /// Reads the trigger of a schedule.
    pub fn parse(schedule: &ScheduleFields) -> Result<Self, TriggerError> {
        let fail = |field: &'static str, message: String| Err(TriggerError { field, message });
        match (&schedule.cron, &schedule.every) {
            (Some(_), Some(_)) => fail("cron", "set either `cron` or `every`, not both".into()),
            (None, None) => fail("cron", "set one of `cron` or `every`".into()),
            (Some(expression), None) => {
                let Ok(timezone) = chrono_tz::Tz::from_str(&schedule.timezone) else {
                    return fail(
                        "timezone",
                        format!(
                            "`{}` is not an IANA time zone such as `Europe/London` or `UTC`",
                            schedule.timezone
                        ),
                    );
                };
                match cron_parser().parse(expression) {
                    Ok(cron) => Ok(Trigger::Cron { cron, timezone }),
                    Err(error) => {
                        let why = out_of_range_field(expression).unwrap_or(error.to_string());
                        fail("cron", format!("`{expression}`: {why}"))
                    }
                }
            }
            (None, Some(every)) => match parse_every(every) {
                Ok(period) => Ok(Trigger::Every(period)),
                Err(why) => fail("every", format!("`{every}`: {why}")),
            },
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

impl std::fmt::Display for TriggerError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.field, self.message)
    }
}

/// Checks entry `index` of the `[[schedule]]` list: its name (not empty,
/// not one of `earlier_names`), its turns and its trigger. Returns the
/// parsed entry, or every problem as (key, why), the key naming the entry
/// by index (`schedule[2].name`).
pub(super) fn check_entry(
    index: usize,
    fields: ScheduleFields,
    earlier_names: &[String],
) -> Result<ScheduleConfig, Vec<(String, String)>> {
    let key = |field: &str| format!("schedule[{index}].{field}");
    let mut problems = Vec::new();
    if fields.name.trim().is_empty() {
        problems.push((key("name"), "must not be empty".into()));
    } else if earlier_names.contains(&fields.name) {
        problems.push((
            key("name"),
            format!("`{}` is used by another schedule", fields.name),
        ));
    }
    if !(1..=super::MAX_TURNS).contains(&fields.turns) {
        problems.push((
            key("turns"),
            format!("must be from 1 to {}", super::MAX_TURNS),
        ));
    }
    match ScheduleConfig::try_from(fields) {
        Ok(schedule) if problems.is_empty() => Ok(schedule),
        Ok(_) => Err(problems),
        Err(error) => {
            problems.push((key(error.field), error.message));
            Err(problems)
        }
    }
}

/// The trigger's fields as the file wrote them (`90m` stays `90m`).
#[derive(Debug, Clone, PartialEq)]
struct WrittenTrigger {
    cron: Option<String>,
    timezone: String,
    every: Option<String>,
}

/// Five fields (minute first) or six (second first), as the config documents;
/// no year field.
fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Each cron field's name and range, in the order written; a five-field
/// expression starts at the minute.
const CRON_FIELDS: [(&str, u64, u64); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// The first number of `expression` outside its field's range, as "field 2
/// (hour) is 25, must be 0-23"; none when every number is in range (the
/// parser's own message then says what is wrong). Only a number's value
/// is checked: a step (`/5`) and an nth weekday (`#2`) are left to the
/// parser.
fn out_of_range_field(expression: &str) -> Option<String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let named = match fields.len() {
        5 => &CRON_FIELDS[1..],
        6 => &CRON_FIELDS[..],
        _ => return None,
    };
    for (position, (text, (name, low, high))) in fields.iter().zip(named).enumerate() {
        for part in text.split(',') {
            let values = part.split(['/', '#']).next().unwrap_or_default();
            let numbers = values
                .split(|c: char| !c.is_ascii_digit())
                .filter(|number| !number.is_empty());
            for number in numbers {
                if !number
                    .parse::<u64>()
                    .is_ok_and(|value| (*low..=*high).contains(&value))
                {
                    return Some(format!(
                        "field {} ({name}) is {number}, must be {low}-{high}",
                        position + 1
                    ));
                }
            }
        }
    }
    None
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
fn parse_every(text: &str) -> Result<Duration, String> {
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

fn default_timezone() -> String {
    "UTC".into()
}

fn default_schedule_turns() -> u32 {
    12
}

fn default_enabled() -> bool {
    true
}

#[cfg(test)]
mod tests;
