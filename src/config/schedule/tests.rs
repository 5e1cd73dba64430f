//! Tests of trigger parsing: each bad trigger names its field, and a good
//! one describes itself the way the config wrote it.

use super::*;
use crate::config::test_kit::{cron, every};

#[test]
fn parse_rejects_bad_triggers_naming_the_field() {
    let both = ScheduleFields {
        cron: Some("* * * * *".into()),
        ..every("both", "10s")
    };
    let neither = ScheduleFields {
        every: None,
        ..every("neither", "10s")
    };
    let cases: Vec<(ScheduleFields, &str, &str)> = vec![
        (both, "cron", "not both"),
        (neither, "cron", "set one of"),
        (cron("c", "61 * * * *", "UTC"), "cron", "`61 * * * *`"),
        (cron("c", "* * *", "UTC"), "cron", "Invalid pattern"),
        (
            cron("c", "0 0 0 * * * 2030", "UTC"),
            "cron",
            "`0 0 0 * * * 2030`",
        ),
        (cron("c", "", "UTC"), "cron", "empty"),
        (
            cron("c", "0 2 * * *", "Europe/Atlantis"),
            "timezone",
            "Europe/Atlantis",
        ),
        (cron("c", "0 2 * * *", "BST+1"), "timezone", "not an IANA"),
        (every("e", ""), "every", "is empty"),
        (every("e", "0s"), "every", "longer than zero"),
        (every("e", "0h0m"), "every", "longer than zero"),
        (every("e", "10"), "every", "needs a unit"),
        (every("e", "10x"), "every", "unknown unit `x`"),
        (every("e", "1.5h"), "every", "unknown unit `.`"),
        (every("e", " 10s"), "every", "expected a number"),
        (every("e", "-10s"), "every", "expected a number"),
        (every("e", "30m1h"), "every", "largest to smallest"),
        (every("e", "1m1m"), "every", "largest to smallest"),
        (every("e", "99999999999999999999s"), "every", "too large"),
        (every("e", "999999999999999d"), "every", "too long"),
    ];
    for (schedule, field, message) in cases {
        let label = format!("{:?} / {:?}", schedule.cron, schedule.every);
        let error =
            ScheduleConfig::try_from(schedule).expect_err(&format!("{label} should be rejected"));
        assert_eq!(error.field, field, "{label}: {}", error.message);
        assert!(
            error.message.contains(message),
            "{label}: `{}` should mention `{message}`",
            error.message
        );
    }
}

#[test]
fn parse_accepts_good_triggers_and_describe_reads_like_the_config() {
    let cases = [
        (every("e", "30m"), "every 30m"),
        (every("e", "1h30m"), "every 1h30m"),
        (every("e", "45s"), "every 45s"),
        (every("e", "2d"), "every 2d"),
        (every("e", "500ms"), "every 500ms"),
        (every("e", "90m"), "every 1h30m"),
        (
            cron("c", "0 2 * * *", "Europe/London"),
            "cron \"0 2 * * *\" Europe/London",
        ),
        (
            cron("c", "*/5 * * * * *", "UTC"),
            "cron \"*/5 * * * * *\" UTC",
        ),
    ];
    for (fields, described) in cases {
        let schedule = ScheduleConfig::try_from(fields.clone()).expect("a valid trigger");
        assert_eq!(schedule.trigger().describe(), described);
        assert_eq!(
            ScheduleFields::from(schedule),
            fields,
            "written back as it was written"
        );
    }
}
