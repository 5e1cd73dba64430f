//! The OpenAI-compatible chat-completions client.

use serde::{Deserialize, Serialize};

use super::{CallError, ServiceClient};
use crate::config::{LlmConfig, Secret};
use crate::resilience::Policy;
use crate::wire::CHAT_COMPLETIONS_PATH;

#[derive(Clone)]
pub struct LlmClient {
    pub service: ServiceClient,
    model: String,
    temperature: f64,
    max_tokens: u32,
    /// Read from the environment variable the config names, never the file.
    api_key: Option<Secret>,
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
    #[serde(default)]
    tool_calls: Vec<NativeToolCall>,
}

#[derive(Deserialize)]
struct NativeToolCall {
    function: NativeFunction,
}

#[derive(Deserialize)]
struct NativeFunction {
    name: String,
    /// A JSON object as a string, `{"parameter": "..."}` for our tools.
    #[serde(default)]
    arguments: String,
}

/// A tool offered to the model through native function calling.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
}

/// What the model said, and the tools it asked for natively.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelReply {
    pub content: String,
    /// (tool name, parameter), in the order asked.
    pub tool_calls: Vec<(String, String)>,
}

impl LlmClient {
    pub fn from_config(config: &LlmConfig, http: reqwest::Client) -> Self {
        Self {
            service: ServiceClient::new(
                "llm",
                &config.base_url,
                Policy::new(config.timeout_ms, config.policy.clone()),
                http,
            )
            .with_max_reply_bytes(config.max_reply_bytes),
            model: config.model.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            api_key: config.api_key.clone(),
        }
    }

    /// One completion. With `tools`, the model may answer with native tool
    /// calls (OpenAI function calling), each taking one string `parameter`.
    /// A reply with neither text nor tool calls is an error: it must not be
    /// recorded as something an agent said.
    pub async fn chat(
        &self,
        messages: &[ChatMessage],
        seed: u64,
        tools: &[ToolSpec],
    ) -> Result<ModelReply, CallError> {
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": seed,
        });
        if !tools.is_empty() {
            body["tools"] = tools.iter().map(function_schema).collect();
            body["tool_choice"] = "auto".into();
        }
        let headers: Vec<(&str, String)> = self
            .api_key
            .iter()
            .map(|key| ("authorization", format!("Bearer {}", key.expose())))
            .collect();
        let reply: ChatReply = self
            .service
            .post_json(CHAT_COMPLETIONS_PATH, &body, &headers)
            .await?;
        let message = reply
            .choices
            .into_iter()
            .next()
            .map(|choice| choice.message);
        let (content, calls) = match message {
            Some(message) => (message.content.unwrap_or_default(), message.tool_calls),
            None => (String::new(), Vec::new()),
        };
        let tool_calls: Vec<(String, String)> = calls
            .into_iter()
            .map(|call| (call.function.name, parameter_of(&call.function.arguments)))
            .collect();
        if content.trim().is_empty() && tool_calls.is_empty() {
            return Err(CallError::Decode {
                service: self.service.name.clone(),
                message: "the model returned an empty reply".into(),
            });
        }
        Ok(ModelReply {
            content,
            tool_calls,
        })
    }
}

/// The OpenAI function schema of one of our tools: one string parameter.
fn function_schema(tool: &ToolSpec) -> serde_json::Value {
    serde_json::json!({
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": {
                "type": "object",
                "properties": { "parameter": { "type": "string", "description": tool.description } },
                "required": ["parameter"],
            },
        },
    })
}

/// The `parameter` of a native call's arguments; arguments that are not
/// the expected object are passed on as they are, for the tool to judge.
fn parameter_of(arguments: &str) -> String {
    serde_json::from_str::<serde_json::Value>(arguments)
        .ok()
        .and_then(|value| {
            value
                .get("parameter")
                .and_then(|parameter| parameter.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| arguments.to_string())
}
