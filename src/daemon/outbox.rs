//! The background outbox deliverer: memory writes that outlived their
//! session's turns (a memory outage over its last turns, or a session
//! interrupted) are retried here, so the memory service catches up with the
//! store whenever it comes back. Sessions that are running deliver their own
//! outbox after each turn; this task leaves them alone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::runs::Runs;
use crate::store::StoreHandle;

/// How often memory writes left in any session's outbox are retried.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(15);
/// Sessions looked at per pass, so one pass stays short.
const SESSIONS_PER_PASS: usize = 100;

/// Delivers left-behind memory writes every [`OUTBOX_INTERVAL`] until
/// `stop` becomes true.
pub async fn deliver_left_behind(
    runs: Arc<Runs>,
    store: StoreHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(OUTBOX_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        deliver_once(&runs, &store).await;
    }
}

/// One pass: every session with pending writes and no task of its own.
/// With several nodes, each claims a batch of sessions no other node is
/// delivering or playing (the store's `claim_outbox_sessions`), so the
/// nodes alive share the backlog and never send the same write at once.
pub async fn deliver_once(runs: &Arc<Runs>, store: &StoreHandle) {
    let sessions = match store.claim_outbox_sessions(SESSIONS_PER_PASS).await {
        Ok(sessions) => sessions,
        Err(error) => {
            tracing::error!(%error, "cannot list pending memory writes");
            return;
        }
    };
    let running = runs.running_session_ids();
    let mut delivered_sessions = 0;
    for session_id in sessions.into_iter().filter(|id| !running.contains(id)) {
        match runs.deliver_outbox(&session_id).await {
            Ok(_) => delivered_sessions += 1,
            Err(error) => tracing::warn!(%session_id, %error, "outbox delivery failed"),
        }
    }
    if delivered_sessions > 0 {
        tracing::info!(
            sessions = delivered_sessions,
            "outbox pass: memory writes left behind sent (or kept for later)"
        );
    }
    // Counted here, every pass, rather than after every turn's delivery:
    // a gauge read every scrape need not cost each turn a query.
    match store.pending_outbox_total().await {
        Ok(total) => metrics::gauge!(crate::metrics::MEMORY_OUTBOX_PENDING).set(total as f64),
        Err(error) => tracing::error!(%error, "cannot count pending memory writes"),
    }
}
