//! The memory companion's bodies, as heistd's memory client sends and
//! reads them and as the memory service reads and answers them (the
//! prototype's field names: `game_session_id`, and both `summary` and
//! `compressed_summary` in a compressed memory, since the prototype's
//! client reads the latter). It holds the shapes only.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The token budget of a compressed-memory request that names none.
pub const DEFAULT_MEMORY_MAX_TOKENS: usize = 500;
/// The memories quoted word for word when a request names no number.
pub const DEFAULT_MEMORY_RECENT_COUNT: usize = 3;

/// One `store_memory` body; heistd's outbox keeps it as JSON until it is
/// delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryWrite {
    pub agent_id: String,
    pub turn_id: i64,
    pub message: String,
    pub game_session_id: String,
}

impl MemoryWrite {
    /// SHA-256 (hex) of the write's canonical content: each field as its
    /// byte length (8 bytes, big-endian) then its bytes, in the order
    /// session, agent, turn (decimal), message. The memory service keeps
    /// it per entry and compares it when an `Idempotency-Key` comes again;
    /// heistd computes it from its outbox to reconcile content, not counts.
    pub fn content_hash(&self) -> String {
        let mut hasher = Sha256::new();
        let turn = self.turn_id.to_string();
        for field in [
            self.game_session_id.as_bytes(),
            self.agent_id.as_bytes(),
            turn.as_bytes(),
            self.message.as_bytes(),
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        // Hex into one string: a `format!` per byte cost nearly as many
        // instructions as the hash itself (callgrind on the turns bench,
        // 40.8 M against 48.5 M).
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(digest.len() * 2);
        for byte in digest {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

/// One `get_compressed_memory` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressedMemoryRequest {
    pub agent_id: String,
    pub game_session_id: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// The latest memories quoted word for word; older ones are cut to
    /// their first sentence.
    #[serde(default = "default_recent_count")]
    pub recent_count: usize,
}

/// The compressed memory itself, under both names it goes by: newer
/// clients read `summary`, the prototype's `compressed_summary`. heistd's
/// client reads only this part of the reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CompressedSummary {
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub compressed_summary: Option<String>,
}

/// The memory service's whole answer to `get_compressed_memory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressedMemoryReply {
    pub status: String,
    pub agent_id: String,
    pub game_session_id: String,
    #[serde(flatten)]
    pub summary: CompressedSummary,
    /// The agent's memories in the session.
    pub memories_count: usize,
    /// How many of them are cut to their first sentence.
    pub compressed_count: usize,
    pub estimated_tokens: usize,
}

/// `GET /sessions/{id}/count` (heistd's addition, `memory:admin`): how many
/// writes the service holds for a session. heistd reads only `count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCountReply {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub game_session_id: String,
    pub count: u64,
}

/// `GET /sessions/{id}/digest` (heistd's addition, `memory:admin`): the
/// entries of a session written by the calling client (no other client's),
/// each with its content hash ([`MemoryWrite::content_hash`]), so heistd
/// compares what the service holds of its writes with what it delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionDigestReply {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub game_session_id: String,
    /// The client whose entries these are (the token's `sub`).
    #[serde(default)]
    pub client_id: String,
    pub entries: Vec<EntryDigest>,
}

/// One entry of a [`SessionDigestReply`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryDigest {
    pub agent_id: String,
    pub turn_id: i64,
    pub hash: String,
}

impl CompressedSummary {
    /// `text` under both names.
    pub fn new(text: String) -> Self {
        Self {
            summary: Some(text.clone()),
            compressed_summary: Some(text),
        }
    }

    /// The text, under whichever name the service used.
    pub fn into_text(self) -> String {
        self.summary.or(self.compressed_summary).unwrap_or_default()
    }
}

fn default_max_tokens() -> usize {
    DEFAULT_MEMORY_MAX_TOKENS
}

fn default_recent_count() -> usize {
    DEFAULT_MEMORY_RECENT_COUNT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_hash_covers_every_field_and_cannot_be_shifted() {
        let write = |agent: &str, turn: i64, message: &str, session: &str| MemoryWrite {
            agent_id: agent.into(),
            turn_id: turn,
            message: message.into(),
            game_session_id: session.into(),
        };
        let base = write("mole", 1, "In.", "s1").content_hash();
        // Pinned (Python's hashlib over the same length-prefixed fields), so
        // a file written by one build compares with the next.
        assert_eq!(
            base,
            "2ba1b30d4fc98f88bbc5f8272ffe53b5db8af1bd43384badb907330578d7300a"
        );
        assert_eq!(base, write("mole", 1, "In.", "s1").content_hash());
        for other in [
            write("mole", 2, "In.", "s1"),
            write("mole", 1, "In!", "s1"),
            write("mol", 1, "eIn.", "s1"),
            write("mole", 1, "In.", "s2"),
        ] {
            assert_ne!(base, other.content_hash(), "{other:?}");
        }
    }

    #[test]
    fn the_summary_goes_out_under_both_names_and_reads_from_either() {
        let reply = CompressedMemoryReply {
            status: "success".into(),
            agent_id: "planner".into(),
            game_session_id: "heist_1".into(),
            summary: CompressedSummary::new("We go at dawn.".into()),
            memories_count: 1,
            compressed_count: 0,
            estimated_tokens: 4,
        };
        let json = serde_json::to_value(&reply).expect("json");
        assert_eq!(json["summary"], "We go at dawn.");
        assert_eq!(json["compressed_summary"], "We go at dawn.");
        assert_eq!(json["memories_count"], 1);
        let prototype: CompressedSummary =
            serde_json::from_str(r#"{"status": "success", "compressed_summary": "Earlier."}"#)
                .expect("parses");
        assert_eq!(prototype.into_text(), "Earlier.");
        let request: CompressedMemoryRequest =
            serde_json::from_str(r#"{"agent_id": "planner", "game_session_id": "heist_1"}"#)
                .expect("parses");
        assert_eq!(
            (request.max_tokens, request.recent_count),
            (DEFAULT_MEMORY_MAX_TOKENS, DEFAULT_MEMORY_RECENT_COUNT)
        );
    }
}
