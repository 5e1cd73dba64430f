//! The rehearsal model: an OpenAI-compatible endpoint (`POST
//! /v1/chat/completions`, `GET /v1/models`) that answers in character from
//! the scenario's rehearsal script. There is no language model behind it:
//! it finds the speaking agent from the system prompt ("You are the
//! hacker"), the turn number from the last user message ("Turn 7 of 12"),
//! and steps through the scripted lines deterministically from the request's `seed`.
//! Each agent rotates through its tools turn by turn, so a 12-turn run asks
//! for every tool. Asked to stream (`stream: true`), it answers in
//! server-sent events as OpenAI does: the content in a few pieces, each
//! tool call's arguments in pieces, `usage` in a last event when
//! `stream_options.include_usage` asks for it, then `data: [DONE]`.
//!
//! It must never pretend to be a real model: `/v1/models` says what it is.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{error_response, health_body, JsonBody};
use crate::scenario::Scenario;
use crate::wire::openai::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage,
    Choice, ChunkChoice, Delta, FunctionCall, FunctionDelta, ModelEntry, ModelList, ToolArguments,
    ToolCall, ToolCallDelta, Usage, FUNCTION_TYPE,
};
use crate::wire::{
    parse_tool_requests, Companion, CHAT_COMPLETIONS_PATH, HEALTH_PATH, MODELS_PATH, OPENAI_PREFIX,
    REHEARSAL_MODEL_ID,
};

#[derive(Clone)]
pub struct RehearsalState {
    scenario: Arc<Scenario>,
    default_seed: u64,
}

/// A chat request as the rehearsal model reads it (the shape is `wire`'s).
pub type ChatRequest = ChatCompletionRequest<'static, Vec<ChatMessage<String>>>;

impl RehearsalState {
    pub fn new(scenario: Arc<Scenario>, default_seed: u64) -> Self {
        Self {
            scenario,
            default_seed,
        }
    }

    /// The scripted reply for a conversation, or why there is none.
    /// heistd's preflight (its one-message, one-token chat) gets "OK";
    /// anything else must name a scenario agent in its system prompt.
    pub fn reply(&self, request: &ChatRequest) -> Result<String, String> {
        let preflight = request.max_tokens == Some(1)
            && matches!(request.messages.as_slice(), [only] if only.role == "user"
                && only.content == crate::wire::PREFLIGHT_PROMPT);
        if preflight {
            return Ok("OK".into());
        }
        let system = request
            .messages
            .iter()
            .filter(|message| message.role == "system")
            .map(|message| message.content.as_str())
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
            .map(|message| message.content.as_str());
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
        if model.as_ref() != REHEARSAL_MODEL_ID {
            return error_response(
                StatusCode::NOT_FOUND,
                format!("model `{model}` not found; this endpoint serves `{REHEARSAL_MODEL_ID}`"),
            );
        }
    }
    if let Some(forced) = request
        .tool_choice
        .as_ref()
        .and_then(|choice| choice.forced_function())
    {
        let message = AssistantMessage {
            role: Some("assistant".into()),
            content: None,
            tool_calls: vec![tool_call(0, forced, String::new())],
        };
        return answer(&request, &state, message, None);
    }
    let content = match state.reply(&request) {
        Ok(content) => content,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, message),
    };
    let offered: Vec<&str> = request
        .tools
        .iter()
        .map(|tool| tool.function.name.as_str())
        .collect();
    let (content, tool_calls) = if offered.is_empty() {
        (content, Vec::new())
    } else {
        split_native(&content, &offered)
    };
    let prompt_chars: usize = request
        .messages
        .iter()
        .map(|message| message.content.len())
        .sum();
    let completion_tokens = content.len().div_ceil(4) as u32;
    let prompt_tokens = prompt_chars.div_ceil(4) as u32;
    let message = AssistantMessage {
        role: Some("assistant".into()),
        content: Some(content),
        tool_calls,
    };
    let usage = Usage {
        prompt_tokens: Some(prompt_tokens),
        completion_tokens: Some(completion_tokens),
        total_tokens: Some(prompt_tokens + completion_tokens),
    };
    answer(&request, &state, message, Some(usage))
}

/// The reply `message` as one `chat.completion`, or streamed as
/// `chat.completion.chunk` events when the request asked for a stream.
fn answer(
    request: &ChatRequest,
    state: &RehearsalState,
    message: AssistantMessage,
    usage: Option<Usage>,
) -> Response {
    let finish_reason = if message.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let id = format!("rehearsal-{}", request.seed.unwrap_or(state.default_seed));
    if request.stream {
        let include_usage = request
            .stream_options
            .is_some_and(|options| options.include_usage);
        let usage = usage.filter(|_| include_usage);
        return event_stream(&id, &message, finish_reason, usage);
    }
    let reply = ChatCompletion {
        id: Some(id),
        object: Some("chat.completion".into()),
        created: Some(chrono::Utc::now().timestamp()),
        model: Some(REHEARSAL_MODEL_ID.into()),
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: Some(finish_reason.into()),
        }],
        usage,
    };
    Json(reply).into_response()
}

/// A whole reply as the server-sent events a streaming server would send.
fn event_stream(
    id: &str,
    message: &AssistantMessage,
    finish_reason: &str,
    usage: Option<Usage>,
) -> Response {
    let chunk = |choices: Vec<ChunkChoice>| ChatCompletionChunk {
        id: Some(id.to_string()),
        object: Some("chat.completion.chunk".into()),
        model: Some(REHEARSAL_MODEL_ID.into()),
        choices,
        usage: None,
    };
    let delta = |delta: Delta| {
        chunk(vec![ChunkChoice {
            index: 0,
            delta: Some(delta),
            finish_reason: None,
        }])
    };
    let mut events = vec![delta(Delta {
        role: Some("assistant".into()),
        content: Some(String::new()),
        ..Delta::default()
    })];
    let content = message.content.as_deref().unwrap_or_default();
    for piece in pieces(content, 3) {
        events.push(delta(Delta {
            content: Some(piece.to_string()),
            ..Delta::default()
        }));
    }
    for (index, call) in message.tool_calls.iter().enumerate() {
        events.extend(tool_call_pieces(index, call).into_iter().map(delta));
    }
    events.push(chunk(vec![ChunkChoice {
        index: 0,
        delta: Some(Delta::default()),
        finish_reason: Some(finish_reason.into()),
    }]));
    if let Some(usage) = usage {
        events.push(ChatCompletionChunk {
            usage: Some(usage),
            ..chunk(Vec::new())
        });
    }
    let mut body: String = events
        .iter()
        .map(|event| {
            format!(
                "data: {}\n\n",
                serde_json::to_string(event).unwrap_or_default()
            )
        })
        .collect();
    body.push_str("data: [DONE]\n\n");
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        body,
    )
        .into_response()
}

/// One native call as the deltas that stream it: its id and name first,
/// then its arguments in pieces.
fn tool_call_pieces(index: usize, call: &ToolCall) -> Vec<Delta> {
    let first = ToolCallDelta {
        index: Some(index),
        id: call.id.clone(),
        kind: Some(FUNCTION_TYPE.into()),
        function: Some(FunctionDelta {
            name: Some(call.function.name.clone()),
            arguments: Some(String::new()),
        }),
    };
    let more = pieces(&call.function.arguments, 2)
        .into_iter()
        .map(|piece| ToolCallDelta {
            index: Some(index),
            function: Some(FunctionDelta {
                name: None,
                arguments: Some(piece.to_string()),
            }),
            ..ToolCallDelta::default()
        });
    std::iter::once(first)
        .chain(more)
        .map(|piece| Delta {
            tool_calls: vec![piece],
            ..Delta::default()
        })
        .collect()
}

/// `text` in at most `count` pieces of about equal length, cut between
/// characters; no pieces for empty text.
fn pieces(text: &str, count: usize) -> Vec<&str> {
    let size = text.len().div_ceil(count.max(1)).max(1);
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = size.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// Moves the script's `[TOOL:name:parameter]` requests for offered tools out
/// of the text and into OpenAI `tool_calls`, as a function-calling model
/// would answer.
fn split_native(content: &str, offered: &[&str]) -> (String, Vec<ToolCall>) {
    let requests = parse_tool_requests(content);
    let mut text = content.to_string();
    let mut calls = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        if !offered.contains(&request.tool.as_str()) {
            continue;
        }
        text = text.replacen(&request.notation(), "", 1);
        calls.push(tool_call(index, &request.tool, request.parameter.clone()));
    }
    (text.trim().to_string(), calls)
}

/// A native call of `tool` with its one `parameter`, the `index`th asked.
fn tool_call(index: usize, tool: &str, parameter: String) -> ToolCall {
    ToolCall {
        id: Some(format!("call_{index}")),
        kind: Some(FUNCTION_TYPE.into()),
        function: FunctionCall {
            name: tool.to_string(),
            arguments: ToolArguments { parameter }.to_json(),
        },
    }
}

async fn models() -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelEntry {
            id: REHEARSAL_MODEL_ID.into(),
            object: "model".into(),
            owned_by: "heistd".into(),
            description: Some(
                "rehearsal model: scripted, seeded replies from the scenario; no language model behind it"
                    .into(),
            ),
        }],
    })
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
                    content: format!("You are the {agent}, of course."),
                },
                ChatMessage {
                    role: "user".into(),
                    content: format!("Turn {turn} of 12. Your move."),
                },
            ],
            temperature: None,
            seed: Some(seed),
            tools: Vec::new(),
            tool_choice: None,
            max_tokens: None,
            stream: false,
            stream_options: None,
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
        let mut check = request("hacker", 1, 1);
        check.messages.remove(0);
        assert!(
            state.reply(&check).is_err(),
            "no system prompt is not enough to be the preflight"
        );
        let preflight: ChatRequest = serde_json::from_value(serde_json::json!({
            "messages": [{"role": "user", "content": crate::wire::PREFLIGHT_PROMPT}],
            "max_tokens": 1
        }))
        .expect("request");
        assert_eq!(
            state.reply(&preflight).as_deref(),
            Ok("OK"),
            "the preflight"
        );
    }

    /// The body of a streamed answer to `request`, and its content type.
    async fn streamed(request: serde_json::Value) -> (String, String) {
        use tower::ServiceExt;
        let router = router(RehearsalState::new(Arc::new(Scenario::embedded()), 0));
        let request = axum::http::Request::post(format!("{OPENAI_PREFIX}{CHAT_COMPLETIONS_PATH}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(request.to_string()))
            .expect("request");
        let response = router.oneshot(request).await.expect("answers");
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            String::from_utf8(body.to_vec()).expect("utf-8"),
            content_type,
        )
    }

    #[tokio::test]
    async fn asked_to_stream_it_sends_pieces_usage_when_asked_and_done() {
        let messages = serde_json::json!([
            {"role": "system", "content": "You are the hacker, of course."},
            {"role": "user", "content": "Turn 1 of 12."},
        ]);
        let calculator =
            serde_json::json!({"type": "function", "function": {"name": "calculator"}});
        let (body, content_type) = streamed(serde_json::json!({
            "messages": messages, "seed": 1, "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [calculator.clone(), {"type": "function", "function": {"name": "file_reader"}}, {"type": "function", "function": {"name": "database_query"}}],
        }))
        .await;
        assert_eq!(content_type, "text/event-stream");
        let events: Vec<&str> = body
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| event.strip_prefix("data: ").expect("data events only"))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"));
        let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
            .iter()
            .map(|event| serde_json::from_str(event).expect("json"))
            .collect();
        let content: String = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
            .collect();
        let arguments: String = chunks
            .iter()
            .filter_map(|chunk| {
                chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        let pieces = chunks
            .iter()
            .filter(|chunk| chunk["choices"][0]["delta"]["tool_calls"].is_array())
            .count();
        assert!(!content.is_empty() && pieces >= 2, "{body}");
        assert!(arguments.starts_with("{\"parameter\""), "{arguments}");
        assert!(chunks.last().expect("chunks")["usage"]["prompt_tokens"].is_u64());

        let (plain, _) =
            streamed(serde_json::json!({"messages": messages, "seed": 1, "stream": true})).await;
        assert!(
            !plain.contains("usage") && plain.ends_with("data: [DONE]\n\n"),
            "{plain}"
        );
    }

    #[test]
    fn offered_tools_come_back_as_native_calls() {
        let line = "Checking the rota. [TOOL:database_query:SELECT name FROM guards]";
        let (text, calls) = split_native(line, &["database_query", "calculator"]);
        assert_eq!(text, "Checking the rota.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "database_query");
        let arguments: serde_json::Value =
            serde_json::from_str(&calls[0].function.arguments).expect("json");
        assert_eq!(arguments["parameter"], "SELECT name FROM guards");
        let (kept, none) = split_native(line, &["calculator"]);
        assert_eq!(
            (kept.as_str(), none.len()),
            (line, 0),
            "a tool not offered stays in the text"
        );
    }
}
