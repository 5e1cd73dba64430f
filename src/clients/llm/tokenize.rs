//! Asking the model server itself what the estimate can only guess: how
//! many tokens a prompt is (`POST /tokenize`, which llama.cpp's server and
//! vLLM serve at the server's root, the base URL without its `/v1`), used
//! when `llm.token_counting = "server"`; and its context window when a
//! refusal for length did not name it (`GET /v1/models`, llama.cpp's
//! `GET /props`, Ollama's `GET /api/ps`).
//!
//! These requests go around the call stack (no retry, no breaker, a short
//! timeout): they are questions about the server, and a server that cannot
//! answer them is served by the estimate, with a warning once.

use super::native_tools::function_schema;
use super::window::{prompt_chars, RatioSource, WindowSource, TOKENS_PER_MESSAGE};
use super::{ChatMessage, LlmClient, ToolSpec};
use crate::clients::PROBE_TIMEOUT;
use crate::config::TokenCounting;

/// The most a tokenizer's or a status reply may be: a token id list of a
/// long prompt fits many times over.
const MAX_PROBE_REPLY_BYTES: usize = 4 * 1024 * 1024;

impl LlmClient {
    /// The server's root: the base URL without a trailing `/v1`.
    fn server_root(&self) -> &str {
        let base = self.service.base_url.trim_end_matches('/');
        base.strip_suffix("/v1").unwrap_or(base)
    }

    /// A prompt's tokens as the server counts them, when `llm.token_counting
    /// = "server"` and the server's tokenizer answers: its messages' text
    /// and tool schemas, plus what the chat template adds around each
    /// message (estimated). The count calibrates the estimate, and a window
    /// the tokenizer names (vLLM's `max_model_len`) is learned; with no
    /// window known yet the server is asked for it first, so the first
    /// prompt can fit. None otherwise: the caller uses the estimate.
    pub async fn count_tokens(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Option<u32> {
        if self.token_counting != TokenCounting::Server
            || self.lock().server_counting == Some(false)
        {
            return None;
        }
        if self.context_tokens().is_none() {
            self.discover_window().await;
        }
        let mut text = String::new();
        for message in messages {
            text.push_str(&message.content);
            text.push('\n');
        }
        for tool in tools {
            text.push_str(&serde_json::to_string(&function_schema(tool)).unwrap_or_default());
        }
        let body = serde_json::json!({
            // llama.cpp reads `content`, vLLM `model` and `prompt`.
            "content": text, "add_special": true,
            "model": self.model, "prompt": text,
        });
        let url = format!("{}/tokenize", self.server_root());
        let reply = self.ask_server(self.http.post(&url).json(&body)).await;
        let counted = reply.as_ref().and_then(|reply| {
            reply["count"]
                .as_u64()
                .or_else(|| reply["tokens"].as_array().map(|tokens| tokens.len() as u64))
                .and_then(|count| u32::try_from(count).ok())
        });
        let Some(counted) = counted else {
            // A tokenizer that never answered is not asked again; one that
            // has answered before only missed this prompt.
            let never_answered = {
                let mut knowledge = self.lock();
                let never = knowledge.server_counting.is_none();
                if never {
                    knowledge.server_counting = Some(false);
                }
                never
            };
            if never_answered {
                tracing::warn!(%url, "llm.token_counting = \"server\", but the server's tokenizer does not answer; estimating tokens instead");
            }
            return None;
        };
        self.lock().server_counting = Some(true);
        if let Some(window) = reply
            .and_then(|reply| reply["max_model_len"].as_u64())
            .and_then(|window| u32::try_from(window).ok())
        {
            self.learn_window(window, WindowSource::Tokenize);
        }
        self.lock().calibrate(
            prompt_chars(messages, tools),
            counted,
            RatioSource::Tokenize,
        );
        Some(counted.saturating_add((messages.len() * TOKENS_PER_MESSAGE) as u32))
    }

    /// Asks the server for its context window, and learns it: llama.cpp's
    /// `GET /props` (`default_generation_settings.n_ctx`), then its model
    /// list, then Ollama's `GET /api/ps` (the loaded model's
    /// `context_length`). Asked once per client: a server that says none
    /// is not asked again.
    pub(super) async fn discover_window(&self) -> Option<u32> {
        if std::mem::replace(&mut self.lock().window_asked, true) {
            return self.context_tokens();
        }
        let root = self.server_root();
        // llama.cpp's `/props` first: its `n_ctx` is a slot's window, what a
        // prompt must fit; its model list's `meta.n_ctx` is the whole
        // context, shared by the slots unless the KV cache is unified.
        let props = self
            .ask_server(self.http.get(format!("{root}/props")))
            .await;
        let from_props = props
            .as_ref()
            .and_then(|props| props["default_generation_settings"]["n_ctx"].as_u64());
        if let Some(window) = from_props.and_then(|window| u32::try_from(window).ok()) {
            self.learn_window(window, WindowSource::ServerProps);
            return self.context_tokens();
        }
        if self.list_models().await.is_ok() {
            if let Some(window) = self.context_tokens() {
                return Some(window);
            }
        }
        let running = self
            .ask_server(self.http.get(format!("{root}/api/ps")))
            .await;
        let window = running.and_then(|running| {
            running["models"].as_array()?.iter().find_map(|model| {
                let name = model["name"].as_str().or(model["model"].as_str())?;
                let same =
                    name == self.model || name.strip_suffix(":latest") == Some(self.model.as_str());
                same.then(|| model["context_length"].as_u64()).flatten()
            })
        });
        let window = window.and_then(|window| u32::try_from(window).ok())?;
        self.learn_window(window, WindowSource::ServerProps);
        self.context_tokens()
    }

    /// One request to the server outside the call stack, with the API key
    /// and a short timeout; its JSON reply, or None (logged at debug).
    async fn ask_server(&self, request: reqwest::RequestBuilder) -> Option<serde_json::Value> {
        let request = match self.api_key() {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        };
        let reply = async {
            let mut response = request.send().await.ok()?.error_for_status().ok()?;
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.ok()? {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_PROBE_REPLY_BYTES {
                    return None;
                }
            }
            serde_json::from_slice(&bytes).ok()
        };
        let reply = tokio::time::timeout(PROBE_TIMEOUT, reply)
            .await
            .ok()
            .flatten();
        if reply.is_none() {
            tracing::debug!(model = %self.model, "the model server did not answer a question about itself");
        }
        reply
    }
}
