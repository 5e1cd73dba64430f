//! The OpenAI-compatible chat-completions client, and what it learns about
//! the model it talks to: its context window (configured, or read from the
//! server's "maximum context length is N tokens" error or its model list),
//! how many characters make a token (calibrated from each reply's
//! `usage.prompt_tokens`), and whether it really returns native
//! `tool_calls`. That knowledge is shared by clones of the client, so it is
//! learned once per model per process.
//!
//! Replies stream by default (`stream: true`, server-sent events): the
//! content, `tool_calls` and `usage` pieces are put together here into the
//! reply the non-streaming path reads, so nothing downstream can tell the
//! two apart. A server that answers a streaming request with plain JSON is
//! read as it is.
//!
//! It knows the wire format; it must not decide what to trim or whether a
//! session waits (that is `heist`), nor retry (that is `resilience`).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use super::{CallError, ServiceClient, Streamed};
use crate::config::{LlmConfig, Secret};
use crate::resilience::Policy;
/// One prompt message (defined in `wire`, shared with the rehearsal model).
pub use crate::wire::openai::ChatMessage;
use crate::wire::openai::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
    FunctionCall, FunctionTool, StreamOptions, ToolArguments, ToolCall, ToolCallDelta, ToolChoice,
    FUNCTION_TYPE,
};
use crate::wire::{CHAT_COMPLETIONS_PATH, MODELS_PATH};

/// Characters per token before any reply has said better: English prose
/// runs about 4; a little less keeps the first estimate on the safe side.
const INITIAL_CHARS_PER_TOKEN: f64 = 3.5;
/// Tokens a chat template adds around each message (role markers).
const TOKENS_PER_MESSAGE: usize = 8;
/// The native tool-calling check asks for this few tokens.
const CHECK_MAX_TOKENS: u32 = 64;

#[derive(Clone)]
pub struct LlmClient {
    pub service: ServiceClient,
    model: String,
    temperature: f64,
    max_tokens: u32,
    /// Read from the environment variable the config names, never the file.
    api_key: Option<Secret>,
    /// Ask for server-sent events (`llm.stream`): a slow model is judged by
    /// the gaps between its pieces, not by how long the whole reply takes.
    stream: bool,
    /// The longest gap between a streamed reply's pieces (`llm.idle_timeout_ms`).
    idle_timeout: Duration,
    /// The longest wait for a reply's first piece (`llm.timeout_ms`).
    first_piece_timeout: Duration,
    knowledge: Arc<Mutex<ModelKnowledge>>,
}

/// What has been learned about the model, shared by the client's clones.
#[derive(Debug, Clone)]
struct ModelKnowledge {
    /// The context window in tokens: configured, learned, or unknown.
    context_tokens: Option<u32>,
    /// True when `context_tokens` came from the config: never overwritten.
    configured: bool,
    chars_per_token: f64,
    /// Whether the model returns `tool_calls` when forced to; unknown
    /// until checked.
    native_tools: Option<bool>,
}

/// What a native tool call is put together from while a reply streams.
struct PartialCall {
    index: Option<usize>,
    id: Option<String>,
    name: String,
    arguments: String,
}

/// A tool offered to the model through native function calling.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
}

/// What the model said, the tools it asked for natively, and what the
/// server reported about the reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelReply {
    pub content: String,
    /// (tool name, parameter), in the order asked.
    pub tool_calls: Vec<(String, String)>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// `length` means the server cut the reply at `max_tokens`.
    pub finish_reason: Option<String>,
}

/// A chat request as it goes on the wire, borrowed from the prompt and
/// serialised straight from it: building a `serde_json::Value` first copied
/// the whole prompt on every turn (BENCHMARKS.md).
type ChatBody<'a> = ChatCompletionRequest<'a, &'a [ChatMessage]>;

/// One request to the model.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    pub messages: &'a [ChatMessage],
    pub seed: u64,
    pub tools: &'a [ToolSpec],
    pub max_tokens: u32,
}

impl ModelReply {
    pub fn was_cut_short(&self) -> bool {
        self.finish_reason.as_deref() == Some("length")
    }
}

impl LlmClient {
    pub fn from_config(config: &LlmConfig, http: reqwest::Client) -> Self {
        Self {
            service: ServiceClient::new(
                crate::config::LLM_SERVICE,
                &config.base_url,
                Policy::new(config.timeout_ms, config.policy.clone()),
                http,
            )
            .with_max_reply_bytes(config.max_reply_bytes),
            model: config.model.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            api_key: config.api_key.clone(),
            stream: config.stream,
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            first_piece_timeout: Duration::from_millis(config.timeout_ms),
            knowledge: Arc::new(Mutex::new(ModelKnowledge {
                context_tokens: (config.context_tokens > 0).then_some(config.context_tokens),
                configured: config.context_tokens > 0,
                chars_per_token: INITIAL_CHARS_PER_TOKEN,
                native_tools: None,
            })),
        }
    }

    /// How long a turn waits for a reply's first piece (`llm.timeout_ms`).
    pub fn first_piece_timeout(&self) -> Duration {
        self.first_piece_timeout
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The configured `max_tokens`: what a reply may use when it fits.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// One completion with the configured `max_tokens`. With `tools`, the
    /// model may answer with native tool calls (OpenAI function calling),
    /// each taking one string `parameter`. A reply with neither text nor
    /// tool calls is an error: it must not be recorded as something an
    /// agent said.
    pub async fn chat(
        &self,
        messages: &[ChatMessage],
        seed: u64,
        tools: &[ToolSpec],
    ) -> Result<ModelReply, CallError> {
        self.complete(ChatRequest {
            messages,
            seed,
            tools,
            max_tokens: self.max_tokens,
        })
        .await
    }

    /// One completion as asked. A context-length error teaches the client
    /// the window it names; a reply with `usage` calibrates the estimate.
    pub async fn complete(&self, request: ChatRequest<'_>) -> Result<ModelReply, CallError> {
        let mut body = self.body(&request);
        if !request.tools.is_empty() {
            body.tool_choice = Some(ToolChoice::auto());
        }
        let reply = self.send(&body).await;
        match &reply {
            Ok(reply) => {
                if let Some(tokens) = reply.prompt_tokens {
                    self.calibrate(prompt_chars(request.messages, request.tools), tokens);
                }
            }
            Err(error) => {
                if let Some(window) = error.context_window() {
                    self.learn_context_tokens(window);
                    if let Some(tokens) = error.prompt_tokens_counted() {
                        self.calibrate(prompt_chars(request.messages, request.tools), tokens);
                    }
                }
            }
        }
        let reply = reply?;
        if reply.content.trim().is_empty() && reply.tool_calls.is_empty() {
            return Err(CallError::Decode {
                service: self.service.name.clone(),
                message: "the model returned an empty reply".into(),
            });
        }
        Ok(reply)
    }

    /// Whether the model really returns native `tool_calls`: asked once
    /// (a tiny request whose `tool_choice` forces `tool`), then remembered.
    /// A server whose chat format ignores `tools` answers in text.
    pub async fn supports_native_tools(&self, tool: &ToolSpec) -> Result<bool, CallError> {
        if let Some(known) = self.lock().native_tools {
            return Ok(known);
        }
        let messages = [ChatMessage::user(format!(
            "Call the {} tool now.",
            tool.name
        ))];
        let tools = std::slice::from_ref(tool);
        let mut body = self.body(&ChatRequest {
            messages: &messages,
            seed: 0,
            tools,
            max_tokens: CHECK_MAX_TOKENS,
        });
        body.tool_choice = Some(ToolChoice::function(&tool.name));
        let supported = match self.send(&body).await {
            Ok(reply) => !reply.tool_calls.is_empty(),
            // Refusing `tools` or a forced `tool_choice` outright is an answer too.
            Err(CallError::Status { status, .. }) if (400..500).contains(&status) => false,
            Err(error) => return Err(error),
        };
        self.lock().native_tools = Some(supported);
        Ok(supported)
    }

    /// One tiny chat (one short user message, `max_tokens` 1), as a turn
    /// would send it (streaming when configured), through the stack: does
    /// the chat endpoint answer for this model? What it says is not judged.
    pub async fn preflight_chat(&self) -> Result<(), CallError> {
        let messages = [ChatMessage::user(crate::wire::PREFLIGHT_PROMPT.into())];
        let body = self.body(&ChatRequest {
            messages: &messages,
            seed: 0,
            tools: &[],
            max_tokens: 1,
        });
        self.send(&body).await.map(drop)
    }

    /// The context window in tokens, when configured or learned.
    pub fn context_tokens(&self) -> Option<u32> {
        self.lock().context_tokens
    }

    /// Estimated tokens of a prompt, from its characters and the ratio the
    /// server's `usage` has taught.
    pub fn estimate_tokens(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> u32 {
        let ratio = self.lock().chars_per_token;
        (prompt_chars(messages, tools) as f64 / ratio).ceil() as u32
            + (messages.len() * TOKENS_PER_MESSAGE) as u32
    }

    /// Takes the window a server named (its context-length error, its model
    /// list), unless the config set one.
    pub fn learn_context_tokens(&self, window: u32) {
        let mut knowledge = self.lock();
        if !knowledge.configured && window > 0 && knowledge.context_tokens != Some(window) {
            tracing::info!(model = %self.model, context_tokens = window, "learned the model's context window");
            knowledge.context_tokens = Some(window);
        }
    }

    /// The ids of the models the server lists (`GET /models`), past the
    /// breaker; a context window in the listing of our model is learned.
    pub async fn list_models(&self) -> Result<Vec<String>, CallError> {
        let body: serde_json::Value = self.service.probe_json(MODELS_PATH).await?;
        let entries = body["data"].as_array().cloned().unwrap_or_default();
        let ids = entries
            .iter()
            .filter_map(|entry| entry["id"].as_str().map(str::to_string))
            .collect();
        if let Some(window) = entries
            .iter()
            .find(|entry| entry["id"].as_str() == Some(self.model.as_str()))
            .and_then(listed_context_window)
        {
            self.learn_context_tokens(window);
        }
        Ok(ids)
    }

    fn body<'a>(&'a self, request: &ChatRequest<'a>) -> ChatBody<'a> {
        ChatBody {
            model: Some(self.model.as_str().into()),
            messages: request.messages,
            temperature: Some(self.temperature),
            max_tokens: Some(request.max_tokens),
            seed: Some(request.seed),
            tools: request.tools.iter().map(function_schema).collect(),
            tool_choice: None,
            stream: self.stream,
            // OpenAI sends `usage` in a last event only when asked.
            stream_options: self.stream.then_some(StreamOptions {
                include_usage: true,
            }),
        }
    }

    async fn send(&self, body: &ChatBody<'_>) -> Result<ModelReply, CallError> {
        let headers: Vec<(&str, String)> = self
            .api_key
            .iter()
            .map(|key| ("authorization", format!("Bearer {}", key.expose())))
            .collect();
        if !self.stream {
            let reply: ChatCompletion = self
                .service
                .post_json(CHAT_COMPLETIONS_PATH, body, &headers)
                .await?;
            return Ok(model_reply(reply));
        }
        let reply = self
            .service
            .post_streaming::<_, ChatCompletionChunk, ChatCompletion>(
                CHAT_COMPLETIONS_PATH,
                body,
                &headers,
                self.idle_timeout,
            )
            .await?;
        Ok(match reply {
            Streamed::Events(chunks) => model_reply(assemble(chunks)),
            Streamed::Whole(reply) => model_reply(reply),
        })
    }

    /// Moves the characters-per-token ratio toward what the server counted,
    /// halfway each time, so one odd reply cannot swing it far.
    fn calibrate(&self, chars: usize, prompt_tokens: u32) {
        if prompt_tokens == 0 || chars == 0 {
            return;
        }
        let mut knowledge = self.lock();
        let observed = chars as f64 / f64::from(prompt_tokens);
        knowledge.chars_per_token = ((knowledge.chars_per_token + observed) / 2.0).clamp(1.0, 8.0);
    }

    fn lock(&self) -> MutexGuard<'_, ModelKnowledge> {
        self.knowledge.lock()
    }
}

/// The reply a streamed one adds up to, as the server would have sent it
/// whole: the first choice's content and `finish_reason`, its tool calls'
/// name and argument pieces joined per call, the last `usage`.
fn assemble(chunks: Vec<ChatCompletionChunk>) -> ChatCompletion {
    let mut content: Option<String> = None;
    let mut finish_reason = None;
    let mut usage = None;
    // In the order the calls began.
    let mut calls: Vec<PartialCall> = Vec::new();
    for chunk in chunks {
        usage = chunk.usage.or(usage);
        for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
            finish_reason = choice.finish_reason.or(finish_reason);
            let Some(delta) = choice.delta else { continue };
            if let Some(piece) = delta.content {
                content.get_or_insert_with(String::new).push_str(&piece);
            }
            for piece in delta.tool_calls {
                add_tool_call_piece(&mut calls, piece);
            }
        }
    }
    let tool_calls = calls
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            kind: Some(FUNCTION_TYPE.into()),
            function: FunctionCall {
                name: call.name,
                arguments: call.arguments,
            },
        })
        .collect();
    ChatCompletion {
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: None,
                content,
                tool_calls,
            },
            finish_reason,
        }],
        usage,
        ..ChatCompletion::default()
    }
}

/// What heistd keeps of a reply: the first choice's text, its native calls
/// as (tool, parameter), and what the server counted.
fn model_reply(reply: ChatCompletion) -> ModelReply {
    let usage = reply.usage;
    let choice = reply.choices.into_iter().next();
    let finish_reason = choice
        .as_ref()
        .and_then(|choice| choice.finish_reason.clone());
    let (content, calls) = match choice {
        Some(choice) => (
            choice.message.content.unwrap_or_default(),
            choice.message.tool_calls,
        ),
        None => (String::new(), Vec::new()),
    };
    ModelReply {
        content,
        tool_calls: calls
            .into_iter()
            .map(|call| (call.function.name, parameter_of(&call.function.arguments)))
            .collect(),
        prompt_tokens: usage.and_then(|usage| usage.prompt_tokens),
        completion_tokens: usage.and_then(|usage| usage.completion_tokens),
        finish_reason,
    }
}

impl CallError {
    /// The window a context-length error names: OpenAI, vLLM and
    /// llama.cpp's server say "maximum context length is N tokens".
    pub fn context_window(&self) -> Option<u32> {
        match self {
            Self::Status {
                status: 400,
                message,
                ..
            } => context_window_in(message),
            _ => None,
        }
    }
}

impl CallError {
    /// The prompt's size a context-length error reports ("(2595 in the
    /// messages, 400 in the completion)"), when it does.
    fn prompt_tokens_counted(&self) -> Option<u32> {
        let Self::Status { message, .. } = self else {
            return None;
        };
        let end = message.find(" in the messages")?;
        let start = message[..end].rfind('(')? + 1;
        message[start..end].trim().parse().ok()
    }
}

/// N in "... maximum context length is N tokens ...".
pub fn context_window_in(message: &str) -> Option<u32> {
    const MARKER: &str = "maximum context length is ";
    let start = message.to_ascii_lowercase().find(MARKER)? + MARKER.len();
    let digits: String = message[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A context window in one `/models` entry, in the fields servers use:
/// vLLM `max_model_len`, LM Studio `max_context_length`, llama.cpp
/// `meta.n_ctx_train`, others `context_length`.
fn listed_context_window(entry: &serde_json::Value) -> Option<u32> {
    [
        &entry["max_model_len"],
        &entry["max_context_length"],
        &entry["context_length"],
        &entry["meta"]["n_ctx"],
        &entry["meta"]["n_ctx_train"],
    ]
    .into_iter()
    .find_map(|value| value.as_u64())
    .and_then(|window| u32::try_from(window).ok())
}

/// The characters a prompt sends: its messages and its tool schemas.
fn prompt_chars(messages: &[ChatMessage], tools: &[ToolSpec]) -> usize {
    let text: usize = messages
        .iter()
        .map(|message| message.content.chars().count())
        .sum();
    let schemas: usize = tools
        .iter()
        .map(|tool| {
            serde_json::to_string(&function_schema(tool))
                .unwrap_or_default()
                .len()
        })
        .sum();
    text + schemas
}

/// Adds a streamed piece to the call it belongs to: the last one with its
/// index (without an index, the last one), unless the piece starts a call
/// of its own: it brings an id other than that call's, or a name when that
/// call is already whole (OpenAI sends a call's id and name once, in its
/// first piece; Ollama sends each call whole, all at index 0).
fn add_tool_call_piece(calls: &mut Vec<PartialCall>, piece: ToolCallDelta) {
    let (name, arguments) = piece
        .function
        .map(|function| (function.name, function.arguments))
        .unwrap_or_default();
    let joins = |call: &PartialCall| {
        let other_id = matches!((&piece.id, &call.id), (Some(new), Some(old)) if new != old);
        // A name piece after a call whose arguments are already whole JSON
        // (a name split over pieces comes before any argument).
        let second_name = name.is_some()
            && piece.id.is_none()
            && !call.name.is_empty()
            && serde_json::from_str::<serde::de::IgnoredAny>(&call.arguments).is_ok();
        !other_id && !second_name
    };
    let existing = match piece.index {
        Some(index) => calls.iter().rposition(|call| call.index == Some(index)),
        None => calls.len().checked_sub(1),
    }
    .filter(|position| joins(&calls[*position]));
    let position = existing.unwrap_or_else(|| {
        calls.push(PartialCall {
            index: piece.index,
            id: None,
            name: String::new(),
            arguments: String::new(),
        });
        calls.len() - 1
    });
    let call = &mut calls[position];
    if call.id.is_none() {
        call.id = piece.id;
    }
    call.name.push_str(&name.unwrap_or_default());
    call.arguments.push_str(&arguments.unwrap_or_default());
}

/// The OpenAI function schema of one of our tools: one string parameter.
fn function_schema(tool: &ToolSpec) -> FunctionTool {
    FunctionTool::one_parameter(&tool.name, &tool.description)
}

/// The `parameter` of a native call's arguments; arguments that are not
/// the expected object are passed on as they are, for the tool to judge.
fn parameter_of(arguments: &str) -> String {
    serde_json::from_str::<ToolArguments>(arguments)
        .map(|arguments| arguments.parameter)
        .unwrap_or_else(|_| arguments.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_read_from_the_servers_context_length_error() {
        let openai = "This model's maximum context length is 2048 tokens. However, you requested 2995 tokens (2595 in the messages, 400 in the completion).";
        assert_eq!(context_window_in(openai), Some(2048));
        assert_eq!(
            context_window_in("Maximum context length is 700 tokens"),
            Some(700)
        );
        assert_eq!(context_window_in("bad request"), None);
        let error = CallError::Status {
            service: "llm".into(),
            status: 400,
            message: openai.into(),
            retry_after: None,
        };
        assert_eq!(error.context_window(), Some(2048));
        assert_eq!(error.prompt_tokens_counted(), Some(2595));
    }

    #[test]
    fn usage_finish_reason_and_null_tool_calls_are_read() {
        let body = r#"{"choices":[{"message":{"content":"functions.calculator: 2+2","tool_calls":null},"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        let reply: ChatCompletion = serde_json::from_str(body).expect("parses");
        let reply = model_reply(reply);
        assert!(reply.tool_calls.is_empty());
        assert!(reply.was_cut_short());
        assert_eq!(
            (reply.prompt_tokens, reply.completion_tokens),
            (Some(12), Some(5))
        );
    }

    fn chunks(events: &[&str]) -> Vec<ChatCompletionChunk> {
        events
            .iter()
            .map(|event| serde_json::from_str(event).expect("chunk parses"))
            .collect()
    }

    #[test]
    fn streamed_pieces_add_up_to_the_whole_reply() {
        let streamed = chunks(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Count"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"ing."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"calcu","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"file_reader","arguments":"{\"parameter\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"lator","arguments":"{\"parameter\": \"2+"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"2\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":" \"plan.txt\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":9}}"#,
        ]);
        let reply = model_reply(assemble(streamed));
        assert_eq!(
            reply,
            ModelReply {
                content: "Counting.".into(),
                tool_calls: vec![
                    ("calculator".into(), "2+2".into()),
                    ("file_reader".into(), "plan.txt".into()),
                ],
                prompt_tokens: Some(30),
                completion_tokens: Some(9),
                finish_reason: Some("tool_calls".into()),
            }
        );
    }

    #[test]
    fn calls_without_an_index_each_start_with_a_name_and_missing_usage_is_unknown() {
        let streamed = chunks(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"calculator","arguments":"{\"parameter\":\"1+1\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"calculator","arguments":"{\"parameter\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"3*3\"}"}}]},"finish_reason":"stop"}]}"#,
        ]);
        let reply = model_reply(assemble(streamed));
        assert_eq!(
            reply.tool_calls,
            [
                ("calculator".to_string(), "1+1".to_string()),
                ("calculator".to_string(), "3*3".to_string())
            ]
        );
        assert_eq!(reply.content, "");
        assert_eq!((reply.prompt_tokens, reply.completion_tokens), (None, None));
        assert_eq!(model_reply(assemble(Vec::new())), ModelReply::default());
    }

    #[test]
    fn the_chat_body_carries_only_what_applies() {
        let messages = [ChatMessage::user("a \"quoted\" line\n".into())];
        let plain = ChatBody {
            model: Some("m".into()),
            messages: &messages,
            temperature: Some(0.5),
            max_tokens: Some(7),
            seed: Some(3),
            tools: Vec::new(),
            tool_choice: None,
            stream: false,
            stream_options: None,
        };
        assert_eq!(
            serde_json::to_value(&plain).expect("json"),
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "a \"quoted\" line\n"}],
                               "temperature": 0.5, "max_tokens": 7, "seed": 3})
        );
        let streamed = ChatBody {
            tools: vec![FunctionTool::one_parameter("calculator", "arithmetic")],
            tool_choice: Some(ToolChoice::auto()),
            stream: true,
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            ..plain
        };
        let value = serde_json::to_value(&streamed).expect("json");
        assert_eq!(value["stream"], true);
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["tool_choice"], "auto");
        assert_eq!(
            value["tools"][0],
            serde_json::json!({"type": "function", "function": {
                "name": "calculator", "description": "arithmetic",
                "parameters": {"type": "object", "required": ["parameter"],
                    "properties": {"parameter": {"type": "string", "description": "arithmetic"}}},
            }})
        );
    }

    #[test]
    fn whole_calls_that_share_index_0_stay_separate_as_ollama_sends_them() {
        let two = |second_id: Option<&str>| {
            let id = second_id.map_or(String::new(), |id| format!(r#""id":"{id}","#));
            chunks(&[
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"name":"calculator","arguments":"{\"parameter\":\"1+1\"}"}}]}}]}"#,
                &format!(
                    r#"{{"choices":[{{"delta":{{"tool_calls":[{{"index":0,{id}"function":{{"name":"calculator","arguments":"{{\"parameter\":\"3*3\"}}"}}}}]}},"finish_reason":"tool_calls"}}]}}"#
                ),
            ])
        };
        let expected = [
            ("calculator".to_string(), "1+1".to_string()),
            ("calculator".to_string(), "3*3".to_string()),
        ];
        // With its own id, and (some servers) with a name but no id.
        for second_id in [Some("call_b"), None] {
            let reply = model_reply(assemble(two(second_id)));
            assert_eq!(reply.tool_calls, expected, "{second_id:?}");
        }
        // OpenAI's way: id and name once, then argument pieces, same index.
        let openai = chunks(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"name":"calculator","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"parameter\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"2*2\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        ]);
        let reply = model_reply(assemble(openai));
        assert_eq!(
            reply.tool_calls,
            [("calculator".to_string(), "2*2".to_string())]
        );
    }

    #[test]
    fn a_listed_window_is_found_in_each_servers_field() {
        for entry in [
            serde_json::json!({"id": "m", "max_model_len": 4096}),
            serde_json::json!({"id": "m", "max_context_length": 4096}),
            serde_json::json!({"id": "m", "meta": {"n_ctx_train": 4096}}),
        ] {
            assert_eq!(listed_context_window(&entry), Some(4096), "{entry}");
        }
    }
}
