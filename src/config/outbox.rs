//! The `[outbox]` section: how the daemon reconciles the memory service
//! with the store's outbox.
//!
//! This is only configuration; `daemon` reconciles.

use serde::{Deserialize, Serialize};

/// `[outbox]`: the memory outbox's reconciliation: how often heistd
/// compares the memory service's counts with the writes the store says
/// were delivered, and how far back it looks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// How often the daemon compares the memory service's counts with the
    /// store's delivered writes (at least 100), and at once when the memory
    /// service reports a new instance id (it restarted empty).
    pub reconcile_interval_ms: u64,
    /// Sessions still running, or ended within this many hours, are compared.
    pub reconcile_window_hours: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            reconcile_interval_ms: 60_000,
            reconcile_window_hours: 24,
        }
    }
}

impl OutboxConfig {
    /// Checks the values; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.reconcile_interval_ms < 100 {
            return Err((
                "outbox.reconcile_interval_ms".into(),
                "must be at least 100".into(),
            ));
        }
        if self.reconcile_window_hours == 0 {
            return Err((
                "outbox.reconcile_window_hours".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
