//! Work that any node of the cluster may pick up, claimed so that exactly
//! one does: run requests waiting in `run_queue` (a session with status
//! `queued` each, claimed by a node with room under `FOR UPDATE SKIP
//! LOCKED`, then played under a lease like any session), and the memory
//! outbox of sessions nobody is playing (claimed per session in
//! `sessions.outbox_node`, so two nodes never deliver the same writes at
//! once, and void once the claiming node stops heartbeating).
//!
//! It decides nothing: how many runs this node has room for, and when to
//! look, are the daemon's.

use super::rows::{outbox_entry, session_row, SESSION_COLUMNS};
use super::{PgStore, LOCK_CLUSTER_CAP, LOCK_RUN_QUEUE};
use crate::store::{new_session_id, timestamp, NewSession, OutboxEntry, SessionRow, StoreError};

/// `node` (an SQL expression naming a node id) has heartbeat within the
/// lease (`$lease` is the placeholder of the lease in milliseconds) and has
/// not stopped. Claims held by a node that is not alive are void.
fn node_alive(node: &str, lease: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = {node} AND n.stopped_at IS NULL
                 AND n.last_heartbeat > now() - make_interval(secs => {lease}::float8 / 1000.0))"
    )
}

impl PgStore {
    /// Queues a run request: a session with status `queued` (visible to
    /// every reader at once) and its row in `run_queue`. With `max_queued`
    /// requests already waiting, [`StoreError::QueueFull`]; the check and
    /// the insert hold one advisory lock, so nodes cannot overfill it.
    pub async fn enqueue_run(
        &self,
        new: &NewSession,
        max_queued: u32,
    ) -> Result<String, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_RUN_QUEUE])
            .await?;
        let queued: i64 = transaction
            .query_one("SELECT COUNT(*) FROM run_queue", &[])
            .await?
            .get(0);
        if queued >= i64::from(max_queued) {
            return Err(StoreError::QueueFull {
                queued: queued.max(0) as u64,
                max_queued,
            });
        }
        let now = chrono::Utc::now();
        let session_id = loop {
            let session_id = new_session_id(now);
            let inserted = transaction
                .execute(
                    "INSERT INTO sessions (session_id, start_time, num_turns, status, seed, scenario, planned_turns)
                     VALUES ($1, $2, 0, 'queued', $3, $4, $5)
                     ON CONFLICT (session_id) DO NOTHING",
                    &[
                        &session_id,
                        &timestamp(now),
                        &(new.seed as i64),
                        &new.scenario,
                        &(new.planned_turns as i64),
                    ],
                )
                .await?;
            if inserted == 1 {
                break session_id;
            }
        };
        transaction
            .execute(
                "INSERT INTO run_queue (session_id, requested_by) VALUES ($1, $2)",
                &[&session_id, &self.node_id],
            )
            .await?;
        transaction.commit().await?;
        Ok(session_id)
    }

    /// Claims up to `limit` queued runs of `scenario`, oldest request
    /// first, skipping rows another node is claiming right now, and within
    /// `cluster.max_concurrent_sessions`. Each becomes `active`, leased to
    /// this node at epoch 1 (its start time is now), and leaves the queue.
    pub async fn claim_queued_runs(
        &self,
        scenario: &str,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let limit = (limit as i64).min(self.cluster_room(&transaction).await?);
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let rows = transaction
            .query(
                &format!(
                    "WITH picked AS (
                         SELECT q.session_id FROM run_queue q JOIN sessions s ON s.session_id = q.session_id
                         WHERE s.scenario = $1 ORDER BY q.requested_at, q.session_id LIMIT $2
                         FOR UPDATE OF q SKIP LOCKED),
                     taken AS (
                         DELETE FROM run_queue WHERE session_id IN (SELECT session_id FROM picked)
                         RETURNING session_id)
                     UPDATE sessions SET status = 'active', start_time = $3, owner_node = $4, lease_epoch = 1,
                         lease_expires_at = now() + make_interval(secs => $5::float8 / 1000.0)
                     WHERE session_id IN (SELECT session_id FROM taken) AND status = 'queued'
                     RETURNING {SESSION_COLUMNS}"
                ),
                &[
                    &scenario,
                    &limit,
                    &timestamp(chrono::Utc::now()),
                    &self.node_id,
                    &(self.lease_ms as f64),
                ],
            )
            .await?;
        transaction.commit().await?;
        let claimed: Vec<SessionRow> = rows.iter().map(session_row).collect();
        for session in &claimed {
            self.hold(&session.session_id, 1);
        }
        Ok(claimed)
    }

    /// Run requests waiting for a node, across the cluster.
    pub async fn queued_runs(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let queued: i64 = client
            .query_one("SELECT COUNT(*) FROM run_queue", &[])
            .await?
            .get(0);
        Ok(queued.max(0) as u64)
    }

    /// How many more sessions may start under the cluster cap (`i64::MAX`
    /// without one). Takes the cap's advisory lock for the rest of the
    /// transaction, so two nodes cannot both take the last place.
    pub(super) async fn cluster_room(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
    ) -> Result<i64, StoreError> {
        if self.cluster_cap <= 0 {
            return Ok(i64::MAX);
        }
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_CLUSTER_CAP])
            .await?;
        let running: i64 = transaction
            .query_one(
                "SELECT COUNT(*) FROM sessions WHERE status = 'active' AND lease_expires_at > now()",
                &[],
            )
            .await?
            .get(0);
        Ok(self.cluster_cap - running)
    }

    /// Claims the memory outbox of up to `limit` sessions nobody else is
    /// delivering or playing (skipping rows another node is claiming right
    /// now, and the sessions this node plays, whose turns deliver their
    /// own): their ids, now this node's to deliver until released.
    pub async fn claim_outbox_sessions(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let held: Vec<String> = self.held_sessions().keys().cloned().collect();
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE sessions SET outbox_node = $1
                     WHERE session_id IN (
                         SELECT s.session_id FROM sessions s
                         WHERE s.session_id IN (SELECT session_id FROM outbox
                                                WHERE delivered_at IS NULL AND abandoned_at IS NULL)
                           AND NOT (s.session_id = ANY($2::text[]))
                           AND NOT (s.status = 'active' AND s.owner_node IS DISTINCT FROM $1
                                    AND s.lease_expires_at > now())
                           AND (s.outbox_node IS NULL OR s.outbox_node = $1 OR NOT {})
                         ORDER BY s.start_time LIMIT $4
                         FOR UPDATE OF s SKIP LOCKED)
                     RETURNING session_id",
                    node_alive("s.outbox_node", "$3")
                ),
                &[
                    &self.node_id,
                    &held,
                    &(self.lease_ms as f64),
                    &(limit as i64),
                ],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Claims one session's outbox for delivery and returns its first
    /// `limit` pending writes, oldest first; none when another live node
    /// is delivering them (or nothing is pending). Release the claim with
    /// [`PgStore::release_outbox`] once done.
    pub async fn claim_outbox(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let client = self.client().await?;
        // One statement: the UPDATE waits for the session row, then sees
        // any claim committed meanwhile, so two claimants never both win.
        let claim = client
            .prepare_cached(&format!(
                "WITH claim AS (
                         UPDATE sessions s SET outbox_node = $2
                         WHERE s.session_id = $1
                           AND (s.outbox_node IS NULL OR s.outbox_node = $2 OR NOT {})
                           AND EXISTS (SELECT 1 FROM outbox o WHERE o.session_id = $1
                                       AND o.delivered_at IS NULL AND o.abandoned_at IS NULL)
                         RETURNING s.session_id)
                     SELECT o.id, o.session_id, o.turn_id, o.payload, o.attempts
                     FROM outbox o JOIN claim c ON c.session_id = o.session_id
                     WHERE o.delivered_at IS NULL AND o.abandoned_at IS NULL
                     ORDER BY o.id LIMIT $4",
                node_alive("s.outbox_node", "$3")
            ))
            .await?;
        let rows = client
            .query(
                &claim,
                &[
                    &session_id,
                    &self.node_id,
                    &(self.lease_ms as f64),
                    &(limit as i64),
                ],
            )
            .await?;
        Ok(rows.iter().map(outbox_entry).collect())
    }

    /// This node is done delivering a session's outbox for now.
    pub async fn release_outbox(&self, session_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let release = client
            .prepare_cached(
                "UPDATE sessions SET outbox_node = NULL WHERE session_id = $1 AND outbox_node = $2",
            )
            .await?;
        client
            .execute(&release, &[&session_id, &self.node_id])
            .await?;
        Ok(())
    }
}
