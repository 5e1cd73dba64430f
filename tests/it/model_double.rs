//! A model server double that behaves like the real ones heistd meets
//! (llama.cpp's server, vLLM, LM Studio, Ollama): a context window that
//! answers an oversized request with the OpenAI-style context-length 400,
//! or as today's `llama-server` does (its `exceed_context_size_error` body,
//! a tokenizer density, `/v1/models` with `meta.n_ctx` and `n_ctx_train`,
//! `GET /props` with `total_slots` and a slot's `n_ctx`, `POST /tokenize`
//! counting at the density), or as LM Studio does (`{"error": ".."}` naming
//! `n_keep` and `n_ctx`) or Ollama (a 400 naming no numbers, the loaded
//! window at `GET /api/ps`),
//! one slot (a call holds it, and `/v1/models` waits for it), a chat
//! format that may ignore `tools` or write `functions.NAME:` as text,
//! replies cut at `max_tokens` (`finish_reason: "length"`), `usage` counted
//! at four characters a token (or the density set, or as set per reply), outages (every request answers 500),
//! and OpenAI's rate limits (`x-ratelimit-*` headers on every answer, a
//! 429 without `Retry-After` past a window's allowance).
//! Asked to stream, it answers in server-sent events as they do (content
//! and tool-call arguments in pieces, `usage` last when asked, then
//! `data: [DONE]`), and can stream slowly, stall, break the stream, or
//! answer plain JSON instead; it counts streams whose client went away
//! before the end. Like llama.cpp it may have several slots, which it
//! reports at `GET /props` (`total_slots`), and it may hang (accept a chat
//! and never answer). An axum server on 127.0.0.1:0; several can run at
//! once, each counting the chat requests it received.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub const MODEL: &str = "double-model";

/// How the double behaves; change it while it runs through [`ModelDouble::set`].
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// The context window in tokens; none: unlimited.
    pub context_tokens: Option<u32>,
    /// Tokens per character of the prompt (its bytes, as a byte-level
    /// tokenizer counts them); none: one token per four characters.
    pub tokens_per_char: Option<f64>,
    /// Behaves like today's llama.cpp server: refuses an oversized request
    /// with its `exceed_context_size_error` body (not OpenAI's), and lists
    /// `meta.n_ctx` (the window) and `meta.n_ctx_train` in `/v1/models`.
    pub llama_cpp: bool,
    /// Refuses an oversized request as LM Studio does.
    pub lm_studio: bool,
    /// Refuses an oversized request as Ollama does (no numbers), and
    /// lists the loaded window at `GET /api/ps`.
    pub ollama: bool,
    /// The chat format ignores `tools`: replies are text, never `tool_calls`.
    pub ignores_tools: bool,
    /// With tools offered, writes `functions.NAME: parameter` as text and
    /// `tool_calls: null` (but honours a forced `tool_choice`).
    pub functions_as_text: bool,
    /// Every reply is cut: `finish_reason: "length"`.
    pub cut_at_length: bool,
    /// Each chat call holds a slot this long.
    pub generation: Duration,
    /// Slots (calls served at once, as llama.cpp's `--parallel`); 0 is 1.
    /// Read at start. Answered at `GET /props` as `total_slots`.
    pub slots: usize,
    /// Accepts chat requests (and `/v1/models`, `/props`) and never answers.
    pub hang: bool,
    /// Answers every request 500 (an outage).
    pub down: bool,
    /// Like Ollama for a model it has not pulled: chat answers 404 for any
    /// model but [`MODEL`].
    pub unknown_model_404: bool,
    /// Answers a streaming request with a plain JSON completion.
    pub plain_json: bool,
    /// Streaming, the gap before each event (after `generation`).
    pub event_interval: Duration,
    /// Streaming, the content comes in this many pieces (at least 1).
    pub content_pieces: usize,
    /// Streaming, sends this many events, then nothing more, holding the
    /// connection open.
    pub stall_after: Option<usize>,
    /// Streaming, how the stream is broken, if it is.
    pub flaw: StreamFlaw,
    /// Like OpenAI's rate limits: every answer carries `x-ratelimit-*`
    /// headers, and a request past the window's allowance answers 429
    /// without `Retry-After` (only `x-ratelimit-reset-requests`).
    pub rate_limit: Option<RateLimitWindow>,
    /// Sends no `usage` (as some servers do, streaming or not).
    pub no_usage: bool,
    /// The `usage` of every reply as (prompt, completion) tokens, as a
    /// server reports it; none: the prompt counted by `tokens_per_char`
    /// (or four characters a token) and 12 completion tokens.
    pub usage_per_reply: Option<(u64, u64)>,
}

/// `requests` chat requests per fixed `window` (a minute at OpenAI; short
/// here so tests run on real time), starting at the first request.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitWindow {
    pub requests: u32,
    pub window: Duration,
}

/// A stream that is not what OpenAI sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamFlaw {
    #[default]
    None,
    /// Ends without `data: [DONE]`.
    NoDone,
    /// Its second event is not JSON.
    Malformed,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    /// The slots: `/v1/models` and chat calls wait for one; a stream holds
    /// its slot until its last event.
    slot: Arc<tokio::sync::Semaphore>,
    chat_calls: AtomicU32,
    /// Chat requests received, answered or not (a 500, a hang).
    chat_requests: AtomicU32,
    oversized: AtomicU32,
    /// For each chat call, in order: whether it was refused as oversized.
    overflows: Mutex<Vec<bool>>,
    /// Chat requests that asked to stream.
    stream_requests: AtomicU32,
    /// Streams whose client closed the connection before their end.
    abandoned_streams: AtomicU32,
    /// The last chat request's body.
    last_request: Mutex<serde_json::Value>,
    /// What the `usage` of every reply sent added up to: (prompt,
    /// completion) tokens.
    usage_sent: Mutex<(u64, u64)>,
    /// `POST /tokenize` requests answered.
    tokenize_calls: AtomicU32,
    /// The rate-limit window's start and the requests admitted in it.
    window: Mutex<Option<(tokio::time::Instant, u32)>>,
    /// Answers 429 for want of room in the window.
    rate_limited: AtomicU32,
    /// Answers that said no request remains in the window.
    allowance_used_up: AtomicU32,
}

pub struct ModelDouble {
    /// The OpenAI-compatible base URL, ending in `/v1`.
    pub url: String,
    shared: Arc<Shared>,
}

impl ModelDouble {
    pub async fn start(behaviour: Behaviour) -> Self {
        let shared = Arc::new(Shared {
            slot: Arc::new(tokio::sync::Semaphore::new(behaviour.slots.max(1))),
            behaviour: Mutex::new(behaviour),
            chat_calls: AtomicU32::new(0),
            chat_requests: AtomicU32::new(0),
            oversized: AtomicU32::new(0),
            overflows: Mutex::default(),
            stream_requests: AtomicU32::new(0),
            abandoned_streams: AtomicU32::new(0),
            last_request: Mutex::default(),
            tokenize_calls: AtomicU32::new(0),
            window: Mutex::default(),
            rate_limited: AtomicU32::new(0),
            allowance_used_up: AtomicU32::new(0),
            usage_sent: Mutex::default(),
        });
        let router = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(rate_limited_chat))
            .route("/props", get(props))
            .route("/tokenize", post(tokenize))
            .route("/api/ps", get(running_models))
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

    /// Chat requests received, answered or not.
    pub fn chat_requests(&self) -> u32 {
        self.shared.chat_requests.load(Ordering::SeqCst)
    }

    /// Requests refused with the context-length 400.
    pub fn oversized(&self) -> u32 {
        self.shared.oversized.load(Ordering::SeqCst)
    }

    /// Which chat calls, in order, were refused as oversized.
    pub fn overflows(&self) -> Vec<bool> {
        self.shared.overflows.lock().clone()
    }

    pub fn stream_requests(&self) -> u32 {
        self.shared.stream_requests.load(Ordering::SeqCst)
    }

    /// Streams the client closed before their end (it gave up, or was
    /// cut): the server could stop generating.
    pub fn abandoned_streams(&self) -> u32 {
        self.shared.abandoned_streams.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> serde_json::Value {
        self.shared.last_request.lock().clone()
    }

    /// The sum of the `usage` sent with every reply: (prompt, completion).
    pub fn usage_sent(&self) -> (u64, u64) {
        *self.shared.usage_sent.lock()
    }

    /// `POST /tokenize` requests answered.
    pub fn tokenize_calls(&self) -> u32 {
        self.shared.tokenize_calls.load(Ordering::SeqCst)
    }

    /// Requests answered 429 because the window's allowance was used.
    pub fn rate_limited(&self) -> u32 {
        self.shared.rate_limited.load(Ordering::SeqCst)
    }

    /// Answers whose headers said 0 requests remain (the limit was met).
    pub fn allowance_used_up(&self) -> u32 {
        self.shared.allowance_used_up.load(Ordering::SeqCst)
    }
}

/// Tokens of `characters` bytes at the behaviour's density.
fn tokens_of(behaviour: &Behaviour, characters: usize) -> u64 {
    match behaviour.tokens_per_char {
        Some(density) => (characters as f64 * density).ceil() as u64,
        None => characters.div_ceil(4) as u64,
    }
}

/// Answered as a server without the route answers: 404.
fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

/// llama.cpp's `GET /props`, the fields heistd reads, as `llama-server`
/// (2025 and later) names them: a slot's window under
/// `default_generation_settings.n_ctx`, the slots in `total_slots`.
async fn props(State(shared): State<Arc<Shared>>) -> Response {
    let behaviour = behaviour(&shared);
    if behaviour.hang {
        std::future::pending::<()>().await;
    }
    if behaviour.down {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    // A double given slots is a llama.cpp server as far as `/props` goes.
    if !behaviour.llama_cpp && behaviour.slots == 0 {
        return not_found();
    }
    Json(serde_json::json!({
        "default_generation_settings": {"n_ctx": behaviour.context_tokens, "params": {"n_predict": -1}},
        "total_slots": behaviour.slots.max(1),
        "model_path": format!("/models/{MODEL}.gguf"),
        "modalities": {"vision": false, "audio": false},
        "build_info": "b6000-double",
    }))
    .into_response()
}

/// llama.cpp's `POST /tokenize`: `{"content": ..}` to `{"tokens": [..]}`,
/// as many as the chat call would count for that text.
async fn tokenize(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<serde_json::Value>,
) -> Response {
    let behaviour = behaviour(&shared);
    if !behaviour.llama_cpp {
        return not_found();
    }
    let Some(content) = request["content"].as_str() else {
        return Json(serde_json::json!({"tokens": []})).into_response();
    };
    shared.tokenize_calls.fetch_add(1, Ordering::SeqCst);
    let tokens: Vec<u64> = (0..tokens_of(&behaviour, content.len()))
        .map(|token| token % 256)
        .collect();
    Json(serde_json::json!({"tokens": tokens})).into_response()
}

/// Ollama's `GET /api/ps`: the loaded model and the window it was loaded
/// with (`context_length`), as `ProcessModelResponse` names them.
async fn running_models(State(shared): State<Arc<Shared>>) -> Response {
    let behaviour = behaviour(&shared);
    if !behaviour.ollama {
        return not_found();
    }
    Json(serde_json::json!({"models": [{
        "name": MODEL, "model": MODEL, "size": 4000000, "digest": "0",
        "details": {"format": "gguf"}, "expires_at": "2030-01-01T00:00:00Z",
        "size_vram": 0, "context_length": behaviour.context_tokens,
    }]}))
    .into_response()
}

fn behaviour(shared: &Shared) -> Behaviour {
    shared.behaviour.lock().clone()
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    if behaviour(&shared).hang {
        std::future::pending::<()>().await;
    }
    if behaviour(&shared).down {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let behaviour = behaviour(&shared);
    let _slot = shared.slot.acquire().await;
    let mut entry = serde_json::json!({"id": MODEL, "object": "model"});
    if behaviour.llama_cpp {
        // llama-server's listing: the window it was started with beside
        // the model's training window, which is larger.
        entry["owned_by"] = "llamacpp".into();
        entry["meta"] = serde_json::json!({
            "vocab_type": 2, "n_vocab": 256,
            "n_ctx": behaviour.context_tokens, "n_ctx_train": 131072,
            "n_embd": 64, "n_params": 1000000, "size": 4000000,
        });
    }
    Json(serde_json::json!({"object": "list", "data": [entry]})).into_response()
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<serde_json::Value>,
) -> Response {
    let behaviour = behaviour(&shared);
    *shared.last_request.lock() = request.clone();
    shared.chat_requests.fetch_add(1, Ordering::SeqCst);
    if behaviour.hang {
        std::future::pending::<()>().await;
    }
    if behaviour.down {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": {"message": "the model crashed", "type": "server_error"}})),
        )
            .into_response();
    }
    if behaviour.unknown_model_404 && request["model"] != MODEL {
        let message = format!(
            "model \"{}\" not found, try pulling it first",
            request["model"]
        );
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {"message": message, "type": "api_error"}})),
        )
            .into_response();
    }
    let streaming = request["stream"] == true && !behaviour.plain_json;
    if request["stream"] == true {
        shared.stream_requests.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(slot) = shared.slot.clone().acquire_owned().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    shared.chat_calls.fetch_add(1, Ordering::SeqCst);
    if !streaming {
        tokio::time::sleep(behaviour.generation).await;
    }
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
    let prompt_tokens = tokens_of(&behaviour, prompt_chars);
    let max_tokens = request["max_tokens"].as_u64().unwrap_or(16);
    let oversized = behaviour
        .context_tokens
        .is_some_and(|window| prompt_tokens + max_tokens > u64::from(window));
    shared.overflows.lock().push(oversized);
    if let Some(window) = behaviour.context_tokens.filter(|_| oversized) {
        shared.oversized.fetch_add(1, Ordering::SeqCst);
        if behaviour.llama_cpp {
            // llama-server's body, word for word (issue #21); its count is
            // the prompt's alone. The double refuses a prompt that leaves no
            // room for `max_tokens` as well (the server would cut the reply).
            let message = format!("request ({prompt_tokens} tokens) exceeds the available context size ({window} tokens), try increasing it");
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": {"code": 400, "message": message, "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens, "n_ctx": window}})),
            )
                .into_response();
        }
        return refusal(&behaviour, window, prompt_tokens, max_tokens);
    }
    let offered = request.get("tools").is_some_and(|tools| !tools.is_null());
    let forced = request["tool_choice"]["function"]["name"].as_str();
    let (content, tool_calls) = reply(&behaviour, offered, forced);
    let finish_reason = if behaviour.cut_at_length {
        "length"
    } else {
        "stop"
    };
    let (prompt_tokens, completion_tokens) =
        behaviour.usage_per_reply.unwrap_or((prompt_tokens, 12));
    let usage = serde_json::json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let sends_usage =
        !behaviour.no_usage && (!streaming || request["stream_options"]["include_usage"] == true);
    if sends_usage {
        let mut sent = shared.usage_sent.lock();
        sent.0 += prompt_tokens;
        sent.1 += completion_tokens;
    }
    let usage = sends_usage.then_some(usage);
    if streaming {
        let events = events(&behaviour, &content, &tool_calls, finish_reason, usage);
        return stream(&shared, &behaviour, events, slot);
    }
    Json(serde_json::json!({
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": tool_calls}, "finish_reason": finish_reason}],
        "usage": usage,
    }))
    .into_response()
}

/// A request over the window refused in the words of the server the
/// behaviour plays (llama.cpp's is answered in `chat`).
fn refusal(behaviour: &Behaviour, window: u32, prompt_tokens: u64, max_tokens: u64) -> Response {
    let body = if behaviour.lm_studio {
        // LM Studio, as it answered in 2026 (Gitlawb/openclaude#353).
        serde_json::json!({"error": format!("The number of tokens to keep from the initial prompt is greater than the context length (n_keep: {prompt_tokens}>= n_ctx: {window}). Try to load the model with a larger context length, or provide a shorter input.")})
    } else if behaviour.ollama {
        // Ollama (llm/llama_server.go, through openai.NewError): no numbers.
        serde_json::json!({"error": {"message": "the prompt is longer than the context length currently available to the model; shorten the prompt, adjust the context length in settings, or use a model with a longer context length", "type": "invalid_request_error", "param": null, "code": null}})
    } else {
        let message = format!(
            "This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            prompt_tokens + max_tokens
        );
        serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// [`chat`] within the [`RateLimitWindow`], if one is set: a 429 past the
/// allowance, else the answer with its `x-ratelimit-*` headers.
async fn rate_limited_chat(
    State(shared): State<Arc<Shared>>,
    request: Json<serde_json::Value>,
) -> Response {
    let Some(limit) = behaviour(&shared).rate_limit else {
        return chat(State(shared), request).await;
    };
    let now = tokio::time::Instant::now();
    let (remaining, reset) = {
        let mut window = shared.window.lock();
        let (started, used) = window
            .filter(|(started, _)| now < *started + limit.window)
            .unwrap_or((now, 0));
        let admitted = used < limit.requests;
        let used = used + u32::from(admitted);
        *window = Some((started, used));
        (
            admitted.then_some(limit.requests - used),
            started + limit.window - now,
        )
    };
    // As OpenAI writes them; the reset rounded up to the millisecond, so
    // a client that waits for it finds the new window.
    let reset_ms = reset.as_micros().div_ceil(1000);
    let headers = |remaining: u32| {
        [
            ("x-ratelimit-limit-requests", limit.requests.to_string()),
            ("x-ratelimit-remaining-requests", remaining.to_string()),
            (
                "x-ratelimit-reset-requests",
                format!("{}.{:03}s", reset_ms / 1000, reset_ms % 1000),
            ),
            ("x-ratelimit-limit-tokens", "1000000".to_string()),
            ("x-ratelimit-remaining-tokens", "999000".to_string()),
            ("x-ratelimit-reset-tokens", "60ms".to_string()),
        ]
    };
    let Some(remaining) = remaining else {
        shared.rate_limited.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            headers(0),
            Json(serde_json::json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}})),
        )
            .into_response();
    };
    if remaining == 0 {
        shared.allowance_used_up.fetch_add(1, Ordering::SeqCst);
    }
    let mut response = chat(State(shared), request).await;
    for (name, value) in headers(remaining) {
        response
            .headers_mut()
            .insert(name, value.parse().expect("a header value"));
    }
    response
}

/// The reply as the `data:` payloads of a stream, `[DONE]` last.
fn events(
    behaviour: &Behaviour,
    content: &str,
    tool_calls: &serde_json::Value,
    finish_reason: &str,
    usage: Option<serde_json::Value>,
) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({"object": "chat.completion.chunk", "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string()
    };
    let mut events = vec![chunk(serde_json::json!({"role": "assistant"}), None)];
    let characters: Vec<char> = content.chars().collect();
    let size = characters
        .len()
        .div_ceil(behaviour.content_pieces.max(1))
        .max(1);
    for piece in characters.chunks(size) {
        let piece: String = piece.iter().collect();
        events.push(chunk(serde_json::json!({"content": piece}), None));
    }
    for (index, call) in tool_calls.as_array().into_iter().flatten().enumerate() {
        let name = &call["function"]["name"];
        events.push(chunk(serde_json::json!({"tool_calls": [{"index": index, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
        let arguments: Vec<char> = call["function"]["arguments"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .collect();
        for piece in arguments.chunks(arguments.len().div_ceil(3).max(1)) {
            let piece: String = piece.iter().collect();
            events.push(chunk(serde_json::json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), None));
        }
    }
    events.push(chunk(serde_json::json!({}), Some(finish_reason)));
    if let Some(usage) = usage {
        events.push(serde_json::json!({"object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": usage}).to_string());
    }
    match behaviour.flaw {
        StreamFlaw::None => events.push("[DONE]".into()),
        StreamFlaw::NoDone => {}
        StreamFlaw::Malformed => events[1] = "{\"choices\": [{\"delta\": ".into(),
    }
    events
}

/// Sends `events` as server-sent events, after `generation` and each
/// `event_interval` apart, holding the one `slot` until the end; stalls
/// after `stall_after` events.
fn stream(
    shared: &Arc<Shared>,
    behaviour: &Behaviour,
    events: Vec<String>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let behaviour = behaviour.clone();
    tokio::spawn(async move {
        let _slot = slot;
        tokio::time::sleep(behaviour.generation).await;
        for (sent, event) in events.into_iter().enumerate() {
            if behaviour.stall_after == Some(sent) {
                sender.closed().await;
                return;
            }
            tokio::time::sleep(behaviour.event_interval).await;
            let frame = Bytes::from(format!("data: {event}\n\n"));
            if sender.send(frame).await.is_err() {
                return;
            }
        }
    });
    let body = EventBody {
        receiver,
        ended: false,
        shared: shared.clone(),
    };
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        Body::new(body),
    )
        .into_response()
}

/// A response body fed by the producer task; dropped before its end, the
/// client went away.
struct EventBody {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
    ended: bool,
    shared: Arc<Shared>,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = self.receiver.poll_recv(context);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled.map(|frame| frame.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.abandoned_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
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
