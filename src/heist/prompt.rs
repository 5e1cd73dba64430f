//! What the model sees on a turn: the agent's system prompt, the job, the
//! tool instructions and its compressed memory, then the recent transcript
//! with tool results. Failed turns never appear in it.

use std::collections::VecDeque;

use super::{HeistError, HeistRunner, CONTEXT_RESULT_CHARS};
use crate::clients::ChatMessage;
use crate::config::ToolCalling;
use crate::heist::protocol::tool_instructions;
use crate::scenario::Agent;
use crate::store::TurnRecord;

/// The recent transcript of the session a runner is playing, one rendered
/// block per successful turn, oldest first. Filled from the store on the
/// first turn (and on resume) and then from each committed turn, so a turn
/// does not read the transcript back from the store: that read was a sixth
/// of the daemon's instructions per turn under load (BENCHMARKS.md). The
/// store stays the source of truth: a new runner, or another session,
/// reads it again.
#[derive(Default)]
pub(super) struct TranscriptCache {
    session_id: String,
    turns: VecDeque<String>,
}

impl HeistRunner {
    /// The last few successful turns with their tool results, oldest first.
    pub(super) async fn transcript(&self, session_id: &str) -> Result<String, HeistError> {
        if let Some(cache) = self.transcript_cache.lock().as_ref() {
            if cache.session_id == session_id {
                return Ok(cache.turns.iter().map(String::as_str).collect());
            }
        }
        let recent = self
            .store
            .recent_turns(session_id, self.config.heist.context_messages)
            .await?;
        let turns: VecDeque<String> = recent
            .messages
            .iter()
            .map(|message| {
                let tools = recent
                    .tool_usage
                    .iter()
                    .filter(|tool| tool.turn_id == message.turn_id)
                    .map(|tool| {
                        (
                            tool.tool_name.as_str(),
                            tool.success,
                            tool.tool_result.as_str(),
                            tool.error.as_deref(),
                        )
                    });
                render_turn(
                    &message.agent_name,
                    &message.agent_role,
                    message.turn_id,
                    &message.message,
                    tools,
                )
            })
            .collect();
        let transcript = turns.iter().map(String::as_str).collect();
        *self.transcript_cache.lock() = Some(TranscriptCache {
            session_id: session_id.to_string(),
            turns,
        });
        Ok(transcript)
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
        let tools = record.tool_calls.iter().map(|call| {
            (
                call.tool_name.as_str(),
                call.success,
                call.tool_result.as_str(),
                call.error.as_deref(),
            )
        });
        cache.turns.push_back(render_turn(
            &record.agent_name,
            &record.agent_role,
            i64::from(record.turn_id),
            &record.message,
            tools,
        ));
        while cache.turns.len() > self.config.heist.context_messages {
            cache.turns.pop_front();
        }
    }

    pub(super) fn prompt(
        &self,
        agent: &Agent,
        memory: &str,
        transcript: &str,
        turn_id: u32,
        total_turns: u32,
    ) -> Vec<ChatMessage> {
        let documents: Vec<&str> = self.scenario.documents.keys().map(String::as_str).collect();
        let mut system = format!(
            "{}\n\nThe job: {}\n\n{}",
            agent.system_prompt.trim(),
            self.scenario.objective.trim(),
            tool_instructions(
                &agent.tools,
                &documents,
                self.config.llm.tool_calling == ToolCalling::Native
            )
        );
        if !memory.trim().is_empty() {
            system.push_str("\nWhat you said earlier in this session:\n");
            system.push_str(memory.trim());
            system.push('\n');
        }
        let conversation = if transcript.is_empty() {
            "Nobody has spoken yet.\n".to_string()
        } else {
            format!("The conversation so far:\n{transcript}")
        };
        let user = format!("{conversation}\nTurn {turn_id} of {total_turns}. It is your turn, {}. Reply in character.", agent.name);
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
}

/// One turn of the transcript: the agent's line, then each tool's result
/// (or error), cut to `CONTEXT_RESULT_CHARS` on one line.
fn render_turn<'a>(
    agent_name: &str,
    agent_role: &str,
    turn_id: i64,
    message: &str,
    tools: impl Iterator<Item = (&'a str, bool, &'a str, Option<&'a str>)>,
) -> String {
    let mut block = format!(
        "{agent_name} ({agent_role}), turn {turn_id}: {}\n",
        message.trim()
    );
    for (tool_name, success, result, error) in tools {
        let shown = if success {
            result
        } else {
            error.unwrap_or("failed")
        };
        let cut: String = shown.chars().take(CONTEXT_RESULT_CHARS).collect();
        block.push_str(&format!(
            "  [{tool_name} result: {}]\n",
            cut.replace('\n', " ")
        ));
    }
    block
}
