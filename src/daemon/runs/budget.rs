//! The daily token budgets at a run's door: a schedule's slot is skipped
//! (`heistd_schedule_runs_total{outcome="skipped_budget"}`) and `POST
//! /api/v1/runs` refused (429 until the next UTC day) once the day's runs
//! used `[[schedule]] max_tokens_per_day` or `daemon.max_tokens_per_day`.
//! The day is the one [`Runs`]' clock reads (the scheduler's kind, which
//! tests drive with tokio time); what it has spent is read from the store,
//! so every node of a cluster sees the same. Running sessions are ended by
//! their own loop (`heist::budget`), not here.

use chrono::{DateTime, Utc};

use super::{RunContext, Runs};
use crate::config::ScheduleConfig;
use crate::daemon::state::StartRunError;
use crate::heist::{daily_budget_spent, utc_day, BudgetSpent};
use crate::metrics as names;

impl Runs {
    /// A run request's refusal when a daily budget is spent today: the
    /// daemon's, and for a run an operator triggers for `schedule`, that
    /// schedule's.
    pub(super) async fn refuse_if_budget_spent(
        &self,
        context: &RunContext,
        schedule: Option<&str>,
    ) -> Result<(), StartRunError> {
        let now = self.clock.now();
        let spent = daily_budget_spent(&self.store, &context.config, schedule, now)
            .await
            .map_err(|error| match error.is_outage() {
                true => StartRunError::StoreUnavailable(error.to_string()),
                false => StartRunError::Failed(error.to_string()),
            })?;
        let Some(spent) = spent else {
            return Ok(());
        };
        count_spent(&spent);
        tracing::warn!(budget = %spent.key, limit = spent.limit, used = spent.used, "run request refused: the daily token budget is spent");
        Err(StartRunError::BudgetSpent {
            reason: spent.to_string(),
            retry_after_seconds: seconds_to_next_day(now),
        })
    }

    /// Whether a slot of `schedule` is skipped because its or the daemon's
    /// daily budget is spent today; counted and logged here. A store that
    /// cannot answer does not skip the slot (the run's own start meets the
    /// store outage rule).
    pub(super) async fn skip_for_budget(
        &self,
        context: &RunContext,
        schedule: &ScheduleConfig,
        slot: DateTime<Utc>,
    ) -> bool {
        let now = self.clock.now();
        let spent =
            daily_budget_spent(&self.store, &context.config, Some(&schedule.name), now).await;
        match spent {
            Ok(None) => false,
            Ok(Some(spent)) => {
                count_spent(&spent);
                metrics::counter!(names::SCHEDULE_RUNS_TOTAL, "schedule" => schedule.name.clone(), "outcome" => "skipped_budget")
                    .increment(1);
                tracing::info!(schedule = %schedule.name, slot = %slot.to_rfc3339(), reason = %spent, "skipping a slot: the daily token budget is spent");
                true
            }
            Err(error) => {
                tracing::warn!(schedule = %schedule.name, %error, "cannot read the day's tokens; the slot is not held back by its budget");
                false
            }
        }
    }
}

fn count_spent(spent: &BudgetSpent) {
    metrics::counter!(names::BUDGET_EXHAUSTED_TOTAL, "scope" => spent.scope.as_str()).increment(1);
}

/// Whole seconds until the next UTC day, at least 1: a daily budget's
/// `Retry-After`.
fn seconds_to_next_day(now: DateTime<Utc>) -> u64 {
    let (_, next_day) = utc_day(now);
    ((next_day - now).num_milliseconds().max(0) as u64)
        .div_ceil(1000)
        .max(1)
}

#[cfg(test)]
mod tests;
