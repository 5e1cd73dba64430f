//! The SQLite backend through the handle: the blocking pool, the reader
//! connection, and this process's outbox deliveries.
use super::*;

#[tokio::test]
async fn a_lost_store_worker_is_a_worker_error() {
    let (_directory, store) = open();
    let handle = StoreHandle::from_sqlite(store);
    let outcome: Result<(), StoreError> = handle
        .sqlite()
        .run(|_store| panic!("the store worker dies"))
        .await;
    assert!(matches!(outcome, Err(StoreError::Worker(_))), "{outcome:?}");
    assert!(handle.is_usable().await, "the store outlives a lost worker");
}

#[tokio::test]
async fn the_handle_reaches_the_same_store() {
    let (_directory, store) = open();
    let handle = StoreHandle::from_sqlite(store);
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
    assert!(handle.sqlite().reads_refuse_writes().await);
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
fn one_task_of_a_process_delivers_a_sessions_outbox_at_a_time() {
    let (_directory, store) = open();
    let handle = StoreHandle::from_sqlite(store);
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
