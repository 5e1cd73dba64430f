//! The rehearsal model: an OpenAI-compatible endpoint (`POST
//! /v1/chat/completions`, `GET /v1/models`) that answers in character from
//! the scenario's rehearsal script. There is no language model behind it:
//! it finds the speaking agent from the system prompt ("You are the
//! hacker"), the turn number from the last user message ("Turn 7 of 12"),
//! and steps through the scripted lines deterministically from the request's `seed`.
//! Each agent rotates through its tools turn by turn, so a 12-turn run asks
//! for every tool.
//!
//! It must never pretend to be a real model: `/v1/models` says what it is.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{error_response, health_body, JsonBody};
use crate::scenario::Scenario;
use crate::wire::{
    parse_tool_requests, Companion, CHAT_COMPLETIONS_PATH, HEALTH_PATH, MODELS_PATH, OPENAI_PREFIX,
    REHEARSAL_MODEL_ID,
};

#[derive(Clone)]
pub struct RehearsalState {
    scenario: Arc<Scenario>,
    default_seed: u64,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Native function specs: when present, tool requests come back as
    /// `tool_calls` instead of `[TOOL:...]` in the text.
    #[serde(default)]
    pub tools: Vec<serde_json::Value>,
    /// `{"type": "function", "function": {"name": ...}}` forces that call
    /// (how heistd checks that a model supports native tool calling).
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
}

impl RehearsalState {
    pub fn new(scenario: Arc<Scenario>, default_seed: u64) -> Self {
        Self {
            scenario,
            default_seed,
        }
    }

    /// The scripted reply for a conversation, or why there is none.
    pub fn reply(&self, request: &ChatRequest) -> Result<String, String> {
        let system = request
            .messages
            .iter()
            .filter(|message| message.role == "system")
            .filter_map(|message| message.content.as_deref())
            .collect::<Vec<_>>()
            .join("\n");
        let agent = self
            .scenario
            .agents
            .iter()
            .find(|agent| system.contains(&format!("You are the {}", agent.name)))
            .ok_or_else(|| {
                "no scenario agent named in the system prompt (expected \"You are the <agent>\")"
                    .to_string()
            })?;
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|message| message.role == "user")
            .and_then(|message| message.content.as_deref());
        let turn = last_user.and_then(turn_number).unwrap_or(1);
        let seed = request.seed.unwrap_or(self.default_seed);
        let tool_index = (turn.wrapping_add(seed) % agent.tools.len().max(1) as u64) as usize;
        let tool = agent
            .tools
            .get(tool_index)
            .map(String::as_str)
            .unwrap_or_default();
        let lines: Vec<&str> = self
            .scenario
            .rehearsal
            .iter()
            .filter(|line| line.agent == agent.name && (line.tool == tool || tool.is_empty()))
            .map(|line| line.text.trim())
            .collect();
        if lines.is_empty() {
            return Err(format!(
                "the scenario has no rehearsal line for {} with {tool}",
                agent.name
            ));
        }
        // The agent comes back to this tool every `tools` turns; stepping
        // through its lines by that count plays them in turn rather than
        // at random, and a line the conversation still shows is skipped.
        let tools = agent.tools.len().max(1) as u64;
        let start = ((turn / tools).wrapping_add(seed / tools) % lines.len() as u64) as usize;
        let heard = last_user.unwrap_or_default();
        let chosen = (0..lines.len())
            .map(|step| lines[(start + step) % lines.len()])
            .find(|line| !heard.contains(*line))
            .unwrap_or(lines[start]);
        Ok(chosen.to_string())
    }
}

pub fn router(state: RehearsalState) -> Router {
    Router::new()
        .route(
            &format!("{OPENAI_PREFIX}{CHAT_COMPLETIONS_PATH}"),
            post(chat_completions),
        )
        .route(&format!("{OPENAI_PREFIX}{MODELS_PATH}"), get(models))
        .route(
            HEALTH_PATH,
            get(|| async { health_body(Companion::Rehearsal.name()) }),
        )
        .with_state(state)
}

async fn chat_completions(
    State(state): State<RehearsalState>,
    JsonBody(request): JsonBody<ChatRequest>,
) -> Response {
    if let Some(model) = &request.model {
        if model != REHEARSAL_MODEL_ID {
            return error_response(
                StatusCode::NOT_FOUND,
                format!("model `{model}` not found; this endpoint serves `{REHEARSAL_MODEL_ID}`"),
            );
        }
    }
    if let Some(forced) = request
        .tool_choice
        .as_ref()
        .and_then(|choice| choice["function"]["name"].as_str())
    {
        let call = serde_json::json!({
            "id": "call_0",
            "type": "function",
            "function": { "name": forced, "arguments": "{\"parameter\": \"\"}" },
        });
        return Json(serde_json::json!({
            "object": "chat.completion",
            "model": REHEARSAL_MODEL_ID,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": null, "tool_calls": [call] }, "finish_reason": "tool_calls" }],
        }))
        .into_response();
    }
    let content = match state.reply(&request) {
        Ok(content) => content,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, message),
    };
    let offered: Vec<&str> = request
        .tools
        .iter()
        .filter_map(|tool| tool["function"]["name"].as_str())
        .collect();
    let (content, tool_calls) = if offered.is_empty() {
        (content, Vec::new())
    } else {
        split_native(&content, &offered)
    };
    let prompt_chars: usize = request
        .messages
        .iter()
        .filter_map(|message| message.content.as_deref())
        .map(str::len)
        .sum();
    let completion_tokens = content.len().div_ceil(4);
    let prompt_tokens = prompt_chars.div_ceil(4);
    let mut message = serde_json::json!({ "role": "assistant", "content": content });
    if !tool_calls.is_empty() {
        message["tool_calls"] = serde_json::Value::Array(tool_calls);
    }
    let finish_reason = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    Json(serde_json::json!({
        "id": format!("rehearsal-{}", request.seed.unwrap_or(state.default_seed)),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": REHEARSAL_MODEL_ID,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}

/// Moves the script's `[TOOL:name:parameter]` requests for offered tools out
/// of the text and into OpenAI `tool_calls`, as a function-calling model
/// would answer.
fn split_native(content: &str, offered: &[&str]) -> (String, Vec<serde_json::Value>) {
    let requests = parse_tool_requests(content);
    let mut text = content.to_string();
    let mut calls = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        if !offered.contains(&request.tool.as_str()) {
            continue;
        }
        text = text.replacen(&request.notation(), "", 1);
        calls.push(serde_json::json!({
            "id": format!("call_{index}"),
            "type": "function",
            "function": {
                "name": request.tool,
                "arguments": serde_json::json!({ "parameter": request.parameter }).to_string(),
            },
        }));
    }
    (text.trim().to_string(), calls)
}

async fn models() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": REHEARSAL_MODEL_ID,
            "object": "model",
            "owned_by": "heistd",
            "description": "rehearsal model: scripted, seeded replies from the scenario; no language model behind it",
        }],
    }))
}

/// Finds `Turn N` in a prompt.
fn turn_number(text: &str) -> Option<u64> {
    let index = text.find("Turn ")?;
    let digits: String = text[index + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(agent: &str, turn: u64, seed: u64) -> ChatRequest {
        ChatRequest {
            model: Some(REHEARSAL_MODEL_ID.into()),
            messages: vec![
                ChatMessage {
                    role: "system".into(),
                    content: Some(format!("You are the {agent}, of course.")),
                },
                ChatMessage {
                    role: "user".into(),
                    content: Some(format!("Turn {turn} of 12. Your move.")),
                },
            ],
            seed: Some(seed),
            tools: Vec::new(),
            tool_choice: None,
        }
    }

    #[test]
    fn deterministic_per_seed_and_rotates_tools() {
        let state = RehearsalState::new(Arc::new(Scenario::embedded()), 0);
        for turn in 1..12 {
            assert_eq!(
                state.reply(&request("hacker", turn, 7)),
                state.reply(&request("hacker", turn, 7))
            );
        }
        let tools_used: std::collections::BTreeSet<String> = (1..=6)
            .map(|turn| state.reply(&request("planner", turn, 3)).expect("reply"))
            .filter_map(|reply| {
                reply
                    .split("[TOOL:")
                    .nth(1)
                    .and_then(|rest| rest.split(':').next())
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(tools_used.len(), 3, "{tools_used:?}");
        assert!(state.reply(&request("nobody", 1, 1)).is_err());
    }

    #[test]
    fn offered_tools_come_back_as_native_calls() {
        let line = "Checking the rota. [TOOL:database_query:SELECT name FROM guards]";
        let (text, calls) = split_native(line, &["database_query", "calculator"]);
        assert_eq!(text, "Checking the rota.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["name"], "database_query");
        let arguments: serde_json::Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().expect("string"))
                .expect("json");
        assert_eq!(arguments["parameter"], "SELECT name FROM guards");
        let (kept, none) = split_native(line, &["calculator"]);
        assert_eq!(
            (kept.as_str(), none.len()),
            (line, 0),
            "a tool not offered stays in the text"
        );
    }
}
