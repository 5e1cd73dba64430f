//! Delivering a session's memory outbox: the writes a turn committed,
//! sent in order with an idempotency key, kept for later when the memory
//! service is down, and set aside when it refuses one for good.

use super::{HeistError, HeistRunner, OUTBOX_BATCH};
use crate::clients::{CallError, MemoryWrite};

impl HeistRunner {
    /// Delivers pending memory writes of a session; returns how many remain.
    pub async fn deliver_outbox(&self, session_id: &str) -> Result<usize, HeistError> {
        let pending = self.store.pending_outbox(session_id, OUTBOX_BATCH).await?;
        let mut remaining = pending.len();
        for entry in pending {
            let delivery = match serde_json::from_str::<MemoryWrite>(&entry.payload) {
                Ok(write) => {
                    self.clients
                        .memory
                        .store(&write, &format!("{}:{}", entry.session_id, entry.turn_id))
                        .await
                }
                Err(error) => Err(CallError::Decode {
                    service: "memory".into(),
                    message: error.to_string(),
                }),
            };
            match delivery {
                Ok(()) => {
                    self.store.mark_outbox_delivered(entry.id).await?;
                    remaining -= 1;
                }
                Err(error) if error.is_permanent() => {
                    // The service answered that this write can never be
                    // stored (too large, malformed): set it aside so it does
                    // not block the writes behind it.
                    let message = error.to_string();
                    tracing::error!(turn_id = entry.turn_id, %message, "memory write abandoned");
                    self.store.mark_outbox_abandoned(entry.id, &message).await?;
                    remaining -= 1;
                }
                Err(error) => {
                    let message = error.to_string();
                    tracing::warn!(turn_id = entry.turn_id, %message, "memory write stays in the outbox");
                    self.store.mark_outbox_failed(entry.id, &message).await?;
                    // The service is down or refusing: keep order, try later.
                    break;
                }
            }
        }
        Ok(remaining)
    }
}
