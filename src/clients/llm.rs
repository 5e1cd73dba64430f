//! The OpenAI-compatible chat-completions client.

use serde::{Deserialize, Serialize};

use super::{CallError, ServiceClient};
use crate::config::LlmConfig;
use crate::resilience::Policy;

#[derive(Clone)]
pub struct LlmClient {
    pub service: ServiceClient,
    model: String,
    temperature: f64,
    max_tokens: u32,
    /// Read from the environment variable the config names, never the file.
    api_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Deserialize)]
struct ChatReply {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ReplyMessage,
}

#[derive(Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    content: Option<String>,
}

impl LlmClient {
    pub fn from_config(config: &LlmConfig, http: reqwest::Client) -> Self {
        Self {
            service: ServiceClient::new(
                "llm",
                &config.base_url,
                Policy::new(config.timeout_ms, config.policy.clone()),
                http,
            ),
            model: config.model.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            api_key: crate::config::secret_from_environment(&config.api_key_env),
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// One completion. An empty reply is an error: it must not be recorded
    /// as something an agent said.
    pub async fn chat(&self, messages: &[ChatMessage], seed: u64) -> Result<String, CallError> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": seed,
        });
        let headers: Vec<(&str, String)> = self
            .api_key
            .iter()
            .map(|key| ("authorization", format!("Bearer {key}")))
            .collect();
        let reply: ChatReply = self
            .service
            .post_json("/chat/completions", &body, &headers)
            .await?;
        let content = reply
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.message.content)
            .unwrap_or_default();
        if content.trim().is_empty() {
            return Err(CallError::Decode {
                service: self.service.name.clone(),
                message: "the model returned an empty reply".into(),
            });
        }
        Ok(content)
    }

    /// `GET /models`: the cheapest real check that the model server answers.
    pub async fn models(&self) -> Result<serde_json::Value, CallError> {
        self.service.probe_json("/models").await
    }
}
