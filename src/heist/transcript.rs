//! The recent transcript a prompt shows: the last `heist.context_messages`
//! successful turns of a session with their tool results (cut to
//! [`CONTEXT_RESULT_CHARS`]), oldest first. The session loop reads it from
//! the store on a session's first turn and on resume, and then keeps it
//! here from each commit, so a turn does not read it back every time.
//!
//! Plain data: it never reads the store itself (the session loop does) and
//! never builds a prompt (that is `prompt`).

use std::collections::VecDeque;

use super::CONTEXT_RESULT_CHARS;
use crate::store::{RecentTurns, TurnRecord};

/// One earlier turn as the prompt shows it: its line, and its tool results.
#[derive(Debug, Clone)]
pub(super) struct TranscriptEntry {
    pub line: String,
    pub results: Vec<String>,
}

/// The session's recent transcript as the runner keeps it between turns.
#[derive(Debug)]
pub(super) struct TranscriptCache {
    /// Whose transcript this is: a runner that plays another session reads
    /// that one from the store.
    session_id: String,
    entries: VecDeque<TranscriptEntry>,
}

impl TranscriptCache {
    /// The transcript of `session_id` as the store returned it.
    pub fn from_recent(session_id: &str, recent: &RecentTurns) -> Self {
        let entries = recent
            .messages
            .iter()
            .map(|message| {
                let tools = recent
                    .tool_usage
                    .iter()
                    .filter(|tool| tool.turn_id == message.turn_id)
                    .map(|tool| ToolShown {
                        name: &tool.tool_name,
                        success: tool.success,
                        result: &tool.tool_result,
                        error: tool.error.as_deref(),
                    });
                transcript_entry(
                    &message.agent_name,
                    &message.agent_role,
                    message.turn_id,
                    &message.message,
                    tools,
                )
            })
            .collect();
        Self {
            session_id: session_id.to_string(),
            entries,
        }
    }

    /// The entries, oldest first, when this is `session_id`'s transcript.
    pub fn entries_of(&self, session_id: &str) -> Option<Vec<TranscriptEntry>> {
        (self.session_id == session_id).then(|| self.entries.iter().cloned().collect())
    }

    /// Adds a committed turn of this session, as the store would return
    /// it: failed turns are left out, and only the last `keep` turns stay.
    pub fn remember(&mut self, record: &TurnRecord, keep: usize) {
        if record.session_id != self.session_id || record.error.is_some() {
            return;
        }
        let tools = record.tool_calls.iter().map(|call| ToolShown {
            name: &call.tool_name,
            success: call.success,
            result: &call.tool_result,
            error: call.error.as_deref(),
        });
        self.entries.push_back(transcript_entry(
            &record.agent_name,
            &record.agent_role,
            i64::from(record.turn_id),
            &record.message,
            tools,
        ));
        while self.entries.len() > keep {
            self.entries.pop_front();
        }
    }
}

/// A tool call as an earlier turn's transcript shows it.
struct ToolShown<'a> {
    name: &'a str,
    success: bool,
    result: &'a str,
    error: Option<&'a str>,
}

/// One earlier turn as the transcript shows it, from the store's rows or
/// from the record just committed (the same text either way).
fn transcript_entry<'a>(
    agent_name: &str,
    agent_role: &str,
    turn_id: i64,
    message: &str,
    tools: impl Iterator<Item = ToolShown<'a>>,
) -> TranscriptEntry {
    TranscriptEntry {
        line: format!(
            "{agent_name} ({agent_role}), turn {turn_id}: {}",
            message.trim()
        ),
        results: tools
            .map(|tool| {
                let shown = if tool.success {
                    tool.result
                } else {
                    tool.error.unwrap_or("failed")
                };
                let cut: String = shown.chars().take(CONTEXT_RESULT_CHARS).collect();
                format!("[{} result: {}]", tool.name, cut.replace('\n', " "))
            })
            .collect(),
    }
}
