//! The records the store's tests write: one session and one whole turn
//! (a message, a tool call, a memory write and a service call), shared by
//! the SQLite unit tests (`store::sqlite::tests`) and the contract suite
//! that runs on both backends (`tests/it/store_contract.rs`, which
//! includes this file by path), so both write the same rows. It names
//! the record types through `super`, which is `store` in the library and
//! the contract suite's module in the tests.

use super::{NewSession, ServiceCallRecord, ToolCallRecord, TurnRecord, TurnUsage};

/// A new session of the built-in scenario, unscheduled.
pub fn new_session(seed: u64, planned_turns: u32) -> NewSession {
    NewSession {
        scenario: "bank".into(),
        seed,
        planned_turns,
        schedule: None,
        scheduled_time: None,
        trigger: None,
    }
}

/// Turn `turn_id` of `session_id`: the hacker's message, one calculator
/// call, its memory write and a retried calculator call.
pub fn turn(session_id: &str, turn_id: u32) -> TurnRecord {
    TurnRecord {
        session_id: session_id.into(),
        turn_id,
        agent_name: "hacker".into(),
        agent_role: "Hacker".into(),
        message: format!("message {turn_id}"),
        error: None,
        prompt_tokens: Some(100 + turn_id),
        completion_tokens: Some(20),
        finish_reason: Some("stop".into()),
        trimmed: turn_id.is_multiple_of(2),
        endpoint: Some("127.0.0.1:8006".into()),
        model: Some(
            if turn_id == 3 {
                "fallback-model"
            } else {
                "rehearsal"
            }
            .into(),
        ),
        fallback: turn_id == 3,
        usage: TurnUsage {
            prompt_tokens: 100 + turn_id,
            completion_tokens: 20,
            estimated: false,
            cost: None,
        },
        tool_calls: vec![ToolCallRecord {
            tool_name: "calculator".into(),
            tool_params: "1+1".into(),
            tool_result: "2".into(),
            success: true,
            error: None,
            duration_ms: 1.0,
        }],
        memory_payload: Some(format!("{{\"turn\":{turn_id}}}")),
        service_calls: vec![ServiceCallRecord {
            service: "calculator".into(),
            operation: "tools/calculator".into(),
            attempts: 2,
            outcome: "success".into(),
            last_error: None,
            duration_ms: 120.0,
        }],
    }
}
