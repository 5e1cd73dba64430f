//! The store outage rule's shared state, backend-neutral: the last reason
//! the store could not take a write, set by any failed commit through the
//! handle and cleared by the next successful one or a successful write
//! probe. `/readyz` and run admission read it; sessions pause on it. A
//! backend's own checks (the SQLite file's identity, its size with the
//! WAL) only produce the errors; this decides nothing about SQLite.
//!
//! It must not run SQL.

use parking_lot::Mutex;

use super::StoreError;

/// Why the store is unusable, while it is.
#[derive(Debug, Default)]
pub struct StoreOutage {
    reason: Mutex<Option<String>>,
}

impl StoreOutage {
    /// Notes the outcome of a write: an outage sets the reason (logged
    /// once as it starts), a success clears it (logged as it ends).
    pub fn note<T>(&self, outcome: &Result<T, StoreError>) {
        match outcome {
            Ok(_) => {
                if let Some(reason) = self.reason.lock().take() {
                    tracing::warn!(%reason, "the audit store takes writes again");
                    metrics::gauge!(crate::metrics::STORE_UNAVAILABLE).set(0.0);
                }
            }
            Err(error) if error.is_outage() => {
                let mut reason = self.reason.lock();
                if reason.is_none() {
                    tracing::error!(%error, "the audit store cannot take writes");
                    metrics::gauge!(crate::metrics::STORE_UNAVAILABLE).set(1.0);
                }
                *reason = Some(error.to_string());
            }
            Err(_) => {}
        }
    }

    /// The reason the store is unusable, if it is.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }
}
