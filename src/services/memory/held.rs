//! What the memory service holds, and what it costs: every entry is charged
//! its message, its ids, its `Idempotency-Key`, its client's id and a fixed
//! overhead ([`entry_cost`]), against its session, its client's share (for
//! agents) and the service's total, so the bytes counted bound the bytes
//! held. Idempotency keys are kept per session, scoped by (client, agent,
//! key), beside the content hash of the write they stood for; forgetting a
//! session takes its map out whole (the caller drops it after the lock).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::super::memory_file::{MemoryFile, StoredWrite};
use crate::config::MemoryServiceConfig;

/// Charged per entry beside its strings: the entry's and its key's
/// bookkeeping (string headers, the hash, map slots, allocator slack).
/// Measured against `VmHWM` by `tests/it/attacks_memory.rs`.
pub const ENTRY_OVERHEAD_BYTES: usize = 384;
/// Expired sessions are looked for at most this often, so a burst of
/// writes does not walk every session each time.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct MemoryEntry {
    pub agent_id: String,
    pub turn_id: i64,
    pub message: String,
    /// The client that wrote it (token `sub`).
    pub client_id: String,
    #[serde(skip)]
    pub by_admin: bool,
    pub content_hash: String,
}

/// Who an idempotency key belongs to inside a session: the writing client,
/// the agent and the key itself.
type KeyScope = (String, String, String);

/// One session's memories and what they cost.
pub struct SessionMemories {
    /// Agent to the agent's turns in arrival order.
    pub by_agent: BTreeMap<String, Vec<MemoryEntry>>,
    /// Idempotency keys seen, with the content hash of their write.
    keys: HashMap<KeyScope, String>,
    pub entries: usize,
    pub bytes: usize,
    /// What each client holds in this session: the session quotas apply
    /// per client, so an agent filling a session (heistd's, whose id is
    /// public) does not refuse heistd's writes to it.
    clients: HashMap<String, ClientUsage>,
    /// Retention counts from here.
    last_write: Instant,
}

pub struct Memories {
    pub sessions: BTreeMap<String, SessionMemories>,
    /// Bytes charged across all sessions, for `max_bytes`.
    pub total_bytes: usize,
    /// Bytes charged to agents (not `memory:admin`), for `max_bytes_agents`.
    pub agents_bytes: usize,
    /// Bytes charged per agent client, for `max_bytes_per_client`.
    client_bytes: HashMap<String, usize>,
    last_prune: Instant,
    /// The file every accepted write goes through to, when persisted.
    pub file: Option<MemoryFile>,
}

/// One client's entries and bytes in one session.
#[derive(Default)]
struct ClientUsage {
    entries: usize,
    bytes: usize,
    /// Of `bytes`, those written without `memory:admin` (charged to the
    /// client's share and the agents').
    agent_bytes: usize,
}

/// What a write would find: a replay, a key reused with another body, or
/// nothing of the kind.
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// Why a write does not fit.
pub enum Refusal {
    /// The session's quota: it will never fit (413).
    Session,
    /// The client's share (507).
    ClientShare,
    /// All agents' share (507).
    AgentsShare,
    /// The service's total (507).
    Total,
}

/// The bytes one write is charged: everything it makes the service hold.
pub fn entry_cost(write: &StoredWrite) -> usize {
    write.message.len()
        + write.session_id.len()
        + 2 * (write.agent_id.len() + write.client_id.len())
        + write.idempotency_key.as_ref().map_or(0, String::len)
        + write.content_hash.len()
        + ENTRY_OVERHEAD_BYTES
}

impl Memories {
    pub fn empty(file: Option<MemoryFile>) -> Self {
        Self {
            sessions: BTreeMap::new(),
            total_bytes: 0,
            agents_bytes: 0,
            client_bytes: HashMap::new(),
            last_prune: Instant::now(),
            file,
        }
    }

    /// Holds `writes` again (read back from the file), dropping the
    /// sessions whose last write is past `retention` (from the file too),
    /// as the running service would have.
    pub fn load(file: MemoryFile, writes: Vec<StoredWrite>, retention: Duration) -> Self {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let now = Instant::now();
        let mut last_written: BTreeMap<String, i64> = BTreeMap::new();
        let mut memories = Self::empty(Some(file));
        for write in writes {
            let last = last_written.entry(write.session_id.clone()).or_default();
            *last = (*last).max(write.written_at_ms);
            let age =
                Duration::from_millis(now_ms.saturating_sub(write.written_at_ms).max(0) as u64);
            memories.add(write, now.checked_sub(age).unwrap_or(now));
        }
        for (session_id, last) in last_written {
            let age = Duration::from_millis(now_ms.saturating_sub(last).max(0) as u64);
            if age >= retention {
                drop(memories.forget(&session_id));
            }
        }
        memories
    }

    /// Whether `write`'s key was seen in its scope, and with which body.
    pub fn seen(&self, write: &StoredWrite) -> Seen {
        let Some(key) = &write.idempotency_key else {
            return Seen::New;
        };
        let scope = (write.client_id.clone(), write.agent_id.clone(), key.clone());
        match self
            .sessions
            .get(&write.session_id)
            .and_then(|session| session.keys.get(&scope))
        {
            None => Seen::New,
            Some(hash) if *hash == write.content_hash => Seen::Duplicate,
            Some(_) => Seen::Conflict,
        }
    }

    /// Whether `write` fits every bound that applies to it.
    pub fn check(&self, limits: &MemoryServiceConfig, write: &StoredWrite) -> Option<Refusal> {
        let cost = entry_cost(write);
        let (entries, held) = self
            .sessions
            .get(&write.session_id)
            .and_then(|session| session.clients.get(&write.client_id))
            .map_or((0, 0), |usage| (usage.entries, usage.bytes));
        if entries + 1 > limits.max_entries_per_session
            || held + cost > limits.max_bytes_per_session
        {
            return Some(Refusal::Session);
        }
        if !write.by_admin {
            let client = self
                .client_bytes
                .get(&write.client_id)
                .copied()
                .unwrap_or(0);
            if client + cost > limits.max_bytes_per_client {
                return Some(Refusal::ClientShare);
            }
            if self.agents_bytes + cost > limits.agents_max_bytes() {
                return Some(Refusal::AgentsShare);
            }
        }
        if self.total_bytes + cost > limits.max_bytes {
            return Some(Refusal::Total);
        }
        None
    }

    /// Holds one accepted write (already checked and, when persisted,
    /// already in the file); returns the agent's count in its session.
    pub fn add(&mut self, write: StoredWrite, at: Instant) -> usize {
        let cost = entry_cost(&write);
        self.total_bytes += cost;
        if !write.by_admin {
            self.agents_bytes += cost;
            *self
                .client_bytes
                .entry(write.client_id.clone())
                .or_default() += cost;
        }
        let session = self
            .sessions
            .entry(write.session_id)
            .or_insert_with(|| SessionMemories {
                by_agent: BTreeMap::new(),
                keys: HashMap::new(),
                entries: 0,
                bytes: 0,
                clients: HashMap::new(),
                last_write: at,
            });
        if let Some(key) = write.idempotency_key {
            let scope = (write.client_id.clone(), write.agent_id.clone(), key);
            session.keys.insert(scope, write.content_hash.clone());
        }
        session.entries += 1;
        session.bytes += cost;
        let usage = session.clients.entry(write.client_id.clone()).or_default();
        usage.entries += 1;
        usage.bytes += cost;
        if !write.by_admin {
            usage.agent_bytes += cost;
        }
        session.last_write = session.last_write.max(at);
        let entries = session.by_agent.entry(write.agent_id.clone()).or_default();
        entries.push(MemoryEntry {
            agent_id: write.agent_id,
            turn_id: write.turn_id,
            message: write.message,
            client_id: write.client_id,
            by_admin: write.by_admin,
            content_hash: write.content_hash,
        });
        entries.len()
    }

    /// Forgets one session (in the file too when persisted) and returns
    /// what it held, for the caller to drop once the lock is released: the
    /// work under the lock is one map removal and one charge per client.
    pub fn forget(&mut self, session_id: &str) -> Option<SessionMemories> {
        let session = self.sessions.remove(session_id)?;
        self.total_bytes -= session.bytes;
        for (client, usage) in &session.clients {
            if usage.agent_bytes == 0 {
                continue;
            }
            self.agents_bytes -= usage.agent_bytes;
            if let Some(held) = self.client_bytes.get_mut(client) {
                *held -= usage.agent_bytes;
                if *held == 0 {
                    self.client_bytes.remove(client);
                }
            }
        }
        if let Some(Err(error)) = self.file.as_ref().map(|file| file.forget(session_id)) {
            tracing::error!(%session_id, %error, "cannot forget a session in the memory file");
        }
        Some(session)
    }

    /// Forgets everything; returns what was held, to drop after the lock.
    pub fn clear(&mut self) -> BTreeMap<String, SessionMemories> {
        self.total_bytes = 0;
        self.agents_bytes = 0;
        self.client_bytes.clear();
        if let Some(Err(error)) = self.file.as_ref().map(MemoryFile::clear) {
            tracing::error!(%error, "cannot clear the memory file");
        }
        std::mem::take(&mut self.sessions)
    }

    /// Takes out the sessions whose last write is older than `retention`;
    /// returns them, to drop after the lock.
    pub fn prune(&mut self, now: Instant, retention: Duration) -> Vec<SessionMemories> {
        if now.duration_since(self.last_prune) < PRUNE_EVERY.min(retention) {
            return Vec::new();
        }
        self.last_prune = now;
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, session)| now.duration_since(session.last_write) >= retention)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|session_id| self.forget(session_id))
            .collect()
    }

    pub fn total_entries(&self) -> usize {
        self.sessions.values().map(|session| session.entries).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(session: usize, turn: usize) -> StoredWrite {
        StoredWrite {
            session_id: format!("session-{session}"),
            agent_id: "mole".into(),
            turn_id: turn as i64,
            message: String::new(),
            idempotency_key: Some(format!("session-{session}:{turn}")),
            client_id: "heistd".into(),
            by_admin: true,
            content_hash: "0".repeat(64),
            written_at_ms: 0,
        }
    }

    #[test]
    fn forgetting_a_session_among_100_000_keys_is_one_removal() {
        let mut memories = Memories::empty(None);
        let now = Instant::now();
        for session in 0..20 {
            for turn in 0..5_000 {
                memories.add(write(session, turn), now);
            }
        }
        let total = memories.total_bytes;
        let started = Instant::now();
        let forgotten = memories.forget("session-7").expect("held");
        let under_lock = started.elapsed();
        drop(forgotten);
        // It was 9-22 ms when every key of every session was walked.
        assert!(under_lock < Duration::from_millis(5), "{under_lock:?}");
        assert_eq!(memories.sessions.len(), 19);
        let seventh: usize = (0..5_000).map(|turn| entry_cost(&write(7, turn))).sum();
        assert_eq!(memories.total_bytes, total - seventh);
        // The other sessions' keys are still known.
        assert!(matches!(memories.seen(&write(8, 1)), Seen::Duplicate));
        assert!(matches!(memories.seen(&write(7, 1)), Seen::New));
    }
}
