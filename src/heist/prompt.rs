//! What the model sees on a turn: the agent's system prompt, the job, the
//! tool instructions and its compressed memory, then the recent transcript
//! with tool results. Failed turns never appear in it.
//!
//! A prompt is kept within the model's context window: when the estimate
//! (characters over the ratio the client calibrated) plus `max_tokens`
//! would not fit, [`PromptBuilder::fit`] trims in a fixed order: the oldest
//! transcript messages, then the tool results, then the compressed memory,
//! and last lowers `max_tokens` to `llm.min_completion_tokens`.
//!
//! It is pure: it takes the scenario, the agent, what the turn gathered
//! and what is known of the model's window, and returns text. It holds no
//! client and no store, so it can neither call the model nor read a turn.

use super::protocol::{describe_tool, tool_instructions};
use super::transcript::TranscriptEntry;
use crate::clients::{ChatMessage, ToolSpec};
use crate::scenario::{Agent, Scenario};

/// Builds one agent's prompts in one scenario.
pub(super) struct PromptBuilder<'a> {
    pub scenario: &'a Scenario,
    pub agent: &'a Agent,
}

/// What a prompt is made of, before fitting.
#[derive(Debug, Clone)]
pub(super) struct PromptParts {
    pub memory: String,
    pub transcript: Vec<TranscriptEntry>,
    pub turn_id: u32,
    pub total_turns: u32,
    /// Tools are offered as native functions, not described for text.
    pub native: bool,
}

/// What is known of the model's room for a prompt, taken from the LLM
/// client when the turn asks (the window may have been learned since).
pub(super) struct ModelRoom<'a> {
    /// The context window in tokens, when configured or learned.
    pub window: Option<u32>,
    /// The configured `max_tokens`: what a reply may use when it fits.
    pub max_tokens: u32,
    /// `llm.min_completion_tokens`: the least a reply is left.
    pub min_completion_tokens: u32,
    /// Estimates a prompt's tokens (the client's calibrated ratio).
    pub estimate: &'a (dyn Fn(&[ChatMessage], &[ToolSpec]) -> u32 + Sync),
}

/// A prompt that fits, and what it cost to make it fit.
#[derive(Debug, Clone)]
pub(super) struct FittedPrompt {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    pub trimmed: bool,
}

impl PromptBuilder<'_> {
    /// The agent's tools as native function specs.
    pub fn native_tools(&self) -> Vec<ToolSpec> {
        let documents = self.documents();
        self.agent
            .tools
            .iter()
            .map(|tool| ToolSpec {
                name: tool.clone(),
                description: describe_tool(tool, &documents),
            })
            .collect()
    }

    /// The system and user messages of `parts`, untrimmed.
    pub fn messages(&self, parts: &PromptParts) -> Vec<ChatMessage> {
        let (scenario, agent) = (self.scenario, self.agent);
        let mut system = format!(
            "{}\n\nThe job: {}\n\n{}",
            agent.system_prompt.trim(),
            scenario.objective.trim(),
            tool_instructions(&agent.tools, &self.documents(), parts.native)
        );
        if !parts.memory.trim().is_empty() {
            system.push_str("\nWhat you said earlier in this session:\n");
            system.push_str(parts.memory.trim());
            system.push('\n');
        }
        let conversation = if parts.transcript.is_empty() {
            "Nobody has spoken yet.\n".to_string()
        } else {
            let mut text = String::from("The conversation so far:\n");
            for entry in &parts.transcript {
                text.push_str(&entry.line);
                text.push('\n');
                for result in &entry.results {
                    text.push_str("  ");
                    text.push_str(result);
                    text.push('\n');
                }
            }
            text
        };
        let user = format!(
            "{conversation}\nTurn {} of {}. It is your turn, {}. Reply in character.",
            parts.turn_id, parts.total_turns, agent.name
        );
        vec![
            ChatMessage {
                role: "system",
                content: system,
            },
            ChatMessage {
                role: "user",
                content: user,
            },
        ]
    }

    /// The prompt for `parts` within the model's window (when known),
    /// trimmed as little as needed; the error names the window, the size of
    /// the smallest prompt, and the keys to change.
    pub fn fit(
        &self,
        mut parts: PromptParts,
        tools: &[ToolSpec],
        room: &ModelRoom<'_>,
    ) -> Result<FittedPrompt, String> {
        let max_tokens = room.max_tokens;
        let Some(window) = room.window else {
            return Ok(FittedPrompt {
                messages: self.messages(&parts),
                max_tokens,
                trimmed: false,
            });
        };
        let mut trimmed = false;
        loop {
            let messages = self.messages(&parts);
            let estimate = (room.estimate)(&messages, tools);
            if estimate + max_tokens <= window {
                return Ok(FittedPrompt {
                    messages,
                    max_tokens,
                    trimmed,
                });
            }
            if !trim_once(&mut parts) {
                return lower_max_tokens(room, messages, estimate, window);
            }
            trimmed = true;
        }
    }

    fn documents(&self) -> Vec<&str> {
        self.scenario.documents.keys().map(String::as_str).collect()
    }
}

/// The last step: the smallest prompt, with what is left of the window
/// for the reply, if that is at least `llm.min_completion_tokens`.
fn lower_max_tokens(
    room: &ModelRoom<'_>,
    messages: Vec<ChatMessage>,
    estimate: u32,
    window: u32,
) -> Result<FittedPrompt, String> {
    let minimum = room.min_completion_tokens;
    let left = window.saturating_sub(estimate);
    if left >= minimum {
        return Ok(FittedPrompt {
            messages,
            max_tokens: left.min(room.max_tokens),
            trimmed: true,
        });
    }
    Err(format!(
        "the prompt does not fit the model's context window: {window} tokens, and even the \
         trimmed prompt is about {estimate} tokens plus at least {minimum} for the reply; \
         use a model with a larger context (llm.context_tokens, or the server's context size \
         setting), or lower llm.min_completion_tokens, heist.context_messages or \
         heist.memory_max_tokens"
    ))
}

/// Removes one thing from the prompt, in the fixed order (the oldest
/// messages down to the latest, then tool results, then the latest message,
/// then the memory); false when there is nothing left to remove.
fn trim_once(parts: &mut PromptParts) -> bool {
    if parts.transcript.len() > 1 {
        parts.transcript.remove(0);
        return true;
    }
    if let Some(entry) = parts
        .transcript
        .iter_mut()
        .find(|entry| !entry.results.is_empty())
    {
        entry.results.clear();
        return true;
    }
    if parts.transcript.pop().is_some() {
        return true;
    }
    if !parts.memory.is_empty() {
        parts.memory.clear();
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_goes_oldest_messages_then_results_then_the_last_message_then_memory() {
        let entry = |turn: u32| TranscriptEntry {
            line: format!("turn {turn}"),
            results: vec![format!("[calculator result: {turn}]")],
        };
        let mut parts = PromptParts {
            memory: "earlier".into(),
            transcript: vec![entry(1), entry(2), entry(3)],
            turn_id: 4,
            total_turns: 12,
            native: false,
        };
        let mut steps = Vec::new();
        while trim_once(&mut parts) {
            steps.push((
                parts.transcript.len(),
                parts
                    .transcript
                    .iter()
                    .map(|e| e.results.len())
                    .sum::<usize>(),
                parts.memory.is_empty(),
            ));
        }
        assert_eq!(
            steps,
            [
                (2, 2, false),
                (1, 1, false),
                (1, 0, false),
                (0, 0, false),
                (0, 0, true)
            ]
        );
        assert_eq!(parts.transcript.len(), 0);
    }
}
