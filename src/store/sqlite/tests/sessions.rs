//! Sessions and their turns: ids, endings, schedules, statuses, and what a
//! committed turn reads back as.
use super::*;

#[test]
fn session_ids_are_unique_within_one_second() {
    let (_directory, store) = open();
    let new = new_session(1, 3);
    let ids: std::collections::HashSet<String> = (0..200)
        .map(|_| store.create_session(&new).expect("create"))
        .collect();
    assert_eq!(ids.len(), 200);
    assert!(ids
        .iter()
        .all(|id| id.starts_with("heist_") && id.len() == "heist_20260101_000000_00000000".len()));
}

#[test]
fn a_turn_commits_whole_or_not_at_all() {
    let (_directory, store) = open();
    let session_id = store.create_session(&new_session(1, 3)).expect("create");
    store.record_turn(&turn(&session_id, 1)).expect("first");
    // Recording turn 1 again violates the unique (session, turn) index
    // after its message insert; nothing of the second attempt may remain.
    assert!(store.record_turn(&turn(&session_id, 1)).is_err());
    let detail = store.session(&session_id).expect("detail");
    assert_eq!(detail.messages.len(), 1);
    assert_eq!(detail.tool_usage.len(), 1);
    assert_eq!(
        detail.service_calls.len(),
        1,
        "the failed retry left no service call behind"
    );
    assert_eq!(
        store.pending_outbox(&session_id, 10).expect("outbox").len(),
        1
    );
    assert_eq!(detail.session.num_turns, 1);
}

#[test]
fn failed_turns_are_not_context() {
    let (_directory, store) = open();
    let session_id = store.create_session(&new_session(1, 3)).expect("create");
    store.record_turn(&turn(&session_id, 1)).expect("turn 1");
    let mut failed = turn(&session_id, 2);
    failed.message = String::new();
    failed.error = Some("llm: timed out".into());
    store.record_turn(&failed).expect("turn 2");
    let context = store.recent_messages(&session_id, 5).expect("context");
    assert_eq!(
        context.iter().map(|row| row.turn_id).collect::<Vec<_>>(),
        [1]
    );
}

#[test]
fn unknown_session_is_an_error() {
    let (_directory, store) = open();
    assert!(matches!(
        store.session("heist_nope"),
        Err(StoreError::SessionNotFound(_))
    ));
    assert!(matches!(
        store.finish_session("heist_nope", SessionStatus::Failed, None),
        Err(StoreError::SessionNotFound(_))
    ));
}

#[test]
fn a_schedule_slot_runs_once() {
    let (_directory, store) = open();
    let slot = NewSession {
        scenario: "bank".into(),
        seed: 1,
        planned_turns: 1,
        schedule: Some("nightly".into()),
        scheduled_time: Some("2026-11-24T02:00:00+00:00".into()),
        trigger: None,
    };
    store.create_session(&slot).expect("first");
    assert!(matches!(
        store.create_session(&slot),
        Err(StoreError::DuplicateRun { .. })
    ));
    assert_eq!(
        store
            .last_scheduled_time("nightly")
            .expect("last")
            .as_deref(),
        Some("2026-11-24T02:00:00+00:00")
    );
}

#[test]
fn a_session_keeps_its_first_ending() {
    let (_directory, store) = open();
    let id = store.create_session(&new_session(1, 1)).expect("create");
    store
        .finish_session(&id, SessionStatus::Completed, None)
        .expect("complete");
    store
        .finish_session(&id, SessionStatus::Interrupted, Some("late"))
        .expect("a no-op, not an error");
    let session = store.session(&id).expect("session").session;
    assert_eq!(session.status, SessionStatus::Completed);
    assert_eq!(session.failure_reason, None);
}

#[test]
fn an_unknown_status_reads_back_unchanged() {
    let (_directory, store) = open();
    store
        .lock()
        .execute(
            "INSERT INTO sessions (session_id, start_time, num_turns, status) VALUES ('heist_foreign', '2025-01-01T12:00:00', 0, 'paused')",
            [],
        )
        .expect("a status heistd never writes");
    let session = store.session("heist_foreign").expect("readable").session;
    assert_eq!(session.status, SessionStatus::Unknown);
    assert_eq!(session.status_text, "paused");
    let json = serde_json::to_value(&session).expect("serialises");
    assert_eq!(json["status"], "paused", "the JSON keeps the stored text");
    let listed = store.list_sessions(10).expect("listed");
    assert_eq!(listed[0].status_text, "paused");
    assert!(store
        .find_sessions(Some(SessionStatus::Active), None, 10)
        .expect("filtered")
        .is_empty());
}

#[test]
fn a_known_status_serialises_as_before() {
    let (_directory, store) = open();
    let id = store.create_session(&new_session(1, 1)).expect("create");
    let session = store.session(&id).expect("session").session;
    assert_eq!(session.status, SessionStatus::Active);
    let json = serde_json::to_string(&session).expect("serialises");
    assert!(
        json.contains(r#""num_turns":0,"status":"active","seed":1"#),
        "{json}"
    );
}

#[test]
fn a_messages_token_counts_finish_reason_and_trim_flag_read_back() {
    let (_directory, store) = open();
    let session_id = store.create_session(&new_session(1, 3)).expect("create");
    store.record_turn(&turn(&session_id, 1)).expect("turn 1");
    let mut cut = turn(&session_id, 2);
    cut.prompt_tokens = None;
    cut.completion_tokens = None;
    cut.finish_reason = Some("length".into());
    cut.trimmed = true;
    store.record_turn(&cut).expect("turn 2");
    let messages = store.session(&session_id).expect("session").messages;
    assert_eq!(messages[0].prompt_tokens, Some(101));
    assert_eq!(messages[0].completion_tokens, Some(20));
    assert_eq!(messages[0].finish_reason.as_deref(), Some("stop"));
    assert!(!messages[0].trimmed);
    assert_eq!(messages[1].prompt_tokens, None);
    assert_eq!(messages[1].finish_reason.as_deref(), Some("length"));
    assert!(messages[1].trimmed);
}
