//! What the model sees on a turn: the agent's system prompt, the job, the
//! tool instructions and its compressed memory, then the recent transcript
//! with tool results. Failed turns never appear in it.

use super::{HeistError, HeistRunner, CONTEXT_RESULT_CHARS};
use crate::clients::ChatMessage;
use crate::config::ToolCalling;
use crate::heist::protocol::tool_instructions;
use crate::scenario::Agent;

impl HeistRunner {
    /// The last few successful turns with their tool results, oldest first.
    pub(super) async fn transcript(&self, session_id: &str) -> Result<String, HeistError> {
        let recent = self
            .store
            .recent_turns(session_id, self.config.heist.context_messages)
            .await?;
        let (messages, tools) = (recent.messages, recent.tool_usage);
        let mut transcript = String::new();
        for message in &messages {
            transcript.push_str(&format!(
                "{} ({}), turn {}: {}\n",
                message.agent_name,
                message.agent_role,
                message.turn_id,
                message.message.trim()
            ));
            for tool in tools.iter().filter(|tool| tool.turn_id == message.turn_id) {
                let shown = if tool.success {
                    tool.tool_result.as_str()
                } else {
                    tool.error.as_deref().unwrap_or("failed")
                };
                let cut: String = shown.chars().take(CONTEXT_RESULT_CHARS).collect();
                transcript.push_str(&format!(
                    "  [{} result: {}]\n",
                    tool.tool_name,
                    cut.replace('\n', " ")
                ));
            }
        }
        Ok(transcript)
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
