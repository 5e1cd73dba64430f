//! What the LLM client learns about its model's size limits: the context
//! window (configured, or learned from the server's model list, its
//! `/props`, a context-length error or its tokenizer) and how many
//! characters make a token (calibrated from each reply's `usage`, a
//! context error's count, or the server's tokenizer), which together
//! estimate a prompt's tokens. [`ModelKnowledge`] holds it for one endpoint
//! and model, with the methods that change it, and says where each figure
//! came from ([`EndpointKnowledge`], for the status and `heistd check`).
//!
//! The estimate errs on the large side: a denser tokenizer than believed
//! is believed at once, a sparser one only slowly (one reply of a sparse
//! prompt must not let the next, denser one overflow), and every estimate
//! carries a safety margin.

use parking_lot::MutexGuard;
use serde::{Deserialize, Serialize};

use super::native_tools::function_schema;
use super::{ChatMessage, LlmClient, ToolSpec};
use crate::clients::{CallError, ContextOverflow};
use crate::config::TokenCounting;
use crate::wire::openai::ModelList;
use crate::wire::MODELS_PATH;

/// Characters per token before any reply has said better: English prose
/// runs about 4; a little less keeps the first estimate on the safe side.
pub(super) const INITIAL_CHARS_PER_TOKEN: f64 = 3.5;
/// Tokens a chat template adds around each message (role markers).
pub(super) const TOKENS_PER_MESSAGE: usize = 8;
/// The densest tokenizer the ratio allows: byte-level vocabularies count
/// each byte of a multi-byte character as a token.
const MIN_CHARS_PER_TOKEN: f64 = 0.25;
const MAX_CHARS_PER_TOKEN: f64 = 8.0;
/// How far one reply that counted fewer tokens than believed moves the
/// ratio toward it: a sixteenth, so a run of sparse prompts loosens it
/// over many replies, never one.
const LOOSEN_STEP: f64 = 0.0625;
/// Every estimate is this much larger than the ratio alone makes it.
const SAFETY_MARGIN: f64 = 0.05;

/// Where the context window came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSource {
    /// `llm.context_tokens`: never overwritten.
    Configured,
    /// The server's `GET /v1/models` entry for the model.
    ModelsList,
    /// llama.cpp's `GET /props` (`default_generation_settings.n_ctx`) or
    /// Ollama's `GET /api/ps` (the loaded model's `context_length`).
    ServerProps,
    /// A context-length error that named it.
    ContextError,
    /// vLLM's `POST /tokenize` (`max_model_len`).
    Tokenize,
    /// A context-length error that named no window and no server said
    /// one: a bound below the refused prompt's estimate.
    RefusedPrompt,
}

impl WindowSource {
    /// How far a window from here is trusted: one from a less trusted
    /// source never replaces it (a model list's `meta.n_ctx` is the whole
    /// context, which llama.cpp may split between slots; a refusal names
    /// the window the prompt had to fit).
    fn trust(self) -> u8 {
        match self {
            Self::RefusedPrompt => 0,
            Self::ModelsList => 1,
            Self::Tokenize | Self::ServerProps => 2,
            Self::ContextError => 3,
            Self::Configured => 4,
        }
    }

    /// How `heistd check` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Configured => "llm.context_tokens",
            Self::ModelsList => "the server's model list",
            Self::ServerProps => "the server's properties",
            Self::ContextError => "a context-length error",
            Self::Tokenize => "the server's tokenizer",
            Self::RefusedPrompt => "a refused prompt's size",
        }
    }
}

/// Where the characters-per-token ratio came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioSource {
    /// The first guess; nothing has been counted yet.
    Initial,
    /// A reply's `usage.prompt_tokens`.
    Usage,
    /// A context-length error's count of the refused prompt.
    ContextError,
    /// The server's tokenizer (`POST /tokenize`).
    Tokenize,
}

impl RatioSource {
    /// How `heistd check` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Initial => "the first guess",
            Self::Usage => "the replies' usage",
            Self::ContextError => "a context-length error",
            Self::Tokenize => "the server's tokenizer",
        }
    }
}

/// What one endpoint's model is known to hold, as the status and `heistd
/// check` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointKnowledge {
    /// The endpoint's name: its base URL's `host:port`.
    pub endpoint: String,
    pub base_url: String,
    pub model: String,
    /// The context window in tokens, when configured or learned.
    pub context_tokens: Option<u32>,
    pub context_source: Option<WindowSource>,
    /// Characters per token the estimate uses (before its safety margin).
    pub chars_per_token: f64,
    pub ratio_source: RatioSource,
    /// Counts compared with the estimate so far (usage, errors, tokenizer).
    pub calibrations: u64,
    /// `llm.token_counting`, and whether the server's tokenizer answers
    /// (null until asked).
    pub token_counting: TokenCounting,
    pub server_counting: Option<bool>,
    /// Whether the model returns native `tool_calls`; null until checked.
    pub native_tools: Option<bool>,
}

/// What has been learned about one endpoint's model.
#[derive(Debug, Clone)]
pub(super) struct ModelKnowledge {
    context_tokens: Option<u32>,
    context_source: Option<WindowSource>,
    chars_per_token: f64,
    ratio_source: RatioSource,
    calibrations: u64,
    /// Whether `POST /tokenize` answers; unknown until asked.
    pub(super) server_counting: Option<bool>,
    /// The server has been asked for its window (once is enough).
    pub(super) window_asked: bool,
    /// Whether the model returns `tool_calls` when forced to; unknown
    /// until checked.
    pub(super) native_tools: Option<bool>,
}

impl ModelKnowledge {
    /// Nothing learned yet; a configured window (above 0) is kept for good.
    pub(super) fn new(configured_window: u32) -> Self {
        Self {
            context_tokens: (configured_window > 0).then_some(configured_window),
            context_source: (configured_window > 0).then_some(WindowSource::Configured),
            chars_per_token: INITIAL_CHARS_PER_TOKEN,
            ratio_source: RatioSource::Initial,
            calibrations: 0,
            server_counting: None,
            window_asked: false,
            native_tools: None,
        }
    }

    pub(super) fn window(&self) -> Option<u32> {
        self.context_tokens
    }

    /// Characters per token, as calibrated (smaller is denser).
    pub(super) fn chars_per_token(&self) -> f64 {
        self.chars_per_token
    }

    /// Estimated tokens of a prompt of `chars` characters in `messages`
    /// messages: the ratio, the safety margin, the template's tokens.
    pub(super) fn estimate(&self, chars: usize, messages: usize) -> u32 {
        let tokens = chars as f64 / self.chars_per_token * (1.0 + SAFETY_MARGIN);
        (tokens.ceil() as u32).saturating_add((messages * TOKENS_PER_MESSAGE) as u32)
    }

    /// Takes a window a server named, unless one came from a more trusted
    /// source (the config's is never replaced); true when it changed.
    pub(super) fn learn_window(&mut self, window: u32, source: WindowSource) -> bool {
        let trusted_more = self
            .context_source
            .is_some_and(|known| known.trust() > source.trust());
        if trusted_more || window == 0 || self.context_tokens == Some(window) {
            return false;
        }
        self.context_tokens = Some(window);
        self.context_source = Some(source);
        true
    }

    /// A prompt the server counted (its reply's `usage`, its tokenizer):
    /// a denser ratio than believed is taken at once, a sparser one moves
    /// the ratio only [`LOOSEN_STEP`] of the way, so the estimate stays on
    /// the large side.
    pub(super) fn calibrate(&mut self, chars: usize, tokens: u32, source: RatioSource) {
        if tokens == 0 || chars == 0 {
            return;
        }
        let observed = chars as f64 / f64::from(tokens);
        let ratio = if observed < self.chars_per_token {
            observed
        } else {
            self.chars_per_token + (observed - self.chars_per_token) * LOOSEN_STEP
        };
        self.set_ratio(ratio, source);
    }

    /// A prompt the server refused as too long, and counted: the ratio is
    /// set so that the same prompt is estimated at least as large, never
    /// loosened, so the retried, trimmed prompt fits.
    pub(super) fn calibrate_from_overflow(&mut self, chars: usize, tokens: u32) {
        if tokens == 0 || chars == 0 {
            return;
        }
        let observed = chars as f64 / f64::from(tokens);
        self.set_ratio(
            self.chars_per_token.min(observed),
            RatioSource::ContextError,
        );
    }

    fn set_ratio(&mut self, ratio: f64, source: RatioSource) {
        self.chars_per_token = ratio.clamp(MIN_CHARS_PER_TOKEN, MAX_CHARS_PER_TOKEN);
        self.ratio_source = source;
        self.calibrations += 1;
    }

    /// What is known, for the status and `heistd check`.
    pub(super) fn report(&self, llm: &LlmClient) -> EndpointKnowledge {
        EndpointKnowledge {
            endpoint: endpoint_name(&llm.service.base_url),
            base_url: llm.service.base_url.clone(),
            model: llm.model.clone(),
            context_tokens: self.context_tokens,
            context_source: self.context_source,
            chars_per_token: (self.chars_per_token * 1000.0).round() / 1000.0,
            ratio_source: self.ratio_source,
            calibrations: self.calibrations,
            token_counting: llm.token_counting,
            server_counting: self.server_counting,
            native_tools: self.native_tools,
        }
    }
}

/// An endpoint's name: its base URL's `host:port` (the whole URL when it
/// has no host).
fn endpoint_name(base_url: &str) -> String {
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|url| {
            let host = url.host_str()?.to_string();
            Some(match url.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| base_url.to_string())
}

impl LlmClient {
    /// The context window in tokens, when configured or learned.
    pub fn context_tokens(&self) -> Option<u32> {
        self.lock().window()
    }

    /// Estimated tokens of a prompt, from its characters and the ratio the
    /// server's counts have taught, with a safety margin.
    pub fn estimate_tokens(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> u32 {
        self.lock()
            .estimate(prompt_chars(messages, tools), messages.len())
    }

    /// What is known of each endpoint's model (primaries, then
    /// fallbacks), for `GET /api/v1/status` and `heistd check`.
    pub fn endpoints(&self) -> Vec<EndpointKnowledge> {
        (0..self.endpoint_count())
            .map(|index| {
                let view = self.endpoint_view(index);
                let mut report = view.lock().report(&view);
                report.endpoint = self.endpoint_name(index);
                report
            })
            .collect()
    }

    /// Takes the window a server named (its context-length error, its model
    /// list), unless the config set one.
    pub fn learn_context_tokens(&self, window: u32) {
        self.learn_window(window, WindowSource::ContextError);
    }

    pub(super) fn learn_window(&self, window: u32, source: WindowSource) {
        if self.lock().learn_window(window, source) {
            tracing::info!(model = %self.model, context_tokens = window, ?source, "learned the model's context window");
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
            self.learn_window(window, WindowSource::ModelsList);
        }
        Ok(ids)
    }

    /// A reply's `usage.prompt_tokens` for a prompt of `chars` characters.
    pub(super) fn calibrate(&self, chars: usize, prompt_tokens: u32) {
        self.lock()
            .calibrate(chars, prompt_tokens, RatioSource::Usage);
    }

    /// What a refusal for length teaches: the window it names, and the
    /// ratio from its count of the refused prompt (`chars` characters in
    /// `messages` messages, asking for `max_tokens`). A refusal that names
    /// no window (Ollama's) sends the client asking the server for it. A
    /// refusal without a count still says the prompt was more than the
    /// window less `max_tokens`; with no window known either, the ratio is
    /// made a fifth denser and the window taken to be below what the
    /// refused prompt was estimated at, so the next prompt is trimmed.
    pub(super) async fn learn_from_overflow(
        &self,
        overflow: ContextOverflow,
        chars: usize,
        messages: usize,
        max_tokens: u32,
    ) {
        match overflow.window {
            Some(window) => self.learn_window(window, WindowSource::ContextError),
            None if self.context_tokens().is_none() => {
                self.discover_window().await;
            }
            None => {}
        }
        let mut knowledge = self.lock();
        let estimated = knowledge.estimate(chars, messages);
        let known_window = knowledge
            .window()
            .filter(|_| knowledge.context_source != Some(WindowSource::RefusedPrompt));
        let counted = overflow
            .prompt_tokens
            .or_else(|| {
                overflow
                    .requested_tokens
                    .map(|total| total.saturating_sub(max_tokens))
            })
            .or_else(|| known_window.map(|window| window.saturating_sub(max_tokens) + 1))
            .unwrap_or_else(|| (f64::from(estimated) * 1.25).ceil() as u32);
        knowledge.calibrate_from_overflow(chars, counted);
        let refused = estimated.saturating_add(max_tokens);
        if known_window.is_none() && knowledge.window().is_none_or(|window| window >= refused) {
            knowledge.context_tokens = Some(refused.saturating_sub(1).max(1));
            knowledge.context_source = Some(WindowSource::RefusedPrompt);
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ModelKnowledge> {
        self.knowledge.lock()
    }
}

impl CallError {
    /// The window a context-length error names.
    pub fn context_window(&self) -> Option<u32> {
        self.context_overflow()?.window
    }

    /// The prompt's size, as the server counted it, when its context-length
    /// error says.
    pub fn prompt_tokens_counted(&self) -> Option<u32> {
        self.context_overflow()?.prompt_tokens
    }
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

    fn knowledge() -> ModelKnowledge {
        ModelKnowledge::new(0)
    }

    #[test]
    fn a_denser_count_is_believed_at_once_a_sparser_one_slowly() {
        let mut known = knowledge();
        known.calibrate(1000, 1000, RatioSource::Usage);
        assert_eq!(known.chars_per_token, 1.0);
        // The estimate of a prompt that dense carries the margin.
        assert!(known.estimate(1500, 2) >= 1500 + 75 + 16);
        // One sparse prompt (4 characters a token) moves it a sixteenth of
        // the way, not to 4.
        known.calibrate(4000, 1000, RatioSource::Usage);
        assert!(
            (known.chars_per_token - 1.1875).abs() < 1e-9,
            "{}",
            known.chars_per_token
        );
        assert_eq!(known.ratio_source, RatioSource::Usage);
        assert_eq!(known.calibrations, 2);
    }

    #[test]
    fn a_run_of_short_sparse_replies_loosens_the_ratio_only_gradually() {
        let mut known = knowledge();
        known.calibrate(2000, 2000, RatioSource::Usage);
        let mut ratios = Vec::new();
        for _ in 0..4 {
            known.calibrate(40, 10, RatioSource::Usage);
            ratios.push(known.chars_per_token);
        }
        assert!(
            ratios.windows(2).all(|pair| pair[0] < pair[1]),
            "{ratios:?}"
        );
        assert!(
            ratios[3] < 2.2,
            "four replies did not undo the dense count: {ratios:?}"
        );
    }

    #[test]
    fn a_context_errors_count_tightens_at_once_and_never_loosens() {
        let mut known = knowledge();
        known.calibrate_from_overflow(2000, 2169);
        assert!(known.estimate(2000, 1) >= 2169);
        assert_eq!(known.ratio_source, RatioSource::ContextError);
        let dense = known.chars_per_token;
        known.calibrate_from_overflow(2000, 500);
        assert_eq!(known.chars_per_token, dense);
        // Byte-level tokenizers count several tokens to a character.
        known.calibrate_from_overflow(1000, 3000);
        assert!(known.chars_per_token < 0.34, "{}", known.chars_per_token);
        known.calibrate_from_overflow(1000, 100_000);
        assert_eq!(known.chars_per_token, MIN_CHARS_PER_TOKEN);
    }

    #[test]
    fn a_configured_window_is_kept_and_a_learned_one_says_where_it_came_from() {
        let mut configured = ModelKnowledge::new(4096);
        assert!(!configured.learn_window(2048, WindowSource::ContextError));
        assert_eq!(configured.window(), Some(4096));
        assert_eq!(configured.context_source, Some(WindowSource::Configured));
        let mut learned = knowledge();
        assert!(learned.learn_window(8192, WindowSource::ModelsList));
        assert!(learned.learn_window(2048, WindowSource::ContextError));
        // A model list read later (its whole context, shared by slots) does
        // not undo what a refusal said; a later refusal does.
        assert!(!learned.learn_window(8192, WindowSource::ModelsList));
        assert!(!learned.learn_window(4096, WindowSource::ServerProps));
        assert!(learned.learn_window(1024, WindowSource::ContextError));
        assert!(learned.learn_window(2048, WindowSource::ContextError));
        assert_eq!(
            (learned.window(), learned.context_source),
            (Some(2048), Some(WindowSource::ContextError))
        );
        assert!(!learned.learn_window(0, WindowSource::ModelsList));
    }

    /// A client of a server that is not there (the discard port): asking
    /// it about itself gets nothing.
    fn client_of_nothing() -> LlmClient {
        let mut config = crate::config::load(None, Vec::new()).expect("default config loads");
        config.llm.base_url = "http://127.0.0.1:9/v1".into();
        LlmClient::from_config(
            &config.llm,
            crate::clients::http_client().expect("HTTP client"),
        )
    }

    fn overflow(
        window: Option<u32>,
        prompt_tokens: Option<u32>,
        requested_tokens: Option<u32>,
    ) -> ContextOverflow {
        ContextOverflow {
            window,
            prompt_tokens,
            requested_tokens,
        }
    }

    #[tokio::test]
    async fn a_refusal_with_only_the_total_counts_the_prompt_as_the_total_less_max_tokens() {
        let llm = client_of_nothing();
        // 4500 requested with max_tokens 400: a prompt of 4100 tokens, for
        // 4100 characters.
        llm.learn_from_overflow(overflow(Some(4097), None, Some(4500)), 4100, 1, 400)
            .await;
        let known = &llm.endpoints()[0];
        assert_eq!(known.chars_per_token, 1.0, "{known:?}");
        assert_eq!(
            (known.context_tokens, known.context_source),
            (Some(4097), Some(WindowSource::ContextError))
        );
    }

    #[tokio::test]
    async fn a_refusal_without_numbers_from_a_silent_server_bounds_the_window_and_tightens() {
        let llm = client_of_nothing();
        // 7000 characters at 3.5 a token, plus 5% and two messages: 2116.
        assert_eq!(llm.lock().estimate(7000, 2), 2116);
        llm.learn_from_overflow(overflow(None, None, None), 7000, 2, 400)
            .await;
        let known = llm.endpoints()[0].clone();
        assert_eq!(
            (known.context_tokens, known.context_source),
            (Some(2116 + 400 - 1), Some(WindowSource::RefusedPrompt)),
            "{known:?}"
        );
        assert_eq!(known.ratio_source, RatioSource::ContextError);
        assert!(known.chars_per_token < 2.7, "{known:?}");
        // Refused again, smaller: the bound comes down with it.
        llm.learn_from_overflow(overflow(None, None, None), 3000, 2, 400)
            .await;
        let bound = llm.context_tokens().expect("a bound");
        assert!(bound < 2116 + 400 - 1, "{bound}");
        // A window a server names replaces the bound.
        llm.learn_window(4096, WindowSource::ModelsList);
        assert_eq!(llm.context_tokens(), Some(4096));
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

    #[test]
    fn an_endpoint_is_named_by_its_host_and_port() {
        assert_eq!(endpoint_name("http://127.0.0.1:8006/v1"), "127.0.0.1:8006");
        assert_eq!(
            endpoint_name("https://api.example.com/v1"),
            "api.example.com:443"
        );
        assert_eq!(endpoint_name("not a url"), "not a url");
    }
}
