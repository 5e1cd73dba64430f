//! The session loop: starting a session, playing its turns in the seeded
//! agent order (or resuming after a crash from the last committed turn),
//! committing each turn, pausing while the model is unavailable (`outage`)
//! or the store cannot commit (`store_outage`) and going on after, handing
//! each commit's memory writes to `outbox`, and recording how the session
//! ended.
//!
//! [`SessionLoop`] owns the store handle: with `outbox` it is the only
//! part of `heist` that reads or writes the store. It owns no turn logic
//! (that is `turn`, which has no store handle) and no tool policy (that is
//! `tools`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::budget::SessionBudgets;
use super::control::RunControl;
use super::outage::{ModelWatch, Outage, Waited};
use super::outbox::Outbox;
use super::store_outage::StoreOutageRule;
use super::transcript::{TranscriptCache, TranscriptEntry};
use super::turn::{PlayedTurn, SessionTurn, TurnPlayer, TurnResult};
use super::{HeistError, HeistRunner, RunOptions, RunReport, TurnObserver, TurnView, OUTBOX_BATCH};
use crate::config::Config;
use crate::metrics as names;
use crate::resilience::journal;
use crate::scenario::{Agent, Scenario};
use crate::store::{NewSession, Owed, SessionStatus, StoreError, StoreHandle, TurnRecord};

/// Plays sessions turn by turn and records them.
pub(super) struct SessionLoop {
    /// Plays each turn; it has no store handle, so its record is committed
    /// here.
    pub player: TurnPlayer,
    /// Delivers the memory writes each commit leaves.
    pub outbox: Outbox,
    store: StoreHandle,
    /// Waits out the model's outages and checks its native tool calling.
    model: ModelWatch,
    /// Waits out a store that cannot take a commit.
    store_outage: StoreOutageRule,
    /// The stop signal and where notices go.
    pub control: RunControl,
    /// `heist.context_messages`: the turns the transcript keeps.
    context_messages: usize,
    /// The recent transcript of the session being played, kept so a turn
    /// does not read it back from the store.
    transcript: parking_lot::Mutex<Option<TranscriptCache>>,
    /// The config the session started with, for its token budgets.
    config: Arc<Config>,
}

/// How one turn ended for the session loop.
enum Committed {
    /// Committed; the turn's error, if it failed, and the session's memory
    /// writes the commit left to deliver.
    Recorded(Option<String>, Owed),
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

impl SessionLoop {
    pub fn new(
        config: &Arc<Config>,
        scenario: Arc<Scenario>,
        player: TurnPlayer,
        store: StoreHandle,
    ) -> Self {
        let model = ModelWatch::new(
            player.clients().llm.clone(),
            scenario,
            config.llm.tool_calling,
            Duration::from_millis(config.heist.max_model_outage_ms),
        );
        Self {
            outbox: Outbox::new(store.clone(), player.clients().memory.clone()),
            player,
            store,
            model,
            store_outage: StoreOutageRule {
                longest: Duration::from_millis(config.store.max_outage_ms),
            },
            control: RunControl::default(),
            context_messages: config.heist.context_messages,
            transcript: parking_lot::Mutex::new(None),
            config: config.clone(),
        }
    }

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
                scenario: self.player.scenario().name.clone(),
                seed: options.seed,
                planned_turns: options.turns,
                schedule: options.schedule.clone(),
                scheduled_time: options.scheduled_time.clone(),
                trigger: options.trigger,
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
            self.outbox
                .deliver_in_passing(session_id, 0, Owed::ClaimFirst)
                .await;
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
        let budgets = SessionBudgets::of_session(&self.config, &self.store, &plan.session_id).await;
        self.model.learn_slots().await;
        let native = self.model.session_uses_native_tools(&self.control).await;
        let mut last_error = None;
        let scenario = self.player.scenario();
        let order = HeistRunner::agent_order(scenario, plan.seed, plan.turns);
        let mut index = plan.first_turn as usize - 1;
        let mut outage: Option<Outage> = None;
        while index < order.len() {
            let turn_id = index as u32 + 1;
            if self.control.stop_requested() {
                return self.interrupt(report, turn_id).await;
            }
            if let Some(reason) = self.control.cancel_requested() {
                return self.cancel(report, turn_id, reason).await;
            }
            let agent = &scenario.agents[order[index]];
            let turn = SessionTurn {
                session_id: &plan.session_id,
                turn_id,
                total_turns: plan.turns,
                seed: plan.seed,
                native,
            };
            let tokens_before = report.tokens();
            let (error, owed) = match self
                .play_and_commit(&turn, agent, &mut report, observer)
                .await?
            {
                Committed::Recorded(error, owed) => (error, owed),
                Committed::ModelUnavailable(error) => {
                    let current = outage.get_or_insert_with(Outage::start);
                    current.saw(&error);
                    let waited = self
                        .model
                        .wait_for_the_model(turn_id, current, &self.control)
                        .await;
                    match waited {
                        Waited::Back => continue,
                        Waited::Stopped => match self.control.cancel_requested() {
                            Some(reason) => return self.cancel(report, turn_id, reason).await,
                            None => return self.interrupt(report, turn_id).await,
                        },
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
                .outbox
                .deliver_in_passing(&plan.session_id, report.memory_pending, owed)
                .await;
            index += 1;
            let last_turn = report.tokens() - tokens_before;
            if index < order.len() {
                let budget = budgets.spent(&self.config, &self.store, report.tokens(), last_turn);
                if let Some(spent) = budget.await {
                    return self.end_failed(report, spent.ends_session()).await;
                }
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
            prompt_tokens: 0,
            completion_tokens: 0,
            usage_estimated: 0,
            cost: None,
            fallback_turns: Vec::new(),
        };
        if plan.first_turn > 1 {
            let detail = self.store.session(&plan.session_id).await?;
            report.failed_turns = detail
                .messages
                .iter()
                .filter(|message| message.error.is_some())
                .count() as u32;
            let session = &detail.session;
            report.prompt_tokens = session.prompt_tokens.max(0) as u64;
            report.completion_tokens = session.completion_tokens.max(0) as u64;
            report.usage_estimated = session.usage_estimated.max(0) as u64;
            report.cost = session.cost;
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
        let play = async {
            let transcript = self
                .transcript(session_id)
                .await
                .map_err(|error| error.to_string());
            self.player.play_turn(turn, agent, transcript).await
        };
        let (played, journal) = journal::scope(play).instrument(turn_span.clone()).await;
        let played = match played {
            TurnResult::Played(played) => *played,
            TurnResult::ModelUnavailable(error) => {
                self.record_unavailable_calls(session_id, turn_id, journal)
                    .await;
                return Ok(Committed::ModelUnavailable(error));
            }
        };
        let PlayedTurn { mut record, tools } = played;
        record.service_calls = super::outbox::service_call_records(journal);
        tools.add_to(report);
        let what = format!("turn {turn_id}");
        let owed = match self
            .store_outage
            .through(&what, &self.control, || {
                self.store.record_turn_owing(record.clone(), OUTBOX_BATCH)
            })
            .await
        {
            Ok(owed) => owed,
            Err(error) => return Err(self.end_after_store_outage(session_id, &what, error).await),
        };
        self.remember_committed_turn(&record);
        report.count_turn(&record);
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
            .store_outage
            .through("the session's end", &self.control, || {
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
    /// unavailable, or a token budget is spent).
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

    /// Ends the session `cancelled` before `next_turn`, with the
    /// operator's reason: its turns so far stay as committed.
    async fn cancel(
        &self,
        mut report: RunReport,
        next_turn: u32,
        reason: String,
    ) -> Result<RunReport, HeistError> {
        let status = SessionStatus::Cancelled;
        if self
            .store
            .finish_session(&report.session_id, status, Some(&reason))
            .await?
        {
            metrics::counter!(names::SESSIONS_TOTAL, "status" => status.as_str()).increment(1);
        }
        tracing::warn!(next_turn, %reason, "session cancelled");
        report.status = status;
        report.failure_reason = Some(reason);
        Ok(report)
    }

    /// The calls of a turn the model was unavailable for: the turn is not
    /// committed (it is played again), but its failed calls are recorded
    /// under its turn id, so a session that waits out a dead model, and
    /// maybe fails, shows every call it made in `service_calls`.
    async fn record_unavailable_calls(
        &self,
        session_id: &str,
        turn_id: u32,
        journal: Vec<crate::resilience::journal::JournalEntry>,
    ) {
        let calls = super::outbox::service_call_records(journal);
        if calls.is_empty() {
            return;
        }
        if let Err(error) = self
            .store
            .record_service_calls(session_id, turn_id, calls)
            .await
        {
            tracing::warn!(turn_id, %error, "cannot record the calls made while the model was unavailable");
        }
    }

    /// After a store outage outlasted its limit: ends the session `failed`
    /// with the cause if the store can record that now, and otherwise
    /// leaves it `active`, for crash recovery at the next start. Metrics
    /// count only what the store recorded.
    async fn end_after_store_outage(
        &self,
        session_id: &str,
        what: &str,
        error: StoreError,
    ) -> HeistError {
        // Another node owns the session now, or it has already ended: this
        // run writes nothing more (fencing), not even its failure.
        if matches!(
            error,
            StoreError::Fenced { .. } | StoreError::SessionEnded { .. }
        ) {
            tracing::warn!(%error, "{what} not recorded; this run stops and writes nothing more");
            return error.into();
        }
        let reason = format!("{what} could not be recorded: {error}");
        match self
            .store
            .finish_session(session_id, SessionStatus::Failed, Some(&reason))
            .await
        {
            Ok(true) => {
                metrics::counter!(names::SESSIONS_TOTAL, "status" => "failed").increment(1);
                tracing::error!(%reason, "session failed: the store outage lasted too long");
            }
            // Its first ending stuck (another path ended it first).
            Ok(false) => tracing::warn!(%reason, "the session had already ended"),
            Err(finish_error) => tracing::error!(
                %reason, %finish_error,
                "cannot record the session's end either; it is left for crash recovery at the next start"
            ),
        }
        error.into()
    }

    /// The last few successful turns with their tool results, oldest first:
    /// from the store on a session's first turn (and on resume), then from
    /// the cache, which each commit extends. The store stays the source of
    /// truth; the cache only saves reading it back every turn.
    async fn transcript(&self, session_id: &str) -> Result<Vec<TranscriptEntry>, HeistError> {
        if let Some(entries) = self
            .transcript
            .lock()
            .as_ref()
            .and_then(|cache| cache.entries_of(session_id))
        {
            return Ok(entries);
        }
        let recent = self
            .store
            .recent_turns(session_id, self.context_messages)
            .await?;
        let cache = TranscriptCache::from_recent(session_id, &recent);
        let entries = cache.entries_of(session_id).unwrap_or_default();
        *self.transcript.lock() = Some(cache);
        Ok(entries)
    }

    /// Drops the cached transcript: the next turn reads it from the store.
    fn forget_transcript(&self) {
        *self.transcript.lock() = None;
    }

    /// Adds a committed turn to the cached transcript, if it is that
    /// session's.
    fn remember_committed_turn(&self, record: &TurnRecord) {
        if let Some(cache) = self.transcript.lock().as_mut() {
            cache.remember(record, self.context_messages);
        }
    }
}
