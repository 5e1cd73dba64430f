//! What the LLM client learns about its model's size limits, shared by
//! the client's clones: the context window (configured, or learned from a
//! context-length error or the server's model list, which is read here)
//! and how many characters make a token (calibrated from each reply's
//! `usage`), which together estimate a prompt's tokens.

use parking_lot::MutexGuard;

use super::native_tools::function_schema;
use super::{ChatMessage, LlmClient, ToolSpec};
use crate::clients::CallError;
use crate::wire::openai::ModelList;
use crate::wire::MODELS_PATH;

/// Characters per token before any reply has said better: English prose
/// runs about 4; a little less keeps the first estimate on the safe side.
pub(super) const INITIAL_CHARS_PER_TOKEN: f64 = 3.5;
/// Tokens a chat template adds around each message (role markers).
const TOKENS_PER_MESSAGE: usize = 8;

/// What has been learned about the model, shared by the client's clones.
#[derive(Debug, Clone)]
pub(super) struct ModelKnowledge {
    /// The context window in tokens: configured, learned, or unknown.
    pub(super) context_tokens: Option<u32>,
    /// True when `context_tokens` came from the config: never overwritten.
    pub(super) configured: bool,
    pub(super) chars_per_token: f64,
    /// Whether the model returns `tool_calls` when forced to; unknown
    /// until checked.
    pub(super) native_tools: Option<bool>,
}

impl LlmClient {
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
        let body: ModelList<serde_json::Value> = self.service.probe_json(MODELS_PATH).await?;
        let entries = body.data;
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

    /// Moves the characters-per-token ratio toward what the server counted,
    /// halfway each time, so one odd reply cannot swing it far.
    pub(super) fn calibrate(&self, chars: usize, prompt_tokens: u32) {
        if prompt_tokens == 0 || chars == 0 {
            return;
        }
        let mut knowledge = self.lock();
        let observed = chars as f64 / f64::from(prompt_tokens);
        knowledge.chars_per_token = ((knowledge.chars_per_token + observed) / 2.0).clamp(1.0, 8.0);
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ModelKnowledge> {
        self.knowledge.lock()
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
    pub(super) fn prompt_tokens_counted(&self) -> Option<u32> {
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
pub(super) fn prompt_chars(messages: &[ChatMessage], tools: &[ToolSpec]) -> usize {
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
