//! Group commit: turns of many sessions that arrive while a commit is in
//! flight are written together in the next transaction, so N sessions share
//! one fsync instead of queueing N of them behind the store's one
//! connection. Each caller still returns only once the transaction holding
//! its turn is durable (a turn is durable before its session's next turn
//! starts). A turn the store refuses (its session ended, a duplicate turn)
//! is rolled back to its own savepoint and fails alone; a transaction that
//! fails as a whole (a full disk, I/O) is tried again turn by turn, so every
//! caller gets its own error and an outage is still seen as one.
//!
//! The same transaction writes the outbox marks queued since the last one
//! (`Store::queue_delivered`), and reads back each committed turn's session
//! outbox (what its caller delivers next), so a turn's store work under
//! load is one trip to the connection, not three.
//!
//! Under load a batch also waits a moment for more turns
//! (`store.commit_delay_ms`, PostgreSQL's `commit_delay`): a transaction
//! costs an fsync, a WAL header and the pages every turn shares whatever
//! it holds, so fewer, larger batches cost less CPU per turn. It waits only
//! while sessions in play (`Store::in_play`) have no turn queued, so a
//! lone session, or a batch that already holds every session's turn,
//! goes at once.
//!
//! It must not change what a turn writes: that is `turns::insert_turn`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};

use super::turns::insert_turn;
use super::Store;
use crate::store::{OutboxEntry, StoreError, TurnRecord};

/// A committed turn's outcome: its session's first pending memory writes,
/// read in the turn's transaction (none read when the caller asked none).
pub(super) type Committed = Result<Vec<OutboxEntry>, StoreError>;

/// Turns waiting for the next transaction, with the slot each caller
/// waits on for its outcome.
pub(super) struct CommitQueue {
    /// `store.group_commit`; off, each turn is its own transaction.
    pub(super) enabled: bool,
    pub(super) pending: Mutex<Vec<Pending>>,
    /// Outbox writes delivered whose mark is not written yet: (id, when).
    pub(super) delivered: Mutex<Vec<(i64, String)>>,
    /// A task is committing what async callers queue
    /// (`Store::drain_commits`); at most one at a time.
    pub(super) draining: std::sync::atomic::AtomicBool,
    /// `store.commit_delay_ms`: how long a batch may wait for the turns of
    /// other sessions in play (zero: it never waits).
    pub(super) delay: Duration,
    /// Sessions playing turns on this store ([`Store::in_play`]).
    in_play: AtomicUsize,
    /// Told when the queue holds as many turns as sessions are in play.
    every_session_queued: tokio::sync::Notify,
    /// Transactions that committed turns; with `turns`, how well turns are
    /// grouped (read by tests).
    transactions: std::sync::atomic::AtomicU64,
    turns: std::sync::atomic::AtomicU64,
}

pub(super) struct Pending {
    pub(super) turn: TurnRecord,
    /// How many of the session's pending memory writes to read back.
    pub(super) owed: usize,
    pub(super) outcome: Reply,
}

/// Where a queued turn's outcome goes: a slot its thread reads once it
/// holds the connection (`Store::commit_turn`), or the channel an async
/// caller awaits (`Store::queue_turn`), which holds no thread meanwhile.
pub(super) enum Reply {
    Slot(Arc<Mutex<Option<Committed>>>),
    Channel(tokio::sync::oneshot::Sender<Committed>),
}

impl Reply {
    fn send(self, outcome: Committed) {
        match self {
            Reply::Slot(slot) => *slot.lock() = Some(outcome),
            // A caller that stopped waiting (its task was aborted) does not
            // undo the commit; there is nobody left to tell.
            Reply::Channel(sender) => drop(sender.send(outcome)),
        }
    }
}

impl Store {
    /// Queues `turn`, then either finds it already committed by the caller
    /// that held the connection before, or commits everything queued.
    /// Returns the first `owed` pending memory writes of the turn's session
    /// as the transaction left them.
    pub fn commit_turn(&self, turn: TurnRecord, owed: usize) -> Committed {
        if !self.commits.enabled {
            // `lock()` writes the queued marks first, on their own.
            let mut connection = self.lock();
            let outcome = self
                .ready_to_commit()
                .and_then(|()| write_alone(&mut connection, &turn, owed));
            self.commits.count(std::slice::from_ref(&outcome));
            return outcome;
        }
        let outcome = Arc::new(Mutex::new(None));
        self.commits.pending.lock().push(Pending {
            turn,
            owed,
            outcome: Reply::Slot(outcome.clone()),
        });
        // Not `lock()`: the queued marks go into this transaction.
        let mut connection = self.connection.lock();
        // A caller that held the connection before took this turn with its
        // batch, and set the outcome before letting go of the connection.
        if let Some(done) = outcome.lock().take() {
            return done;
        }
        self.commit_queued(&mut connection);
        let done = outcome.lock().take();
        done.unwrap_or_else(|| Err(StoreError::Worker("turn lost from its commit batch".into())))
    }

    /// Queues `turn` for the blocking task that commits what async callers
    /// queue (`drain_commits`); the receiver gets what
    /// [`Self::commit_turn`] would have returned. Returns whether the caller
    /// must start that task (none is running). Unlike `commit_turn`, a
    /// caller waiting here holds no thread: with a hundred sessions the
    /// blocking pool had a hundred threads parked on the connection.
    pub(super) fn queue_turn(
        &self,
        turn: TurnRecord,
        owed: usize,
    ) -> (tokio::sync::oneshot::Receiver<Committed>, bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let queued = {
            let mut pending = self.commits.pending.lock();
            pending.push(Pending {
                turn,
                owed,
                outcome: Reply::Channel(sender),
            });
            pending.len()
        };
        if queued >= self.commits.in_play.load(Ordering::SeqCst) {
            self.commits.every_session_queued.notify_one();
        }
        let start = !self.commits.draining.swap(true, SeqCst);
        (receiver, start)
    }

    /// Counts a session as playing turns on this store until the guard
    /// is dropped: a batch waits for its turn (`store.commit_delay_ms`)
    /// only while some session in play has none queued.
    pub fn in_play(self: &Arc<Self>) -> CountedInPlay {
        self.commits.in_play.fetch_add(1, Ordering::SeqCst);
        CountedInPlay(self.clone())
    }

    /// Commits queued turns, batch after batch, until none is queued; the
    /// one task [`Self::queue_turn`] asked to start. Each batch is first
    /// gathered (`gather`), then written on a blocking thread. A turn
    /// queued while the task stops is taken by it or by the task the next
    /// caller starts. A panic while writing fails the turns queued
    /// meanwhile (their callers saw this task running and started none),
    /// so none waits forever, and lets the next caller start a task.
    pub(super) async fn drain_commits(self: Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        // This pass is made only for marks left after a batch: at most one
        // after each batch, so a store that fails them does not keep this
        // task spinning.
        let mut marks_pass = false;
        loop {
            if !marks_pass {
                self.gather().await;
            }
            let store = self.clone();
            let written = tokio::task::spawn_blocking(move || {
                store.commit_queued(&mut store.connection.lock())
            })
            .await;
            if written.is_err() {
                drop(std::mem::take(&mut *self.commits.pending.lock()));
                self.commits.draining.store(false, SeqCst);
                return;
            }
            if !self.commits.pending.lock().is_empty() {
                marks_pass = false;
            } else {
                // A mark queued after that pass took the queue, by a caller
                // that found the connection still held: it was left to this
                // task, which looks only now that the connection is free.
                if !marks_pass && !self.commits.delivered.lock().is_empty() {
                    marks_pass = true;
                    continue;
                }
                self.commits.draining.store(false, SeqCst);
                // Queued after the last batch was taken, by a caller that
                // saw this task still running: take it up again, unless a
                // new task has.
                if self.commits.pending.lock().is_empty()
                    || self.commits.draining.swap(true, SeqCst)
                {
                    return;
                }
                marks_pass = false;
            }
        }
    }

    /// Waits, up to `store.commit_delay_ms`, until the queue holds a turn
    /// of every session in play; at once when it does already (one session,
    /// or none counted) or when the delay is zero.
    async fn gather(&self) {
        if self.commits.delay.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.commits.delay;
        loop {
            let in_play = self.commits.in_play.load(Ordering::SeqCst);
            if self.commits.pending.lock().len() >= in_play {
                return;
            }
            let told = self.commits.every_session_queued.notified();
            if tokio::time::timeout_at(deadline, told).await.is_err() {
                return;
            }
        }
    }

    /// Commits everything queued in one transaction on `connection` and
    /// hands each caller its outcome; then, unless another batch waits to
    /// carry them, writes the marks queued meanwhile by callers that found
    /// the connection busy, as the next trip to it may be a while off.
    fn commit_queued(&self, connection: &mut Connection) {
        let batch = std::mem::take(&mut *self.commits.pending.lock());
        if !batch.is_empty() {
            self.write_batch_and_answer(connection, batch);
        }
        if self.commits.pending.lock().is_empty() {
            self.write_queued_marks(connection);
        }
    }

    /// [`Self::commit_queued`]'s batch: written with the queued marks, each
    /// caller answered.
    fn write_batch_and_answer(&self, connection: &mut Connection, batch: Vec<Pending>) {
        let marks = self.take_marks();
        let outcomes = match self.ready_to_commit() {
            Ok(()) => write_batch(connection, &batch, &marks),
            Err(error) => Batch {
                outcomes: batch.iter().map(|_| Err(same_refusal(&error))).collect(),
                marks_written: false,
            },
        };
        // Marks a failed transaction took with it wait for the next one.
        if !outcomes.marks_written {
            self.requeue_marks(marks);
        }
        let outcomes = outcomes.outcomes;
        self.commits.count(&outcomes);
        for (pending, result) in batch.into_iter().zip(outcomes) {
            pending.outcome.send(result);
        }
    }

    /// `store.group_commit`.
    pub(super) fn groups_commits(&self) -> bool {
        self.commits.enabled
    }

    /// Whether a commit may go into the file: never into a deleted or
    /// replaced one, nor without the fsync `synchronous = FULL` promises.
    /// Checked once per transaction, by the caller that writes it.
    fn ready_to_commit(&self) -> Result<(), StoreError> {
        self.check_identity()?;
        if self.sync_lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                path: self.path.display().to_string(),
                reason:
                    "synchronous = FULL could not be restored after an outbox mark; restart heistd"
                        .into(),
            });
        }
        Ok(())
    }

    /// The delivered marks queued so far, for the caller to write.
    pub(super) fn take_marks(&self) -> Vec<(i64, String)> {
        std::mem::take(&mut *self.commits.delivered.lock())
    }

    /// Puts back marks a transaction could not write, for the next one.
    pub(super) fn requeue_marks(&self, marks: Vec<(i64, String)>) {
        if !marks.is_empty() {
            self.commits.delivered.lock().extend(marks);
        }
    }

    /// (transactions, turns) committed so far, by [`Self::commit_turn`] and
    /// the commit task.
    #[cfg(test)]
    pub fn commit_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.commits.transactions.load(Relaxed),
            self.commits.turns.load(Relaxed),
        )
    }
}

impl Default for CommitQueue {
    fn default() -> Self {
        Self {
            enabled: true,
            pending: Mutex::default(),
            delivered: Mutex::default(),
            draining: Default::default(),
            delay: Duration::ZERO,
            in_play: Default::default(),
            every_session_queued: Default::default(),
            transactions: Default::default(),
            turns: Default::default(),
        }
    }
}

impl CommitQueue {
    fn count(&self, outcomes: &[Committed]) {
        use std::sync::atomic::Ordering::Relaxed;
        let committed = outcomes.iter().filter(|outcome| outcome.is_ok()).count() as u64;
        if committed > 0 {
            self.transactions.fetch_add(1, Relaxed);
            self.turns.fetch_add(committed, Relaxed);
        }
    }
}

/// A session in play on a store ([`Store::in_play`]); counted out when
/// dropped, however its session ends. The handle hands it out wrapped in
/// the backend-neutral [`crate::store::InPlay`].
pub(crate) struct CountedInPlay(Arc<Store>);

impl Drop for CountedInPlay {
    fn drop(&mut self) {
        self.0.commits.in_play.fetch_sub(1, Ordering::SeqCst);
        // One session fewer may be all the batch waits for.
        self.0.commits.every_session_queued.notify_one();
    }
}

/// What [`write_batch`] did: each turn's outcome, and whether the marks
/// were written (false: the caller queues them again).
pub(super) struct Batch {
    pub(super) outcomes: Vec<Committed>,
    pub(super) marks_written: bool,
}

/// One transaction for the whole batch, each turn inside its own savepoint;
/// if the transaction itself fails, each turn alone. `marks` are written
/// first, in the same transaction.
pub(super) fn write_batch(
    connection: &mut Connection,
    batch: &[Pending],
    marks: &[(i64, String)],
) -> Batch {
    // Without marks, a lone turn needs no savepoint: its refusal rolls back
    // nothing else.
    if batch.len() == 1 && marks.is_empty() {
        let only = &batch[0];
        return Batch {
            outcomes: vec![write_alone(connection, &only.turn, only.owed)],
            marks_written: true,
        };
    }
    match write_together(connection, batch, marks) {
        Ok(outcomes) => Batch {
            outcomes,
            marks_written: true,
        },
        Err(_) => Batch {
            outcomes: batch
                .iter()
                .map(|pending| write_alone(connection, &pending.turn, pending.owed))
                .collect(),
            marks_written: false,
        },
    }
}

fn write_alone(connection: &mut Connection, turn: &TurnRecord, owed: usize) -> Committed {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    insert_turn(&transaction, turn)?;
    let entries = super::outbox::pending_entries(&transaction, &turn.session_id, owed)?;
    transaction.commit()?;
    Ok(entries)
}

/// The batch in one transaction. A turn's own refusal rolls back to its
/// savepoint and is its outcome; an outage (or a failed commit) is the
/// whole transaction's error, and nothing of it is kept.
fn write_together(
    connection: &mut Connection,
    batch: &[Pending],
    marks: &[(i64, String)],
) -> Result<Vec<Committed>, StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A mark that fails means the store is failing: the whole transaction
    // fails with it (SQLite may have rolled it back already).
    super::outbox::write_marks(&transaction, marks)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for pending in batch {
        // Statements, not rusqlite's `Savepoint`, so they are prepared once.
        transaction.prepare_cached("SAVEPOINT turn")?.execute([])?;
        match insert_turn(&transaction, &pending.turn) {
            Ok(()) => {
                transaction.prepare_cached("RELEASE turn")?.execute([])?;
                outcomes.push(Ok(()));
            }
            Err(error) if !error.is_outage() => {
                transaction
                    .prepare_cached("ROLLBACK TO turn")?
                    .execute([])?;
                transaction.prepare_cached("RELEASE turn")?.execute([])?;
                outcomes.push(Err(error));
            }
            Err(outage) => return Err(outage),
        }
    }
    // Read after every turn of the batch is in: two turns of one session
    // never share a batch (a session waits for its turn's commit), so each
    // read sees its own turn's write and nothing it could miss.
    let mut committed = Vec::with_capacity(batch.len());
    for (pending, outcome) in batch.iter().zip(outcomes) {
        committed.push(match outcome {
            Ok(()) => Ok(super::outbox::pending_entries(
                &transaction,
                &pending.turn.session_id,
                pending.owed,
            )?),
            Err(error) => Err(error),
        });
    }
    transaction.commit()?;
    Ok(committed)
}

/// Another copy of [`Store::ready_to_commit`]'s refusal, one per caller of
/// the batch (it is always `Unavailable`, an outage each caller waits out).
fn same_refusal(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable { path, reason } => StoreError::Unavailable {
            path: path.clone(),
            reason: reason.clone(),
        },
        other => StoreError::Worker(other.to_string()),
    }
}
