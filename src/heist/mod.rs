//! The heist runner: one session, turn by turn. The planner speaks first,
//! then a seeded-random other agent, never the same twice in a row. Each turn
//! gets the agent's token, its compressed memory and the recent transcript,
//! asks the LLM, runs the `[TOOL:name:parameter]` requests the agent is
//! allowed, commits the turn (message, tool calls, memory outbox entry) in one
//! transaction, and then delivers the outbox to the memory service.
//!
//! [`HeistRunner`] is made of parts, each a type with its own fields and
//! its impl in its own file, so what a part may touch is a type fact:
//! - `session::SessionLoop` owns the store handle: the loop over turns, the
//!   session's ending and interruption, the pauses while the model
//!   (`outage::ModelWatch`) or the store (`store_outage::StoreOutageRule`)
//!   is unavailable, the transcript it reads and keeps (`transcript`), and
//!   the delivery of each commit's memory writes (`outbox::Outbox`, the
//!   other part that calls the store);
//! - `turn::TurnPlayer` plays one turn and returns its record: clients,
//!   config, scenario and the agents' tokens, and no store handle;
//! - `tools::ToolRunner` is the tool policy (quota, the agent's tools, the
//!   token; each request ends in a [`ToolOutcome`]);
//! - `prompt::PromptBuilder` builds and fits the prompt, with no I/O;
//!   `protocol` writes the tool instructions;
//! - `control::RunControl` is the stop signal, the operator's cancel and
//!   the notice sink.
//!
//! A failing service degrades a turn (the error is recorded in its message or
//! tool row) and the run goes on; only a store that cannot commit stops it,
//! because then nothing more could be recorded truthfully. An unavailable
//! model is different: no turn could say anything, so the session pauses
//! (up to `heist.max_model_outage_ms`) and plays the same turn again.

mod budget;
mod control;
mod outage;
mod outbox;
mod prompt;
pub mod protocol;
mod session;
mod store_outage;
mod tools;
mod transcript;
mod turn;

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::clients::Clients;
use crate::config::Config;
use crate::scenario::Scenario;
use crate::store::{RunTrigger, SessionStatus, StoreError, StoreHandle, TurnRecord};
pub use budget::{daily_budget_spent, utc_day, BudgetScope, BudgetSpent};
use session::SessionLoop;
pub use tools::ToolOutcome;
use turn::TurnPlayer;

/// Tool results longer than this are cut when carried into later prompts.
pub const CONTEXT_RESULT_CHARS: usize = 400;
/// Outbox entries delivered per pass, so a long backlog cannot stall a turn.
pub const OUTBOX_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HeistError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one run should do. There is no default: a run of zero turns is
/// not a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub turns: u32,
    pub seed: u64,
    /// The schedule and slot that started this run, if one did.
    pub schedule: Option<String>,
    pub scheduled_time: Option<String>,
    /// How a schedule's run was started; `None` for other runs.
    pub trigger: Option<RunTrigger>,
}

impl RunOptions {
    pub fn new(turns: u32, seed: u64) -> Self {
        Self {
            turns,
            seed,
            schedule: None,
            scheduled_time: None,
            trigger: None,
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
    /// The session's tokens, as its row in the store counts them (turns
    /// before a resume included).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Turns whose counts are heistd's estimate (the reply had no `usage`).
    pub usage_estimated: u64,
    /// What the tokens cost at the configured prices; none without prices.
    pub cost: Option<f64>,
    /// The turns (of this run) a fallback endpoint answered.
    pub fallback_turns: Vec<FallbackTurn>,
}

/// A turn a fallback answered: which, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackTurn {
    pub turn_id: u32,
    pub endpoint: String,
    pub model: String,
}

impl RunReport {
    /// The session's tokens so far, prompt and completion.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Adds a committed turn's tokens, cost and answering endpoint.
    fn count_turn(&mut self, record: &TurnRecord) {
        let usage = &record.usage;
        self.prompt_tokens += u64::from(usage.prompt_tokens);
        self.completion_tokens += u64::from(usage.completion_tokens);
        self.usage_estimated += u64::from(usage.estimated);
        if let Some(cost) = usage.cost {
            *self.cost.get_or_insert(0.0) += cost;
        }
        if record.fallback {
            self.fallback_turns.push(FallbackTurn {
                turn_id: record.turn_id,
                endpoint: record.endpoint.clone().unwrap_or_default(),
                model: record.model.clone().unwrap_or_default(),
            });
        }
    }
}

impl std::fmt::Display for FallbackTurn {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "turn {} answered by fallback {} at {}",
            self.turn_id, self.model, self.endpoint
        )
    }
}

/// One finished turn, for live output.
#[derive(Debug, Clone)]
pub struct TurnView<'a> {
    pub record: &'a TurnRecord,
    pub total_turns: u32,
    pub elapsed_ms: f64,
}

/// Watches each finished turn (the CLI prints it).
pub type TurnObserver<'a> = Option<&'a (dyn Fn(&TurnView<'_>) + Sync)>;

/// Something a person watching a run should know between turns.
#[derive(Debug, Clone, PartialEq)]
pub enum RunNotice {
    /// The model is unavailable: the session waits before `turn_id`, at
    /// most `remaining` more, probing it once a second.
    ModelPaused {
        turn_id: u32,
        remaining: std::time::Duration,
        last_error: String,
    },
    /// The model answered again after `paused`; `turn_id` is played now.
    ModelBack {
        turn_id: u32,
        paused: std::time::Duration,
    },
    /// Native tool calling was configured, but the model does not return
    /// tool calls: this session uses the text protocol.
    TextToolsFallback { model: String },
}

impl std::fmt::Display for RunNotice {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ModelPaused {
                turn_id,
                remaining,
                last_error,
            } => write!(
                formatter,
                "model unavailable before turn {turn_id} ({last_error}); waiting, giving up in {} s",
                remaining.as_secs()
            ),
            Self::ModelBack { turn_id, paused } => write!(
                formatter,
                "the model is back after {:.1} s; playing turn {turn_id}",
                paused.as_secs_f64()
            ),
            Self::TextToolsFallback { model } => write!(
                formatter,
                "native tool calling is not supported by {model}; using the text protocol"
            ),
        }
    }
}

/// Receives a run's notices (the CLI prints them; the daemon logs them).
pub type NoticeSink = Arc<dyn Fn(&RunNotice) + Send + Sync>;

/// Runs sessions: the public face of the parts (see the module's doc),
/// which the session loop holds.
pub struct HeistRunner {
    session: SessionLoop,
}

impl HeistRunner {
    pub fn new(
        config: Arc<Config>,
        scenario: Arc<Scenario>,
        clients: Clients,
        store: StoreHandle,
    ) -> Self {
        let player = TurnPlayer::new(config.clone(), scenario.clone(), clients);
        Self {
            session: SessionLoop::new(&config, scenario, player, store),
        }
    }

    /// Tells `notices` of pauses and fallbacks as they happen.
    pub fn with_notices(mut self, notices: NoticeSink) -> Self {
        self.session.control.notices = Some(notices);
        self
    }

    /// Stops sessions between turns once `stop` becomes true.
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.session.control.stop = Some(stop);
        self
    }

    /// Ends sessions `cancelled` after their current turn once `cancel`
    /// holds the operator's reason.
    pub fn with_cancel(mut self, cancel: watch::Receiver<Option<String>>) -> Self {
        self.session.control.cancel = Some(cancel);
        self
    }

    pub fn clients(&self) -> &Clients {
        self.session.player.clients()
    }

    /// Runs one whole session and returns how it went.
    pub async fn run(
        &self,
        options: RunOptions,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        self.session.run(options, observer).await
    }

    /// Creates the session (the audit row that makes the run exist); a
    /// schedule slot that already has a session is refused here.
    pub async fn start(&self, options: &RunOptions) -> Result<String, HeistError> {
        self.session.start(options).await
    }

    /// Plays every turn of a session made by [`Self::start`].
    pub async fn play(
        &self,
        session_id: &str,
        options: &RunOptions,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        self.session.play(session_id, options, observer).await
    }

    /// Continues a session a crash left `active`: same seed, same agent
    /// order, from the turn after its last committed one. Memory writes
    /// still in its outbox are delivered first.
    pub async fn resume(
        &self,
        session_id: &str,
        observer: TurnObserver<'_>,
    ) -> Result<RunReport, HeistError> {
        self.session.resume(session_id, observer).await
    }

    /// Delivers pending memory writes of a session; returns how many remain.
    /// The writes are claimed first, so with several nodes only one
    /// delivers them at a time, and the claim is given up afterwards.
    /// Within this process, one task at a time delivers a session's writes:
    /// another finds nothing to do.
    pub async fn deliver_outbox(&self, session_id: &str) -> Result<usize, HeistError> {
        self.session.outbox.deliver_outbox(session_id).await
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
