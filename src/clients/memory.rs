//! The memory-service client.

use serde::{Deserialize, Serialize};

use super::{CallError, ServiceClient};
use crate::wire::{COMPRESSED_MEMORY_PATH, IDEMPOTENCY_KEY_HEADER, STORE_MEMORY_PATH};

#[derive(Clone)]
pub struct MemoryClient {
    pub service: ServiceClient,
}

/// One `store_memory` body; the outbox keeps it as JSON until delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryWrite {
    pub agent_id: String,
    pub turn_id: i64,
    pub message: String,
    pub game_session_id: String,
}

#[derive(Deserialize)]
struct CompressedReply {
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    compressed_summary: Option<String>,
}

impl MemoryClient {
    pub fn new(service: ServiceClient) -> Self {
        Self { service }
    }

    /// Stores one turn; `idempotency_key` makes a retried write count once.
    pub async fn store(&self, write: &MemoryWrite, idempotency_key: &str) -> Result<(), CallError> {
        let _: serde_json::Value = self
            .service
            .post_json(
                STORE_MEMORY_PATH,
                write,
                &[(IDEMPOTENCY_KEY_HEADER, idempotency_key.to_string())],
            )
            .await?;
        Ok(())
    }

    pub async fn compressed(
        &self,
        agent_id: &str,
        session_id: &str,
        max_tokens: u32,
        recent_count: u32,
    ) -> Result<String, CallError> {
        let body = serde_json::json!({
            "agent_id": agent_id,
            "game_session_id": session_id,
            "max_tokens": max_tokens,
            "recent_count": recent_count,
        });
        let reply: CompressedReply = self
            .service
            .post_json(COMPRESSED_MEMORY_PATH, &body, &[])
            .await?;
        Ok(reply
            .summary
            .or(reply.compressed_summary)
            .unwrap_or_default())
    }
}
