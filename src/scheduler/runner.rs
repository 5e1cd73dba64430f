//! The schedule tasks: one per enabled schedule, sleeping until each slot
//! and handing it to the [`Launcher`] under the schedule's overlap policy.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{missed_slot, Clock, Slots as _};
use crate::config::{Overlap, ScheduleConfig};
use crate::metrics::{SCHEDULE_LAST_RUN_TIMESTAMP_SECONDS, SCHEDULE_RUNS_TOTAL};

/// Starts a heist for a schedule's slot. The daemon implements it: it records
/// the schedule and slot, and enforces the global cap on running heists.
pub trait Launcher: Send + Sync + 'static {
    /// The future resolves when that run has ended, which is what the
    /// overlap policy waits for.
    fn launch(
        &self,
        schedule: &ScheduleConfig,
        scheduled_time: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Runs the schedule tasks; dropping it stops them, not the runs they launched.
pub struct Scheduler {
    clock: Clock,
    launcher: Arc<dyn Launcher>,
    /// Per schedule name, kept across `replace` so that a reloaded schedule
    /// neither repeats a slot nor overlaps a run its old task launched.
    states: Arc<Mutex<HashMap<String, ScheduleState>>>,
    schedules: Vec<ScheduleConfig>,
    tasks: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts one task per enabled schedule. `last_slots` are the slots that
    /// already ran, by schedule name (from the store), for the missed-run
    /// policy and so that no slot runs twice.
    pub fn spawn(
        schedules: Vec<ScheduleConfig>,
        last_slots: HashMap<String, DateTime<Utc>>,
        clock: Clock,
        launcher: Arc<dyn Launcher>,
    ) -> Scheduler {
        let states = last_slots
            .into_iter()
            .map(|(name, last_slot)| (name, ScheduleState::new(Some(last_slot))))
            .collect();
        let mut scheduler = Scheduler {
            clock,
            launcher,
            states: Arc::new(Mutex::new(states)),
            schedules: Vec::new(),
            tasks: Vec::new(),
        };
        scheduler.start(schedules);
        scheduler
    }

    /// For the status API: name, trigger, enabled, and the next slot (none
    /// when disabled or when the trigger never fires again).
    pub fn next_runs(&self) -> Vec<(String, String, bool, Option<DateTime<Utc>>)> {
        let states = self.states.lock();
        self.schedules
            .iter()
            .map(|schedule| {
                let next_slot = states
                    .get(&schedule.name)
                    .and_then(|state| state.next_slot)
                    .filter(|_| schedule.enabled);
                (
                    schedule.name.clone(),
                    schedule.trigger().describe(),
                    schedule.enabled,
                    next_slot,
                )
            })
            .collect()
    }

    /// Reload: stops the old schedule tasks (the runs they launched keep
    /// going) and starts the new ones. A slot waiting out its jitter or queued
    /// behind a run is dropped, unless the schedule's `missed = "run_once"`
    /// picks it up again.
    pub fn replace(&mut self, schedules: Vec<ScheduleConfig>) {
        self.abort_tasks();
        self.start(schedules);
    }

    /// Stops the schedule tasks and waits until they have stopped.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // A cancelled task is the expected outcome.
            let _ = task.await;
        }
    }

    #[cfg(test)]
    pub(crate) fn skipped_slots(&self, name: &str) -> u64 {
        self.states
            .lock()
            .get(name)
            .map_or(0, |state| state.skipped_slots)
    }

    fn start(&mut self, schedules: Vec<ScheduleConfig>) {
        let now = self.clock.now();
        let mut states = self.states.lock();
        for state in states.values_mut() {
            state.next_slot = None;
        }
        self.schedules = schedules;
        for config in self.schedules.iter().filter(|config| config.enabled) {
            let trigger = config.trigger();
            let state = states
                .entry(config.name.clone())
                .or_insert_with(|| ScheduleState::new(None));
            let missed = missed_slot(trigger, state.last_slot, now, config.missed);
            // What the task will do first, so that `next_runs` is right before
            // the task is first polled.
            state.next_slot =
                missed.or_else(|| trigger.next_after(now.max(state.last_slot.unwrap_or(now))));
            let task = ScheduleTask {
                config: config.clone(),
                clock: self.clock,
                launcher: Arc::clone(&self.launcher),
                states: Arc::clone(&self.states),
                runs_in_flight: Arc::clone(&state.runs_in_flight),
                last_slot: state.last_slot,
                rng: StdRng::from_os_rng(),
            };
            tracing::info!(schedule = %config.name, trigger = %trigger.describe(), "schedule started");
            self.tasks.push(tokio::spawn(task.run(missed)));
        }
    }

    fn abort_tasks(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

struct ScheduleState {
    /// The latest slot launched or skipped; no slot at or before it runs.
    last_slot: Option<DateTime<Utc>>,
    /// What the schedule's task waits for, for the status API.
    next_slot: Option<DateTime<Utc>>,
    /// Runs of this schedule that have not ended; the overlap policy reads it.
    runs_in_flight: Arc<watch::Sender<usize>>,
    /// Slots skipped by the overlap policy, for tests (the metric is global).
    skipped_slots: u64,
}

impl ScheduleState {
    fn new(last_slot: Option<DateTime<Utc>>) -> Self {
        Self {
            last_slot,
            next_slot: None,
            skipped_slots: 0,
            runs_in_flight: Arc::new(watch::Sender::new(0)),
        }
    }
}

struct ScheduleTask {
    config: ScheduleConfig,
    clock: Clock,
    launcher: Arc<dyn Launcher>,
    states: Arc<Mutex<HashMap<String, ScheduleState>>>,
    runs_in_flight: Arc<watch::Sender<usize>>,
    /// The latest slot this task has dealt with (launched, skipped or queued).
    last_slot: Option<DateTime<Utc>>,
    rng: StdRng,
}

impl ScheduleTask {
    async fn run(mut self, missed: Option<DateTime<Utc>>) {
        // With `overlap = "queue"`, the one slot waiting for the previous run.
        let mut queued: Option<DateTime<Utc>> = None;
        if let Some(slot) = missed {
            tracing::info!(schedule = %self.config.name, slot = %slot.to_rfc3339(), "running a slot missed while stopped");
            self.on_slot_due(slot, &mut queued);
        }
        let mut pending: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        loop {
            let (slot, due) = match pending {
                Some(pending) => pending,
                None => {
                    let now = self.clock.now();
                    let after = self.last_slot.map_or(now, |last| now.max(last));
                    let Some(slot) = self.config.trigger().next_after(after) else {
                        tracing::warn!(schedule = %self.config.name, "the trigger has no more slots");
                        self.set_next_slot(None);
                        if let Some(slot) = queued.take() {
                            wait_until_idle(self.runs_in_flight.subscribe()).await;
                            self.launch(slot);
                        }
                        return;
                    };
                    self.set_next_slot(Some(slot));
                    let due = slot + self.jitter();
                    pending = Some((slot, due));
                    (slot, due)
                }
            };
            let clock = self.clock;
            tokio::select! {
                () = clock.sleep_until(due) => {
                    pending = None;
                    self.on_slot_due(slot, &mut queued);
                }
                () = wait_until_idle(self.runs_in_flight.subscribe()), if queued.is_some() => {
                    if let Some(queued_slot) = queued.take() {
                        self.launch(queued_slot);
                    }
                }
            }
        }
    }

    /// Applies the overlap policy to a slot that has come due.
    fn on_slot_due(&mut self, slot: DateTime<Utc>, queued: &mut Option<DateTime<Utc>>) {
        self.last_slot = self.last_slot.max(Some(slot));
        match self.config.overlap {
            Overlap::Allow => self.launch(slot),
            Overlap::Skip if self.is_busy() => self.skip(slot, "the previous run has not ended"),
            Overlap::Skip => self.launch(slot),
            Overlap::Queue => {
                if let Some(queued_slot) = queued.take() {
                    if self.is_busy() {
                        *queued = Some(queued_slot);
                        return self.skip(slot, "a slot is already queued behind the running one");
                    }
                    self.launch(queued_slot);
                }
                if self.is_busy() {
                    tracing::info!(schedule = %self.config.name, slot = %slot.to_rfc3339(), "queued until the previous run ends");
                    *queued = Some(slot);
                } else {
                    self.launch(slot);
                }
            }
        }
    }

    fn launch(&self, slot: DateTime<Utc>) {
        self.record_last_slot(slot);
        // Counted `launched` (and logged) by the launcher once the run has
        // really started: with several daemons every node reaches this for
        // each slot, and only the one whose session the store takes runs it.
        tracing::debug!(schedule = %self.config.name, slot = %slot.to_rfc3339(), "slot due: starting a run");
        let in_flight = RunInFlight::start(Arc::clone(&self.runs_in_flight));
        let run = self.launcher.launch(&self.config, slot);
        // Its own task, so that stopping this schedule task (reload,
        // shutdown) does not stop the run.
        tokio::spawn(async move {
            run.await;
            drop(in_flight);
        });
    }

    fn skip(&self, slot: DateTime<Utc>, why: &str) {
        self.record_last_slot(slot);
        if let Some(state) = self.states.lock().get_mut(&self.config.name) {
            state.skipped_slots += 1;
        }
        tracing::info!(schedule = %self.config.name, slot = %slot.to_rfc3339(), "skipping a slot: {why}");
        metrics::counter!(SCHEDULE_RUNS_TOTAL, "schedule" => self.config.name.clone(), "outcome" => "skipped_overlap")
            .increment(1);
    }

    fn is_busy(&self) -> bool {
        *self.runs_in_flight.borrow() > 0
    }

    fn jitter(&mut self) -> TimeDelta {
        let jitter_ms = self.rng.random_range(0..=self.config.jitter_ms);
        TimeDelta::try_milliseconds(i64::try_from(jitter_ms).unwrap_or(i64::MAX))
            .unwrap_or(TimeDelta::MAX)
    }

    fn record_last_slot(&self, slot: DateTime<Utc>) {
        let mut states = self.states.lock();
        if let Some(state) = states.get_mut(&self.config.name) {
            state.last_slot = state.last_slot.max(Some(slot));
        }
        // For the "schedule stopped firing" alert: the age of the last
        // slot handled, launched or skipped.
        metrics::gauge!(SCHEDULE_LAST_RUN_TIMESTAMP_SECONDS, "schedule" => self.config.name.clone())
            .set(slot.timestamp_millis() as f64 / 1000.0);
    }

    fn set_next_slot(&self, next_slot: Option<DateTime<Utc>>) {
        let mut states = self.states.lock();
        if let Some(state) = states.get_mut(&self.config.name) {
            state.next_slot = next_slot;
        }
    }
}

/// Counts a run as in flight until dropped, even if its task is cancelled
/// or the run panics.
struct RunInFlight(Arc<watch::Sender<usize>>);

impl RunInFlight {
    fn start(runs_in_flight: Arc<watch::Sender<usize>>) -> Self {
        runs_in_flight.send_modify(|count| *count += 1);
        Self(runs_in_flight)
    }
}

impl Drop for RunInFlight {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.saturating_sub(1));
    }
}

async fn wait_until_idle(mut runs_in_flight: watch::Receiver<usize>) {
    // The sender lives in the scheduler's state, so this only fails if the
    // scheduler is gone, and then there is nothing left to wait for.
    let _ = runs_in_flight.wait_for(|count| *count == 0).await;
}
