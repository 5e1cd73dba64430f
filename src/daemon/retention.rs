//! Retention: when enabled, a background task prunes sessions that ended
//! longer ago than `retention.max_age_days` (with their messages, tool
//! usage, service calls and outbox rows) in small batches, then gives pages
//! back with `incremental_vacuum` and checkpoints the WAL, so pruning never
//! holds the store's one writer for long.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::RetentionConfig;
use crate::metrics as names;
use crate::store::{StoreError, StoreHandle};

/// Pages handed back per pass; small enough to stay quick.
const VACUUM_PAGES: u32 = 256;

pub async fn run(config: RetentionConfig, store: StoreHandle, mut shutdown: watch::Receiver<bool>) {
    metrics::counter!(names::RETENTION_PRUNED_SESSIONS_TOTAL).increment(0);
    if !config.enabled {
        return;
    }
    loop {
        let pruned = prune_once(&config, &store).await;
        if pruned > 0 {
            tracing::info!(
                sessions = pruned,
                max_age_days = config.max_age_days,
                "retention pruned old sessions"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(config.interval_ms)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass: batches until nothing old is left; returns sessions pruned.
pub async fn prune_once(config: &RetentionConfig, store: &StoreHandle) -> usize {
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(config.max_age_days));
    let mut total = 0;
    loop {
        match prune_batch(store, cutoff, config.batch_size).await {
            Ok(0) => break,
            Ok(count) => {
                total += count;
                metrics::counter!(names::RETENTION_PRUNED_SESSIONS_TOTAL).increment(count as u64);
                // Let turns in between batches.
                tokio::task::yield_now().await;
            }
            Err(error) => {
                tracing::error!(%error, "retention pass failed");
                break;
            }
        }
    }
    total
}

/// One batch pruned, then the pages it freed handed back.
async fn prune_batch(
    store: &StoreHandle,
    cutoff: chrono::DateTime<chrono::Utc>,
    batch: u32,
) -> Result<usize, StoreError> {
    let pruned = store.prune_sessions_before(cutoff, batch).await?;
    store.compact(VACUUM_PAGES).await?;
    Ok(pruned)
}
