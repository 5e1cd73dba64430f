//! The PostgreSQL backend of the audit store, for several daemons sharing
//! one database: the same tables and column names as the SQLite store (the
//! prototype's three plus heistd's), plus `nodes` and each session's lease
//! (`owner_node`, `lease_epoch`, `lease_expires_at`). It implements every
//! operation of the store's [`super::backend::Backend`] (`backend`, one file
//! for the trait impl) with `tokio-postgres` over a small `deadpool` pool,
//! and the cluster's own: heartbeats, lease renewal, takeover of expired
//! leases, and fencing of every session write.
//!
//! Only this module holds PostgreSQL SQL. It must not call services or
//! decide policy (when to take over, how many to run): `daemon` does.
//! Lease times are the database's clock (`now()`), never a node's, so
//! nodes with skewed clocks still agree on who owns what.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::StoreError;
use crate::config::{ClusterConfig, StoreConfig};

mod backend;
mod cluster;
mod control;
mod copy;
mod queue;
mod rows;
mod schema;
mod sessions;
mod stream;
mod turns;

pub use turns::OutboxMark;

/// The PostgreSQL store as one node of a cluster sees it.
pub struct PgStore {
    pool: Pool,
    /// The URL without a password, for messages and `path()`.
    display: std::path::PathBuf,
    /// This process's row in `nodes`, and the owner written on its leases.
    node_id: String,
    lease_ms: i64,
    /// `cluster.max_concurrent_sessions` (0: none), checked as a session is
    /// created, under an advisory lock so two nodes cannot both take the
    /// last place.
    cluster_cap: i64,
    /// The sessions this node holds a lease on, with the epoch it holds.
    /// Every write to one of them is fenced on that epoch; a session not
    /// here is written only when no live node holds it.
    held: parking_lot::Mutex<HashMap<String, i64>>,
}

/// Advisory lock keys, one per job, so unrelated jobs never wait on each
/// other (`hashtext` would do too; fixed numbers are easier to find).
pub(super) const LOCK_MIGRATIONS: i64 = 0x6865_6973_7401;
pub(super) const LOCK_CLUSTER_CAP: i64 = 0x6865_6973_7402;
pub(super) const LOCK_RETENTION: i64 = 0x6865_6973_7403;
pub(super) const LOCK_RUN_QUEUE: i64 = 0x6865_6973_7404;

impl PgStore {
    /// Connects, migrates (once across nodes starting together) and
    /// registers this node.
    pub async fn open(store: &StoreConfig, cluster: &ClusterConfig) -> Result<Self, StoreError> {
        let display = redacted_url(&store.url);
        let mut config: tokio_postgres::Config =
            store.url.parse().map_err(|source| StoreError::Connect {
                url: display.clone(),
                source,
            })?;
        if let Some(password) = &store.password {
            config.password(password.expose());
        }
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("heistd");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(store.pool_size.max(1) as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|error| StoreError::Pool(error.to_string()))?;
        let node_id = if cluster.node_id.is_empty() {
            cluster::generated_node_id()
        } else {
            cluster.node_id.clone()
        };
        let this = Self {
            pool,
            display: display.clone().into(),
            node_id,
            lease_ms: cluster.lease_ms as i64,
            cluster_cap: cluster.max_concurrent_sessions as i64,
            held: parking_lot::Mutex::new(HashMap::new()),
        };
        let mut client = this.client().await.map_err(|error| match error {
            StoreError::Pool(message) => StoreError::Pool(format!("{display}: {message}")),
            other => other,
        })?;
        schema::migrate(&mut client).await?;
        this.register_node(&client).await?;
        Ok(this)
    }

    /// What `path()` shows for this store: its URL without a password.
    pub fn display(&self) -> &std::path::Path {
        &self.display
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|error| match error {
            // The server's own answer (a refused password, a missing
            // database) is classified like any PostgreSQL error: not an
            // outage to wait out, but a set-up to fix.
            deadpool_postgres::PoolError::Backend(error) => StoreError::Postgres(error),
            other => StoreError::Pool(other.to_string()),
        })
    }

    fn held_epoch(&self, session_id: &str) -> Option<i64> {
        self.held_sessions().get(session_id).copied()
    }

    fn hold(&self, session_id: &str, epoch: i64) {
        self.held_sessions().insert(session_id.to_string(), epoch);
    }

    /// Stops holding a session here (it ended, was fenced, or its task
    /// stopped): its lease is no longer renewed and may then be taken over.
    pub fn forget(&self, session_id: &str) {
        self.held_sessions().remove(session_id);
    }

    fn held_sessions(&self) -> parking_lot::MutexGuard<'_, HashMap<String, i64>> {
        // Only plain inserts and removes happen under the lock.
        self.held.lock()
    }

    /// The store outage rule's probe: a round trip to the server that
    /// writes (one that went away, a pool that cannot connect, or a
    /// read-only server fails it).
    pub async fn probe(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        // A write that changes nothing: it needs a writable primary, so a
        // read-only standby after a failover fails it (SQLSTATE 25006).
        client
            .execute(
                "UPDATE nodes SET last_heartbeat = last_heartbeat WHERE node_id = $1",
                &[&self.node_id],
            )
            .await?;
        Ok(())
    }

    /// Whether the database answers a trivial query.
    pub async fn is_usable(&self) -> bool {
        match self.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`.
fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// A unique violation (SQLSTATE 23505), as a schedule slot taken twice.
fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}
