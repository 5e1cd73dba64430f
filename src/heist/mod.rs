//! The heist runner: one session, turn by turn. The planner speaks first,
//! then a seeded-random other agent, never the same twice in a row. Each turn
//! gets the agent's token, its compressed memory and the recent transcript,
//! asks the LLM, runs the `[TOOL:name:parameter]` requests the agent is
//! allowed, commits the turn (message, tool calls, memory outbox entry) in one
//! transaction, and then delivers the outbox to the memory service.
//!
//! The pieces: `session` (the loop over turns, its ending, interruption and
//! the pause while the model is unavailable, in `outage`), `turn` (one turn: gather
//! context, ask the model, run the tools, build the record), `tools` (the
//! tool policy: quota, the agent's tools, the token, and [`ToolOutcome`]),
//! `prompt`, `outbox` and `protocol`.
//!
//! A failing service degrades a turn (the error is recorded in its message or
//! tool row) and the run goes on; only a store that cannot commit stops it,
//! because then nothing more could be recorded truthfully. An unavailable
//! model is different: no turn could say anything, so the session pauses
//! (up to `heist.max_model_outage_ms`) and plays the same turn again.

mod outage;
mod outbox;
mod prompt;
pub mod protocol;
mod session;
mod store_outage;
mod tools;
mod turn;

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::clients::{Clients, TokenCache};
use crate::config::Config;
use crate::scenario::Scenario;
use crate::store::{SessionStatus, StoreError, StoreHandle, TurnRecord};
pub use tools::ToolOutcome;

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

pub struct HeistRunner {
    config: Arc<Config>,
    scenario: Arc<Scenario>,
    clients: Clients,
    store: StoreHandle,
    tokens: TokenCache,
    /// The recent transcript of the session being played, kept so a turn
    /// does not read it back from the store.
    transcript_cache: parking_lot::Mutex<Option<prompt::TranscriptCache>>,
    /// Set to true when the daemon stops: the session ends `interrupted`
    /// before its next turn.
    stop: Option<watch::Receiver<bool>>,
    /// Told of pauses and fallbacks, besides the log.
    notices: Option<NoticeSink>,
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
            transcript_cache: parking_lot::Mutex::new(None),
            stop: None,
            notices: None,
        }
    }

    /// Tells `notices` of pauses and fallbacks as they happen.
    pub fn with_notices(mut self, notices: NoticeSink) -> Self {
        self.notices = Some(notices);
        self
    }

    /// Stops sessions between turns once `stop` becomes true.
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// Sleeps `pause`; false when told to stop first.
    pub(super) async fn sleep_unless_stopped(&self, pause: std::time::Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = async {
                match stop.as_mut() {
                    Some(stop) => { let _ = stop.wait_for(|stop| *stop).await; }
                    None => std::future::pending::<()>().await,
                }
            } => false,
        }
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
