//! One turn: gather the context (the agent's token, its compressed memory,
//! the recent transcript), ask the model, turn its reply into tool requests
//! (text and native calls, written into the message in the prototype's
//! notation), run them under the tool policy, and build the record the
//! session commits. It never writes to the store and never decides how the
//! session goes on.

use super::tools::ToolTally;
use super::{protocol, HeistRunner};
use crate::clients::{AccessToken, CallError, MemoryWrite, ModelReply, ToolSpec};
use crate::config::ToolCalling;
use crate::scenario::Agent;
use crate::store::TurnRecord;
use crate::wire::{parse_tool_requests, ToolRequest};

/// The memory service's summary quotes this many of the agent's latest
/// memories word for word (the prototype's `recent_count`).
const MEMORY_RECENT_COUNT: u32 = 3;
/// OpenAI-compatible servers read `seed` as a signed 32-bit integer
/// (llama.cpp and vLLM refuse larger ones), so the session's seed is cut to
/// its low 31 bits for the model.
const MODEL_SEED_MASK: u64 = 0x7FFF_FFFF;

/// A played turn: the record to commit, and how its tool calls went.
pub(super) struct PlayedTurn {
    pub record: TurnRecord,
    pub tools: ToolTally,
}

impl HeistRunner {
    pub(super) async fn play_turn(
        &self,
        session_id: &str,
        turn_id: u32,
        total_turns: u32,
        agent: &Agent,
        seed: u64,
    ) -> PlayedTurn {
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
        let reply = match self
            .ask_model(session_id, turn_id, total_turns, agent, seed)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                record.error = Some(error);
                return PlayedTurn {
                    record,
                    tools: ToolTally::default(),
                };
            }
        };
        let (message, requests) = requests_in(&reply);
        let (calls, tools) = self.run_requests(agent, requests, &token).await;
        record.tool_calls = calls;
        let write = MemoryWrite {
            agent_id: agent.name.clone(),
            turn_id: turn_id as i64,
            message: message.clone(),
            game_session_id: session_id.to_string(),
        };
        record.memory_payload = serde_json::to_string(&write).ok();
        record.message = message;
        PlayedTurn { record, tools }
    }

    /// Builds the prompt from the agent's memory and the transcript and
    /// asks the model. The error is the turn's recorded error.
    async fn ask_model(
        &self,
        session_id: &str,
        turn_id: u32,
        total_turns: u32,
        agent: &Agent,
        seed: u64,
    ) -> Result<ModelReply, String> {
        let memory = self.compressed_memory(session_id, turn_id, agent).await;
        let transcript = self
            .transcript(session_id)
            .await
            .map_err(|error| format!("cannot read the transcript: {error}"))?;
        let messages = self.prompt(agent, &memory, &transcript, turn_id, total_turns);
        let native_tools = self.native_tools(agent);
        self.clients
            .llm
            .chat(&messages, seed & MODEL_SEED_MASK, &native_tools)
            .await
            .map_err(|error| {
                tracing::warn!(turn_id, agent = %agent.name, %error, "LLM call failed; turn recorded as failed");
                error.to_string()
            })
    }

    /// The agent's compressed memory; without it the turn goes on.
    async fn compressed_memory(&self, session_id: &str, turn_id: u32, agent: &Agent) -> String {
        let memory = self
            .clients
            .memory
            .compressed(
                &agent.name,
                session_id,
                self.config.heist.memory_max_tokens,
                MEMORY_RECENT_COUNT,
            )
            .await;
        memory.unwrap_or_else(|error| {
            tracing::warn!(turn_id, %error, "no compressed memory this turn");
            String::new()
        })
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
}

/// The reply's message and every tool it asks for. Native calls are written
/// into the message in the prototype's notation, so the audit trail reads
/// the same either way (and the text is what later prompts and memory show).
fn requests_in(reply: &ModelReply) -> (String, Vec<ToolRequest>) {
    let mut message = reply.content.trim().to_string();
    let mut requests = parse_tool_requests(&message);
    for (tool, parameter) in &reply.tool_calls {
        let request = ToolRequest {
            tool: tool.clone(),
            parameter: parameter.clone(),
        };
        // A model that both writes and natively calls the same tool asked
        // once, not twice.
        if requests.contains(&request) {
            continue;
        }
        if !message.is_empty() {
            message.push(' ');
        }
        message.push_str(&request.notation());
        requests.push(request);
    }
    (message, requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_calls_are_written_into_the_message_once() {
        let reply = ModelReply {
            content: " Checking. [TOOL:calculator:2+2] ".into(),
            tool_calls: vec![
                ("calculator".into(), "2+2".into()),
                ("file_reader".into(), "vault_specs.txt".into()),
            ],
        };
        let (message, requests) = requests_in(&reply);
        assert_eq!(
            message,
            "Checking. [TOOL:calculator:2+2] [TOOL:file_reader:vault_specs.txt]"
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].tool, "file_reader");
    }
}
