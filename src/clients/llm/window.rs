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
/// The densest tokenizer the ratio allows: byte-level vocabularies count
/// each byte of a multi-byte character as a token.
const MIN_CHARS_PER_TOKEN: f64 = 0.25;
const MAX_CHARS_PER_TOKEN: f64 = 8.0;

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

    /// Moves the characters-per-token ratio toward what the server counted
    /// for a prompt it answered: at once when the server counted more
    /// tokens than the ratio would (an estimate must err on the large side:
    /// a short reply must not let the next prompt overflow), halfway when
    /// it counted fewer, so one odd reply cannot loosen it far.
    pub(super) fn calibrate(&self, chars: usize, prompt_tokens: u32) {
        if prompt_tokens == 0 || chars == 0 {
            return;
        }
        let mut knowledge = self.lock();
        let observed = chars as f64 / f64::from(prompt_tokens);
        let ratio = if observed < knowledge.chars_per_token {
            observed
        } else {
            (knowledge.chars_per_token + observed) / 2.0
        };
        knowledge.chars_per_token = ratio.clamp(MIN_CHARS_PER_TOKEN, MAX_CHARS_PER_TOKEN);
    }

    /// A prompt the server refused as too long, and counted: the ratio is
    /// set so that the same prompt would be estimated at least as large as
    /// the server counted it, never loosened, so the retried, trimmed
    /// prompt fits.
    pub(super) fn calibrate_from_overflow(&self, chars: usize, prompt_tokens: u32) {
        if prompt_tokens == 0 || chars == 0 {
            return;
        }
        let mut knowledge = self.lock();
        let observed = chars as f64 / f64::from(prompt_tokens);
        knowledge.chars_per_token = knowledge
            .chars_per_token
            .min(observed)
            .clamp(MIN_CHARS_PER_TOKEN, MAX_CHARS_PER_TOKEN);
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ModelKnowledge> {
        self.knowledge.lock()
    }
}

impl CallError {
    /// The window a context-length error names (see [`context_overflow_in`]).
    pub fn context_window(&self) -> Option<u32> {
        self.context_overflow().map(|overflow| overflow.window)
    }

    /// The prompt's size, as the server counted it, when its context-length
    /// error says.
    pub(super) fn prompt_tokens_counted(&self) -> Option<u32> {
        self.context_overflow()?.prompt_tokens
    }

    fn context_overflow(&self) -> Option<ContextOverflow> {
        match self {
            Self::Status {
                status: 400,
                message,
                ..
            } => context_overflow_in(message),
            _ => None,
        }
    }
}

/// What a context-length error says: the server's window, and the
/// prompt's size as the server counted it when it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOverflow {
    pub window: u32,
    pub prompt_tokens: Option<u32>,
}

/// The window N in a context-length error's message (see
/// [`context_overflow_in`]).
pub fn context_window_in(message: &str) -> Option<u32> {
    context_overflow_in(message).map(|overflow| overflow.window)
}

/// Reads a context-length error's message, in the forms servers send, the
/// fields first:
/// - llama.cpp's `exceed_context_size_error` fields `n_ctx` and
///   `n_prompt_tokens`, as the client writes them before the message
///   ("exceed_context_size_error (n_prompt_tokens P, n_ctx N): ...");
/// - OpenAI, vLLM, llama-cpp-python: "maximum context length is N tokens.
///   However, you requested T tokens (P in the messages, C in the
///   completion)";
/// - llama.cpp's server: "request (P tokens) exceeds the available context
///   size (N tokens), try increasing it";
/// - LM Studio: "Trying to keep the first P tokens when context the
///   overflows. However, the model is loaded with context length of only N
///   tokens, which is not enough."
pub fn context_overflow_in(message: &str) -> Option<ContextOverflow> {
    let lower = message.to_ascii_lowercase();
    let forms: [(&str, &str, &str); 4] = [
        ("n_ctx ", "n_prompt_tokens ", ""),
        ("maximum context length is ", "(", " in the messages"),
        (
            "exceeds the available context size (",
            "request (",
            " tokens)",
        ),
        ("context length of only ", "keep the first ", " tokens"),
    ];
    forms
        .into_iter()
        .find_map(|(window_marker, prompt_marker, prompt_end)| {
            Some(ContextOverflow {
                window: number_after(&lower, window_marker, "")?,
                prompt_tokens: number_after(&lower, prompt_marker, prompt_end),
            })
        })
}

/// The number right after the first `marker` in `text`, when `end`
/// follows it.
fn number_after(text: &str, marker: &str, end: &str) -> Option<u32> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    let digits = rest
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(rest.len());
    if !rest[digits..].starts_with(end) {
        return None;
    }
    rest[..digits].parse().ok()
}

/// A context window in one `/models` entry, in the fields servers use:
/// vLLM `max_model_len`, LM Studio `max_context_length`, llama.cpp
/// `meta.n_ctx` (the window the server was started with; never its
/// `meta.n_ctx_train`, the model's training window, often far larger),
/// others `context_length`.
fn listed_context_window(entry: &serde_json::Value) -> Option<u32> {
    [
        &entry["max_model_len"],
        &entry["max_context_length"],
        &entry["context_length"],
        &entry["meta"]["n_ctx"],
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
    use crate::clients::error::error_message;

    /// llama.cpp's `llama-server` (2025 and later), word for word.
    const LLAMA_CPP_BODY: &str = r#"{"error":{"code":400,"message":"request (2169 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":2169,"n_ctx":2048}}"#;

    fn status_400(message: &str) -> CallError {
        CallError::Status {
            service: "llm".into(),
            status: 400,
            message: message.into(),
            retry_after: None,
        }
    }

    #[test]
    fn each_servers_context_length_error_names_its_window_and_the_prompts_size() {
        // (where it comes from, the error's message, window, prompt tokens)
        let cases: [(&str, &str, u32, Option<u32>); 7] = [
            (
                "OpenAI, vLLM, llama-cpp-python",
                "This model's maximum context length is 2048 tokens. However, you requested 2995 tokens (2595 in the messages, 400 in the completion). Please reduce the length of the messages or completion.",
                2048,
                Some(2595),
            ),
            (
                "OpenAI, without the breakdown",
                "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.",
                8192,
                None,
            ),
            ("a short form", "Maximum context length is 700 tokens", 700, None),
            (
                "llama.cpp's text alone (no fields)",
                "request (2169 tokens) exceeds the available context size (2048 tokens), try increasing it",
                2048,
                Some(2169),
            ),
            (
                "llama.cpp's fields, as the client writes them first",
                "exceed_context_size_error (n_prompt_tokens 2169, n_ctx 2048): request (2169 tokens) exceeds the available context size (2048 tokens), try increasing it",
                2048,
                Some(2169),
            ),
            (
                "llama.cpp's fields win over a message that disagrees",
                "exceed_context_size_error (n_prompt_tokens 3000, n_ctx 4096): the prompt is too long (2048 tokens)",
                4096,
                Some(3000),
            ),
            (
                // As LM Studio 0.3.15 logged it (cline/cline#3664); its API
                // answers it as a 400 ("BadRequestError 400--<LM Studio
                // error> Trying to keep the first 15857 tokens when context
                // the overflows.", lmstudio-ai/lmstudio-bug-tracker#237).
                "LM Studio",
                "Trying to keep the first 10136 tokens when context the overflows. However, the model is loaded with context length of only 7866 tokens, which is not enough. Try to load the model with a larger context length, or provide a shorter input.",
                7866,
                Some(10136),
            ),
        ];
        for (server, message, window, prompt_tokens) in cases {
            assert_eq!(
                context_overflow_in(message),
                Some(ContextOverflow {
                    window,
                    prompt_tokens
                }),
                "{server}"
            );
            let error = status_400(message);
            assert_eq!(error.context_window(), Some(window), "{server}");
            assert_eq!(error.prompt_tokens_counted(), prompt_tokens, "{server}");
        }
    }

    #[test]
    fn other_errors_are_not_context_errors() {
        for message in [
            "bad request",
            // Ollama's embedding error says no window: nothing to learn
            // (jeastham1993/zettel-system, docs/compound/infrastructure;
            // Ollama truncates an over-long chat prompt instead).
            "the input length exceeds the context length",
            "request (12 tokens) is fine",
        ] {
            assert_eq!(context_overflow_in(message), None, "{message}");
        }
        let not_a_400 = CallError::Status {
            service: "llm".into(),
            status: 500,
            message: "maximum context length is 2048 tokens".into(),
            retry_after: None,
        };
        assert_eq!(not_a_400.context_window(), None);
    }

    #[test]
    fn llama_cpps_error_body_is_read_from_its_fields() {
        let message = error_message(LLAMA_CPP_BODY.as_bytes()).expect("a message");
        let error = status_400(&crate::wire::loggable(&message));
        assert_eq!(error.context_window(), Some(2048));
        assert_eq!(error.prompt_tokens_counted(), Some(2169));
        let fields_only = r#"{"error":{"code":400,"message":"too long","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#;
        let message = error_message(fields_only.as_bytes()).expect("a message");
        assert_eq!(
            context_overflow_in(&message),
            Some(ContextOverflow {
                window: 4096,
                prompt_tokens: Some(5000)
            }),
            "{message}"
        );
    }

    fn client() -> LlmClient {
        let config = crate::config::load(None, Vec::new()).expect("default config loads");
        LlmClient::from_config(
            &config.llm,
            crate::clients::http_client().expect("HTTP client"),
        )
    }

    #[test]
    fn the_ratio_errs_on_the_large_side() {
        let llm = client();
        let ratio = || llm.lock().chars_per_token;
        // A denser tokenizer than guessed is believed at once ...
        llm.calibrate(1000, 1000);
        assert_eq!(ratio(), 1.0);
        // ... a sparser one only halfway.
        llm.calibrate(3000, 1000);
        assert_eq!(ratio(), 2.0);
        // A context error's count: the same prompt is now estimated at
        // least as large as the server counted it, never loosened.
        llm.calibrate_from_overflow(2000, 2169);
        let messages = [ChatMessage::user("x".repeat(2000))];
        assert!(llm.estimate_tokens(&messages, &[]) >= 2169);
        let dense = ratio();
        llm.calibrate_from_overflow(2000, 500);
        assert_eq!(ratio(), dense);
        // Byte-level tokenizers count several tokens to a character.
        llm.calibrate_from_overflow(1000, 3000);
        assert!(ratio() < 0.34, "{}", ratio());
    }

    #[test]
    fn a_listed_window_is_found_in_each_servers_field() {
        for entry in [
            serde_json::json!({"id": "m", "max_model_len": 4096}),
            serde_json::json!({"id": "m", "max_context_length": 4096}),
            serde_json::json!({"id": "m", "context_length": 4096}),
            // llama.cpp: the server's window, not the model's training one.
            serde_json::json!({"id": "m", "meta": {"n_ctx": 4096, "n_ctx_train": 131072}}),
        ] {
            assert_eq!(listed_context_window(&entry), Some(4096), "{entry}");
        }
        let training_only = serde_json::json!({"id": "m", "meta": {"n_ctx_train": 131072}});
        assert_eq!(listed_context_window(&training_only), None);
    }
}
