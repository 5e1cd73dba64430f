//! The scheduler (placeholder until written): validation of schedules.

use crate::config::ScheduleConfig;

/// Checks a schedule's trigger; the error is (field, why).
pub fn validate(_schedule: &ScheduleConfig) -> Result<(), (&'static str, String)> {
    Ok(())
}
