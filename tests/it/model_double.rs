//! A model server double that behaves like the real ones heistd meets
//! (llama.cpp's server, vLLM, LM Studio, Ollama): a context window that
//! answers an oversized request with the OpenAI-style context-length 400,
//! one slot (a call holds it, and `/v1/models` waits for it), a chat
//! format that may ignore `tools` or write `functions.NAME:` as text,
//! replies cut at `max_tokens` (`finish_reason: "length"`), `usage` counted
//! at four characters a token, and outages (every request answers 500).
//! An axum server on 127.0.0.1:0.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub const MODEL: &str = "double-model";

/// How the double behaves; change it while it runs through [`ModelDouble::set`].
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// The context window in tokens (four characters each); none: unlimited.
    pub context_tokens: Option<u32>,
    /// The chat format ignores `tools`: replies are text, never `tool_calls`.
    pub ignores_tools: bool,
    /// With tools offered, writes `functions.NAME: parameter` as text and
    /// `tool_calls: null` (but honours a forced `tool_choice`).
    pub functions_as_text: bool,
    /// Every reply is cut: `finish_reason: "length"`.
    pub cut_at_length: bool,
    /// Each chat call holds the one slot this long.
    pub generation: Duration,
    /// Answers every request 500 (an outage).
    pub down: bool,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    /// The one slot: `/v1/models` and chat calls wait for it.
    slot: tokio::sync::Mutex<()>,
    chat_calls: AtomicU32,
    oversized: AtomicU32,
}

pub struct ModelDouble {
    /// The OpenAI-compatible base URL, ending in `/v1`.
    pub url: String,
    shared: Arc<Shared>,
}

impl ModelDouble {
    pub async fn start(behaviour: Behaviour) -> Self {
        let shared = Arc::new(Shared::default());
        *shared.behaviour.lock() = behaviour;
        let router = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url: format!("http://{address}/v1"),
            shared,
        }
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.shared.behaviour.lock());
    }

    pub fn chat_calls(&self) -> u32 {
        self.shared.chat_calls.load(Ordering::SeqCst)
    }

    /// Requests refused with the context-length 400.
    pub fn oversized(&self) -> u32 {
        self.shared.oversized.load(Ordering::SeqCst)
    }
}

fn behaviour(shared: &Shared) -> Behaviour {
    shared.behaviour.lock().clone()
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    if behaviour(&shared).down {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let _slot = shared.slot.lock().await;
    Json(serde_json::json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
        .into_response()
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<serde_json::Value>,
) -> Response {
    let behaviour = behaviour(&shared);
    if behaviour.down {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": {"message": "the model crashed", "type": "server_error"}})),
        )
            .into_response();
    }
    let _slot = shared.slot.lock().await;
    shared.chat_calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(behaviour.generation).await;
    let prompt_chars: usize = request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_str())
        .map(str::len)
        .sum::<usize>()
        + request
            .get("tools")
            .map_or(0, |tools| tools.to_string().len());
    let prompt_tokens = prompt_chars.div_ceil(4) as u64;
    let max_tokens = request["max_tokens"].as_u64().unwrap_or(16);
    if let Some(window) = behaviour.context_tokens {
        if prompt_tokens + max_tokens > u64::from(window) {
            shared.oversized.fetch_add(1, Ordering::SeqCst);
            let message = format!(
                "This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                prompt_tokens + max_tokens
            );
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})),
            )
                .into_response();
        }
    }
    let offered = request.get("tools").is_some_and(|tools| !tools.is_null());
    let forced = request["tool_choice"]["function"]["name"].as_str();
    let (content, tool_calls) = reply(&behaviour, offered, forced);
    let finish_reason = if behaviour.cut_at_length {
        "length"
    } else {
        "stop"
    };
    Json(serde_json::json!({
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": tool_calls}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 12, "total_tokens": prompt_tokens + 12},
    }))
    .into_response()
}

/// The reply's content and `tool_calls` (null when none).
fn reply(
    behaviour: &Behaviour,
    offered: bool,
    forced: Option<&str>,
) -> (String, serde_json::Value) {
    let native_call = |name: &str, parameter: &str| serde_json::json!([{"id": "call_0", "type": "function", "function": {"name": name, "arguments": serde_json::json!({"parameter": parameter}).to_string()}}]);
    match (offered && !behaviour.ignores_tools, forced) {
        (true, Some(name)) => (String::new(), native_call(name, "")),
        (true, None) if behaviour.functions_as_text => (
            "Let me look.\nfunctions.calculator: 2+2".into(),
            serde_json::Value::Null,
        ),
        (true, None) => ("Counting.".into(), native_call("calculator", "2+2")),
        (false, _) => (
            "I will count the guards. [TOOL:calculator:2+2]".into(),
            serde_json::Value::Null,
        ),
    }
}
