//! The `[cluster]` section: running several daemons on one PostgreSQL
//! store (node id, heartbeat, lease, the cluster-wide session cap). Which
//! backend the store uses and how it is reached are `config::store`'s.
//!
//! It validates; it must not connect to anything.

use serde::{Deserialize, Serialize};

/// `[cluster]`: several daemons on one PostgreSQL store; only meaningful
/// with `store.backend = "postgres"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id in the `nodes` table; empty: host, pid and a
    /// random part, so two processes never share one by accident.
    #[serde(default)]
    pub node_id: String,
    /// How often a node says it is alive and renews its sessions' leases.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a session stays a node's without a renewal; after that
    /// another node takes it over, from its last committed turn. At least
    /// two heartbeats long, so one slow heartbeat does not lose a session.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Sessions running at once across every node (0: no cluster cap; each
    /// node still has `daemon.max_concurrent_sessions`).
    #[serde(default)]
    pub max_concurrent_sessions: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            heartbeat_ms: default_heartbeat_ms(),
            lease_ms: default_lease_ms(),
            max_concurrent_sessions: 0,
        }
    }
}

fn default_heartbeat_ms() -> u64 {
    3_000
}

fn default_lease_ms() -> u64 {
    15_000
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.heartbeat_ms < 50 {
            return Err(("cluster.heartbeat_ms".into(), "must be at least 50".into()));
        }
        if self.lease_ms < 2 * self.heartbeat_ms {
            return Err((
                "cluster.lease_ms".into(),
                "must be at least twice cluster.heartbeat_ms, so one late heartbeat does not lose a lease".into(),
            ));
        }
        Ok(())
    }
}
