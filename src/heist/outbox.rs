//! Delivering a session's memory outbox: the writes a turn committed,
//! sent in order with an idempotency key, kept for later when the memory
//! service is down, and set aside when it refuses one for good. Deliveries
//! that were retried or failed are recorded in `service_calls` under the
//! turn whose write they carried.
//!
//! [`Outbox`] holds a store handle and the memory client. With the session
//! loop it is one of the two places in `heist` that call the store: what a
//! turn's commit hands over for delivery ([`Owed`]) is read here only.

use super::{HeistError, OUTBOX_BATCH};
use crate::clients::{CallError, MemoryClient, MemoryWrite};
use crate::resilience::journal::{self, JournalEntry};
use crate::store::{OutboxEntry, Owed, ServiceCallRecord, StoreHandle};

/// Delivers sessions' memory writes from the store's outbox.
pub(super) struct Outbox {
    store: StoreHandle,
    memory: MemoryClient,
}

impl Outbox {
    pub fn new(store: StoreHandle, memory: MemoryClient) -> Self {
        Self { store, memory }
    }

    /// Delivers pending memory writes of a session; returns how many remain.
    /// The writes are claimed first, so with several nodes only one
    /// delivers them at a time (another node delivering them now leaves
    /// this one nothing to send), and the claim is given up afterwards.
    /// Within this process, one task at a time delivers a session's writes:
    /// another finds nothing to do.
    pub async fn deliver_outbox(&self, session_id: &str) -> Result<usize, HeistError> {
        self.deliver_owed(session_id, Owed::ClaimFirst).await
    }

    /// [`Self::deliver_outbox`], given what a turn's commit left to deliver.
    async fn deliver_owed(&self, session_id: &str, owed: Owed) -> Result<usize, HeistError> {
        let Some(_delivering) = self.store.begin_delivery(session_id) else {
            return Ok(0);
        };
        // After a turn's commit, the session's next commit (or its end)
        // writes the marks; any other delivery writes them now.
        let (pending, marks) = match owed {
            Owed::Entries(entries) => (entries, Marks::WithNextCommit),
            Owed::ClaimFirst => (
                self.store.claim_outbox(session_id, OUTBOX_BATCH).await?,
                Marks::Now,
            ),
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let delivered = self.deliver_claimed(pending, marks).await;
        let released = self.store.release_outbox(session_id).await;
        let remaining = delivered?;
        released?;
        Ok(remaining)
    }

    /// Sends claimed writes in order; stops at the first that must wait.
    async fn deliver_claimed(
        &self,
        pending: Vec<OutboxEntry>,
        marks: Marks,
    ) -> Result<usize, HeistError> {
        let mut remaining = pending.len();
        for entry in pending {
            let (delivery, journal) = journal::scope(self.deliver_one(&entry)).await;
            // A delivery that was retried or failed is a row in
            // `service_calls` under its turn, like the turn's own calls.
            let calls = service_call_records(journal);
            if !calls.is_empty() {
                self.store
                    .record_service_calls(&entry.session_id, entry.turn_id as u32, calls)
                    .await?;
            }
            match delivery {
                Ok(()) => {
                    match marks {
                        Marks::Now => self.store.mark_outbox_delivered(entry.id).await?,
                        Marks::WithNextCommit => {
                            self.store.mark_outbox_delivered_later(entry.id).await?
                        }
                    }
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

    /// Delivery on a session's own path: a store error while delivering is
    /// logged, not fatal to the session. The writes stay in the outbox and
    /// delivery is idempotent, so the next turn or the background deliverer
    /// sends them; `pending` (the last count) stands meanwhile. `owed`: the
    /// writes the turn's commit read back, if it did.
    pub async fn deliver_in_passing(&self, session_id: &str, pending: usize, owed: Owed) -> usize {
        match self.deliver_owed(session_id, owed).await {
            Ok(remaining) => remaining,
            Err(error) => {
                tracing::warn!(%error, "memory delivery paused: the store failed; the writes stay in the outbox");
                pending
            }
        }
    }

    /// Sends one outbox entry with its idempotency key, `session:turn`.
    async fn deliver_one(&self, entry: &OutboxEntry) -> Result<(), CallError> {
        match serde_json::from_str::<MemoryWrite>(&entry.payload) {
            Ok(write) => {
                self.memory
                    .store(&write, &format!("{}:{}", entry.session_id, entry.turn_id))
                    .await
            }
            Err(error) => Err(CallError::Decode {
                service: "memory".into(),
                message: error.to_string(),
            }),
        }
    }
}

/// When a delivered write's mark is written.
#[derive(Clone, Copy)]
enum Marks {
    /// Before the delivery returns (SQLite: now on an idle connection,
    /// else by the connection's next use).
    Now,
    /// By the session's next commit or its end, which follow at once:
    /// one transaction fewer per turn, and a mark lost to a crash only
    /// sends its write again under its idempotency key.
    WithNextCommit,
}

/// The journaled calls as `service_calls` records.
pub(super) fn service_call_records(journal: Vec<JournalEntry>) -> Vec<ServiceCallRecord> {
    journal
        .into_iter()
        .map(|entry| ServiceCallRecord {
            service: entry.service,
            operation: entry.operation,
            attempts: entry.summary.attempts,
            outcome: entry.summary.outcome.as_str().to_string(),
            last_error: entry.summary.last_error,
            duration_ms: entry.summary.duration.as_secs_f64() * 1000.0,
        })
        .collect()
}
