//! The session loop: starting a session, playing its turns in the seeded
//! agent order (or resuming after a crash from the last committed turn),
//! committing each turn, pausing while the model's breaker is open, and
//! recording how the session ended. It owns no turn logic (that is `turn`)
//! and no tool policy (that is `tools`).

use tokio::time::Instant;
use tracing::Instrument;

use super::tools::ToolTally;
use super::turn::PlayedTurn;
use super::{HeistError, HeistRunner, RunOptions, RunReport, TurnObserver, TurnView};
use crate::metrics as names;
use crate::resilience::journal;
use crate::scenario::Agent;
use crate::store::{NewSession, ServiceCallRecord, SessionStatus};

/// Where a session's loop starts: its id, seed and plan, and the first
/// turn to play (1, or the one after the last committed after a crash).
struct Plan {
    session_id: String,
    seed: u64,
    turns: u32,
    first_turn: u32,
}

impl HeistRunner {
    /// Runs one whole session and returns how it went.
    pub async fn run(
        &self,
        options: RunOptions,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        let session_id = self.start(&options).await?;
        self.play(&session_id, &options, observer).await
    }

    /// Creates the session (the audit row that makes the run exist); a
    /// schedule slot that already has a session is refused here.
    pub async fn start(&self, options: &RunOptions) -> Result<String, HeistError> {
        let session_id = self
            .store
            .create_session(NewSession {
                scenario: self.scenario.name.clone(),
                seed: options.seed,
                planned_turns: options.turns,
                schedule: options.schedule.clone(),
                scheduled_time: options.scheduled_time.clone(),
            })
            .await?;
        Ok(session_id)
    }

    /// Plays every turn of a session made by [`Self::start`].
    pub async fn play(
        &self,
        session_id: &str,
        options: &RunOptions,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        let (seed, turns) = (options.seed, options.turns);
        let span = tracing::info_span!("session", session_id = %session_id);
        async move {
            tracing::info!(
                seed,
                turns,
                schedule = options.schedule.as_deref().unwrap_or("-"),
                "session started"
            );
            let plan = Plan {
                session_id: session_id.to_string(),
                seed,
                turns,
                first_turn: 1,
            };
            self.play_session(plan, observer).await
        }
        .instrument(span)
        .await
    }

    /// Continues a session a crash left `active`: same seed, same agent
    /// order, from the turn after its last committed one. Memory writes
    /// still in its outbox are delivered first.
    pub async fn resume(
        &self,
        session_id: &str,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        let detail = self.store.session(session_id).await?;
        let last_turn = self.store.last_turn(session_id).await?;
        let seed = detail.session.seed.unwrap_or_default() as u64;
        let turns = detail.session.planned_turns.unwrap_or_default().max(0) as u32;
        let span = tracing::info_span!("session", session_id = %session_id);
        async move {
            tracing::info!(seed, turns, last_turn, "resuming session");
            self.deliver_outbox(session_id).await?;
            let plan = Plan {
                session_id: session_id.to_string(),
                seed,
                turns,
                first_turn: last_turn + 1,
            };
            self.play_session(plan, observer).await
        }
        .instrument(span)
        .await
    }

    /// Plays the turns of `plan` and ends the session.
    async fn play_session(
        &self,
        plan: Plan,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        let mut report = self.report_so_far(&plan).await?;
        let mut last_error = None;
        for (index, agent_index) in Self::agent_order(&self.scenario, plan.seed, plan.turns)
            .into_iter()
            .enumerate()
            .skip(plan.first_turn as usize - 1)
        {
            let turn_id = index as u32 + 1;
            if self.stop.as_ref().is_some_and(|stop| *stop.borrow()) {
                return self.interrupt(report, turn_id).await;
            }
            let agent = &self.scenario.agents[agent_index];
            let record_error = self
                .play_and_commit(&plan, turn_id, agent, &mut report, observer)
                .await?;
            if record_error.is_some() {
                last_error = record_error;
            }
            report.memory_pending = self.deliver_outbox(&plan.session_id).await?;
            if turn_id < plan.turns {
                self.pause_while_the_model_is_unavailable(turn_id).await;
            }
        }
        self.finish(report, last_error).await
    }

    /// The report of a session about to play from `plan.first_turn`: after
    /// a crash, the turns already committed count.
    async fn report_so_far(&self, plan: &Plan) -> Result<RunReport, HeistError> {
        let mut report = RunReport {
            session_id: plan.session_id.clone(),
            status: SessionStatus::Active,
            failure_reason: None,
            turns: plan.first_turn.saturating_sub(1),
            failed_turns: 0,
            tool_calls_succeeded: 0,
            tool_calls_failed: 0,
            tool_calls_refused: 0,
            memory_pending: 0,
        };
        if plan.first_turn > 1 {
            let detail = self.store.session(&plan.session_id).await?;
            report.failed_turns = detail
                .messages
                .iter()
                .filter(|message| message.error.is_some())
                .count() as u32;
        }
        Ok(report)
    }

    /// Plays one turn, commits it with the calls it made, and shows it.
    /// Returns the turn's error, if it failed. A turn that cannot be
    /// committed ends the session `failed` (if the store still can).
    async fn play_and_commit(
        &self,
        plan: &Plan,
        turn_id: u32,
        agent: &Agent,
        report: &mut RunReport,
        observer: TurnObserver<'_>,
    ) -> Result<Option<String>, HeistError> {
        let started = Instant::now();
        let turn_span = tracing::info_span!("turn", turn_id, agent = %agent.name);
        let (played, journal) =
            journal::scope(self.play_turn(&plan.session_id, turn_id, plan.turns, agent, plan.seed))
                .instrument(turn_span.clone())
                .await;
        let PlayedTurn { mut record, tools } = played;
        record.service_calls = journal
            .into_iter()
            .map(|entry| ServiceCallRecord {
                service: entry.service,
                operation: entry.operation,
                attempts: entry.summary.attempts,
                outcome: entry.summary.outcome.as_str().to_string(),
                last_error: entry.summary.last_error,
                duration_ms: entry.summary.duration.as_secs_f64() * 1000.0,
            })
            .collect();
        tools.add_to(report);
        if let Err(error) = self.store.record_turn(record.clone()).await {
            tracing::error!(turn_id, %error, "cannot commit turn; stopping the session");
            let reason = format!("turn {turn_id} could not be recorded: {error}");
            if let Err(finish_error) = self
                .store
                .finish_session(&plan.session_id, SessionStatus::Failed, Some(&reason))
                .await
            {
                tracing::error!(%finish_error, "cannot record that the session failed either");
            }
            metrics::counter!(names::SESSIONS_TOTAL, "status" => "failed").increment(1);
            return Err(error.into());
        }
        self.remember_committed_turn(&record);
        report.turns += 1;
        if record.error.is_some() {
            report.failed_turns += 1;
        }
        let outcome = if record.error.is_some() {
            "failed"
        } else {
            "ok"
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics::counter!(names::TURNS_TOTAL, "agent" => agent.name.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(names::TURN_DURATION_SECONDS).record(elapsed_ms / 1000.0);
        turn_span.in_scope(|| {
            tracing::info!(
                outcome,
                tools = record.tool_calls.len(),
                elapsed_ms,
                "turn recorded"
            )
        });
        if let Some(observer) = observer {
            observer(&TurnView {
                record: &record,
                total_turns: plan.turns,
                elapsed_ms,
            });
        }
        Ok(record.error)
    }

    /// Records how the session ended: `failed` with a reason when more
    /// than half its turns failed, else `completed`.
    async fn finish(
        &self,
        mut report: RunReport,
        last_error: Option<String>,
    ) -> Result<RunReport, HeistError> {
        let (status, reason) = if report.turns > 0 && report.failed_turns * 2 > report.turns {
            let reason = format!(
                "{} of {} turns failed; last error: {}",
                report.failed_turns,
                report.turns,
                last_error.unwrap_or_default()
            );
            (SessionStatus::Failed, Some(reason))
        } else {
            (SessionStatus::Completed, None)
        };
        self.store
            .finish_session(&report.session_id, status, reason.as_deref())
            .await?;
        metrics::counter!(names::SESSIONS_TOTAL, "status" => status.as_str()).increment(1);
        tracing::info!(
            status = status.as_str(),
            turns = report.turns,
            failed_turns = report.failed_turns,
            "session ended"
        );
        report.status = status;
        report.failure_reason = reason;
        Ok(report)
    }

    /// Ends the session `interrupted` before `next_turn`: the daemon is
    /// stopping.
    async fn interrupt(
        &self,
        mut report: RunReport,
        next_turn: u32,
    ) -> Result<RunReport, HeistError> {
        let reason = format!("heistd stopped before turn {next_turn}");
        self.store
            .finish_session(
                &report.session_id,
                SessionStatus::Interrupted,
                Some(&reason),
            )
            .await?;
        metrics::counter!(names::SESSIONS_TOTAL, "status" => "interrupted").increment(1);
        tracing::warn!(next_turn, "session interrupted");
        report.status = SessionStatus::Interrupted;
        report.failure_reason = Some(reason);
        Ok(report)
    }

    /// With the model's breaker open, every turn would fail in microseconds
    /// and the session would burn its turns in a blink: the session waits
    /// until the breaker half-opens (the resilience layer knows when), or
    /// until told to stop, and the next turn is its half-open probe.
    async fn pause_while_the_model_is_unavailable(&self, turn_id: u32) {
        let Some(pause) = self.clients.llm.service.breaker_open_remaining() else {
            return;
        };
        tracing::warn!(
            turn_id,
            pause_ms = pause.as_millis() as u64,
            "the model's breaker is open; the session waits before its next turn"
        );
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = async {
                match stop.as_mut() {
                    Some(stop) => { let _ = stop.wait_for(|stop| *stop).await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
}

impl ToolTally {
    /// Adds this turn's tool calls to the run's counts.
    fn add_to(&self, report: &mut RunReport) {
        report.tool_calls_succeeded += self.succeeded;
        report.tool_calls_failed += self.failed;
        report.tool_calls_refused += self.refused;
    }
}
