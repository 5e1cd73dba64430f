//! Tests of the SQLite backend against real SQLite files, by concern; the
//! fixtures they share are here.
use super::*;
use crate::config::Synchronous;
use crate::store::*;

mod commit_delay;
mod group_commit;
mod handle;
mod maintenance;
mod outbox;
mod sessions;

/// What a SQLite commit owes, which it always reads back.
pub(super) trait ReadBack {
    fn read_back(self) -> Vec<OutboxEntry>;
}

impl ReadBack for Owed {
    fn read_back(self) -> Vec<OutboxEntry> {
        match self {
            Owed::Entries(entries) => entries,
            Owed::ClaimFirst => panic!("SQLite reads the outbox back in the commit"),
        }
    }
}

pub(super) fn open() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&directory.path().join("audit.db"), Synchronous::Normal).expect("open");
    (directory, store)
}

pub(super) fn new_session(seed: u64, planned_turns: u32) -> NewSession {
    NewSession {
        scenario: "bank".into(),
        seed,
        planned_turns,
        schedule: None,
        scheduled_time: None,
    }
}

pub(super) fn turn(session_id: &str, turn_id: u32) -> TurnRecord {
    TurnRecord {
        session_id: session_id.into(),
        turn_id,
        agent_name: "hacker".into(),
        agent_role: "Hacker".into(),
        message: format!("message {turn_id}"),
        error: None,
        tool_calls: vec![ToolCallRecord {
            tool_name: "calculator".into(),
            tool_params: "1+1".into(),
            tool_result: "2".into(),
            success: true,
            error: None,
            duration_ms: 1.0,
        }],
        memory_payload: Some("{}".into()),
        service_calls: vec![ServiceCallRecord {
            service: "calculator".into(),
            operation: "tools/calculator".into(),
            attempts: 2,
            outcome: "success".into(),
            last_error: None,
            duration_ms: 120.0,
        }],
        prompt_tokens: Some(120),
        completion_tokens: Some(30),
        finish_reason: Some("stop".into()),
        trimmed: false,
    }
}
