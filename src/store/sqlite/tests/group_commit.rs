//! Group commit: batches, the commit task, and the marks that ride with a
//! turn's transaction.
use super::*;

#[test]
fn a_commit_batch_is_one_transaction_and_a_refused_turn_fails_alone() {
    use crate::store::sqlite::group_commit::{write_batch, Pending};
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
        outcome: crate::store::sqlite::group_commit::Reply::Slot(Default::default()),
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
    let handle = StoreHandle::from_sqlite(store.clone());
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
                        .read_back();
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
    let handle = StoreHandle::from_sqlite(store.clone());
    let session = store.create_session(&new_session(1, 2)).expect("session");
    let owed = handle
        .record_turn_owing(turn(&session, 1), 64)
        .await
        .expect("turn 1")
        .read_back();
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
        .read_back();
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
