//! The OpenAI chat-completions bodies, as heistd's LLM client sends and
//! reads them and as the rehearsal model reads and answers them: the
//! request, the whole reply, the streamed chunks, native tool calls, the
//! `{"parameter": ...}` arguments of our one-parameter tools, and the
//! `GET /v1/models` list.
//!
//! Reading is lenient where real servers differ (vLLM, llama.cpp, Ollama,
//! LM Studio): what heistd does not use may be missing, `null` or of
//! another type (the envelope's `id`, `object`, `created`, `model`),
//! `tool_calls: null` reads as none, and unknown fields are ignored.
//! Writing sends only what applies (no empty `tools`, no `stream: false`).
//! It holds the shapes only: what to ask and how to put a stream together
//! are the client's, what to answer is the rehearsal model's.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// The `type` of every tool and tool call heistd knows.
pub const FUNCTION_TYPE: &str = "function";

/// `GET /v1/models`: the models a server offers. `Entry` is [`ModelEntry`]
/// where the rehearsal model writes it, and raw JSON where the client
/// reads it: each server adds its own keys for the context window
/// (llama.cpp's `meta.n_ctx`, vLLM's `max_model_len`, ...), read there.
/// A list without `data` reads as empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList<Entry = ModelEntry> {
    #[serde(default)]
    pub object: String,
    #[serde(default = "Vec::new")]
    pub data: Vec<Entry>,
}

/// One model of a [`ModelList`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: String,
    pub owned_by: String,
    /// What the model is, where a server says (the rehearsal model says it
    /// is no language model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One message of a chat request. `Role` is `&'static str` where heistd
/// writes its prompts, and `String` where the rehearsal model reads them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage<Role = &'static str> {
    pub role: Role,
    /// `null` (an assistant message that only called tools) reads as empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: String,
}

/// `POST /chat/completions`. `Messages` is borrowed where heistd sends a
/// prompt (`&[ChatMessage]`: serialised straight from it, no copy of the
/// prompt per turn) and owned where the rehearsal model reads one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionRequest<'a, Messages> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Cow<'a, str>>,
    pub messages: Messages,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Native function specs: offered, the model may answer with
    /// `tool_calls` instead of `[TOOL:...]` in its text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<FunctionTool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Answer in server-sent events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options`: `include_usage` asks for `usage` in a last event.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A tool offered through native function calling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionTool {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionSpec,
}

/// A function's name, what it does, and its JSON Schema.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub parameters: serde_json::Value,
}

/// `tool_choice`: a mode (`"auto"`), or one function the model must call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Function {
        #[serde(rename = "type", default = "function_type")]
        kind: String,
        function: FunctionName,
    },
}

/// A function named in `tool_choice`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionName {
    pub name: String,
}

/// The arguments of a call to one of our tools: one string parameter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolArguments {
    pub parameter: String,
}

/// A whole reply (`chat.completion`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatCompletion {
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub object: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<i64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub model: Option<String>,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a whole reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: AssistantMessage,
    /// `length` means the server cut the reply at `max_tokens`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// What the model said: text (`null` when it only called tools) and the
/// tools it called natively.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AssistantMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tool_calls: Vec<ToolCall>,
}

/// One native tool call of a whole reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCall,
}

/// The function a call names and its arguments, a JSON object as a string
/// (`{"parameter": "..."}` for our tools, [`ToolArguments`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// What the server counted.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u32>,
}

/// One event of a streamed reply (`chat.completion.chunk`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub object: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub model: Option<String>,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// In the last event only, when `stream_options.include_usage` was
    /// asked (some servers send `null` in the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a streamed event; `finish_reason` is `null` until the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The pieces one event adds to a streamed reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of one native tool call: the call's `index`, and pieces of its
/// name and arguments, concatenated in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Missing on servers that send each call whole: a piece with a name
    /// then starts a new call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Sent with a call's first piece; Ollama sends every call whole with
    /// index 0, so a new id (or a second name) at the same index is a new
    /// call, not more of the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

/// Pieces of a call's name and arguments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ChatMessage {
    pub fn system(content: String) -> Self {
        Self {
            role: "system",
            content,
        }
    }

    pub fn user(content: String) -> Self {
        Self {
            role: "user",
            content,
        }
    }
}

impl FunctionTool {
    /// One of our tools: a function of one string `parameter`.
    pub fn one_parameter(name: &str, description: &str) -> Self {
        Self {
            kind: FUNCTION_TYPE.into(),
            function: FunctionSpec {
                name: name.to_string(),
                description: description.to_string(),
                parameters: serde_json::json!({
                    "type": "object",
                    "properties": { "parameter": { "type": "string", "description": description } },
                    "required": ["parameter"],
                }),
            },
        }
    }
}

impl ToolChoice {
    /// The model decides whether to call a tool.
    pub fn auto() -> Self {
        Self::Mode("auto".into())
    }

    /// The model must call `name`.
    pub fn function(name: &str) -> Self {
        Self::Function {
            kind: FUNCTION_TYPE.into(),
            function: FunctionName {
                name: name.to_string(),
            },
        }
    }

    /// The function this choice forces, if it forces one.
    pub fn forced_function(&self) -> Option<&str> {
        match self {
            Self::Mode(_) => None,
            Self::Function { function, .. } => Some(&function.name),
        }
    }
}

impl ToolArguments {
    /// The arguments as a call carries them: a JSON object as a string.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn function_type() -> String {
    FUNCTION_TYPE.into()
}

/// `null` (some servers write it) reads as the default: no calls, no text.
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A field heistd does not use: read when it has the expected type, else
/// left unknown rather than failing the whole reply.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_envelopes_and_null_calls_still_read() {
        let body = r#"{"id": 7, "created": 1.5, "model": null, "choices": [{"message": {"content": null, "tool_calls": null}}]}"#;
        let reply: ChatCompletion = serde_json::from_str(body).expect("parses");
        assert_eq!((reply.id, reply.created, reply.model), (None, None, None));
        assert!(reply.choices[0].message.tool_calls.is_empty());
        let message: ChatMessage<String> =
            serde_json::from_str(r#"{"role": "assistant", "content": null}"#).expect("parses");
        assert_eq!(message.content, "");
    }

    #[test]
    fn tool_choice_reads_a_mode_or_a_forced_function() {
        let forced: ToolChoice =
            serde_json::from_str(r#"{"type": "function", "function": {"name": "calculator"}}"#)
                .expect("parses");
        assert_eq!(forced.forced_function(), Some("calculator"));
        let auto: ToolChoice = serde_json::from_str(r#""auto""#).expect("parses");
        assert_eq!(auto.forced_function(), None);
        assert_eq!(
            serde_json::to_value(ToolChoice::function("calculator")).expect("json"),
            serde_json::json!({"type": "function", "function": {"name": "calculator"}})
        );
    }
}
