//! The cluster's rows: this node in `nodes` (registered at open, heartbeat,
//! stopped), lease renewal for the sessions held here, takeover of
//! sessions whose lease ran out, the list of nodes for the status view,
//! and the maintenance that must run on one node at a time (retention,
//! under an advisory lock). Deciding when to heartbeat or take over is the
//! daemon's; this file only does it when asked.

use chrono::{DateTime, Utc};
use rand::Rng;

use super::rows::{session_row_at, SESSION_COLUMNS};
use super::{PgStore, LOCK_RETENTION};
use crate::store::{timestamp, HeartbeatReport, NodeRow, SessionRow, StoreError};

impl PgStore {
    pub(super) async fn register_node(
        &self,
        client: &deadpool_postgres::Object,
    ) -> Result<(), StoreError> {
        client
            .execute(
                "INSERT INTO nodes (node_id, host, pid, started_at, last_heartbeat)
                 VALUES ($1, $2, $3, now(), now())
                 ON CONFLICT (node_id) DO UPDATE SET host = $2, pid = $3, started_at = now(),
                     last_heartbeat = now(), stopped_at = NULL",
                &[&self.node_id, &host_name(), &(std::process::id() as i64)],
            )
            .await?;
        Ok(())
    }

    /// Says this node is alive and renews the lease of every session it
    /// holds, under the epoch it holds.
    pub async fn heartbeat(&self) -> Result<HeartbeatReport, StoreError> {
        let (ids, epochs): (Vec<String>, Vec<i64>) = self
            .held_sessions()
            .iter()
            .map(|(id, epoch)| (id.clone(), *epoch))
            .unzip();
        let client = self.client().await?;
        client
            .execute(
                "UPDATE nodes SET last_heartbeat = now(), stopped_at = NULL WHERE node_id = $1",
                &[&self.node_id],
            )
            .await?;
        let renewed: Vec<String> = client
            .query(
                "UPDATE sessions AS s SET lease_expires_at = now() + make_interval(secs => $4::float8 / 1000.0)
                 FROM unnest($2::text[], $3::bigint[]) AS held(session_id, epoch)
                 WHERE s.session_id = held.session_id AND s.lease_epoch = held.epoch
                   AND s.owner_node = $1 AND s.status = 'active'
                 RETURNING s.session_id",
                &[&self.node_id, &ids, &epochs, &(self.lease_ms as f64)],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let unrenewed: Vec<String> = ids.into_iter().filter(|id| !renewed.contains(id)).collect();
        // Not renewed is lost while the session is still active, or when
        // another node owns it now (it took it over, maybe finished it); one
        // this node ended between the snapshot and the update just finished.
        let lost: Vec<String> = if unrenewed.is_empty() {
            Vec::new()
        } else {
            client
                .query(
                    "SELECT session_id FROM sessions WHERE session_id = ANY($1)
                       AND (status = 'active' OR owner_node IS DISTINCT FROM $2)",
                    &[&unrenewed, &self.node_id],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect()
        };
        Ok(HeartbeatReport {
            renewed: renewed.len(),
            lost,
        })
    }

    /// Takes over up to `limit` active sessions whose lease ran out (or
    /// that never had one), skipping rows another node is claiming right
    /// now, and sessions held here. Each gets this node as owner and the
    /// next epoch, so the previous owner's writes are fenced from now on.
    pub async fn claim_expired_sessions(
        &self,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let held: Vec<String> = self.held_sessions().keys().cloned().collect();
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE sessions SET owner_node = $1, lease_epoch = lease_epoch + 1,
                         lease_expires_at = now() + make_interval(secs => $2::float8 / 1000.0)
                     WHERE session_id IN (
                         SELECT session_id FROM sessions
                         WHERE status = 'active'
                           AND (lease_expires_at IS NULL OR lease_expires_at < now())
                           AND NOT (session_id = ANY($3::text[]))
                         ORDER BY start_time LIMIT $4
                         FOR UPDATE SKIP LOCKED)
                       AND status = 'active'
                     RETURNING lease_epoch, {SESSION_COLUMNS}"
                ),
                &[
                    &self.node_id,
                    &(self.lease_ms as f64),
                    &held,
                    &(limit as i64),
                ],
            )
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let epoch: i64 = row.get(0);
            let session = session_row_at(&row, 1);
            self.hold(&session.session_id, epoch);
            claimed.push(session);
        }
        Ok(claimed)
    }

    /// Every node the table knows, newest heartbeat first; `alive` when it
    /// heartbeat within one lease period and has not stopped.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node_id, host, pid, started_at, last_heartbeat,
                        stopped_at IS NULL AND last_heartbeat > now() - make_interval(secs => $1::float8 / 1000.0),
                        stopped_at IS NULL AND last_heartbeat <= now() - make_interval(secs => $1::float8 / 1000.0)
                            AND last_heartbeat > now() - interval '1 hour'
                 FROM nodes ORDER BY last_heartbeat DESC, node_id LIMIT 100",
                &[&(self.lease_ms as f64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| NodeRow {
                node_id: row.get(0),
                host: row.get(1),
                pid: row.get(2),
                started_at: timestamp(row.get::<_, DateTime<Utc>>(3)),
                last_heartbeat: timestamp(row.get::<_, DateTime<Utc>>(4)),
                alive: row.get(5),
                lost: row.get(6),
            })
            .collect())
    }

    /// Which node owns each active session (session id, owner).
    pub async fn session_owners(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT session_id, owner_node FROM sessions WHERE status = 'active' ORDER BY start_time LIMIT 1000",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Marks this node stopped, so the status view does not wait a lease
    /// period to show it gone.
    pub async fn stop_node(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE nodes SET stopped_at = now() WHERE node_id = $1",
                &[&self.node_id],
            )
            .await?;
        Ok(())
    }

    /// Deletes up to `batch` sessions that ended before `cutoff`, with all
    /// their rows, in one transaction; only one node prunes at a time (the
    /// others find the lock taken and prune nothing this round).
    pub async fn prune_sessions_before(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let locked: bool = transaction
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_RETENTION])
            .await?
            .get(0);
        if !locked {
            return Ok(0);
        }
        let ids: Vec<String> = transaction
            .query(
                "SELECT session_id FROM sessions WHERE status != 'active' AND end_time IS NOT NULL AND end_time < $1
                 ORDER BY end_time LIMIT $2",
                &[&timestamp(cutoff), &(batch as i64)],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for table in [
            "session_cancels",
            "service_calls",
            "outbox",
            "tool_usage",
            "messages",
            "sessions",
        ] {
            transaction
                .execute(
                    &format!("DELETE FROM {table} WHERE session_id = ANY($1)"),
                    &[&ids],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(ids.len())
    }
}

/// `host-pid-random`: unique per process even when a host restarts a
/// daemon with the same pid.
pub(super) fn generated_node_id() -> String {
    let suffix: u32 = rand::rng().random();
    format!("{}-{}-{suffix:08x}", host_name(), std::process::id())
}

/// The kernel's host name; the file is Linux's, elsewhere "localhost".
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
