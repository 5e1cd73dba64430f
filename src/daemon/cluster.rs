//! This daemon as a node of a cluster sharing one PostgreSQL store: every
//! `cluster.heartbeat_ms` it heartbeats (which renews the leases of the
//! sessions it plays), notices sessions whose lease it lost, and takes over
//! sessions whose lease ran out on a node that stopped heartbeating,
//! resuming them through `runs` as crash recovery does. On SQLite there is
//! one node and nothing to do but publish that.
//!
//! It decides when; the store does the claiming and fencing atomically, and
//! `runs` admits the resumed sessions under the session cap. It takes its
//! stop signal as a parameter.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::runs::Runs;
use crate::config::ClusterConfig;
use crate::metrics as names;
use crate::store::StoreHandle;

/// Heartbeats until `finished`, taking over sessions until `stop`; then
/// marks this node stopped. Heartbeats go on while runs drain after `stop`,
/// so a slow drain does not hand its sessions to another node mid-turn.
/// Returns at once on SQLite.
pub async fn run(
    runs: Arc<Runs>,
    store: StoreHandle,
    cluster: ClusterConfig,
    stop: watch::Receiver<bool>,
    mut finished: watch::Receiver<bool>,
) {
    publish_zeros(&store);
    if !store.is_shared() {
        return;
    }
    let interval = Duration::from_millis(cluster.heartbeat_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = finished.wait_for(|finished| *finished) => break,
        }
        let take_over = !*stop.borrow();
        beat_once(&runs, &store, take_over).await;
    }
    if let Err(error) = store.stop_node().await {
        tracing::warn!(%error, "cannot mark this node stopped; it shows alive until its heartbeat ages");
    }
}

/// One heartbeat: renew, report lost leases, count live nodes, and (when
/// `take_over`) take over sessions whose lease ran out.
pub async fn beat_once(runs: &Arc<Runs>, store: &StoreHandle, take_over: bool) {
    match store.heartbeat().await {
        Ok(report) => {
            for session_id in &report.lost {
                metrics::counter!(names::CLUSTER_LEASE_RENEWAL_FAILURES_TOTAL).increment(1);
                tracing::warn!(%session_id, "lease lost: another node owns the session now; its next turn will not be written here");
            }
        }
        Err(error) => {
            metrics::counter!(names::CLUSTER_LEASE_RENEWAL_FAILURES_TOTAL).increment(1);
            tracing::error!(%error, "heartbeat failed; leases are not renewed until the store answers");
            return;
        }
    }
    if let Ok(nodes) = store.nodes().await {
        let alive = nodes.iter().filter(|node| node.alive).count();
        metrics::gauge!(names::CLUSTER_NODES_ALIVE).set(alive as f64);
        let lost = nodes.iter().filter(|node| node.lost).count();
        metrics::gauge!(names::CLUSTER_NODES_LOST).set(lost as f64);
    }
    let room = runs.free_capacity();
    if !take_over || room == 0 {
        return;
    }
    match store.claim_orphaned_sessions(room).await {
        Ok(sessions) if !sessions.is_empty() => {
            metrics::counter!(names::CLUSTER_TAKEOVERS_TOTAL).increment(sessions.len() as u64);
            for session in &sessions {
                tracing::warn!(session_id = %session.session_id, turns = session.num_turns, "lease ran out on its node: taking the session over");
            }
            runs.take_over(sessions).await;
        }
        Ok(_) => {}
        Err(error) => tracing::error!(%error, "cannot look for sessions to take over"),
    }
}

/// Every daemon exposes the cluster metrics; a SQLite one is one node.
fn publish_zeros(store: &StoreHandle) {
    metrics::gauge!(names::CLUSTER_NODES_ALIVE).set(1.0);
    metrics::gauge!(names::CLUSTER_NODES_LOST).set(0.0);
    for counter in [
        names::CLUSTER_TAKEOVERS_TOTAL,
        names::CLUSTER_LEASE_RENEWAL_FAILURES_TOTAL,
        names::CLUSTER_FENCED_WRITES_TOTAL,
    ] {
        metrics::counter!(counter).increment(0);
    }
    if let Some(node_id) = store.node_id() {
        tracing::info!(%node_id, "cluster node registered");
    }
}
