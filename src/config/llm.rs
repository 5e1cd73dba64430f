//! The `[llm]` section: the OpenAI-compatible model server every agent's
//! turn asks (where, which model, how it samples, how its key is read,
//! timeouts, streaming, tool calling, the context window) and its call
//! policy and health check.
//!
//! This is only configuration; `clients` talks to the model.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::endpoints::{
    check_model_endpoints, check_url, endpoint_label, ModelEndpointConfig, OutlierConfig,
};
use super::{HealthCheckConfig, PolicyConfig, Secret};

/// `[llm]`: the model server the agents talk to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// OpenAI-compatible base URL, up to and including `/v1` (the default
    /// is the rehearsal model of `heistd services`). The one-endpoint
    /// shorthand: exclusive with `[[llm.endpoints]]`.
    #[serde(default = "default_llm_url")]
    pub base_url: String,
    /// The model's name, as the server lists it at `GET /v1/models`.
    #[serde(default = "default_llm_model")]
    pub model: String,
    /// Sampling temperature sent with each request, 0 to 2.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// The most tokens a reply may have, sent with each request.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// The *name* of the environment variable that holds the API key; the
    /// key itself never lives in the file.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// A file holding the API key (wins over `api_key_env`); a relative
    /// path names a systemd credential in `$CREDENTIALS_DIRECTORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// The key, read once at load; never written out.
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// A PEM file of one or more CA certificates for an `https://` model
    /// server with a private CA: trusted besides the system's CA store,
    /// never instead of it (a relative path is relative to the working
    /// directory). Certificates are always checked; there is no switch
    /// that turns that off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A reply body larger than this is refused (`decode_error`), not read
    /// into memory.
    #[serde(default = "default_llm_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// Per-attempt timeout of a model call: a local model may need a
    /// minute for a reply. Streaming, it caps the wait for the reply's
    /// first piece only.
    #[serde(default = "default_llm_timeout_ms")]
    pub timeout_ms: u64,
    /// Ask for the reply as server-sent events (`stream: true`), judged by
    /// the gaps between its pieces, so a slow model that keeps producing is
    /// not cut at `timeout_ms`; `false` for a server that streams badly.
    #[serde(default = "default_true")]
    pub stream: bool,
    /// Streaming, the longest gap between a reply's pieces before the
    /// attempt is cut (and its connection closed); below
    /// `llm.policy.deadline_ms`.
    #[serde(default = "default_llm_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How agents ask for tools: `text` (`[TOOL:name:parameter]` in the
    /// reply, which any model can do) or `native` (OpenAI function calling,
    /// checked once per model; a model that returns no tool calls is used
    /// in text mode, with a warning).
    #[serde(default)]
    pub tool_calling: ToolCalling,
    /// The model's context window in tokens; 0 learns it from the server
    /// (its context-length error, or its model list).
    #[serde(default)]
    pub context_tokens: u32,
    /// How a prompt's tokens are counted before it is fitted to the window:
    /// `auto`, an estimate from its characters, calibrated per model from
    /// every reply's `usage.prompt_tokens` and every context-length error;
    /// or `server`, the server's own tokenizer (`POST /tokenize` at the
    /// server's root, which llama.cpp's server and vLLM serve) for each
    /// prompt, falling back to the estimate with a warning when it does not
    /// answer.
    #[serde(default)]
    pub token_counting: TokenCounting,
    /// A prompt that does not fit is trimmed, and as a last step the reply's
    /// `max_tokens` is lowered, but not below this.
    #[serde(default = "default_min_completion_tokens")]
    pub min_completion_tokens: u32,
    /// Requests a minute this endpoint may be sent (a client-side token
    /// bucket holding a minute's allowance); a request waits for room
    /// within its call's deadline, else ends `rate_limited` unsent. 0: no
    /// limit of heistd's own (the server's `x-ratelimit-*` answers are
    /// obeyed either way).
    #[serde(default)]
    pub rpm: u32,
    /// Tokens a minute this endpoint may be sent, charged per request as
    /// its estimated prompt plus `max_tokens` and corrected by the reply's
    /// `usage`; waits and refusals as for `rpm`. 0: no limit.
    #[serde(default)]
    pub tpm: u32,
    /// What the provider charges per million prompt tokens (any currency,
    /// at least 0; set with `completion_price_per_million`). Unset: no
    /// cost is counted anywhere, never a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_price_per_million: Option<f64>,
    /// What the provider charges per million completion tokens (at least
    /// 0; set with `prompt_price_per_million`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_price_per_million: Option<f64>,
    /// The model calls' deadline, retries, budget, bulkhead and breaker.
    #[serde(default = "PolicyConfig::language_model")]
    pub policy: PolicyConfig,
    /// The daemon's periodic check of the model server.
    #[serde(default = "HealthCheckConfig::language_model")]
    pub health: HealthCheckConfig,
    /// Several model servers instead of `base_url` and `model` (setting
    /// both is an error): each call picks the least loaded one that can
    /// serve (power of two choices by outstanding requests, weighted); one
    /// that keeps failing is ejected, and a retry goes to another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ModelEndpointConfig>,
    /// Model servers tried, list by list in order, when no endpoint of the
    /// primary list can serve (all ejected, breakers open, or every slot
    /// busy past `llm.policy.max_queue_wait_ms`), or when a prompt fits no
    /// primary model's window but fits a fallback's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<ModelEndpointConfig>,
    /// When an endpoint that keeps failing is set aside.
    #[serde(default)]
    pub outlier: OutlierConfig,
}

/// One endpoint's client-side rate limits (`rpm`, `tpm`; 0: none), as the
/// limiter takes them: the keys live on the endpoint's table (`[llm]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests a minute; 0: no limit.
    pub rpm: u32,
    /// Tokens a minute (estimated prompt plus `max_tokens`, corrected by
    /// `usage`); 0: no limit.
    pub tpm: u32,
}

/// What a model's provider charges, per million tokens of each kind: read
/// from a pair of `*_price_per_million` keys (`[llm]`'s, or an endpoint's,
/// which carry the same two keys and read them with [`Prices::from_keys`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub prompt_per_million: f64,
    pub completion_per_million: f64,
}

impl Prices {
    /// The prices a section's `prompt_price_per_million` and
    /// `completion_price_per_million` give: none when neither is set; both
    /// must be set (a free kind is 0, never assumed) and be finite and at
    /// least 0. The error is (key, why), the key under `section`.
    pub fn from_keys(
        section: &str,
        prompt: Option<f64>,
        completion: Option<f64>,
    ) -> Result<Option<Prices>, (String, String)> {
        let key = |name: &str| format!("{section}.{name}");
        for (name, price) in [
            ("prompt_price_per_million", prompt),
            ("completion_price_per_million", completion),
        ] {
            if price.is_some_and(|price| !price.is_finite() || price < 0.0) {
                return Err((key(name), "must be a number of at least 0".into()));
            }
        }
        match (prompt, completion) {
            (None, None) => Ok(None),
            (Some(prompt), Some(completion)) => Ok(Some(Prices {
                prompt_per_million: prompt,
                completion_per_million: completion,
            })),
            (Some(_), None) => Err((
                key("completion_price_per_million"),
                format!(
                    "must be set with {} (0 when free)",
                    key("prompt_price_per_million")
                ),
            )),
            (None, Some(_)) => Err((
                key("prompt_price_per_million"),
                format!(
                    "must be set with {} (0 when free)",
                    key("completion_price_per_million")
                ),
            )),
        }
    }

    /// What `prompt_tokens` and `completion_tokens` cost at these prices.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.prompt_per_million
            + completion_tokens as f64 * self.completion_per_million)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCalling {
    #[default]
    Text,
    Native,
}

/// `llm.token_counting`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenCounting {
    #[default]
    Auto,
    Server,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: default_llm_url(),
            model: default_llm_model(),
            temperature: default_temperature(),
            max_tokens: default_max_tokens(),
            api_key_env: default_api_key_env(),
            api_key_file: None,
            api_key: None,
            ca_file: None,
            max_reply_bytes: default_llm_max_reply_bytes(),
            timeout_ms: default_llm_timeout_ms(),
            stream: true,
            idle_timeout_ms: default_llm_idle_timeout_ms(),
            tool_calling: ToolCalling::Text,
            context_tokens: 0,
            token_counting: TokenCounting::Auto,
            min_completion_tokens: default_min_completion_tokens(),
            rpm: 0,
            tpm: 0,
            prompt_price_per_million: None,
            completion_price_per_million: None,
            policy: PolicyConfig::language_model(),
            health: HealthCheckConfig::language_model(),
            endpoints: Vec::new(),
            fallbacks: Vec::new(),
            outlier: OutlierConfig::default(),
        }
    }
}

impl LlmConfig {
    /// The endpoint's `rpm` and `tpm`.
    pub fn rate_limits(&self) -> RateLimitConfig {
        RateLimitConfig {
            rpm: self.rpm,
            tpm: self.tpm,
        }
    }

    /// The prices of the endpoint named `endpoint`: its own, else for a
    /// primary `[llm]`'s; none for a fallback without its own.
    pub fn prices_of(&self, endpoint: &str) -> Option<Prices> {
        let listed = |list: &[ModelEndpointConfig]| {
            list.iter()
                .find(|candidate| candidate.label() == endpoint)
                .cloned()
        };
        if let Some(own) = listed(&self.endpoints) {
            return own.prices().or_else(|| self.prices());
        }
        if let Some(own) = listed(&self.fallbacks) {
            return own.prices();
        }
        self.prices()
    }

    /// The configured prices (`llm.prompt_price_per_million`,
    /// `llm.completion_price_per_million`), when both are set (a loaded
    /// config has been checked: one without the other is refused).
    pub fn prices(&self) -> Option<Prices> {
        Prices::from_keys(
            "llm",
            self.prompt_price_per_million,
            self.completion_price_per_million,
        )
        .ok()
        .flatten()
    }

    /// Checks the values (the policy and the health check have their own
    /// checks); the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
        if !(0.0..=2.0).contains(&self.temperature) {
            return fail("llm.temperature", "must be between 0 and 2");
        }
        if self.max_tokens == 0 {
            return fail("llm.max_tokens", "must be at least 1");
        }
        if self.min_completion_tokens == 0 || self.min_completion_tokens > self.max_tokens {
            return fail(
                "llm.min_completion_tokens",
                "must be at least 1 and at most llm.max_tokens",
            );
        }
        check_url("llm.base_url", &self.base_url)?;
        self.check_endpoints()?;
        if let Some(path) = &self.ca_file {
            super::tls::read_ca_file(path)
                .map_err(|message| ("llm.ca_file".to_string(), message))?;
        }
        if self.max_reply_bytes == 0 {
            return fail("llm.max_reply_bytes", "must be at least 1");
        }
        if self.timeout_ms == 0 {
            return fail("llm.timeout_ms", "must be at least 1");
        }
        if self.idle_timeout_ms == 0 {
            return fail("llm.idle_timeout_ms", "must be at least 1");
        }
        Prices::from_keys(
            "llm",
            self.prompt_price_per_million,
            self.completion_price_per_million,
        )?;
        // At or past the call's deadline the idle cut could never fire, and a
        // stalled stream would hold the call for the whole deadline.
        if self.stream && self.idle_timeout_ms >= self.policy.deadline_ms {
            return Err((
                "llm.idle_timeout_ms".into(),
                format!(
                    "must be below llm.policy.deadline_ms ({} ms), or a stalled stream is only cut at the deadline",
                    self.policy.deadline_ms
                ),
            ));
        }
        Ok(())
    }
}

impl LlmConfig {
    /// The primary endpoints: `[[llm.endpoints]]`, else the shorthand
    /// (`base_url`, `model`, the `[llm]` key) as one endpoint named by its
    /// `host:port`.
    pub fn primary_endpoints(&self) -> Vec<ModelEndpointConfig> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        vec![ModelEndpointConfig {
            name: Some(endpoint_label(&self.base_url)),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key_env: None,
            api_key_file: None,
            api_key: self.api_key.clone(),
            max_concurrent: self.policy.max_concurrent,
            weight: 1,
            ca_file: None,
            rpm: self.rpm,
            tpm: self.tpm,
            prompt_price_per_million: None,
            completion_price_per_million: None,
        }]
    }

    /// The CA files the model service's HTTP client trusts besides the
    /// system's store: `llm.ca_file` and every endpoint's and fallback's.
    pub fn ca_files(&self) -> Vec<PathBuf> {
        self.ca_file
            .iter()
            .chain(
                self.endpoints
                    .iter()
                    .filter_map(|endpoint| endpoint.ca_file.as_ref()),
            )
            .chain(
                self.fallbacks
                    .iter()
                    .filter_map(|endpoint| endpoint.ca_file.as_ref()),
            )
            .cloned()
            .collect()
    }

    /// The primary model's name: the shorthand's, else the first endpoint's.
    pub fn primary_model(&self) -> &str {
        self.endpoints
            .first()
            .map_or(self.model.as_str(), |endpoint| endpoint.model.as_str())
    }

    /// The lists, the shorthand beside them, and the outlier settings.
    fn check_endpoints(&self) -> Result<(), (String, String)> {
        if !self.endpoints.is_empty() {
            let both = |key: &str| {
                Err((
                    key.to_string(),
                    format!(
                        "`{key}` and `[[llm.endpoints]]` are both set: use `{key}` (with the other \
                         one-endpoint keys) or the list, not both"
                    ),
                ))
            };
            if self.base_url != default_llm_url() {
                return both("llm.base_url");
            }
            if self.model != default_llm_model() {
                return both("llm.model");
            }
        }
        let mut taken = Vec::new();
        if self.endpoints.is_empty() {
            taken.push(endpoint_label(&self.base_url));
        }
        check_model_endpoints("llm.endpoints", &self.endpoints, &mut taken)?;
        check_model_endpoints("llm.fallbacks", &self.fallbacks, &mut taken)?;
        self.outlier.validate("llm.outlier")
    }
}

fn default_llm_url() -> String {
    "http://127.0.0.1:8006/v1".into()
}

fn default_llm_model() -> String {
    crate::wire::REHEARSAL_MODEL_ID.into()
}

fn default_temperature() -> f64 {
    0.7
}

fn default_max_tokens() -> u32 {
    400
}

fn default_api_key_env() -> String {
    "HEISTD_LLM_API_KEY".into()
}

fn default_llm_max_reply_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_llm_timeout_ms() -> u64 {
    120_000
}

fn default_true() -> bool {
    true
}

fn default_llm_idle_timeout_ms() -> u64 {
    30_000
}

fn default_min_completion_tokens() -> u32 {
    64
}
