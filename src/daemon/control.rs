//! Steering a running daemon, as operators ask through the admin API:
//! cancelling a session, and pausing, resuming, triggering and backfilling
//! a schedule. What is asked is recorded in the store first (a cancel
//! request, a paused schedule), so it holds on every node and across
//! restarts and reloads; then this node acts on what it plays. Every
//! `cluster.heartbeat_ms` [`Steering::watch_until_stopped`] reads the
//! recorded requests back and tells the sessions running here, so a cancel
//! sent to any node reaches the node that plays the session, and publishes
//! `heistd_schedule_paused`.
//!
//! It decides what a request means (which slots a backfill runs, in what
//! order); `runs` starts the runs under the session cap, the scheduler's
//! slots check the pause in `Runs::run_scheduled`, and `api` owns the
//! routes. It takes its stop signal as a parameter.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use super::runs::Runs;
use super::state::{DaemonState, StartRunError};
use crate::config::{Config, Overlap, ScheduleConfig};
use crate::metrics as names;
use crate::scheduler::Slots as _;
use crate::store::{
    timestamp, CancelOutcome, RunTrigger, SchedulePause, SessionStatus, StoreError, StoreHandle,
};

/// The longest cancel reason or pause note kept, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// The reason a cancel without one records.
pub const DEFAULT_CANCEL_REASON: &str = "cancelled by an operator";

/// Why a steering request was refused; the API maps each to its status.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("no session with id `{0}`")]
    UnknownSession(String),
    #[error("session `{session_id}` has already ended ({status})")]
    Ended { session_id: String, status: String },
    #[error("no schedule named `{0}` in the running config")]
    UnknownSchedule(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("heistd is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Start(#[from] StartRunError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cancel's answer: `cancelled` (it was queued) or `cancelling` (it
/// stops after its current turn).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CancelAnswer {
    pub session_id: String,
    pub status: &'static str,
}

/// A schedule as `GET /api/v1/schedules` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScheduleView {
    pub name: String,
    /// `cron "0 2 * * *" Europe/London` or `every 30m`.
    pub trigger: String,
    pub enabled: bool,
    pub overlap: Overlap,
    /// The slot the schedule waits for (it is skipped while paused).
    pub next_slot: Option<DateTime<Utc>>,
    /// The latest slot that has a session, on any node.
    pub last_slot: Option<String>,
    pub paused: bool,
    pub note: Option<String>,
    pub paused_by: Option<String>,
    pub paused_at: Option<String>,
}

/// What a backfill will run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackfillAnswer {
    pub schedule: String,
    /// The slots without a session, oldest first, being run now.
    pub slots: Vec<DateTime<Utc>>,
    /// Slots in the range that already ran (or are being backfilled).
    pub already_ran: usize,
}

/// The slots (schedule, slot) a backfill of this node has started and
/// not finished.
type Backfilling = Arc<Mutex<HashSet<(String, DateTime<Utc>)>>>;

/// The daemon's steering: one per daemon, reached by the API through
/// [`DaemonState::steering`].
pub struct Steering {
    /// Weak: `Runs` holds the state that holds this.
    runs: Weak<Runs>,
    store: StoreHandle,
    /// Slots a backfill of this node has not finished, so a second request
    /// for the same range does not run them again while the first runs.
    backfilling: Backfilling,
}

impl Steering {
    pub fn new(runs: &Arc<Runs>, store: StoreHandle) -> Self {
        Self {
            runs: Arc::downgrade(runs),
            store,
            backfilling: Arc::default(),
        }
    }

    fn runs(&self) -> Result<Arc<Runs>, SteerError> {
        self.runs.upgrade().ok_or(SteerError::ShuttingDown)
    }

    fn schedule(&self, name: &str) -> Result<(Arc<Config>, ScheduleConfig), SteerError> {
        let config = self.runs()?.context().config.clone();
        let schedule = config
            .schedule
            .iter()
            .find(|schedule| schedule.name == name)
            .cloned()
            .ok_or_else(|| SteerError::UnknownSchedule(name.to_string()))?;
        Ok((config, schedule))
    }

    /// Cancels a session: a queued one now, an active one after its
    /// current turn (recorded, so whichever node plays it stops it).
    pub async fn cancel(
        &self,
        session_id: &str,
        reason: Option<String>,
        requested_by: &str,
    ) -> Result<CancelAnswer, SteerError> {
        let reason = note_text(reason, "reason")?
            .filter(|reason| !reason.is_empty())
            .unwrap_or_else(|| DEFAULT_CANCEL_REASON.to_string());
        let outcome = match self
            .store
            .request_cancel(session_id, &reason, requested_by)
            .await
        {
            Err(StoreError::SessionNotFound(_)) => {
                return Err(SteerError::UnknownSession(session_id.to_string()))
            }
            outcome => outcome?,
        };
        let status = match outcome {
            CancelOutcome::Cancelled => {
                metrics::counter!(names::SESSIONS_TOTAL, "status" => SessionStatus::Cancelled.as_str())
                    .increment(1);
                "cancelled"
            }
            CancelOutcome::Requested => {
                if let Ok(runs) = self.runs() {
                    runs.cancel_running(session_id, &reason);
                }
                "cancelling"
            }
            CancelOutcome::Ended(status) => {
                return Err(SteerError::Ended {
                    session_id: session_id.to_string(),
                    status: status.as_str().to_string(),
                })
            }
        };
        tracing::warn!(%session_id, %reason, %requested_by, status, "cancel requested");
        Ok(CancelAnswer {
            session_id: session_id.to_string(),
            status,
        })
    }

    /// Every configured schedule with its slots and pause state.
    pub async fn schedules(&self, state: &DaemonState) -> Result<Vec<ScheduleView>, SteerError> {
        let config = self.runs()?.context().config.clone();
        let pauses = self.store.schedule_pauses().await?;
        let published = state.schedules();
        let mut views = Vec::with_capacity(config.schedule.len());
        for schedule in &config.schedule {
            let pause = pauses.iter().find(|pause| pause.schedule == schedule.name);
            let next_slot = published
                .iter()
                .find(|status| status.name == schedule.name)
                .and_then(|status| status.next_run);
            views.push(ScheduleView {
                name: schedule.name.clone(),
                trigger: schedule.trigger().describe(),
                enabled: schedule.enabled,
                overlap: schedule.overlap,
                next_slot,
                last_slot: self.store.last_scheduled_time(&schedule.name).await?,
                paused: pause.is_some(),
                note: pause.map(|pause| pause.note.clone()),
                paused_by: pause.map(|pause| pause.paused_by.clone()),
                paused_at: pause.map(|pause| pause.paused_at.clone()),
            });
        }
        Ok(views)
    }

    /// Pauses a schedule on every node until resumed; its slots are
    /// skipped meanwhile (a backfill can run them later).
    pub async fn pause(
        &self,
        name: &str,
        note: Option<String>,
        paused_by: &str,
    ) -> Result<SchedulePause, SteerError> {
        self.schedule(name)?;
        let pause = SchedulePause {
            schedule: name.to_string(),
            note: note_text(note, "note")?.unwrap_or_default(),
            paused_by: paused_by.to_string(),
            paused_at: timestamp(Utc::now()),
        };
        self.store.pause_schedule(pause.clone()).await?;
        publish_paused(name, true);
        tracing::warn!(schedule = %name, note = %pause.note, %paused_by, "schedule paused");
        Ok(pause)
    }

    /// Resumes a schedule: its next slot runs. `false`: it was not paused.
    pub async fn resume(&self, name: &str) -> Result<bool, SteerError> {
        self.schedule(name)?;
        let was_paused = self.store.resume_schedule(name).await?;
        publish_paused(name, false);
        tracing::warn!(schedule = %name, was_paused, "schedule resumed");
        Ok(was_paused)
    }

    /// One run of the schedule now (`trigger = "manual"`); its session id.
    pub async fn trigger(&self, name: &str) -> Result<String, SteerError> {
        let (_, schedule) = self.schedule(name)?;
        let session_id = self.runs()?.trigger_now(&schedule).await?;
        tracing::info!(schedule = %name, %session_id, "schedule triggered by an operator");
        Ok(session_id)
    }

    /// Runs the slots of `[from, to]` that did not run, oldest first, under
    /// the schedule's overlap policy (`allow`: side by side; `skip` and
    /// `queue`: one after the other), at most `daemon.max_backfill_slots`
    /// of them per request. Each slot runs once, however often it is asked
    /// for: slots with a session are left out, and the store refuses a
    /// second session for a slot.
    pub async fn backfill(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BackfillAnswer, SteerError> {
        let (config, schedule) = self.schedule(name)?;
        let runs = self.runs()?;
        let limit = config.daemon.max_backfill_slots as usize;
        let slots = slots_between(&schedule, from, to, limit)?;
        let ran: HashSet<DateTime<Utc>> = match (slots.first(), slots.last()) {
            (Some(first), Some(last)) => self
                .store
                .scheduled_slots(name, &first.to_rfc3339(), &last.to_rfc3339())
                .await?
                .iter()
                .filter_map(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|slot| slot.with_timezone(&Utc))
                .collect(),
            _ => HashSet::new(),
        };
        let to_run: Vec<DateTime<Utc>> = {
            let mut backfilling = self.backfilling.lock();
            slots
                .iter()
                .filter(|slot| !ran.contains(slot))
                .filter(|slot| backfilling.insert((name.to_string(), **slot)))
                .copied()
                .collect()
        };
        let answer = BackfillAnswer {
            schedule: name.to_string(),
            already_ran: slots.len() - to_run.len(),
            slots: to_run.clone(),
        };
        tracing::info!(schedule = %name, slots = to_run.len(), already_ran = answer.already_ran, "backfill requested");
        if !to_run.is_empty() {
            tokio::spawn(run_backfill(
                runs,
                schedule,
                to_run,
                self.backfilling.clone(),
            ));
        }
        Ok(answer)
    }

    /// After a reload: a schedule the new config no longer has keeps no
    /// pause (a schedule added later under its name starts unpaused).
    pub async fn forget_removed(&self, old: &Config, new: &Config) {
        for schedule in &old.schedule {
            if new.schedule.iter().any(|kept| kept.name == schedule.name) {
                continue;
            }
            match self.store.resume_schedule(&schedule.name).await {
                Ok(true) => {
                    publish_paused(&schedule.name, false);
                    tracing::info!(schedule = %schedule.name, "removed schedule's pause forgotten")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(schedule = %schedule.name, %error, "cannot forget the removed schedule's pause")
                }
            }
        }
    }

    /// Every `interval` until `stop`: tells the sessions running here of
    /// the cancel requests recorded for them (by any node), and publishes
    /// which schedules are paused.
    pub async fn watch_until_stopped(
        self: Arc<Self>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            self.act_on_recorded().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn act_on_recorded(&self) {
        let Ok(runs) = self.runs() else {
            return;
        };
        match self.store.cancel_requests().await {
            Ok(requests) => {
                for request in requests {
                    if runs.cancel_running(&request.session_id, &request.reason) {
                        tracing::debug!(session_id = %request.session_id, "recorded cancel request passed on");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read cancel requests"),
        }
        if let Ok(pauses) = self.store.schedule_pauses().await {
            for schedule in &runs.context().config.schedule {
                let paused = pauses.iter().any(|pause| pause.schedule == schedule.name);
                publish_paused(&schedule.name, paused);
            }
        }
    }
}

/// The schedule's slots in `[from, to]`, oldest first; more than `limit`
/// is refused, naming the limit.
fn slots_between(
    schedule: &ScheduleConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<DateTime<Utc>>, SteerError> {
    if from > to {
        return Err(SteerError::BadRequest(format!(
            "`from` ({}) is after `to` ({})",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    if to > Utc::now() {
        return Err(SteerError::BadRequest(format!(
            "`to` ({}) is in the future: a backfill runs past slots only",
            to.to_rfc3339()
        )));
    }
    let trigger = schedule.trigger();
    let mut slots = Vec::new();
    let mut cursor = from - chrono::TimeDelta::milliseconds(1);
    while let Some(slot) = trigger.next_after(cursor) {
        if slot > to {
            break;
        }
        if slot >= from {
            if slots.len() == limit {
                return Err(SteerError::BadRequest(format!(
                    "the range holds more than daemon.max_backfill_slots = {limit} slots of schedule `{}`; ask for a shorter range",
                    schedule.name
                )));
            }
            slots.push(slot);
        }
        cursor = slot;
    }
    Ok(slots)
}

/// Runs a backfill's slots: side by side with `overlap = "allow"`, else
/// one after the other, oldest first; each leaves the in-progress set when
/// its run has ended.
async fn run_backfill(
    runs: Arc<Runs>,
    schedule: ScheduleConfig,
    slots: Vec<DateTime<Utc>>,
    backfilling: Backfilling,
) {
    let run_one = |slot: DateTime<Utc>| {
        let (runs, schedule, backfilling) = (runs.clone(), schedule.clone(), backfilling.clone());
        async move {
            let name = schedule.name.clone();
            runs.run_slot(schedule, slot, RunTrigger::Backfill).await;
            backfilling.lock().remove(&(name, slot));
        }
    };
    if schedule.overlap == Overlap::Allow {
        let tasks: Vec<_> = slots
            .into_iter()
            .map(|slot| tokio::spawn(run_one(slot)))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    } else {
        for slot in slots {
            run_one(slot).await;
        }
    }
}

/// A reason or note as given, trimmed; too long is refused.
fn note_text(text: Option<String>, what: &str) -> Result<Option<String>, SteerError> {
    let Some(text) = text.map(|text| text.trim().to_string()) else {
        return Ok(None);
    };
    if text.chars().count() > MAX_NOTE_CHARS {
        return Err(SteerError::BadRequest(format!(
            "the {what} is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    Ok(Some(text))
}

fn publish_paused(schedule: &str, paused: bool) {
    metrics::gauge!(names::SCHEDULE_PAUSED, "schedule" => schedule.to_string()).set(if paused {
        1.0
    } else {
        0.0
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_kit;

    #[test]
    fn backfill_slots_are_the_range_oldest_first_and_the_limit_is_named() {
        let schedule = ScheduleConfig::try_from(test_kit::every("nightly", "1s")).expect("valid");
        let from = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let to = from + chrono::TimeDelta::seconds(9);
        let slots = slots_between(&schedule, from, to, 100).expect("slots");
        assert_eq!(slots.len(), 10);
        assert_eq!(slots.first(), Some(&from));
        assert_eq!(slots.last(), Some(&to));
        assert!(slots.windows(2).all(|pair| pair[0] < pair[1]));
        let refused = slots_between(&schedule, from, to, 9).expect_err("over the limit");
        assert!(
            refused
                .to_string()
                .contains("daemon.max_backfill_slots = 9"),
            "{refused}"
        );
        assert!(slots_between(&schedule, to, from, 100).is_err());
        let future = Utc::now() + chrono::TimeDelta::hours(1);
        let refused = slots_between(&schedule, from, future, 100_000).expect_err("future");
        assert!(refused.to_string().contains("in the future"), "{refused}");
    }
}
