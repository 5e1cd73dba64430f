//! The tool-service clients: one service per tool, one call shape.

use serde::Deserialize;

use super::{CallError, ServiceClient};
use crate::wire::Tool;

#[derive(Clone)]
pub struct ToolClient {
    calculator: ServiceClient,
    file_reader: ServiceClient,
    database_query: ServiceClient,
}

#[derive(Deserialize)]
struct ToolReply {
    success: bool,
    #[serde(default)]
    result: serde_json::Value,
    /// `"error": null` means no error; the prototype read its mere presence
    /// as failure and recorded every success as `success=0`.
    #[serde(default)]
    error: Option<String>,
}

impl ToolClient {
    pub fn new(
        calculator: ServiceClient,
        file_reader: ServiceClient,
        database_query: ServiceClient,
    ) -> Self {
        Self {
            calculator,
            file_reader,
            database_query,
        }
    }

    pub fn services(&self) -> [&ServiceClient; 3] {
        [&self.calculator, &self.file_reader, &self.database_query]
    }

    /// Runs `tool` with its one parameter; the result as text.
    pub async fn call(
        &self,
        tool: &str,
        parameter: &str,
        token: &str,
    ) -> Result<String, CallError> {
        let Some(known) = Tool::parse(tool) else {
            return Err(CallError::Refused {
                service: tool.to_string(),
                message: format!("unknown tool `{tool}`"),
            });
        };
        let service = match known {
            Tool::Calculator => &self.calculator,
            Tool::FileReader => &self.file_reader,
            Tool::DatabaseQuery => &self.database_query,
        };
        let mut body = serde_json::Map::new();
        body.insert(known.parameter_field().into(), parameter.into());
        let reply: ToolReply = service
            .post_json(
                known.path(),
                &body,
                &[("authorization", format!("Bearer {token}"))],
            )
            .await?;
        if !reply.success {
            return Err(CallError::Refused {
                service: service.name.clone(),
                message: reply
                    .error
                    .unwrap_or_else(|| "tool reported failure without a message".into()),
            });
        }
        Ok(match reply.result {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        })
    }
}
