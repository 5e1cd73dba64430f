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
//! Several endpoints (`[[llm.endpoints]]`, `[[llm.fallbacks]]`) are one
//! client: each attempt's body names the model of the endpoint the guard
//! picked and carries that endpoint's key, and what is learned about a
//! model (window, ratio, native tools) is kept per endpoint; a view of the
//! client pinned to one endpoint (`endpoint_view`) reads and probes it.
//!
//! Each request first takes room from the endpoint's rate limiter
//! (`rpm`, `tpm`, the server's `x-ratelimit-*` hold), charged its estimated
//! prompt plus `max_tokens` and corrected by the reply's `usage`.
//!
//! It knows the wire format; it must not decide what to trim or whether a
//! session waits (that is `heist`), nor retry (that is `resilience`).

mod endpoints;
mod native_tools;
mod stream;
mod tokenize;
mod window;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{CallError, ServiceClient, Streamed};
use crate::config::{LlmConfig, ModelEndpointConfig, Secret, TokenCounting};
use crate::metrics as names;
use crate::resilience::{Endpoint, EndpointSpec, Permit, Policy, RateLimiter};
/// One prompt message (defined in `wire`, shared with the rehearsal model).
pub use crate::wire::openai::ChatMessage;
use crate::wire::openai::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, StreamOptions, ToolChoice,
};
use crate::wire::CHAT_COMPLETIONS_PATH;
use native_tools::{function_schema, parameter_of};
use stream::assemble;
use window::{prompt_chars, ModelKnowledge};
pub use window::{EndpointKnowledge, RatioSource, WindowSource};

#[derive(Clone)]
pub struct LlmClient {
    pub service: ServiceClient,
    model: String,
    temperature: f64,
    max_tokens: u32,
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
    /// Each endpoint's model, key and knowledge, by the guard's index.
    endpoints: Arc<Vec<ModelEndpoint>>,
    /// A view's endpoint: its calls go there only.
    pinned: Option<usize>,
}

/// What the client keeps per endpoint.
struct ModelEndpoint {
    name: String,
    model: String,
    /// Read at load from the variable or file the config names.
    api_key: Option<Secret>,
    fallback: bool,
    knowledge: Arc<Mutex<ModelKnowledge>>,
    /// The endpoint's `rpm`, `tpm` and the provider's hold, shared by
    /// clones (and told every answer's headers by `service`).
    rate_limiter: Arc<RateLimiter>,
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
        let knowledge = || Arc::new(Mutex::new(ModelKnowledge::new(config.context_tokens)));
        let lists: Vec<(u32, ModelEndpointConfig)> = config
            .primary_endpoints()
            .into_iter()
            .map(|endpoint| (0, endpoint))
            .chain(
                (1u32..)
                    .zip(&config.fallbacks)
                    .map(|(tier, endpoint)| (tier, endpoint.clone())),
            )
            .collect();
        let specs = lists
            .iter()
            .map(|(tier, endpoint)| EndpointSpec {
                name: endpoint.label(),
                base_url: endpoint.base_url.clone(),
                model: endpoint.model.clone(),
                tier: *tier,
                weight: endpoint.weight,
                max_concurrent: endpoint.max_concurrent,
            })
            .collect();
        let endpoints: Vec<ModelEndpoint> = lists
            .into_iter()
            .map(|(tier, endpoint)| ModelEndpoint {
                rate_limiter: Arc::new(RateLimiter::new(
                    crate::config::LLM_SERVICE,
                    &endpoint.label(),
                    endpoint.rate_limits(),
                )),
                name: endpoint.label(),
                model: endpoint.model.clone(),
                api_key: endpoint.api_key,
                fallback: tier > 0,
                knowledge: knowledge(),
            })
            .collect();
        // Each fallback's series exists from the start, at 0.
        for fallback in endpoints.iter().filter(|endpoint| endpoint.fallback) {
            metrics::counter!(names::MODEL_FALLBACKS_TOTAL, "from" => endpoints[0].model.clone(), "to" => fallback.model.clone()).increment(0);
        }
        let policy = Policy::new(config.timeout_ms, config.policy.clone());
        let service = ServiceClient::with_endpoints(
            crate::config::LLM_SERVICE,
            policy,
            config.outlier.clone(),
            specs,
            http.clone(),
        )
        .with_max_reply_bytes(config.max_reply_bytes)
        .with_rate_limiters(
            endpoints
                .iter()
                .map(|endpoint| Some(endpoint.rate_limiter.clone()))
                .collect(),
        );
        Self {
            service,
            model: endpoints[0].model.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            stream: config.stream,
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            first_piece_timeout: Duration::from_millis(config.timeout_ms),
            token_counting: config.token_counting,
            http,
            knowledge: endpoints[0].knowledge.clone(),
            endpoints: Arc::new(endpoints),
            pinned: None,
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
    /// `usage` calibrates the estimate; both for the endpoint that answered.
    pub async fn complete(&self, request: ChatRequest<'_>) -> Result<ModelReply, CallError> {
        self.complete_from_tier(request, 0).await
    }

    /// [`Self::complete`] on the endpoints of tier `min_tier` or later
    /// (a prompt too long for every primary model goes to a fallback).
    pub async fn complete_from_tier(
        &self,
        request: ChatRequest<'_>,
        min_tier: u32,
    ) -> Result<ModelReply, CallError> {
        let mut body = self.body(&request);
        if !request.tools.is_empty() {
            body.tool_choice = Some(ToolChoice::auto());
        }
        let (reply, answered) = self
            .send_from_tier(&body, min_tier, self.charge_of(&request))
            .await;
        let answered = self.endpoint_view(answered.unwrap_or(0));
        let chars = || prompt_chars(request.messages, request.tools);
        match &reply {
            Ok(reply) => {
                if let Some(tokens) = reply.prompt_tokens {
                    answered.calibrate(chars(), tokens);
                }
            }
            Err(error) => {
                if let Some(overflow) = error.context_overflow() {
                    let messages = request.messages.len();
                    answered
                        .learn_from_overflow(overflow, chars(), messages, request.max_tokens)
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
        let request = ChatRequest {
            messages: &messages,
            seed: 0,
            tools: &[],
            max_tokens: 1,
        };
        self.send(&self.body(&request), self.charge_of(&request))
            .await
            .map(drop)
    }

    /// What a request is charged against `tpm` until its `usage` is known:
    /// its estimated prompt plus its `max_tokens`.
    fn charge_of(&self, request: &ChatRequest<'_>) -> u32 {
        self.estimate_tokens(request.messages, request.tools)
            .saturating_add(request.max_tokens)
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

    async fn send(&self, body: &ChatBody<'_>, charge: u32) -> Result<ModelReply, CallError> {
        self.send_from_tier(body, 0, charge).await.0
    }

    /// The endpoints a call may go to, as far as their rate limits go, and
    /// the permit it holds. Among the candidates that can serve (all of them
    /// when none can), the lowest tier's endpoint with room soonest is
    /// reserved at once (waiting for room within the call's deadline), so
    /// concurrent calls cannot all count on the same room and a briefly
    /// rate-limited primary is waited for rather than spilled to a
    /// fallback. The pick may still choose another endpoint of that tier
    /// that has room now, or a later tier's when the tier is full (its
    /// breakers, ejections, bulkheads). The error: no room before the
    /// deadline (not sent).
    async fn admit(
        &self,
        candidates: Vec<usize>,
        charge: u32,
    ) -> Result<(Vec<usize>, Option<(usize, Permit)>), CallError> {
        let endpoints = self.service.endpoints();
        let serving: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|index| endpoints[*index].can_serve())
            .collect();
        let pool = if serving.is_empty() {
            candidates.clone()
        } else {
            serving
        };
        let Some(tier) = pool.iter().map(|index| endpoints[*index].tier()).min() else {
            return Ok((candidates, None));
        };
        let ready_at = |index: usize| self.endpoints[index].rate_limiter.ready_at(charge);
        // `None` (room now) orders before any instant.
        let Some(reserved) = pool
            .iter()
            .copied()
            .filter(|index| endpoints[*index].tier() == tier)
            .min_by_key(|index| ready_at(*index))
        else {
            return Ok((candidates, None));
        };
        let permit = self.endpoints[reserved]
            .rate_limiter
            .acquire(charge, self.service.call_deadline())
            .await
            .map_err(|refused| refused.end_call(CHAT_COMPLETIONS_PATH.trim_start_matches('/')))?;
        let allowed = candidates
            .into_iter()
            .filter(|index| {
                let its_tier = endpoints[*index].tier();
                *index == reserved
                    || its_tier > tier
                    || (its_tier == tier && ready_at(*index).is_none())
            })
            .collect();
        Ok((allowed, Some((reserved, permit))))
    }

    /// Corrects the rate-limit charge of a call once its `usage` is known:
    /// the reserved endpoint's permit when it answered; when another did,
    /// the reservation's tokens are given back and the one that answered is
    /// charged (its request count stays on the reserved one: erring on the
    /// side of fewer requests).
    fn settle(
        &self,
        reply: &Result<ModelReply, CallError>,
        answered: Option<usize>,
        charge: u32,
        permit: Option<(usize, Permit)>,
    ) {
        let used = match reply {
            Ok(ModelReply {
                prompt_tokens: Some(prompt),
                completion_tokens: Some(completion),
                ..
            }) => prompt.saturating_add(*completion),
            _ => charge,
        };
        match (permit, answered) {
            (Some((index, permit)), Some(answered)) if answered != index => {
                self.endpoints[index].rate_limiter.correct(permit, 0);
                self.endpoints[answered].rate_limiter.record(used);
            }
            (Some((index, permit)), _) => self.endpoints[index].rate_limiter.correct(permit, used),
            (None, Some(index)) => self.endpoints[index].rate_limiter.record(used),
            (None, None) => {}
        }
    }

    /// `body` to an endpoint of tier `min_tier` or later (or the pinned
    /// one), with that endpoint's model and key; the reply names the
    /// endpoint that answered. With the index of the last attempt's
    /// endpoint.
    async fn send_from_tier(
        &self,
        body: &ChatBody<'_>,
        min_tier: u32,
        charge: u32,
    ) -> (Result<ModelReply, CallError>, Option<usize>) {
        let pinned = self.pinned;
        let candidates: Vec<usize> = self
            .service
            .endpoints()
            .iter()
            .filter(|endpoint| match pinned {
                Some(index) => endpoint.index() == index,
                None => endpoint.tier() >= min_tier,
            })
            .map(Endpoint::index)
            .collect();
        let (allowed, permit) = match self.admit(candidates, charge).await {
            Ok(admitted) => admitted,
            Err(refused) => return (Err(refused), None),
        };
        let eligible = move |endpoint: &Endpoint| allowed.contains(&endpoint.index());
        let make = |endpoint: &Endpoint| {
            let mut body = body.clone();
            let mut headers = Vec::new();
            if let Some(own) = self.endpoints.get(endpoint.index()) {
                body.model = Some(own.model.clone().into());
                if let Some(key) = &own.api_key {
                    headers.push(("authorization", format!("Bearer {}", key.expose())));
                }
            }
            (body, headers)
        };
        let (reply, answered) = if self.stream {
            let (reply, answered) = self
                .service
                .post_streaming_via::<_, ChatCompletionChunk, ChatCompletion>(
                    CHAT_COMPLETIONS_PATH,
                    self.idle_timeout,
                    &eligible,
                    make,
                )
                .await;
            let reply = reply.map(|reply| match reply {
                Streamed::Events(chunks) => model_reply(assemble(chunks)),
                Streamed::Whole(reply) => model_reply(reply),
            });
            (reply, answered)
        } else {
            let (reply, answered) = self
                .service
                .post_json_via::<_, ChatCompletion>(CHAT_COMPLETIONS_PATH, &eligible, make)
                .await;
            (reply.map(model_reply), answered)
        };
        let reply = reply.map(|mut reply| {
            if let Some(own) = answered.and_then(|index| self.endpoints.get(index)) {
                reply.endpoint = own.name.clone();
                reply.model = own.model.clone();
                reply.fallback = own.fallback;
                if own.fallback {
                    metrics::counter!(names::MODEL_FALLBACKS_TOTAL, "from" => self.endpoints[0].model.clone(), "to" => own.model.clone()).increment(1);
                }
            }
            reply
        });
        self.settle(&reply, answered, charge, permit);
        (reply, answered)
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
        endpoint: String::new(),
        model: String::new(),
        fallback: false,
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
