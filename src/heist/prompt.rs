//! What the model sees on a turn: the agent's system prompt, the job, the
//! tool instructions and its compressed memory, then the recent transcript
//! with tool results. Failed turns never appear in it.
//!
//! A prompt is kept within the model's context window: when the estimate
//! (characters over the ratio the client calibrated) plus `max_tokens`
//! would not fit, [`fit`] trims in a fixed order: the oldest transcript
//! messages, then the tool results, then the compressed memory, and last
//! lowers `max_tokens` to `llm.min_completion_tokens`. It builds text; it
//! never calls the model.

use std::collections::VecDeque;

use super::{HeistError, HeistRunner, CONTEXT_RESULT_CHARS};
use crate::clients::{ChatMessage, LlmClient, ToolSpec};
use crate::heist::protocol::tool_instructions;
use crate::scenario::Agent;
use crate::store::TurnRecord;

/// The session's recent transcript as the runner keeps it between turns.
#[derive(Debug)]
pub(super) struct TranscriptCache {
    session_id: String,
    entries: VecDeque<TranscriptEntry>,
}

/// A tool call as an earlier turn's transcript shows it.
struct ToolShown<'a> {
    name: &'a str,
    success: bool,
    result: &'a str,
    error: Option<&'a str>,
}

/// One earlier turn as the transcript shows it, from the store's rows or
/// from the record just committed (the same text either way).
fn transcript_entry<'a>(
    agent_name: &str,
    agent_role: &str,
    turn_id: i64,
    message: &str,
    tools: impl Iterator<Item = ToolShown<'a>>,
) -> TranscriptEntry {
    TranscriptEntry {
        line: format!(
            "{agent_name} ({agent_role}), turn {turn_id}: {}",
            message.trim()
        ),
        results: tools
            .map(|tool| {
                let shown = if tool.success {
                    tool.result
                } else {
                    tool.error.unwrap_or("failed")
                };
                let cut: String = shown.chars().take(CONTEXT_RESULT_CHARS).collect();
                format!("[{} result: {}]", tool.name, cut.replace('\n', " "))
            })
            .collect(),
    }
}

/// One earlier turn as the prompt shows it: its line, and its tool results.
#[derive(Debug, Clone)]
pub(super) struct TranscriptEntry {
    pub line: String,
    pub results: Vec<String>,
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

/// A prompt that fits, and what it cost to make it fit.
#[derive(Debug, Clone)]
pub(super) struct FittedPrompt {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    pub trimmed: bool,
}

impl HeistRunner {
    /// The last few successful turns with their tool results, oldest first:
    /// from the store on a session's first turn (and on resume), then from
    /// the runner's cache, which each commit extends. The store stays the
    /// source of truth; the cache only saves reading it back every turn.
    pub(super) async fn transcript(
        &self,
        session_id: &str,
    ) -> Result<Vec<TranscriptEntry>, HeistError> {
        if let Some(cache) = self.transcript_cache.lock().as_ref() {
            if cache.session_id == session_id {
                return Ok(cache.entries.iter().cloned().collect());
            }
        }
        let recent = self
            .store
            .recent_turns(session_id, self.config.heist.context_messages)
            .await?;
        let entries: VecDeque<TranscriptEntry> = recent
            .messages
            .iter()
            .map(|message| {
                let tools = recent
                    .tool_usage
                    .iter()
                    .filter(|tool| tool.turn_id == message.turn_id)
                    .map(|tool| ToolShown {
                        name: &tool.tool_name,
                        success: tool.success,
                        result: &tool.tool_result,
                        error: tool.error.as_deref(),
                    });
                transcript_entry(
                    &message.agent_name,
                    &message.agent_role,
                    message.turn_id,
                    &message.message,
                    tools,
                )
            })
            .collect();
        let transcript = entries.iter().cloned().collect();
        *self.transcript_cache.lock() = Some(TranscriptCache {
            session_id: session_id.to_string(),
            entries,
        });
        Ok(transcript)
    }

    /// Drops the cached transcript: the next turn reads it from the store.
    pub(super) fn forget_transcript(&self) {
        *self.transcript_cache.lock() = None;
    }

    /// Adds a committed turn to the cached transcript, as the store would
    /// return it: failed turns are left out, and only the last
    /// `context_messages` turns are kept.
    pub(super) fn remember_committed_turn(&self, record: &TurnRecord) {
        let mut cache = self.transcript_cache.lock();
        let Some(cache) = cache
            .as_mut()
            .filter(|cache| cache.session_id == record.session_id)
        else {
            return;
        };
        if record.error.is_some() {
            return;
        }
        let tools = record.tool_calls.iter().map(|call| ToolShown {
            name: &call.tool_name,
            success: call.success,
            result: &call.tool_result,
            error: call.error.as_deref(),
        });
        cache.entries.push_back(transcript_entry(
            &record.agent_name,
            &record.agent_role,
            i64::from(record.turn_id),
            &record.message,
            tools,
        ));
        while cache.entries.len() > self.config.heist.context_messages {
            cache.entries.pop_front();
        }
    }

    pub(super) fn prompt(&self, agent: &Agent, parts: &PromptParts) -> Vec<ChatMessage> {
        let documents: Vec<&str> = self.scenario.documents.keys().map(String::as_str).collect();
        let mut system = format!(
            "{}\n\nThe job: {}\n\n{}",
            agent.system_prompt.trim(),
            self.scenario.objective.trim(),
            tool_instructions(&agent.tools, &documents, parts.native)
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
    pub(super) fn fit(
        &self,
        agent: &Agent,
        mut parts: PromptParts,
        tools: &[ToolSpec],
    ) -> Result<FittedPrompt, String> {
        let llm = &self.clients.llm;
        let max_tokens = llm.max_tokens();
        let Some(window) = llm.context_tokens() else {
            return Ok(FittedPrompt {
                messages: self.prompt(agent, &parts),
                max_tokens,
                trimmed: false,
            });
        };
        let mut trimmed = false;
        loop {
            let messages = self.prompt(agent, &parts);
            let estimate = llm.estimate_tokens(&messages, tools);
            if estimate + max_tokens <= window {
                return Ok(FittedPrompt {
                    messages,
                    max_tokens,
                    trimmed,
                });
            }
            if !trim_once(&mut parts) {
                return self.lower_max_tokens(llm, messages, estimate, window);
            }
            trimmed = true;
        }
    }

    /// The last step: the smallest prompt, with what is left of the window
    /// for the reply, if that is at least `llm.min_completion_tokens`.
    fn lower_max_tokens(
        &self,
        llm: &LlmClient,
        messages: Vec<ChatMessage>,
        estimate: u32,
        window: u32,
    ) -> Result<FittedPrompt, String> {
        let minimum = self.config.llm.min_completion_tokens;
        let left = window.saturating_sub(estimate);
        if left >= minimum {
            return Ok(FittedPrompt {
                messages,
                max_tokens: left.min(llm.max_tokens()),
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
