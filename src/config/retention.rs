//! The `[retention]` section: whether and how old sessions are pruned from
//! the audit trail.
//!
//! This is only configuration; `daemon` prunes.

use serde::{Deserialize, Serialize};

/// `[retention]`: pruning sessions that ended long ago.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Prune old sessions; off by default, so the audit trail is kept
    /// forever.
    pub enabled: bool,
    /// Sessions that ended longer ago than this are pruned with their rows.
    pub max_age_days: u32,
    /// Sessions deleted per transaction, so pruning never holds the writer long.
    pub batch_size: u32,
    /// How often pruning runs (at least 1000).
    pub interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_age_days: 90,
            batch_size: 200,
            interval_ms: 3_600_000,
        }
    }
}

impl RetentionConfig {
    /// Checks the values; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.enabled && self.max_age_days == 0 {
            return Err(("retention.max_age_days".into(), "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(("retention.batch_size".into(), "must be at least 1".into()));
        }
        if self.interval_ms < 1_000 {
            return Err((
                "retention.interval_ms".into(),
                "must be at least 1000".into(),
            ));
        }
        Ok(())
    }
}
