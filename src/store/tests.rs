//! Tests of the audit store against real SQLite files.
use super::*;
use crate::config::Synchronous;

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
fn reopening_keeps_data_and_schema_version() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("audit.db");
    let session_id = {
        let store = Store::open(&path, Synchronous::Full).expect("open");
        let id = store.create_session(&new_session(9, 1)).expect("create");
        store.record_turn(&turn(&id, 1)).expect("turn");
        store
            .finish_session(&id, SessionStatus::Completed, None)
            .expect("finish");
        id
    };
    let store = Store::open(&path, Synchronous::Full).expect("reopen");
    let detail = store.session(&session_id).expect("detail");
    assert_eq!(detail.session.status, SessionStatus::Completed);
    assert_eq!(detail.session.status_text, "completed");
    assert!(detail.session.end_time.is_some());
    let version: i64 = store
        .lock()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
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
fn pruning_removes_old_ended_sessions_with_all_their_rows() {
    let (_directory, store) = open();
    let new = new_session(1, 1);
    let old = store.create_session(&new).expect("old");
    store.record_turn(&turn(&old, 1)).expect("turn");
    store
        .finish_session(&old, SessionStatus::Completed, None)
        .expect("finish");
    let active = store.create_session(&new).expect("active");
    store.record_turn(&turn(&active, 1)).expect("turn");
    let recent = store.create_session(&new).expect("recent");
    store
        .finish_session(&recent, SessionStatus::Completed, None)
        .expect("finish");
    // Everything ended before "tomorrow" is old; active sessions never are.
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        store.prune_sessions_before(tomorrow, 1).expect("prune"),
        1,
        "batch of one"
    );
    assert_eq!(store.prune_sessions_before(tomorrow, 10).expect("prune"), 1);
    assert_eq!(store.prune_sessions_before(tomorrow, 10).expect("prune"), 0);
    store.compact(64).expect("compact");
    assert!(matches!(
        store.session(&old),
        Err(StoreError::SessionNotFound(_))
    ));
    assert!(store.session(&active).is_ok(), "an active session is kept");
    let orphans: i64 = store
        .lock()
        .query_row(
            "SELECT (SELECT COUNT(*) FROM messages WHERE session_id = ?1) + (SELECT COUNT(*) FROM tool_usage WHERE session_id = ?1)
             + (SELECT COUNT(*) FROM outbox WHERE session_id = ?1) + (SELECT COUNT(*) FROM service_calls WHERE session_id = ?1)",
            [&old],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(orphans, 0);
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
fn a_prototype_database_is_adopted_and_its_sql_still_works() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("prototype.db");
    {
        let prototype = rusqlite::Connection::open(&path).expect("open");
        prototype
            .execute_batch(
                "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, start_time TEXT, end_time TEXT, num_turns INTEGER, status TEXT);
                 CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, turn_id INTEGER, agent_name TEXT,
                     agent_role TEXT, message TEXT, timestamp TEXT);
                 CREATE TABLE tool_usage (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, turn_id INTEGER, agent_name TEXT,
                     tool_name TEXT, tool_params TEXT, tool_result TEXT, timestamp TEXT, success BOOLEAN);
                 INSERT INTO sessions VALUES ('heist_20250101_120000', '2025-01-01T12:00:00', '2025-01-01T12:05:00', 1, 'completed');
                 INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp)
                     VALUES ('heist_20250101_120000', 1, 'planner', 'Mastermind', 'old words', '2025-01-01T12:00:01');",
            )
            .expect("prototype schema");
    }
    let store = Store::open(&path, Synchronous::Normal).expect("adopts the prototype's tables");
    let old = store
        .session("heist_20250101_120000")
        .expect("old session readable");
    assert_eq!(old.messages[0].message, "old words");
    let id = store
        .create_session(&new_session(3, 1))
        .expect("new sessions work");
    store.record_turn(&turn(&id, 1)).expect("and turns");
    let prototype_sql: i64 = store
        .lock()
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE session_id = ?1",
            [&id],
            |row| row.get(0),
        )
        .expect("the prototype's query");
    assert_eq!(prototype_sql, 1);
}

#[test]
fn a_second_writer_is_refused_until_the_first_closes() {
    let directory = tempfile::tempdir().expect("temp dir");
    let config = crate::config::StoreConfig {
        path: directory.path().join("audit.db"),
        synchronous: Synchronous::Normal,
        max_size_mb: 0,
        max_outage_ms: 1_000,
        ..crate::config::StoreConfig::default()
    };
    let first = Store::open_configured(&config).expect("first writer");
    let error = Store::open_configured(&config)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("in use by another heistd") && error.contains("POST /api/v1/runs"),
        "{error}"
    );
    drop(first);
    Store::open_configured(&config).expect("free again once the first is gone");
    // Readers (sessions, the test harness) need no lock.
    Store::open(&config.path, Synchronous::Normal).expect("a reader opens beside a writer");
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

#[tokio::test]
async fn a_lost_store_worker_is_a_worker_error() {
    let (_directory, store) = open();
    let handle = StoreHandle::from(store);
    let outcome: Result<(), StoreError> =
        handle.call(|_store| panic!("the store worker dies")).await;
    assert!(matches!(outcome, Err(StoreError::Worker(_))), "{outcome:?}");
    assert!(handle.is_usable().await, "the store outlives a lost worker");
}

#[tokio::test]
async fn the_handle_reaches_the_same_store() {
    let (_directory, store) = open();
    let handle = StoreHandle::from(store);
    let id = handle
        .create_session(new_session(4, 2))
        .await
        .expect("create");
    handle.record_turn(turn(&id, 1)).await.expect("turn");
    assert_eq!(handle.last_turn(&id).await.expect("last turn"), 1);
    let recent = handle.recent_turns(&id, 5).await.expect("recent");
    assert_eq!(recent.messages.len(), 1);
    assert_eq!(recent.tool_usage.len(), 1);
    assert!(handle
        .finish_session(&id, SessionStatus::Completed, None)
        .await
        .expect("finish"));
    let completed = handle
        .find_sessions(Some(SessionStatus::Completed), None, 10)
        .await
        .expect("find");
    assert_eq!(completed.len(), 1);
    assert_eq!(handle.pending_outbox_total().await.expect("outbox"), 1);
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
    assert_eq!(messages[0].prompt_tokens, Some(120));
    assert_eq!(messages[0].completion_tokens, Some(30));
    assert_eq!(messages[0].finish_reason.as_deref(), Some("stop"));
    assert!(!messages[0].trimmed);
    assert_eq!(messages[1].prompt_tokens, None);
    assert_eq!(messages[1].finish_reason.as_deref(), Some("length"));
    assert!(messages[1].trimmed);
}

#[tokio::test]
async fn a_configured_handle_reads_sessions_through_a_connection_that_cannot_write() {
    let directory = tempfile::tempdir().expect("temp dir");
    let config = crate::config::StoreConfig {
        path: directory.path().join("audit.db"),
        synchronous: Synchronous::Normal,
        ..crate::config::StoreConfig::default()
    };
    let handle = StoreHandle::open_configured(&config, &crate::config::ClusterConfig::default())
        .await
        .expect("open");
    assert!(handle.reads_refuse_writes().await);
    let id = handle
        .create_session(new_session(4, 2))
        .await
        .expect("create");
    handle.record_turn(turn(&id, 1)).await.expect("turn");
    // The reader sees what the writer committed, at once.
    let detail = handle.session(&id).await.expect("detail");
    assert_eq!(detail.messages.len(), 1);
    let active = handle
        .find_sessions(Some(SessionStatus::Active), None, 10)
        .await
        .expect("find");
    assert_eq!(active.len(), 1);
}

#[test]
fn a_commit_batch_is_one_transaction_and_a_refused_turn_fails_alone() {
    use super::group_commit::{write_batch, Pending};
    let (_directory, store) = open();
    let active = store.create_session(&new_session(1, 5)).expect("session");
    let ended = store.create_session(&new_session(2, 5)).expect("session");
    store
        .finish_session(&ended, SessionStatus::Completed, None)
        .expect("end");
    let batch: Vec<Pending> = [
        turn(&active, 1),
        turn(&ended, 1),
        turn(&active, 2),
        // A duplicate of turn 1: refused by the unique key.
        turn(&active, 1),
        turn(&active, 3),
    ]
    .into_iter()
    .map(|turn| Pending {
        turn,
        owed: 0,
        outcome: super::group_commit::Reply::Slot(Default::default()),
    })
    .collect();
    let outcomes = write_batch(&mut store.lock(), &batch, &[]).outcomes;
    let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
    assert_eq!(failed, [false, true, false, true, false], "{outcomes:?}");
    assert!(matches!(outcomes[1], Err(StoreError::SessionEnded { .. })));
    let detail = store.session(&active).expect("detail");
    assert_eq!(detail.session.num_turns, 3);
    let turns: Vec<u32> = detail
        .messages
        .iter()
        .map(|message| message.turn_id as u32)
        .collect();
    assert_eq!(turns, [1, 2, 3]);
    assert_eq!(detail.tool_usage.len(), 3);
    assert_eq!(store.last_turn(&ended).expect("turns"), 0);
}

#[test]
fn a_commit_reads_back_its_sessions_pending_writes_and_writes_the_queued_marks() {
    let (_directory, store) = open();
    let session = store.create_session(&new_session(1, 5)).expect("session");
    let first = store.commit_turn(turn(&session, 1), 64).expect("turn 1");
    assert_eq!(
        first.iter().map(|entry| entry.turn_id).collect::<Vec<_>>(),
        [1]
    );
    store.queue_delivered(first[0].id);
    let transactions = store.commit_counts().0;
    // Turn 2's transaction writes turn 1's mark before reading back.
    let second = store.commit_turn(turn(&session, 2), 64).expect("turn 2");
    assert_eq!(
        second.iter().map(|entry| entry.turn_id).collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(store.commit_counts().0, transactions + 1);
    assert!(store.take_marks().is_empty());
    assert_eq!(store.outbox_counts(&session).expect("counts"), (1, 2));
    // Asked for none, a commit reads none back.
    assert!(store
        .commit_turn(turn(&session, 3), 0)
        .expect("turn 3")
        .is_empty());
}

#[test]
fn a_mark_queued_while_the_connection_is_busy_is_written_by_its_next_use() {
    let (_directory, store) = open();
    let session = store.create_session(&new_session(1, 5)).expect("session");
    let owed = store.commit_turn(turn(&session, 1), 64).expect("turn");
    let connection = store.connection.lock();
    store.queue_delivered(owed[0].id);
    assert!(store.connection_busy());
    drop(connection);
    // The next use of the connection writes it before it reads.
    assert!(store.pending_outbox(&session, 64).expect("read").is_empty());
    assert!(store.take_marks().is_empty());
}

#[test]
fn a_clean_close_writes_the_marks_still_queued() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("audit.db");
    let store = Store::open(&path, Synchronous::Full).expect("open");
    let session = store.create_session(&new_session(1, 5)).expect("session");
    let owed = store.commit_turn(turn(&session, 1), 64).expect("turn");
    store.queue_delivered(owed[0].id);
    drop(store);
    let store = Store::open(&path, Synchronous::Full).expect("reopen");
    assert_eq!(store.outbox_counts(&session).expect("counts"), (1, 1));
}

#[test]
fn turns_queued_behind_a_commit_share_the_next_transaction() {
    assert_eq!(queue_eight_turns_behind_a_commit(true), (1, 8));
    // store.group_commit = false: one transaction per turn.
    assert_eq!(queue_eight_turns_behind_a_commit(false), (8, 8));
}

/// Holds the connection as a commit in flight would, queues one turn of
/// each of eight sessions behind it, lets go, and returns the store's
/// (transactions, turns) once all eight are committed.
fn queue_eight_turns_behind_a_commit(group_commit: bool) -> (u64, u64) {
    let (_directory, mut store) = open();
    store.commits.enabled = group_commit;
    let store = std::sync::Arc::new(store);
    let sessions: Vec<String> = (0..8)
        .map(|seed| {
            store
                .create_session(&new_session(seed, 1))
                .expect("session")
        })
        .collect();
    let connection = store.lock();
    let threads: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| {
            let store = store.clone();
            std::thread::spawn(move || store.record_turn(&turn(&session, 1)))
        })
        .collect();
    if group_commit {
        while store.commits.pending.lock().len() < sessions.len() {
            std::thread::yield_now();
        }
    }
    drop(connection);
    for thread in threads {
        thread.join().expect("thread").expect("committed");
    }
    for session in &sessions {
        assert_eq!(store.last_turn(session).expect("turns"), 1);
    }
    store.commit_counts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_callers_share_transactions_and_each_gets_its_outcome() {
    let (_directory, store) = open();
    let store = std::sync::Arc::new(store);
    let ended = store.create_session(&new_session(99, 5)).expect("session");
    store
        .finish_session(&ended, SessionStatus::Completed, None)
        .expect("end");
    let sessions: Vec<String> = (0..16)
        .map(|seed| {
            store
                .create_session(&new_session(seed, 10))
                .expect("session")
        })
        .collect();
    let handle = StoreHandle::from(store.clone());
    // Held as a commit in flight would: the first turns queue behind it.
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = {
        let store = store.clone();
        std::thread::spawn(move || {
            let _connection = store.connection.lock();
            locked.send(()).expect("send");
            released.recv().expect("released");
        })
    };
    is_locked.recv().expect("the connection is held");
    let tasks: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| {
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut owed = Vec::new();
                for turn_id in 1..=10 {
                    owed = handle
                        .record_turn_owing(turn(&session, turn_id), 64)
                        .await
                        .expect("commit")
                        .expect("SQLite reads the outbox back");
                }
                owed.len()
            })
        })
        .collect();
    queued_within_a_minute(|| store.commits.pending.lock().len() == sessions.len()).await;
    release.send(()).expect("release");
    holder.join().expect("holder");
    for task in tasks {
        // Each session's ten writes, all pending, read back by its last commit.
        assert_eq!(task.await.expect("task"), 10);
    }
    let refused = handle.record_turn_owing(turn(&ended, 1), 64).await;
    assert!(
        matches!(refused, Err(StoreError::SessionEnded { .. })),
        "{refused:?}"
    );
    for session in &sessions {
        assert_eq!(store.last_turn(session).expect("turns"), 10);
    }
    let (transactions, turns) = store.commit_counts();
    assert_eq!(turns, 160);
    assert!(transactions < turns, "{transactions} transactions");
    // The commit task lets go once the queue is empty, so the next caller
    // starts one.
    queued_within_a_minute(|| !commit_task_running(&store)).await;
}

fn commit_task_running(store: &Store) -> bool {
    store
        .commits
        .draining
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// Yields until `done` holds; a test fails rather than hangs if it never
/// does.
async fn queued_within_a_minute(mut done: impl FnMut() -> bool) {
    let wait = async {
        while !done() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), wait)
        .await
        .expect("the condition never held");
}

#[test]
fn marks_queued_before_a_refused_turn_are_still_written() {
    let (_directory, store) = open();
    let session = store.create_session(&new_session(1, 5)).expect("session");
    let owed = store.commit_turn(turn(&session, 1), 64).expect("turn 1");
    store.queue_delivered(owed[0].id);
    // A duplicate of turn 1: refused, in a transaction that carries the mark.
    let refused = store.commit_turn(turn(&session, 1), 64);
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(store.outbox_counts(&session).expect("counts"), (1, 1));
}

#[tokio::test]
async fn a_mark_left_for_later_is_written_by_the_sessions_next_commit_or_its_end() {
    let (_directory, store) = open();
    let store = std::sync::Arc::new(store);
    let handle = StoreHandle::from(store.clone());
    let session = store.create_session(&new_session(1, 2)).expect("session");
    let owed = handle
        .record_turn_owing(turn(&session, 1), 64)
        .await
        .expect("turn 1")
        .expect("read back");
    // The commit task may make one more pass (which writes marks) after
    // answering; the mark is queued once it has let go.
    queued_within_a_minute(|| !commit_task_running(&store)).await;
    handle
        .mark_outbox_delivered_later(owed[0].id)
        .await
        .expect("mark");
    assert_eq!(
        store.commits.delivered.lock().len(),
        1,
        "queued, not written"
    );
    let transactions = store.commit_counts().0;
    let owed = handle
        .record_turn_owing(turn(&session, 2), 64)
        .await
        .expect("turn 2")
        .expect("read back");
    // Turn 1's mark went into turn 2's transaction, before the read.
    assert_eq!(store.commit_counts().0, transactions + 1);
    assert_eq!(
        owed.iter().map(|entry| entry.turn_id).collect::<Vec<_>>(),
        [2]
    );
    handle
        .mark_outbox_delivered_later(owed[0].id)
        .await
        .expect("mark");
    handle
        .finish_session(&session, SessionStatus::Completed, None)
        .await
        .expect("end");
    assert!(store.commits.delivered.lock().is_empty());
    assert_eq!(store.outbox_counts(&session).expect("counts"), (2, 2));
}

#[test]
fn concurrent_sessions_commit_every_turn_exactly_once() {
    let (_directory, store) = open();
    let store = std::sync::Arc::new(store);
    let sessions: Vec<String> = (0..16)
        .map(|seed| {
            store
                .create_session(&new_session(seed, 20))
                .expect("session")
        })
        .collect();
    let threads: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| {
            let store = store.clone();
            std::thread::spawn(move || {
                for turn_id in 1..=20 {
                    store.record_turn(&turn(&session, turn_id)).expect("commit");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    for session in &sessions {
        let detail = store.session(session).expect("detail");
        let turns: Vec<i64> = detail
            .messages
            .iter()
            .map(|message| message.turn_id)
            .collect();
        assert_eq!(turns, (1..=20).collect::<Vec<i64>>());
        assert_eq!(detail.session.num_turns, 20);
    }
    assert_eq!(store.commit_counts().1, 16 * 20);
}

#[test]
fn outbox_marks_leave_the_store_at_the_synchronous_level_turns_need() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&directory.path().join("audit.db"), Synchronous::Full).expect("open");
    let session = store.create_session(&new_session(1, 3)).expect("session");
    store.record_turn(&turn(&session, 1)).expect("turn 1");
    store.record_turn(&turn(&session, 2)).expect("turn 2");
    let pending = store.pending_outbox(&session, 10).expect("outbox");
    store
        .mark_outbox_delivered(pending[0].id)
        .expect("delivered");
    store
        .mark_outbox_failed(pending[1].id, "down")
        .expect("failed");
    let level: i64 = store
        .lock()
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .expect("pragma");
    assert_eq!(level, 2, "FULL again after the marks");
    assert_eq!(store.pending_outbox(&session, 10).expect("outbox").len(), 1);
    store
        .record_turn(&turn(&session, 3))
        .expect("turn 3 commits");
    let (_normal_directory, normal) = open();
    let normal_session = normal.create_session(&new_session(2, 1)).expect("session");
    normal.record_turn(&turn(&normal_session, 1)).expect("turn");
    let entry = normal.pending_outbox(&normal_session, 1).expect("outbox")[0].id;
    normal.mark_outbox_delivered(entry).expect("delivered");
    let level: i64 = normal
        .lock()
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .expect("pragma");
    assert_eq!(level, 1, "a NORMAL store stays NORMAL");
}

#[test]
fn one_task_of_a_process_delivers_a_sessions_outbox_at_a_time() {
    let (_directory, store) = open();
    let handle = StoreHandle::from(store);
    let clone = handle.clone();
    let first = handle.begin_delivery("s1").expect("free");
    assert!(
        clone.begin_delivery("s1").is_none(),
        "a clone sees it taken"
    );
    let other = clone.begin_delivery("s2");
    assert!(other.is_some(), "another session is free");
    drop(first);
    assert!(clone.begin_delivery("s1").is_some(), "free again once done");
}
