//! Native tool calling (OpenAI function calling): the schema each of our
//! tools is offered with, the `parameter` read back from a call's
//! arguments, and the check, made once and remembered, whether the model
//! really returns `tool_calls`.

use super::{ChatMessage, ChatRequest, LlmClient, ToolSpec};
use crate::clients::CallError;
use crate::wire::openai::{FunctionTool, ToolArguments, ToolChoice};

/// The native tool-calling check asks for this few tokens.
const CHECK_MAX_TOKENS: u32 = 64;

impl LlmClient {
    /// Whether the model really returns native `tool_calls`: asked once
    /// (a tiny request whose `tool_choice` forces `tool`), then remembered.
    /// A server whose chat format ignores `tools` answers in text.
    pub async fn supports_native_tools(&self, tool: &ToolSpec) -> Result<bool, CallError> {
        if let Some(known) = self.lock().native_tools {
            return Ok(known);
        }
        let messages = [ChatMessage::user(format!(
            "Call the {} tool now.",
            tool.name
        ))];
        let tools = std::slice::from_ref(tool);
        let request = ChatRequest {
            messages: &messages,
            seed: 0,
            tools,
            max_tokens: CHECK_MAX_TOKENS,
        };
        let mut body = self.body(&request);
        body.tool_choice = Some(ToolChoice::function(&tool.name));
        let supported = match self.send(&body, self.charge_of(&request)).await {
            Ok(reply) => !reply.tool_calls.is_empty(),
            // Refusing `tools` or a forced `tool_choice` outright is an answer too.
            Err(CallError::Status { status, .. }) if (400..500).contains(&status) => false,
            Err(error) => return Err(error),
        };
        self.lock().native_tools = Some(supported);
        Ok(supported)
    }
}

/// The OpenAI function schema of one of our tools: one string parameter.
pub(super) fn function_schema(tool: &ToolSpec) -> FunctionTool {
    FunctionTool::one_parameter(&tool.name, &tool.description)
}

/// The `parameter` of a native call's arguments; arguments that are not
/// the expected object are passed on as they are, for the tool to judge.
pub(super) fn parameter_of(arguments: &str) -> String {
    serde_json::from_str::<ToolArguments>(arguments)
        .map(|arguments| arguments.parameter)
        .unwrap_or_else(|_| arguments.to_string())
}
