//! Fixtures shared by the tests of `config` and of the modules that take
//! a config (`scheduler`): schedule entries and config files. Test-only.

use super::{Missed, Overlap, ScheduleFields};

/// A schedule entry running every `period`, 3 turns, with every other
/// field at its plainest (UTC, no jitter, skip overlaps and missed slots).
pub fn every(name: &str, period: &str) -> ScheduleFields {
    ScheduleFields {
        name: name.into(),
        cron: None,
        timezone: "UTC".into(),
        every: Some(period.into()),
        turns: 3,
        scenario: None,
        overlap: Overlap::Skip,
        jitter_ms: 0,
        missed: Missed::Skip,
        enabled: true,
        max_tokens_per_day: 0,
    }
}

/// A schedule entry on the cron `expression` in `timezone`, otherwise as
/// [`every`].
pub fn cron(name: &str, expression: &str, timezone: &str) -> ScheduleFields {
    ScheduleFields {
        cron: Some(expression.into()),
        every: None,
        timezone: timezone.into(),
        ..every(name, "1s")
    }
}

/// A config file holding `contents`, removed when dropped.
pub fn config_file(contents: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(contents.as_bytes()).expect("write");
    file
}
