//! The `[heist]` section: what one heist is when neither the command line
//! nor a schedule says otherwise (turns, scenario, seed) and the bounds of
//! each turn's prompt and tool calls.
//!
//! This is only configuration; `heist` plays it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::MAX_TURNS;

/// `[heist]`: the length of a heist, its scenario and seed, and the bounds
/// of each turn.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeistConfig {
    /// Turns in one heist when the command line does not say; 1 to 1000,
    /// as on the command line, in a schedule and in `POST /api/v1/runs`.
    #[serde(default = "default_turns")]
    pub turns: u32,
    /// A scenario directory holding `scenario.toml`, `documents/` and
    /// `shifts.sql`; unset means the bank scenario built into the binary.
    #[serde(default)]
    pub scenario: Option<PathBuf>,
    /// Fixes the agent order and the rehearsal transcript; random per run
    /// when unset.
    #[serde(default)]
    pub seed: Option<u64>,
    /// How many earlier messages each prompt carries verbatim (at most 100).
    #[serde(default = "default_context_messages")]
    pub context_messages: usize,
    /// Tool requests beyond this in one reply are recorded as refused, so a
    /// chatty model cannot turn one turn into a storm of calls.
    #[serde(default = "default_max_tool_calls")]
    pub max_tool_calls_per_turn: usize,
    /// The token budget asked of the memory service's compressed summary
    /// that each prompt carries.
    #[serde(default = "default_memory_max_tokens")]
    pub memory_max_tokens: u32,
    /// How long a session waits for an unavailable model (refused
    /// connections, timeouts, 5xx, an open breaker) before it ends
    /// `failed` with the last real error; turns are not spent meanwhile.
    #[serde(default = "default_max_model_outage_ms")]
    pub max_model_outage_ms: u64,
    /// Tokens (prompt plus completion, as the server's `usage` or heistd's
    /// estimate counts them) one session may use; 0: no limit. A session
    /// whose next turn would pass it (the next turn taken to cost what the
    /// last one did) ends after its current turn, `failed`, the reason
    /// naming this key and the figures.
    #[serde(default)]
    pub max_tokens_per_session: u64,
}

impl Default for HeistConfig {
    fn default() -> Self {
        Self {
            turns: default_turns(),
            scenario: None,
            seed: None,
            context_messages: default_context_messages(),
            max_tool_calls_per_turn: default_max_tool_calls(),
            memory_max_tokens: default_memory_max_tokens(),
            max_model_outage_ms: default_max_model_outage_ms(),
            max_tokens_per_session: 0,
        }
    }
}

impl HeistConfig {
    /// Checks the values; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=MAX_TURNS).contains(&self.turns) {
            return Err((
                "heist.turns".into(),
                format!("must be from 1 to {MAX_TURNS}"),
            ));
        }
        if self.context_messages > 100 {
            return Err((
                "heist.context_messages".into(),
                "must be at most 100".into(),
            ));
        }
        Ok(())
    }
}

fn default_turns() -> u32 {
    12
}

fn default_context_messages() -> usize {
    5
}

fn default_max_tool_calls() -> usize {
    3
}

fn default_memory_max_tokens() -> u32 {
    300
}

fn default_max_model_outage_ms() -> u64 {
    300_000
}
