//! The heist runner: one session, turn by turn. The planner speaks first,
//! then a seeded-random other agent, never the same twice in a row. Each turn
//! gets the agent's token, its compressed memory and the recent transcript,
//! asks the LLM, runs the `[TOOL:name:parameter]` requests the agent is
//! allowed, commits the turn (message, tool calls, memory outbox entry) in one
//! transaction, and then delivers the outbox to the memory service.
//!
//! A failing service degrades a turn (the error is recorded in its message or
//! tool row) and the run goes on; only a store that cannot commit stops it,
//! because then nothing more could be recorded truthfully.

mod outbox;
mod prompt;
pub mod protocol;

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::clients::{AccessToken, CallError, Clients, MemoryWrite, TokenCache, ToolSpec};
use crate::config::{Config, ToolCalling};
use crate::metrics as names;
use crate::resilience::journal;
use crate::scenario::{Agent, Scenario};
use crate::store::{
    NewSession, ServiceCallRecord, SessionStatus, StoreError, StoreHandle, ToolCallRecord,
    TurnRecord,
};
use crate::wire::{parse_tool_requests, ToolRequest};

/// Tool results longer than this are cut when carried into later prompts.
pub const CONTEXT_RESULT_CHARS: usize = 400;
/// Outbox entries delivered per pass, so a long backlog cannot stall a turn.
pub const OUTBOX_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HeistError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one run should do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub turns: u32,
    pub seed: u64,
    /// The schedule and slot that started this run, if one did.
    pub schedule: Option<String>,
    pub scheduled_time: Option<String>,
}

impl RunOptions {
    pub fn new(turns: u32, seed: u64) -> Self {
        Self {
            turns,
            seed,
            schedule: None,
            scheduled_time: None,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub session_id: String,
    pub status: SessionStatus,
    pub failure_reason: Option<String>,
    pub turns: u32,
    pub failed_turns: u32,
    pub tool_calls_succeeded: u32,
    pub tool_calls_failed: u32,
    pub tool_calls_refused: u32,
    /// Memory writes still in the outbox at the end (service down).
    pub memory_pending: usize,
}

/// One finished turn, for live output.
#[derive(Debug, Clone)]
pub struct TurnView<'a> {
    pub record: &'a TurnRecord,
    pub total_turns: u32,
    pub elapsed_ms: f64,
}

pub struct HeistRunner {
    config: Arc<Config>,
    scenario: Arc<Scenario>,
    clients: Clients,
    store: StoreHandle,
    tokens: TokenCache,
    /// Set to true when the daemon stops: the session ends `interrupted`
    /// before its next turn.
    stop: Option<watch::Receiver<bool>>,
}

impl HeistRunner {
    pub fn new(
        config: Arc<Config>,
        scenario: Arc<Scenario>,
        clients: Clients,
        store: StoreHandle,
    ) -> Self {
        Self {
            config,
            scenario,
            clients,
            store,
            tokens: TokenCache::default(),
            stop: None,
        }
    }

    /// Stops sessions between turns once `stop` becomes true.
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

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

    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The agent order of a session: planner first, then seeded random
    /// choices that never repeat the previous speaker.
    pub fn agent_order(scenario: &Scenario, seed: u64, turns: u32) -> Vec<usize> {
        let mut random = ChaCha8Rng::seed_from_u64(seed);
        let first = scenario
            .agents
            .iter()
            .position(|agent| agent.name == "planner")
            .unwrap_or(0);
        let mut order = Vec::with_capacity(turns as usize);
        for turn in 0..turns {
            let next = match order.last() {
                None => first,
                Some(&previous) => {
                    // Pick among the others: a draw over n-1 slots, shifted past the previous speaker.
                    let draw = random.random_range(0..scenario.agents.len() - 1);
                    if draw >= previous {
                        draw + 1
                    } else {
                        draw
                    }
                }
            };
            debug_assert!(turn == 0 || Some(&next) != order.last());
            order.push(next);
        }
        order
    }

    /// Runs one whole session and returns how it went.
    pub async fn run(
        &self,
        options: RunOptions,
        observer: Option<&(dyn Fn(&TurnView<'_>) + Sync)>,
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
        observer: Option<&(dyn Fn(&TurnView<'_>) + Sync)>,
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
            self.play_session(session_id.to_string(), seed, turns, 1, observer)
                .await
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
        observer: Option<&(dyn Fn(&TurnView<'_>) + Sync)>,
    ) -> Result<RunReport, HeistError> {
        let detail = self.store.session(session_id).await?;
        let last_turn = self.store.last_turn(session_id).await?;
        let seed = detail.session.seed.unwrap_or_default() as u64;
        let turns = detail.session.planned_turns.unwrap_or_default().max(0) as u32;
        let span = tracing::info_span!("session", session_id = %session_id);
        async move {
            tracing::info!(seed, turns, last_turn, "resuming session");
            self.deliver_outbox(session_id).await?;
            self.play_session(session_id.to_string(), seed, turns, last_turn + 1, observer)
                .await
        }
        .instrument(span)
        .await
    }

    async fn play_session(
        &self,
        session_id: String,
        seed: u64,
        turns: u32,
        first_turn: u32,
        observer: Option<&(dyn Fn(&TurnView<'_>) + Sync)>,
    ) -> Result<RunReport, HeistError> {
        let mut report = RunReport {
            session_id: session_id.clone(),
            status: SessionStatus::Active,
            failure_reason: None,
            turns: first_turn.saturating_sub(1),
            failed_turns: 0,
            tool_calls_succeeded: 0,
            tool_calls_failed: 0,
            tool_calls_refused: 0,
            memory_pending: 0,
        };
        if first_turn > 1 {
            let detail = self.store.session(&session_id).await?;
            report.failed_turns = detail
                .messages
                .iter()
                .filter(|message| message.error.is_some())
                .count() as u32;
        }
        let mut last_error = None;
        for (index, agent_index) in Self::agent_order(&self.scenario, seed, turns)
            .into_iter()
            .enumerate()
            .skip(first_turn as usize - 1)
        {
            let turn_id = index as u32 + 1;
            if self.stop.as_ref().is_some_and(|stop| *stop.borrow()) {
                return self.interrupt(report, turn_id).await;
            }
            let agent = &self.scenario.agents[agent_index];
            let started = Instant::now();
            let turn_span = tracing::info_span!("turn", turn_id, agent = %agent.name);
            let (mut record, journal) =
                journal::scope(self.play_turn(&session_id, turn_id, turns, agent, seed))
                    .instrument(turn_span.clone())
                    .await;
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
            let outcome = if record.error.is_some() {
                "failed"
            } else {
                "ok"
            };
            for call in &record.tool_calls {
                match call_outcome(call) {
                    "success" => report.tool_calls_succeeded += 1,
                    "refused" => report.tool_calls_refused += 1,
                    _ => report.tool_calls_failed += 1,
                }
            }
            if let Err(error) = self.store.record_turn(record.clone()).await {
                tracing::error!(turn_id, %error, "cannot commit turn; stopping the session");
                let reason = format!("turn {turn_id} could not be recorded: {error}");
                let _ = self
                    .store
                    .finish_session(&session_id, SessionStatus::Failed, Some(&reason))
                    .await;
                metrics::counter!(names::SESSIONS_TOTAL, "status" => "failed").increment(1);
                return Err(error.into());
            }
            report.turns += 1;
            if let Some(error) = &record.error {
                report.failed_turns += 1;
                last_error = Some(error.clone());
            }
            let elapsed = started.elapsed();
            metrics::counter!(names::TURNS_TOTAL, "agent" => agent.name.clone(), "outcome" => outcome).increment(1);
            metrics::histogram!(names::TURN_DURATION_SECONDS).record(elapsed.as_secs_f64());
            turn_span.in_scope(|| {
                tracing::info!(
                    outcome,
                    tools = record.tool_calls.len(),
                    elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                    "turn recorded"
                )
            });
            if let Some(observer) = observer {
                observer(&TurnView {
                    record: &record,
                    total_turns: turns,
                    elapsed_ms: elapsed.as_secs_f64() * 1000.0,
                });
            }
            report.memory_pending = self.deliver_outbox(&session_id).await?;
            if turn_id < turns {
                self.pause_while_the_model_is_unavailable(turn_id).await;
            }
        }
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
            .finish_session(&session_id, status, reason.as_deref())
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

    async fn play_turn(
        &self,
        session_id: &str,
        turn_id: u32,
        total_turns: u32,
        agent: &Agent,
        seed: u64,
    ) -> TurnRecord {
        let mut record = TurnRecord {
            session_id: session_id.to_string(),
            turn_id,
            agent_name: agent.name.clone(),
            agent_role: agent.role.clone(),
            message: String::new(),
            error: None,
            tool_calls: Vec::new(),
            memory_payload: None,
            service_calls: Vec::new(),
        };
        let token = self.token_for(agent).await;
        let memory = match self
            .clients
            .memory
            .compressed(
                &agent.name,
                session_id,
                self.config.heist.memory_max_tokens,
                3,
            )
            .await
        {
            Ok(summary) => summary,
            Err(error) => {
                tracing::warn!(turn_id, %error, "no compressed memory this turn");
                String::new()
            }
        };
        let transcript = match self.transcript(session_id).await {
            Ok(transcript) => transcript,
            Err(error) => {
                record.error = Some(format!("cannot read the transcript: {error}"));
                return record;
            }
        };
        let messages = self.prompt(agent, &memory, &transcript, turn_id, total_turns);
        let native_tools = self.native_tools(agent);
        let reply = match self
            .clients
            .llm
            .chat(&messages, seed & 0x7FFF_FFFF, &native_tools)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(turn_id, agent = %agent.name, %error, "LLM call failed; turn recorded as failed");
                record.error = Some(error.to_string());
                return record;
            }
        };
        // Native calls are written into the stored message in the
        // prototype's notation, so the audit trail reads the same either way
        // (and the text is what later prompts and memory show).
        let mut message = reply.content.trim().to_string();
        let mut requests = parse_tool_requests(&message);
        for (tool, parameter) in &reply.tool_calls {
            let request = ToolRequest {
                tool: tool.clone(),
                parameter: parameter.clone(),
            };
            // A model that both writes and natively calls the same tool
            // asked once, not twice.
            if requests.contains(&request) {
                continue;
            }
            message.push_str(&format!(
                "{}[TOOL:{tool}:{parameter}]",
                if message.is_empty() { "" } else { " " }
            ));
            requests.push(request);
        }
        for (index, request) in requests.into_iter().enumerate() {
            let call = if index >= self.config.heist.max_tool_calls_per_turn {
                refused(
                    &request.tool,
                    &request.parameter,
                    format!(
                        "more than {} tool calls in one turn",
                        self.config.heist.max_tool_calls_per_turn
                    ),
                )
            } else if !agent.may_use(&request.tool) {
                refused(
                    &request.tool,
                    &request.parameter,
                    format!("agent {} may not use {}", agent.name, request.tool),
                )
            } else {
                match &token {
                    Err(error) => failed_call(
                        &request.tool,
                        &request.parameter,
                        format!("no access token: {error}"),
                        0.0,
                    ),
                    Ok(token) => {
                        self.run_tool(agent, &request.tool, &request.parameter, token)
                            .await
                    }
                }
            };
            metrics::counter!(names::TOOL_CALLS_TOTAL, "tool" => tool_label(&request.tool), "outcome" => call_outcome(&call)).increment(1);
            record.tool_calls.push(call);
        }
        let write = MemoryWrite {
            agent_id: agent.name.clone(),
            turn_id: turn_id as i64,
            message: message.clone(),
            game_session_id: session_id.to_string(),
        };
        record.memory_payload = serde_json::to_string(&write).ok();
        record.message = message;
        record
    }

    /// With the model's breaker open, every turn would fail in microseconds
    /// and the session would burn its turns in a blink: the session waits
    /// out the breaker's open period instead (or until told to stop), and
    /// the next turn is its half-open probe.
    async fn pause_while_the_model_is_unavailable(&self, turn_id: u32) {
        if self.clients.llm.service.breaker_state() != crate::resilience::BreakerState::Open {
            return;
        }
        let pause =
            std::time::Duration::from_millis(self.config.llm.policy.breaker.wait_in_open_ms);
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

    /// The agent's tools as native function specs, when the config asks
    /// for native tool calling; none otherwise.
    fn native_tools(&self, agent: &Agent) -> Vec<ToolSpec> {
        if self.config.llm.tool_calling != ToolCalling::Native {
            return Vec::new();
        }
        let documents: Vec<&str> = self.scenario.documents.keys().map(String::as_str).collect();
        agent
            .tools
            .iter()
            .map(|tool| ToolSpec {
                name: tool.clone(),
                description: protocol::describe_tool(tool, &documents),
            })
            .collect()
    }

    async fn token_for(&self, agent: &Agent) -> Result<AccessToken, CallError> {
        let Some(secret) = self.config.client_secret(&agent.name) else {
            return Err(CallError::Refused {
                service: "oauth".into(),
                message: format!("no client secret configured for agent {}", agent.name),
            });
        };
        let token = self
            .tokens
            .get(&self.clients.oauth, &agent.name, secret, &agent.scopes())
            .await;
        if let Err(error) = &token {
            tracing::warn!(agent = %agent.name, %error, "no access token; tool calls will fail this turn");
        }
        token
    }

    async fn run_tool(
        &self,
        agent: &Agent,
        tool: &str,
        parameter: &str,
        token: &AccessToken,
    ) -> ToolCallRecord {
        let started = Instant::now();
        let outcome = self.clients.tools.call(tool, parameter, &token.value).await;
        if matches!(outcome, Err(CallError::Status { status: 401, .. })) {
            // The token is no longer accepted (the signing key changed):
            // fetch a new one next time instead of waiting for its expiry.
            self.tokens.evict(&agent.name).await;
        }
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        match outcome {
            Ok(result) => ToolCallRecord {
                tool_name: tool.into(),
                tool_params: parameter.into(),
                tool_result: result,
                success: true,
                error: None,
                duration_ms,
            },
            Err(error) => failed_call(tool, parameter, error.to_string(), duration_ms),
        }
    }
}

/// Starts every refusal's error text, so refusals can be told from failures.
pub const REFUSED_PREFIX: &str = "refused: ";

/// A recorded call as `success`, `refused` (never sent) or `failure`: the
/// metric label, and how run reports count it.
fn call_outcome(call: &ToolCallRecord) -> &'static str {
    match (call.success, call.error.as_deref()) {
        (true, _) => "success",
        (false, Some(error)) if error.starts_with(REFUSED_PREFIX) => "refused",
        (false, _) => "failure",
    }
}

fn refused(tool: &str, parameter: &str, reason: String) -> ToolCallRecord {
    failed_call(tool, parameter, format!("{REFUSED_PREFIX}{reason}"), 0.0)
}

fn failed_call(tool: &str, parameter: &str, error: String, duration_ms: f64) -> ToolCallRecord {
    ToolCallRecord {
        tool_name: tool.into(),
        tool_params: parameter.into(),
        tool_result: String::new(),
        success: false,
        error: Some(error),
        duration_ms,
    }
}

/// Tool names come from model output; only known ones become label values.
fn tool_label(tool: &str) -> &'static str {
    crate::wire::TOOL_NAMES
        .iter()
        .copied()
        .find(|known| *known == tool)
        .unwrap_or("unknown")
}

/// A fresh random seed for a session without one.
/// 53 bits, so the seed survives JSON tools that read numbers as doubles
/// (jq, JavaScript) and can be copied back to `--seed`.
pub fn random_seed() -> u64 {
    rand::rng().random::<u64>() >> 11
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_starts_with_the_planner_never_repeats_and_follows_the_seed() {
        let scenario = Scenario::embedded();
        for seed in 0..50 {
            let order = HeistRunner::agent_order(&scenario, seed, 30);
            assert_eq!(scenario.agents[order[0]].name, "planner");
            assert!(
                order.windows(2).all(|pair| pair[0] != pair[1]),
                "seed {seed}: {order:?}"
            );
            assert_eq!(order, HeistRunner::agent_order(&scenario, seed, 30));
        }
        assert_ne!(
            HeistRunner::agent_order(&scenario, 1, 30),
            HeistRunner::agent_order(&scenario, 2, 30)
        );
    }
}
