//! Watching the audit store while nothing else writes to it: every few
//! seconds it asks the store whether it can take a run (the file is still
//! the one at its path, under its size cap, and a write probe succeeds
//! after an outage), so an outage ends without waiting for a session to
//! try, and an unusable store is logged as an error once a minute until it
//! is fixed or an operator restarts heistd. `/readyz` asks the same
//! question itself; this task only keeps the log and the metric current.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::StoreHandle;

/// How often the store is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often an unusable store is logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Checks the store every [`CHECK_EVERY`] until `stop` becomes true.
pub async fn watch_store(store: StoreHandle, mut stop: watch::Receiver<bool>) {
    let mut last_logged: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match store.readiness().await {
            Ok(()) => last_logged = None,
            Err(reason) => {
                if last_logged.is_none_or(|logged| logged.elapsed() >= LOG_EVERY) {
                    tracing::error!(
                        path = %store.path().display(),
                        %reason,
                        "the audit store cannot take writes: new runs are refused and sessions are paused until it can (restart heistd if its file was deleted)"
                    );
                    last_logged = Some(Instant::now());
                }
            }
        }
    }
}
