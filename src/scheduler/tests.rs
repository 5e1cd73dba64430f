//! The scheduler under paused tokio time: slots, overlap policies, missed
//! runs, reloads, cron in time zones across daylight-saving changes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::*;
use crate::config::test_kit::{cron, every};
use crate::config::{Missed, Overlap, ScheduleConfig, ScheduleFields, Trigger};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a test time")
        .with_timezone(&Utc)
}

fn trigger(schedule: &ScheduleFields) -> Trigger {
    Trigger::parse(schedule).expect("a valid trigger")
}

/// The slots `trigger` gives from `start` up to `end`, following `next_after`.
fn slots_between(trigger: &Trigger, start: &str, end: &str) -> Vec<String> {
    let end = at(end);
    let mut slots = Vec::new();
    let mut cursor = at(start);
    while let Some(next) = trigger.next_after(cursor).filter(|next| *next <= end) {
        assert!(next > cursor, "next_after must move forward");
        slots.push(next.to_rfc3339());
        cursor = next;
    }
    slots
}

/// Records each launch and keeps each run going for `run_length`.
struct RecordingLauncher {
    launches: Mutex<Vec<(String, DateTime<Utc>)>>,
    run_length: Duration,
}

impl RecordingLauncher {
    fn new(run_length: Duration) -> Arc<Self> {
        Arc::new(Self {
            launches: Mutex::new(Vec::new()),
            run_length,
        })
    }

    fn launches(&self) -> Vec<(String, DateTime<Utc>)> {
        self.launches.lock().clone()
    }

    fn slots(&self) -> Vec<String> {
        self.launches()
            .into_iter()
            .map(|(_, slot)| slot.to_rfc3339())
            .collect()
    }
}

impl Launcher for RecordingLauncher {
    fn launch(
        &self,
        schedule: &ScheduleConfig,
        scheduled_time: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.launches
            .lock()
            .push((schedule.name.clone(), scheduled_time));
        Box::pin(tokio::time::sleep(self.run_length))
    }
}

const ORIGIN: &str = "2026-01-01T00:00:05+00:00";

/// The schedules as `config` hands them over: triggers parsed.
fn parsed(schedules: Vec<ScheduleFields>) -> Vec<ScheduleConfig> {
    schedules
        .into_iter()
        .map(|fields| ScheduleConfig::try_from(fields).expect("a valid trigger"))
        .collect()
}

fn start(
    schedules: Vec<ScheduleFields>,
    last_slots: HashMap<String, DateTime<Utc>>,
    launcher: &Arc<RecordingLauncher>,
) -> Scheduler {
    let launcher: Arc<dyn Launcher> = launcher.clone();
    Scheduler::spawn(
        parsed(schedules),
        last_slots,
        Clock::new(at(ORIGIN)),
        launcher,
    )
}

async fn advance(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

#[test]
fn every_slots_are_aligned_to_the_epoch_and_strictly_after() {
    let every_10s = trigger(&every("e", "10s"));
    assert_eq!(
        every_10s.next_after(at("2026-01-01T00:00:05Z")),
        Some(at("2026-01-01T00:00:10Z"))
    );
    assert_eq!(
        every_10s.next_after(at("2026-01-01T00:00:10Z")),
        Some(at("2026-01-01T00:00:20Z"))
    );
    assert_eq!(
        every_10s.next_after(at("2026-01-01T00:00:09.999999Z")),
        Some(at("2026-01-01T00:00:10Z"))
    );
    let every_90m = trigger(&every("e", "1h30m"));
    assert_eq!(
        every_90m.next_after(at("2026-01-01T00:00:00Z")),
        Some(at("2026-01-01T01:30:00Z"))
    );
}

#[test]
fn cron_next_after_is_strictly_after_even_with_fractions_of_a_second() {
    let every_5s = trigger(&cron("c", "*/5 * * * * *", "UTC"));
    assert_eq!(
        every_5s.next_after(at("2026-01-01T00:00:05Z")),
        Some(at("2026-01-01T00:00:10Z"))
    );
    assert_eq!(
        every_5s.next_after(at("2026-01-01T00:00:05.5Z")),
        Some(at("2026-01-01T00:00:10Z"))
    );
    assert_eq!(
        every_5s.next_after(at("2026-01-01T00:00:04.5Z")),
        Some(at("2026-01-01T00:00:05Z"))
    );
}

// Europe/London: on 2026-03-29 01:00 GMT jumps to 02:00 BST, so 01:30 does
// not exist; on 2026-10-25 02:00 BST falls back to 01:00 GMT, so 01:30
// happens twice. croner 4.0.3 documents (README "DST handling") that a
// fixed-time job in the gap runs at the first instant after it, and in the
// repeated hour only once, at the first pass. These tests check it.

#[test]
fn daily_job_in_the_spring_forward_gap_runs_once_that_day() {
    let daily = trigger(&cron("c", "30 1 * * *", "Europe/London"));
    assert_eq!(
        slots_between(&daily, "2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"),
        [
            "2026-03-27T01:30:00+00:00",
            "2026-03-28T01:30:00+00:00",
            // 02:00 BST, the first instant after the gap.
            "2026-03-29T01:00:00+00:00",
            // 01:30 BST.
            "2026-03-30T00:30:00+00:00",
        ]
    );
}

#[test]
fn daily_job_in_the_fall_back_hour_runs_once_at_the_first_pass() {
    let daily = trigger(&cron("c", "30 1 * * *", "Europe/London"));
    assert_eq!(
        slots_between(&daily, "2026-10-23T00:00:00Z", "2026-10-27T00:00:00Z"),
        [
            "2026-10-23T00:30:00+00:00",
            "2026-10-24T00:30:00+00:00",
            // 01:30 BST; not again at 01:30 GMT an hour later.
            "2026-10-25T00:30:00+00:00",
            "2026-10-26T01:30:00+00:00",
        ]
    );
    // The scheduler asks from "now", which may be anywhere in the repeated
    // hour after the first pass ran: never the second pass.
    for now in [
        "2026-10-25T00:30:00Z",
        "2026-10-25T00:30:00.250Z",
        "2026-10-25T00:45:00Z",
        "2026-10-25T01:00:00Z",
        "2026-10-25T01:29:59Z",
        "2026-10-25T01:30:00Z",
    ] {
        assert_eq!(
            daily.next_after(at(now)),
            Some(at("2026-10-26T01:30:00Z")),
            "from {now}"
        );
    }
}

#[test]
fn jobs_next_to_the_transitions_are_neither_doubled_nor_skipped() {
    // croner before 4.0.3 ran a midnight job at 00:00 and again at 02:00 on
    // the spring-forward day (croner-rust#67).
    let midnight = trigger(&cron("c", "0 0 * * *", "Europe/London"));
    assert_eq!(
        slots_between(&midnight, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
        ["2026-03-29T00:00:00+00:00", "2026-03-29T23:00:00+00:00"]
    );
    let one_am = trigger(&cron("c", "0 1 * * *", "Europe/London"));
    assert_eq!(
        slots_between(&one_am, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
        ["2026-03-29T01:00:00+00:00", "2026-03-30T00:00:00+00:00"]
    );
    assert_eq!(
        slots_between(&one_am, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
        ["2026-10-25T00:00:00+00:00", "2026-10-26T01:00:00+00:00"]
    );
    // New York: the gap is 02:00-03:00 on 2026-03-08, the repeat 01:00-02:00
    // on 2026-11-01.
    let new_york_gap = trigger(&cron("c", "30 2 * * *", "America/New_York"));
    assert_eq!(
        slots_between(
            &new_york_gap,
            "2026-03-07T12:00:00Z",
            "2026-03-09T12:00:00Z"
        ),
        ["2026-03-08T07:00:00+00:00", "2026-03-09T06:30:00+00:00"]
    );
    let new_york_repeat = trigger(&cron("c", "30 1 * * *", "America/New_York"));
    assert_eq!(
        slots_between(
            &new_york_repeat,
            "2026-10-31T12:00:00Z",
            "2026-11-02T12:00:00Z"
        ),
        ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
    );
}

#[test]
fn interval_jobs_keep_real_time_spacing_across_transitions() {
    let half_hourly = trigger(&cron("c", "*/30 * * * *", "Europe/London"));
    for (start, end) in [
        ("2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z"),
        ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
    ] {
        let slots: Vec<DateTime<Utc>> = slots_between(&half_hourly, start, end)
            .iter()
            .map(|slot| at(slot))
            .collect();
        assert_eq!(slots.len(), 8, "from {start}: {slots:?}");
        for pair in slots.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                chrono::TimeDelta::minutes(30),
                "{slots:?}"
            );
        }
    }
}

#[test]
fn missed_slot_follows_the_policy() {
    let every_10s = trigger(&every("e", "10s"));
    let last = Some(at("2026-01-01T00:00:10Z"));
    let now = at("2026-01-01T00:01:05Z");
    assert_eq!(
        missed_slot(&every_10s, last, now, Missed::RunOnce),
        Some(at("2026-01-01T00:01:00Z"))
    );
    assert_eq!(missed_slot(&every_10s, last, now, Missed::Skip), None);
    assert_eq!(missed_slot(&every_10s, None, now, Missed::RunOnce), None);
    // Nothing due since the last slot.
    assert_eq!(
        missed_slot(
            &every_10s,
            Some(at("2026-01-01T00:01:00Z")),
            now,
            Missed::RunOnce
        ),
        None
    );
    // A slot exactly at `now` counts.
    assert_eq!(
        missed_slot(
            &every_10s,
            last,
            at("2026-01-01T00:00:20Z"),
            Missed::RunOnce
        ),
        Some(at("2026-01-01T00:00:20Z"))
    );
    let daily = trigger(&cron("c", "30 1 * * *", "Europe/London"));
    assert_eq!(
        missed_slot(
            &daily,
            Some(at("2026-10-20T00:30:00Z")),
            at("2026-10-25T01:45:00Z"),
            Missed::RunOnce
        ),
        Some(at("2026-10-25T00:30:00Z")),
        "the first pass of the repeated hour is the day's slot"
    );
    assert_eq!(
        missed_slot(
            &daily,
            Some(at("2026-10-25T00:30:00Z")),
            at("2026-10-25T01:45:00Z"),
            Missed::RunOnce
        ),
        None,
        "the day's slot already ran"
    );
}

#[tokio::test(start_paused = true)]
async fn clock_follows_paused_tokio_time() {
    let clock = Clock::new(at(ORIGIN));
    assert_eq!(clock.now(), at(ORIGIN));
    clock.sleep_until(at("2026-01-01T01:00:05Z")).await;
    assert_eq!(clock.now(), at("2026-01-01T01:00:05Z"));
    // In the past: at once.
    clock.sleep_until(at(ORIGIN)).await;
    assert_eq!(clock.now(), at("2026-01-01T01:00:05Z"));
}

#[tokio::test(start_paused = true)]
async fn every_schedule_fires_once_per_period() {
    let launcher = RecordingLauncher::new(Duration::from_secs(1));
    let scheduler = start(vec![every("tick", "10s")], HashMap::new(), &launcher);
    advance(60).await;
    assert_eq!(
        launcher.launches(),
        (1..=6)
            .map(|n| (
                "tick".to_string(),
                at("2026-01-01T00:00:00Z") + Duration::from_secs(n * 10)
            ))
            .collect::<Vec<_>>()
    );
    scheduler.shutdown().await;
    advance(60).await;
    assert_eq!(launcher.launches().len(), 6, "stopped at shutdown");
}

#[tokio::test(start_paused = true)]
async fn overlap_skip_skips_slots_while_a_run_is_going() {
    let launcher = RecordingLauncher::new(Duration::from_secs(25));
    let scheduler = start(vec![every("slow", "10s")], HashMap::new(), &launcher);
    advance(60).await;
    // Runs at :10 (until :35) and :40 (until :65); :20, :30, :50, :60 skipped.
    assert_eq!(
        launcher.slots(),
        ["2026-01-01T00:00:10+00:00", "2026-01-01T00:00:40+00:00"]
    );
    assert_eq!(scheduler.skipped_slots("slow"), 4);
}

#[tokio::test(start_paused = true)]
async fn overlap_queue_runs_back_to_back_with_at_most_one_waiting() {
    let launcher = RecordingLauncher::new(Duration::from_secs(25));
    let schedule = ScheduleFields {
        overlap: Overlap::Queue,
        ..every("queued", "10s")
    };
    let scheduler = start(vec![schedule], HashMap::new(), &launcher);
    advance(57).await;
    // At 00:01:02: :10 runs to :35; :20 queues and starts at :35 (to :60); :30 finds the
    // queue full and is skipped; :40 queues and starts at :60; :50 finds the
    // queue full; :60 queues behind :40.
    assert_eq!(
        launcher.slots(),
        [
            "2026-01-01T00:00:10+00:00",
            "2026-01-01T00:00:20+00:00",
            "2026-01-01T00:00:40+00:00",
        ]
    );
    assert_eq!(scheduler.skipped_slots("queued"), 2);
}

#[tokio::test(start_paused = true)]
async fn overlap_allow_launches_every_slot() {
    let launcher = RecordingLauncher::new(Duration::from_secs(25));
    let schedule = ScheduleFields {
        overlap: Overlap::Allow,
        ..every("eager", "10s")
    };
    let scheduler = start(vec![schedule], HashMap::new(), &launcher);
    advance(60).await;
    assert_eq!(launcher.slots().len(), 6);
    assert_eq!(scheduler.skipped_slots("eager"), 0);
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_the_start_but_not_the_slot() {
    let launcher = RecordingLauncher::new(Duration::from_secs(1));
    let schedule = ScheduleFields {
        jitter_ms: 3_000,
        ..every("jittery", "10s")
    };
    let _scheduler = start(vec![schedule], HashMap::new(), &launcher);
    advance(4).await; // 00:00:09: nothing due yet
    assert!(launcher.slots().is_empty());
    // 00:00:14: the :10 slot has started, whatever its jitter (at most
    // 3 s). Checked at exactly 00:00:13, a jitter at the very top of the
    // range was once seen not to have fired yet: a rare, random failure.
    advance(5).await;
    assert_eq!(launcher.slots(), ["2026-01-01T00:00:10+00:00"]);
}

#[tokio::test(start_paused = true)]
async fn missed_run_once_launches_one_slot_at_start_and_skip_none() {
    let last_slots = HashMap::from([
        ("catch_up".to_string(), at("2025-12-31T23:00:00Z")),
        ("let_go".to_string(), at("2025-12-31T23:00:00Z")),
    ]);
    let catch_up = ScheduleFields {
        missed: Missed::RunOnce,
        ..every("catch_up", "1m")
    };
    let let_go = every("let_go", "1m");
    let launcher = RecordingLauncher::new(Duration::from_secs(1));
    let scheduler = start(vec![catch_up, let_go], last_slots, &launcher);
    assert_eq!(
        scheduler.next_runs()[0].3,
        Some(at("2026-01-01T00:00:00Z")),
        "due now"
    );
    tokio::task::yield_now().await;
    advance(1).await;
    assert_eq!(
        launcher.launches(),
        [("catch_up".to_string(), at("2026-01-01T00:00:00Z"))]
    );
    assert_eq!(scheduler.next_runs()[0].3, Some(at("2026-01-01T00:01:00Z")));
    assert_eq!(scheduler.next_runs()[1].3, Some(at("2026-01-01T00:01:00Z")));
}

#[tokio::test(start_paused = true)]
async fn a_slot_that_already_ran_does_not_run_again() {
    // The store says the :10 slot ran (before a restart at :05 on a clock
    // that was behind, say): the next slot is :20.
    let last_slots = HashMap::from([("tick".to_string(), at("2026-01-01T00:00:10Z"))]);
    let launcher = RecordingLauncher::new(Duration::from_secs(1));
    let _scheduler = start(vec![every("tick", "10s")], last_slots, &launcher);
    advance(20).await;
    assert_eq!(launcher.slots(), ["2026-01-01T00:00:20+00:00"]);
}

#[tokio::test(start_paused = true)]
async fn replace_stops_the_old_tasks_and_keeps_last_slots_and_runs() {
    let launcher = RecordingLauncher::new(Duration::from_secs(15));
    let mut scheduler = start(vec![every("tick", "10s")], HashMap::new(), &launcher);
    advance(10).await; // 00:00:15: the :10 run is going until :25
    assert_eq!(launcher.slots(), ["2026-01-01T00:00:10+00:00"]);

    let slower = ScheduleFields {
        missed: Missed::RunOnce,
        ..every("tick", "20s")
    };
    scheduler.replace(parsed(vec![slower, every("other", "1h")]));
    let next_runs = scheduler.next_runs();
    assert_eq!(
        next_runs[0],
        (
            "tick".to_string(),
            "every 20s".to_string(),
            true,
            Some(at("2026-01-01T00:00:20Z"))
        )
    );
    assert_eq!(next_runs[1].3, Some(at("2026-01-01T01:00:00Z")));
    advance(50).await; // to 00:01:05
                       // :10 was not run again (run_once found nothing missed); :20 was skipped
                       // because the :10 run, which the reload did not stop, was still going;
                       // then the new 20 s period.
    assert_eq!(
        launcher.slots(),
        [
            "2026-01-01T00:00:10+00:00",
            "2026-01-01T00:00:40+00:00",
            "2026-01-01T00:01:00+00:00",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn disabled_schedules_are_listed_but_never_run() {
    let launcher = RecordingLauncher::new(Duration::from_secs(1));
    let disabled = ScheduleFields {
        enabled: false,
        ..every("off", "10s")
    };
    let scheduler = start(vec![disabled], HashMap::new(), &launcher);
    advance(60).await;
    assert!(launcher.slots().is_empty());
    assert_eq!(
        scheduler.next_runs(),
        [("off".to_string(), "every 10s".to_string(), false, None)]
    );
}

#[tokio::test(start_paused = true)]
async fn cron_schedule_fires_on_wall_clock_slots() {
    let launcher = RecordingLauncher::new(Duration::from_secs(1));
    let schedules = vec![
        cron("seconds", "*/5 * * * * *", "UTC"),
        cron("nightly", "0 2 * * *", "Europe/London"),
    ];
    let _scheduler = Scheduler::spawn(
        parsed(schedules),
        HashMap::new(),
        Clock::new(at("2026-07-01T00:00:02Z")),
        launcher.clone(),
    );
    advance(21).await;
    assert_eq!(
        launcher.slots(),
        [
            "2026-07-01T00:00:05+00:00",
            "2026-07-01T00:00:10+00:00",
            "2026-07-01T00:00:15+00:00",
            "2026-07-01T00:00:20+00:00",
        ]
    );
    advance(2 * 86_400).await;
    let nightly: Vec<String> = launcher
        .launches()
        .into_iter()
        .filter(|(name, _)| name == "nightly")
        .map(|(_, slot)| slot.to_rfc3339())
        .collect();
    // 02:00 BST is 01:00 UTC.
    assert_eq!(
        nightly,
        ["2026-07-01T01:00:00+00:00", "2026-07-02T01:00:00+00:00"]
    );
}
