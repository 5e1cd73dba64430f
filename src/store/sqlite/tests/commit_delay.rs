//! Tests of `store.commit_delay_ms` on paused time: a batch waits for the
//! turns of the other sessions in play, and never longer than the delay.
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{new_session, open, turn};
use crate::store::sqlite::Store;
use crate::store::StoreHandle;

const DELAY: Duration = Duration::from_millis(50);

/// A store whose batches wait up to `delay`, and `count` sessions on it.
fn store_with_sessions(
    count: u64,
    delay: Duration,
) -> (tempfile::TempDir, Arc<Store>, Vec<String>) {
    let (directory, mut store) = open();
    store.commits.delay = delay;
    let sessions = (0..count)
        .map(|seed| {
            store
                .create_session(&new_session(seed, 5))
                .expect("session")
        })
        .collect();
    (directory, Arc::new(store), sessions)
}

/// Commits turn 1 of `session` in a task; it answers with when it returned.
fn commit_first_turn(store: &Arc<Store>, session: &str) -> tokio::task::JoinHandle<Instant> {
    let handle = StoreHandle::from_sqlite(store.clone());
    let session = session.to_string();
    tokio::spawn(async move {
        handle
            .record_turn_owing(turn(&session, 1), 8)
            .await
            .expect("commit");
        Instant::now()
    })
}

/// Starts committing turn 1 of `session`, and checks it is still waiting
/// a fifth of [`DELAY`] later, nothing committed.
async fn still_waiting_after_a_fifth(
    store: &Arc<Store>,
    session: &str,
) -> tokio::task::JoinHandle<Instant> {
    let first = commit_first_turn(store, session);
    tokio::time::sleep(DELAY / 5).await;
    assert!(!first.is_finished(), "committed without waiting");
    assert_eq!(store.commit_counts(), (0, 0));
    first
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_for_the_other_session_in_play_and_goes_when_its_turn_comes() {
    let (_directory, store, sessions) = store_with_sessions(2, DELAY);
    let _first_in_play = store.in_play();
    let _second_in_play = store.in_play();
    let started = Instant::now();
    let first = still_waiting_after_a_fifth(&store, &sessions[0]).await;
    let second = commit_first_turn(&store, &sessions[1]);
    let (first, second) = (first.await.expect("first"), second.await.expect("second"));
    // Both in one transaction, as soon as the second was queued.
    assert_eq!(store.commit_counts(), (1, 2));
    assert_eq!(first - started, DELAY / 5);
    assert_eq!(second - started, DELAY / 5);
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_no_longer_than_the_delay() {
    let (_directory, store, sessions) = store_with_sessions(2, DELAY);
    let _first_in_play = store.in_play();
    let _second_in_play = store.in_play();
    let started = Instant::now();
    let committed = commit_first_turn(&store, &sessions[0]).await.expect("task");
    assert_eq!(committed - started, DELAY);
    assert_eq!(store.commit_counts(), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_lone_session_or_a_delay_of_zero_never_waits() {
    let (_directory, store, sessions) = store_with_sessions(1, DELAY);
    let started = Instant::now();
    let _in_play = store.in_play();
    let committed = commit_first_turn(&store, &sessions[0]).await.expect("task");
    assert_eq!(committed - started, Duration::ZERO, "one session in play");

    let (_directory, store, sessions) = store_with_sessions(2, Duration::ZERO);
    let _in_play = (store.in_play(), store.in_play());
    let committed = commit_first_turn(&store, &sessions[0]).await.expect("task");
    assert_eq!(committed - started, Duration::ZERO, "commit_delay_ms = 0");
}

#[tokio::test(start_paused = true)]
async fn a_session_leaving_play_lets_the_batch_go() {
    let (_directory, store, sessions) = store_with_sessions(2, DELAY);
    let _staying = store.in_play();
    let leaving = store.in_play();
    let started = Instant::now();
    let first = still_waiting_after_a_fifth(&store, &sessions[0]).await;
    drop(leaving);
    let committed = first.await.expect("task");
    assert_eq!(committed - started, DELAY / 5);
    assert_eq!(store.commit_counts(), (1, 1));
}
