//! `[[schedule]]` entries as the config loads them: every bad entry named by its key.

use super::*;

#[test]
fn a_bad_trigger_names_its_key_and_says_why() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[schedule]]\nname = \"nightly\"\ncron = \"61 * * * *\"\n",
            "schedule[0].cron",
            "`61 * * * *`: ",
        ),
        (
            "[[schedule]]\nname = \"a\"\nevery = \"1h\"\n[[schedule]]\nname = \"b\"\nevery = \"10x\"\n",
            "schedule[1].every",
            "`10x`: unknown unit `x`; use d, h, m, s or ms",
        ),
        (
            "[[schedule]]\nname = \"nightly\"\ncron = \"0 2 * * *\"\ntimezone = \"Europe/Atlantis\"\n",
            "schedule[0].timezone",
            "`Europe/Atlantis` is not an IANA time zone such as `Europe/London` or `UTC`",
        ),
        (
            "[[schedule]]\nname = \"nightly\"\n",
            "schedule[0].cron",
            "set one of `cron` or `every`",
        ),
    ];
    for (contents, key, message) in cases {
        let file = write(contents);
        let error = load(Some(file.path()), Vec::new()).expect_err(contents);
        let ConfigError::InvalidValue {
            key: got_key,
            origin,
            message: got_message,
        } = &error
        else {
            panic!("{contents:?}: {error}");
        };
        assert_eq!(got_key, key, "{error}");
        assert_eq!(origin, &file.path().display().to_string(), "{error}");
        assert!(got_message.starts_with(message), "{error}");
        assert!(!got_message.contains("invalid trigger field"), "{error}");
    }
}

#[test]
fn a_schedule_holds_its_parsed_trigger_and_shows_it_as_written() {
    let file = write("[[schedule]]\nname = \"half\"\nevery = \"90m\"\n");
    let config = load(Some(file.path()), Vec::new()).expect("valid");
    assert_eq!(config.schedule[0].trigger().describe(), "every 1h30m");
    assert!(
        config.redacted_toml().contains("every = \"90m\""),
        "{}",
        config.redacted_toml()
    );
}

#[test]
fn a_cron_number_out_of_range_names_its_field_and_the_range() {
    // (expression, the message after the expression)
    let cases = [
        ("60 * * * *", "field 1 (minute) is 60, must be 0-59"),
        ("0 25 * * *", "field 2 (hour) is 25, must be 0-23"),
        ("0 2 0 * *", "field 3 (day of month) is 0, must be 1-31"),
        ("0 2 32 * *", "field 3 (day of month) is 32, must be 1-31"),
        ("0 2 * 13 *", "field 4 (month) is 13, must be 1-12"),
        ("0 2 * 0 *", "field 4 (month) is 0, must be 1-12"),
        ("0 2 * * 8", "field 5 (day of week) is 8, must be 0-7"),
        ("0 2 * * 1-9", "field 5 (day of week) is 9, must be 0-7"),
        ("0 0,75 * * *", "field 2 (hour) is 75, must be 0-23"),
        ("60 0 2 * * *", "field 1 (second) is 60, must be 0-59"),
        ("0 60 2 * * *", "field 2 (minute) is 60, must be 0-59"),
        ("0 0 24 * * *", "field 3 (hour) is 24, must be 0-23"),
        ("0 0 2 * * 8", "field 6 (day of week) is 8, must be 0-7"),
        ("0 30-61/5 * * *", "field 2 (hour) is 30, must be 0-23"),
    ];
    for (expression, why) in cases {
        let file = write(&format!(
            "[[schedule]]\nname = \"s\"\ncron = \"{expression}\"\n"
        ));
        let error = load(Some(file.path()), Vec::new()).expect_err(expression);
        let ConfigError::InvalidValue { key, message, .. } = &error else {
            panic!("{expression}: {error}");
        };
        assert_eq!(key, "schedule[0].cron", "{error}");
        assert_eq!(message, &format!("`{expression}`: {why}"), "{error}");
    }
    // A number in range with something else wrong keeps the parser's word.
    let file = write("[[schedule]]\nname = \"s\"\ncron = \"0 2 * *\"\n");
    let error = load(Some(file.path()), Vec::new())
        .expect_err("four fields")
        .to_string();
    assert!(
        error.contains("schedule[0].cron") && !error.contains("must be"),
        "{error}"
    );
}

#[test]
fn every_bad_schedule_is_reported_in_one_load() {
    let file = write(
        "[[schedule]]\nname = \"good\"\nevery = \"1h\"\n\
         [[schedule]]\nname = \"late\"\ncron = \"0 25 * * *\"\n\
         [[schedule]]\nname = \"odd\"\nevery = \"10x\"\n\
         [[schedule]]\nname = \"good\"\nevery = \"2h\"\nturns = 0\n\
         [[schedule]]\nname = \"typo\"\nevry = \"1h\"\n",
    );
    let error = load(Some(file.path()), Vec::new())
        .expect_err("four bad entries")
        .to_string();
    assert!(error.starts_with("5 problems in the config:"), "{error}");
    for expected in [
        "key `schedule[1].cron`",
        "field 2 (hour) is 25, must be 0-23",
        "key `schedule[2].every`",
        "key `schedule[3].name`",
        "`good` is used by another schedule",
        "key `schedule[3].turns`",
        "unknown key `schedule[4].evry`",
    ] {
        assert!(
            error.contains(expected),
            "`{expected}` missing from: {error}"
        );
    }
    assert!(!error.contains("schedule[0]"), "{error}");
    // Bad schedules are reported beside the other sections' problems.
    let file = write(
        "[heist]\nturns = 0\n[[schedule]]\nname = \"a\"\ncron = \"0 25 * * *\"\n\
         [[schedule]]\nname = \"b\"\ncron = \"61 * * * *\"\n",
    );
    let error = load(Some(file.path()), Vec::new())
        .expect_err("three problems")
        .to_string();
    assert!(error.starts_with("3 problems in the config:"), "{error}");
    for key in ["heist.turns", "schedule[0].cron", "schedule[1].cron"] {
        assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
    }
    // Beside a file's type errors too.
    let file =
        write("[heist]\nturns = \"many\"\n[[schedule]]\nname = \"a\"\ncron = \"0 25 * * *\"\n");
    let error = load(Some(file.path()), Vec::new())
        .expect_err("two problems")
        .to_string();
    assert!(error.starts_with("2 problems in the config:"), "{error}");
    assert!(error.contains("schedule[0].cron"), "{error}");
}
