//! Token budgets: `heist.max_tokens_per_session`, a schedule's
//! `max_tokens_per_day` and `daemon.max_tokens_per_day`. The session loop
//! asks [`SessionBudgets::spent`] after each committed turn (a session
//! ends after its current turn, never in the middle of one); the daemon
//! asks [`daily_budget_spent`] before it starts a run.
//!
//! A day's spending is read from the store (the sessions started that UTC
//! day), never kept in memory, so it survives restarts and, on
//! PostgreSQL, every node sees the whole cluster's. Which day it is comes
//! from the caller: a running session counts against the day it started,
//! the daemon asks about the day its clock reads. This module only
//! decides; it owns no clock and starts or ends nothing itself.

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};

use crate::config::Config;
use crate::store::{StoreError, StoreHandle};

/// Which budget is spent; the `scope` label of
/// `heistd_budget_exhausted_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    Session,
    Schedule,
    Daemon,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Session => "session",
            BudgetScope::Schedule => "schedule",
            BudgetScope::Daemon => "daemon",
        }
    }
}

/// A budget found spent: the key that set it, its limit and the figures,
/// which the session's failure reason and the API's 429 both show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpent {
    pub scope: BudgetScope,
    /// The config key, naming the schedule for a schedule's budget.
    pub key: String,
    pub limit: u64,
    pub used: u64,
    /// The session budget's estimate of the next turn (the last turn's
    /// tokens); none for a daily budget, which is spent once reached.
    pub next_turn: Option<u64>,
    /// The UTC day a daily budget counts (`2026-12-07`).
    pub day: Option<String>,
}

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            key, limit, used, ..
        } = self;
        match (&self.next_turn, &self.day) {
            (Some(next_turn), _) => write!(
                formatter,
                "{key} ({limit}) reached: {used} tokens used, the next turn would take about {next_turn} more"
            ),
            (None, Some(day)) => write!(
                formatter,
                "{key} ({limit}) reached: {used} tokens used by the runs started on {day} (UTC); more runs start the next UTC day"
            ),
            (None, None) => write!(formatter, "{key} ({limit}) reached: {used} tokens used"),
        }
    }
}

impl BudgetSpent {
    /// Counts and logs a budget that ends a session after its turn, and
    /// returns the session's failure reason.
    pub(super) fn ends_session(&self) -> String {
        metrics::counter!(crate::metrics::BUDGET_EXHAUSTED_TOTAL, "scope" => self.scope.as_str())
            .increment(1);
        tracing::warn!(budget = %self.key, limit = self.limit, used = self.used, "token budget spent: the session ends after this turn");
        self.to_string()
    }
}

/// The UTC day `at` falls in, as `[00:00, next 00:00)`.
pub fn utc_day(at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = at.date_naive().and_time(NaiveTime::MIN).and_utc();
    (start, start + TimeDelta::days(1))
}

/// The first daily budget spent for a run of `schedule` (none: a run no
/// schedule started) on the UTC day `at` falls in: the schedule's own
/// `max_tokens_per_day`, then `daemon.max_tokens_per_day`. Spent means
/// the day's sessions used at least the limit.
pub async fn daily_budget_spent(
    store: &StoreHandle,
    config: &Config,
    schedule: Option<&str>,
    at: DateTime<Utc>,
) -> Result<Option<BudgetSpent>, StoreError> {
    let (from, to) = utc_day(at);
    let schedule_limit = schedule.and_then(|name| {
        config
            .schedule
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| (name, entry.max_tokens_per_day))
    });
    let mut checks = Vec::with_capacity(2);
    if let Some((name, limit)) = schedule_limit.filter(|(_, limit)| *limit > 0) {
        let key = format!("schedule \"{name}\" max_tokens_per_day");
        checks.push((BudgetScope::Schedule, key, limit, Some(name)));
    }
    if config.daemon.max_tokens_per_day > 0 {
        let key = "daemon.max_tokens_per_day".to_string();
        checks.push((
            BudgetScope::Daemon,
            key,
            config.daemon.max_tokens_per_day,
            None,
        ));
    }
    for (scope, key, limit, of_schedule) in checks {
        let used = store.tokens_used_between(from, to, of_schedule).await?;
        if used >= limit {
            return Ok(Some(BudgetSpent {
                scope,
                key,
                limit,
                used,
                next_turn: None,
                day: Some(from.format("%Y-%m-%d").to_string()),
            }));
        }
    }
    Ok(None)
}

/// The budgets one session plays under, read from the config it started
/// with: its own, and the daily ones of the day it started.
pub(super) struct SessionBudgets {
    per_session: u64,
    /// The session's schedule, for its daily budget.
    schedule: Option<String>,
    /// When the session started (the store's `start_time`): its day is the
    /// one whose daily budgets it counts against. None when no daily
    /// budget applies, so nothing is read.
    started_at: Option<DateTime<Utc>>,
}

impl SessionBudgets {
    /// Reads the session's schedule and start from the store only when a
    /// daily budget could apply to it. A store that cannot answer leaves
    /// the session under its own budget alone (logged): a budget never
    /// fails a session the store outage rule would have paused.
    pub async fn of_session(config: &Config, store: &StoreHandle, session_id: &str) -> Self {
        let per_session = config.heist.max_tokens_per_session;
        let daily = config.daemon.max_tokens_per_day > 0
            || config
                .schedule
                .iter()
                .any(|schedule| schedule.max_tokens_per_day > 0);
        let unread = Self {
            per_session,
            schedule: None,
            started_at: None,
        };
        if !daily {
            return unread;
        }
        let session = match store.session(session_id).await {
            Ok(detail) => detail.session,
            Err(error) => {
                tracing::warn!(%error, "cannot read when the session started; its daily token budgets are not checked");
                return unread;
            }
        };
        let started_at = DateTime::parse_from_rfc3339(&session.start_time)
            .map(|at| at.with_timezone(&Utc))
            .ok();
        Self {
            per_session,
            schedule: session.schedule,
            started_at,
        }
    }

    /// After a committed turn: the budget that ends the session now, if
    /// any. `used` is the session's tokens so far, `last_turn` what its
    /// last turn took (the estimate of the next). A day's tokens the store
    /// cannot read now are read again after the next turn (logged).
    pub async fn spent(
        &self,
        config: &Config,
        store: &StoreHandle,
        used: u64,
        last_turn: u64,
    ) -> Option<BudgetSpent> {
        let limit = self.per_session;
        if limit > 0 && (used >= limit || used.saturating_add(last_turn) > limit) {
            return Some(BudgetSpent {
                scope: BudgetScope::Session,
                key: "heist.max_tokens_per_session".into(),
                limit,
                used,
                next_turn: Some(last_turn),
                day: None,
            });
        }
        let started_at = self.started_at?;
        daily_budget_spent(store, config, self.schedule.as_deref(), started_at)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the day's tokens; the daily token budgets are checked again after the next turn");
                None
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(next_turn: Option<u64>, day: Option<&str>) -> String {
        BudgetSpent {
            scope: BudgetScope::Session,
            key: "heist.max_tokens_per_session".into(),
            limit: 400,
            used: 400,
            next_turn,
            day: day.map(str::to_string),
        }
        .to_string()
    }

    #[test]
    fn the_reason_names_the_key_and_the_figures() {
        assert_eq!(
            spent(Some(100), None),
            "heist.max_tokens_per_session (400) reached: 400 tokens used, the next turn would take about 100 more"
        );
        assert_eq!(
            spent(None, Some("2026-12-07")),
            "heist.max_tokens_per_session (400) reached: 400 tokens used by the runs started on 2026-12-07 (UTC); more runs start the next UTC day"
        );
    }

    #[test]
    fn a_utc_day_runs_from_midnight_to_midnight() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T23:59:59.9+00:00")
            .expect("time")
            .with_timezone(&Utc);
        let (from, to) = utc_day(at);
        assert_eq!(from.to_rfc3339(), "2026-12-07T00:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "2026-12-08T00:00:00+00:00");
    }
}
