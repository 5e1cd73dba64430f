//! The scheduler's side of the runs: [`ScheduledRuns`] is the
//! scheduler's [`Launcher`], so a schedule's slot starts through [`Runs`].

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Runs;
use crate::config::ScheduleConfig;
use crate::scheduler::Launcher;

/// The scheduler's [`Launcher`]: a schedule's slot runs through [`Runs`],
/// under the same cap as every other run.
pub struct ScheduledRuns(pub Arc<Runs>);

impl Launcher for ScheduledRuns {
    fn launch(
        &self,
        schedule: &ScheduleConfig,
        scheduled_time: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(
            self.0
                .clone()
                .run_scheduled(schedule.clone(), scheduled_time),
        )
    }
}
