//! Outbox marks: queued while the connection is busy, written on a clean
//! close, and never leaving the store below the level turns need.
use super::*;

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
