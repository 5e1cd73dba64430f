//! The session loop: starting a session, playing its turns in the seeded
//! agent order (or resuming after a crash from the last committed turn),
//! committing each turn, pausing while the model is unavailable (`outage`)
//! and playing that turn again, and recording how the session ended. It owns no turn logic (that is `turn`)
//! and no tool policy (that is `tools`).

use tokio::time::Instant;
use tracing::Instrument;

use super::outage::{Outage, Waited};
use super::tools::ToolTally;
use super::turn::{PlayedTurn, SessionTurn, TurnResult};
use super::{HeistError, HeistRunner, RunOptions, RunReport, TurnObserver, TurnView, OUTBOX_BATCH};
use crate::metrics as names;
use crate::resilience::journal;
use crate::scenario::Agent;
use crate::store::{NewSession, OutboxEntry, Owed, SessionStatus};

/// How one turn ended for the session loop.
enum Committed {
    /// Committed; the turn's error, if it failed, and the session's memory
    /// writes the commit read back for delivery (`None`: claim them).
    Recorded(Option<String>, Option<Vec<OutboxEntry>>),
    /// Nothing committed: the model was unavailable.
    ModelUnavailable(crate::clients::CallError),
}

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
            self.deliver_outbox_in_passing(session_id, 0, None).await;
            // What the crashed run had read is not this run's to trust.
            self.forget_transcript();
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

    /// Plays the turns of `plan` and ends the session. A turn the model
    /// was unavailable for is played again after the model is back; an
    /// outage longer than `heist.max_model_outage_ms` ends the session.
    async fn play_session(
        &self,
        plan: Plan,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        // Counted while it plays: under load, a commit waits a moment for
        // this session's turn too (`store.commit_delay_ms`).
        let _in_play = self.store.in_play();
        let mut report = self.report_so_far(&plan).await?;
        let native = self.session_uses_native_tools().await;
        let mut last_error = None;
        let order = Self::agent_order(&self.scenario, plan.seed, plan.turns);
        let mut index = plan.first_turn as usize - 1;
        let mut outage: Option<Outage> = None;
        while index < order.len() {
            let turn_id = index as u32 + 1;
            if self.stop.as_ref().is_some_and(|stop| *stop.borrow()) {
                return self.interrupt(report, turn_id).await;
            }
            let agent = &self.scenario.agents[order[index]];
            let turn = SessionTurn {
                session_id: &plan.session_id,
                turn_id,
                total_turns: plan.turns,
                seed: plan.seed,
                native,
            };
            let (error, owed) = match self
                .play_and_commit(&turn, agent, &mut report, observer)
                .await?
            {
                Committed::Recorded(error, owed) => (error, owed),
                Committed::ModelUnavailable(error) => {
                    let current = outage.get_or_insert_with(Outage::start);
                    current.saw(&error);
                    match self.wait_for_the_model(turn_id, current).await {
                        Waited::Back => continue,
                        Waited::Stopped => return self.interrupt(report, turn_id).await,
                        Waited::GaveUp => {
                            let reason = current.failure_reason(turn_id);
                            return self.end_failed(report, reason).await;
                        }
                    }
                }
            };
            outage = None;
            if error.is_some() {
                last_error = error;
            }
            report.memory_pending = self
                .deliver_outbox_in_passing(&plan.session_id, report.memory_pending, owed)
                .await;
            index += 1;
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
    /// Returns the turn's error, if it failed, or that the model was
    /// unavailable (nothing recorded). A turn that cannot be committed
    /// pauses the session (the store outage rule, `store_outage`).
    async fn play_and_commit(
        &self,
        turn: &SessionTurn<'_>,
        agent: &Agent,
        report: &mut RunReport,
        observer: TurnObserver<'_>,
    ) -> Result<Committed, HeistError> {
        let (session_id, turn_id) = (turn.session_id, turn.turn_id);
        let started = Instant::now();
        let turn_span = tracing::info_span!("turn", turn_id, agent = %agent.name);
        let (played, journal) = journal::scope(self.play_turn(turn, agent))
            .instrument(turn_span.clone())
            .await;
        let played = match played {
            TurnResult::Played(played) => played,
            TurnResult::ModelUnavailable(error) => return Ok(Committed::ModelUnavailable(error)),
        };
        let PlayedTurn { mut record, tools } = played;
        record.service_calls = super::outbox::service_call_records(journal);
        tools.add_to(report);
        let what = format!("turn {turn_id}");
        let owed = match self
            .through_store_outage(&what, || {
                self.store.record_turn_owing(record.clone(), OUTBOX_BATCH)
            })
            .await
        {
            Ok(Owed::Entries(entries)) => Some(entries),
            Ok(Owed::ClaimFirst) => None,
            Err(error) => return Err(self.end_after_store_outage(session_id, &what, error).await),
        };
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
        // Whole microseconds: more digits are noise in logs and output.
        let elapsed_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
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
                total_turns: turn.total_turns,
                elapsed_ms,
            });
        }
        Ok(Committed::Recorded(record.error, owed))
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
        let ending = self
            .through_store_outage("the session's end", || {
                self.store
                    .finish_session(&report.session_id, status, reason.as_deref())
            })
            .await;
        let ended_now = match ending {
            Ok(ended_now) => ended_now,
            Err(error) => {
                return Err(self
                    .end_after_store_outage(&report.session_id, "the session's end", error)
                    .await)
            }
        };
        // Metrics count what the store recorded: a session another path
        // ended first (a drain, a takeover) keeps that first ending.
        if ended_now {
            metrics::counter!(names::SESSIONS_TOTAL, "status" => status.as_str()).increment(1);
        }
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

    /// Ends the session `failed` for `reason` (the model stayed
    /// unavailable).
    async fn end_failed(
        &self,
        mut report: RunReport,
        reason: String,
    ) -> Result<RunReport, HeistError> {
        if self
            .store
            .finish_session(&report.session_id, SessionStatus::Failed, Some(&reason))
            .await?
        {
            metrics::counter!(names::SESSIONS_TOTAL, "status" => "failed").increment(1);
        }
        tracing::error!(%reason, "session ended");
        report.status = SessionStatus::Failed;
        report.failure_reason = Some(reason);
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
        // No pause here: heistd is stopping. Not recorded, the session is
        // resumed by crash recovery at the next start.
        if self
            .store
            .finish_session(
                &report.session_id,
                SessionStatus::Interrupted,
                Some(&reason),
            )
            .await?
        {
            metrics::counter!(names::SESSIONS_TOTAL, "status" => "interrupted").increment(1);
        }
        tracing::warn!(next_turn, "session interrupted");
        report.status = SessionStatus::Interrupted;
        report.failure_reason = Some(reason);
        Ok(report)
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
