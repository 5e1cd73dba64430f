//! The OpenAI-compatible chat-completions client, and what it learns about
//! the model it talks to: its context window (configured, or read from the
//! server's context-length error, OpenAI's, llama.cpp's or LM Studio's, or
//! its model list),
//! how many characters make a token (calibrated from each reply's
//! `usage.prompt_tokens`), and whether it really returns native
//! `tool_calls`. That knowledge is shared by clones of the client, so it is
//! learned once per model per process.
//!
//! Replies stream by default (`stream: true`, server-sent events): the
//! content, `tool_calls` and `usage` pieces are put together into the reply
//! the non-streaming path reads, so nothing downstream can tell the two
//! apart. A server that answers a streaming request with plain JSON is read
//! as it is.
//!
//! Here: `LlmClient` and the chat call (request body, send, the reply
//! heistd keeps). `stream` puts streamed pieces together, `window` learns
//! the context window and token ratio (and reads the model list),
//! `native_tools` checks native tool calling and holds its wire shapes.
//!
//! It knows the wire format; it must not decide what to trim or whether a
//! session waits (that is `heist`), nor retry (that is `resilience`).

mod native_tools;
mod stream;
mod tokenize;
mod window;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{CallError, ServiceClient, Streamed};
use crate::config::{LlmConfig, Secret, TokenCounting};
use crate::resilience::Policy;
/// One prompt message (defined in `wire`, shared with the rehearsal model).
pub use crate::wire::openai::ChatMessage;
use crate::wire::openai::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, StreamOptions, ToolChoice,
};
use crate::wire::CHAT_COMPLETIONS_PATH;
use native_tools::{function_schema, parameter_of};
use stream::assemble;
pub use window::{endpoint_name, EndpointKnowledge, RatioSource, WindowSource};
use window::{prompt_chars, ModelKnowledge};

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
    /// `llm.token_counting`: the calibrated estimate, or the server's
    /// tokenizer first.
    token_counting: TokenCounting,
    /// For questions about the server outside the call stack (its
    /// tokenizer, its window).
    http: reqwest::Client,
    knowledge: Arc<Mutex<ModelKnowledge>>,
    /// The configured endpoint's name (its base URL's `host:port`), which
    /// each reply carries as the endpoint that answered.
    endpoint: String,
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
    /// The endpoint that answered (its `name`, by default its base URL's
    /// `host:port`) and the model it ran.
    pub endpoint: String,
    pub model: String,
    /// That endpoint is one of `[[llm.fallbacks]]`.
    pub fallback: bool,
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
                http.clone(),
            )
            .with_max_reply_bytes(config.max_reply_bytes),
            model: config.model.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            api_key: config.api_key.clone(),
            stream: config.stream,
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            first_piece_timeout: Duration::from_millis(config.timeout_ms),
            token_counting: config.token_counting,
            http,
            knowledge: Arc::new(Mutex::new(ModelKnowledge::new(config.context_tokens))),
            endpoint: endpoint_name(&config.base_url),
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
    /// the window it names and its count of the prompt; a reply with
    /// `usage` calibrates the estimate.
    pub async fn complete(&self, request: ChatRequest<'_>) -> Result<ModelReply, CallError> {
        let mut body = self.body(&request);
        if !request.tools.is_empty() {
            body.tool_choice = Some(ToolChoice::auto());
        }
        let reply = self.send(&body).await;
        let chars = || prompt_chars(request.messages, request.tools);
        match &reply {
            Ok(reply) => {
                if let Some(tokens) = reply.prompt_tokens {
                    self.calibrate(chars(), tokens);
                }
            }
            Err(error) => {
                if let Some(overflow) = error.context_overflow() {
                    let messages = request.messages.len();
                    self.learn_from_overflow(overflow, chars(), messages, request.max_tokens)
                        .await;
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
            return Ok(self.answered(model_reply(reply)));
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
        Ok(self.answered(match reply {
            Streamed::Events(chunks) => model_reply(assemble(chunks)),
            Streamed::Whole(reply) => model_reply(reply),
        }))
    }

    /// Names the endpoint that answered and the model it ran: the one
    /// configured endpoint, never a fallback.
    fn answered(&self, reply: ModelReply) -> ModelReply {
        ModelReply {
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            fallback: false,
            ..reply
        }
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
        ..ModelReply::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::openai::FunctionTool;

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

    #[test]
    fn an_endpoint_is_named_by_its_host_and_port() {
        for (url, name) in [
            ("http://127.0.0.1:8006/v1", "127.0.0.1:8006"),
            ("https://api.openai.com/v1", "api.openai.com:443"),
            (
                "http://user:secret@models.internal/v1",
                "models.internal:80",
            ),
            ("http://[::1]:1234/v1", "[::1]:1234"),
        ] {
            assert_eq!(endpoint_name(url), name, "{url}");
        }
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
}
