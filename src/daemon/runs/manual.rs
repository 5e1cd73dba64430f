//! Runs an operator asks a schedule for (`POST /api/v1/schedules/{name}/trigger`):
//! one now, under the same admission lock and cap as every other run, and
//! refused (429) while the schedule's or the daemon's daily token budget
//! is spent. A
//! backfill's slots run through `Runs::run_slot` like the schedule's own.

use std::sync::Arc;

use super::Runs;
use crate::config::ScheduleConfig;
use crate::daemon::state::StartRunError;
use crate::heist::{self, RunOptions};
use crate::store::RunTrigger;

impl Runs {
    /// An operator's "run it now" (`POST /api/v1/schedules/{name}/trigger`):
    /// one run of the schedule's scenario and turns, recorded with its name
    /// and `trigger = "manual"`, started now or refused at capacity, paused
    /// or not, as `kubectl create job --from=cronjob/...` does.
    pub async fn trigger_now(
        self: &Arc<Self>,
        schedule: &ScheduleConfig,
    ) -> Result<String, StartRunError> {
        let Some(context) = self.schedule_context(schedule).await else {
            return Err(StartRunError::Failed(format!(
                "cannot load the scenario of schedule `{}`",
                schedule.name
            )));
        };
        self.refuse_if_budget_spent(&context, Some(&schedule.name))
            .await?;
        let options = RunOptions {
            turns: schedule.turns,
            seed: context.config.heist.seed.unwrap_or_else(heist::random_seed),
            schedule: Some(schedule.name.clone()),
            scheduled_time: None,
            trigger: Some(RunTrigger::Manual),
        };
        self.start_now(context, options).await
    }
}
