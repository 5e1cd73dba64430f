//! The `[llm]` section: the OpenAI-compatible model server every agent's
//! turn asks (where, which model, how it samples, how its key is read,
//! timeouts, streaming, tool calling, the context window) and its call
//! policy and health check.
//!
//! This is only configuration; `clients` talks to the model.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::services::check_url;
use super::{HealthCheckConfig, PolicyConfig, Secret};

/// `[llm]`: the model server the agents talk to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// OpenAI-compatible base URL, up to and including `/v1` (the default
    /// is the rehearsal model of `heistd services`).
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
    /// The model calls' deadline, retries, budget, bulkhead and breaker.
    #[serde(default = "PolicyConfig::language_model")]
    pub policy: PolicyConfig,
    /// The daemon's periodic check of the model server.
    #[serde(default = "HealthCheckConfig::language_model")]
    pub health: HealthCheckConfig,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCalling {
    #[default]
    Text,
    Native,
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
            max_reply_bytes: default_llm_max_reply_bytes(),
            timeout_ms: default_llm_timeout_ms(),
            stream: true,
            idle_timeout_ms: default_llm_idle_timeout_ms(),
            tool_calling: ToolCalling::Text,
            context_tokens: 0,
            min_completion_tokens: default_min_completion_tokens(),
            rpm: 0,
            tpm: 0,
            policy: PolicyConfig::language_model(),
            health: HealthCheckConfig::language_model(),
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
        if self.max_reply_bytes == 0 {
            return fail("llm.max_reply_bytes", "must be at least 1");
        }
        if self.timeout_ms == 0 {
            return fail("llm.timeout_ms", "must be at least 1");
        }
        if self.idle_timeout_ms == 0 {
            return fail("llm.idle_timeout_ms", "must be at least 1");
        }
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
