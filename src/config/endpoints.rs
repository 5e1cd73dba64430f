//! Several endpoints behind one service: `[[llm.endpoints]]` and
//! `[[llm.fallbacks]]` (model servers, each with its own model, key, slots
//! and weight), and `[llm.outlier]` / `[services.<name>.outlier]`, when an
//! endpoint that keeps failing is set aside. The checks that span a list
//! (unique names, the shorthand `base_url` beside a list) are here too.
//!
//! This is only configuration; `resilience` picks and ejects endpoints.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// `[[llm.endpoints]]`, `[[llm.fallbacks]]`: one model server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEndpointConfig {
    /// The endpoint's name: its `endpoint` label in metrics, in
    /// `GET /api/v1/status` and in each message's record; by default its
    /// base URL's `host:port`. Unique within `[llm]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// OpenAI-compatible base URL, up to and including `/v1`.
    pub base_url: String,
    /// The model's name, as this server lists it at `GET /v1/models`.
    pub model: String,
    /// The *name* of the environment variable holding this endpoint's API
    /// key. Unset with `api_key_file` unset too: no key is sent (the
    /// `[llm]` key is not handed to other servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// A file holding this endpoint's API key (wins over `api_key_env`); a
    /// relative path names a systemd credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// The key, read once at load; never written out.
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// Calls in flight at once on this endpoint. 0: as many as the server
    /// has slots when it says (llama.cpp's `GET /props` `total_slots`),
    /// else `llm.policy.max_concurrent`.
    #[serde(default)]
    pub max_concurrent: u32,
    /// Relative share of the picks among the endpoints of its list.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// A PEM file of CA certificates this endpoint's HTTPS certificate may
    /// chain to, besides the system's store. The model service's
    /// endpoints share one HTTP client: `llm.ca_file` and every endpoint's
    /// `ca_file` are trusted for all of them.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Requests a minute this endpoint may be sent (a client-side token
    /// bucket; a request waits for room within its deadline, else ends
    /// `rate_limited` unsent). 0: no limit.
    #[serde(default)]
    pub rpm: u32,
    /// Tokens a minute, each request charged its estimated prompt plus
    /// `max_tokens` and corrected by the reply's `usage`. 0: no limit.
    #[serde(default)]
    pub tpm: u32,
    /// What this endpoint's provider charges per million prompt tokens
    /// (set with `completion_price_per_million`). Unset: `[llm]`'s prices
    /// for a primary endpoint, none for a fallback; never a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_price_per_million: Option<f64>,
    /// What it charges per million completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_price_per_million: Option<f64>,
}

/// `[llm.outlier]`, `[services.<name>.outlier]`: an endpoint that fails
/// this often in a row is ejected (no call picks it) for a while, as
/// Envoy's outlier detection does. Only matters with several endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Gateway failures in a row (refused connections, 5xx, timeouts) that
    /// eject an endpoint; 0 never ejects.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat ejection doubles it, up to
    /// 300000 ms. An ejected endpoint returns earlier when its health
    /// check answers.
    pub base_ejection_ms: u64,
    /// At most this share of a list's endpoints is ejected at once (an
    /// ejection is allowed while fewer are out, as in Envoy), and never
    /// the last one that can serve.
    pub max_ejection_percent: u32,
}

/// The longest ejection, whatever the repeats.
pub const MAX_EJECTION_MS: u64 = 300_000;

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// Checks the values; the error is (key below `prefix`, why).
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        if self.base_ejection_ms == 0 {
            return Err((
                format!("{prefix}.base_ejection_ms"),
                "must be at least 1".into(),
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err((
                format!("{prefix}.max_ejection_percent"),
                "must be 0 to 100".into(),
            ));
        }
        Ok(())
    }
}

impl ModelEndpointConfig {
    /// This endpoint's own prices, when it sets them.
    pub fn prices(&self) -> Option<super::Prices> {
        super::Prices::from_keys(
            "",
            self.prompt_price_per_million,
            self.completion_price_per_million,
        )
        .ok()
        .flatten()
    }

    /// The endpoint's `rpm` and `tpm`.
    pub fn rate_limits(&self) -> super::RateLimitConfig {
        super::RateLimitConfig {
            rpm: self.rpm,
            tpm: self.tpm,
        }
    }

    /// The name in labels: the configured one, else `host:port`.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| endpoint_label(&self.base_url))
    }
}

/// `host:port` of a base URL: an endpoint's name when none is configured.
pub fn endpoint_label(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        Ok(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => base_url.to_string(),
        },
        Err(_) => base_url.to_string(),
    }
}

/// Checks a list of model endpoints named `key` (`llm.endpoints`): URLs,
/// models, weights and names unique among `taken` (the names so far).
pub(super) fn check_model_endpoints(
    key: &str,
    endpoints: &[ModelEndpointConfig],
    taken: &mut Vec<String>,
) -> Result<(), (String, String)> {
    for (index, endpoint) in endpoints.iter().enumerate() {
        let at = format!("{key}[{index}]");
        check_url(&format!("{at}.base_url"), &endpoint.base_url)?;
        if endpoint.model.trim().is_empty() {
            return Err((format!("{at}.model"), "must not be empty".into()));
        }
        if endpoint.weight == 0 {
            return Err((format!("{at}.weight"), "must be at least 1".into()));
        }
        super::Prices::from_keys(
            &at,
            endpoint.prompt_price_per_million,
            endpoint.completion_price_per_million,
        )?;
        if let Some(path) = &endpoint.ca_file {
            super::tls::read_ca_file(path).map_err(|message| (format!("{at}.ca_file"), message))?;
        }
        let name = endpoint.label();
        if name.trim().is_empty() {
            return Err((format!("{at}.name"), "must not be empty".into()));
        }
        if taken.contains(&name) {
            return Err((
                format!("{at}.name"),
                format!("`{name}` names another endpoint of [llm]; give each a distinct `name`"),
            ));
        }
        taken.push(name);
    }
    Ok(())
}

/// Checks `services.<name>.endpoints`: URLs, and distinct `host:port`s.
pub(super) fn check_service_endpoints(key: &str, urls: &[String]) -> Result<(), (String, String)> {
    let mut taken = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        check_url(&format!("{key}[{index}]"), url)?;
        let name = endpoint_label(url);
        if taken.contains(&name) {
            return Err((
                format!("{key}[{index}]"),
                format!("`{name}` is listed twice"),
            ));
        }
        taken.push(name);
    }
    Ok(())
}

fn default_weight() -> u32 {
    1
}

/// Checks that `value` is a URL heistd can call: http or https. Every
/// endpoint's (`[llm]`, `[services]`, `[[notify]]`) is checked with it.
pub(super) fn check_url(key: &str, value: &str) -> Result<(), (String, String)> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
        Ok(url) => Err((
            key.to_string(),
            format!("scheme `{}` is not http or https", url.scheme()),
        )),
        Err(error) => Err((key.to_string(), format!("`{value}` is not a URL: {error}"))),
    }
}
