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
//! It must not change what a turn writes: that is `turns::insert_turn`.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};

use super::turns::insert_turn;
use super::{Store, StoreError, TurnRecord};

/// Turns waiting for the next transaction, with the slot each caller
/// waits on for its outcome.
pub(super) struct CommitQueue {
    /// `store.group_commit`; off, each turn is its own transaction.
    pub(super) enabled: bool,
    pub(super) pending: Mutex<Vec<Pending>>,
    /// Transactions that committed turns; with `turns`, how well turns are
    /// grouped (read by tests and the load benchmark's notes).
    transactions: std::sync::atomic::AtomicU64,
    turns: std::sync::atomic::AtomicU64,
}

pub(super) struct Pending {
    pub(super) turn: TurnRecord,
    pub(super) outcome: Arc<Mutex<Option<Result<(), StoreError>>>>,
}

impl Store {
    /// Queues `turn`, then either finds it already committed by the caller
    /// that held the connection before, or commits everything queued.
    pub fn commit_turn(&self, turn: TurnRecord) -> Result<(), StoreError> {
        // Never commit into a deleted or replaced file.
        self.check_identity()?;
        if self.sync_lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                path: self.path.display().to_string(),
                reason:
                    "synchronous = FULL could not be restored after an outbox mark; restart heistd"
                        .into(),
            });
        }
        if !self.commits.enabled {
            let outcome = write_alone(&mut self.lock(), &turn);
            self.commits.count(std::slice::from_ref(&outcome));
            return outcome;
        }
        let outcome = Arc::new(Mutex::new(None));
        self.commits.pending.lock().push(Pending {
            turn,
            outcome: outcome.clone(),
        });
        let mut connection = self.lock();
        // A caller that held the connection before took this turn with its
        // batch, and set the outcome before letting go of the connection.
        if let Some(done) = outcome.lock().take() {
            return done;
        }
        let batch = std::mem::take(&mut *self.commits.pending.lock());
        let outcomes = write_batch(&mut connection, &batch);
        self.commits.count(&outcomes);
        for (pending, result) in batch.into_iter().zip(outcomes) {
            *pending.outcome.lock() = Some(result);
        }
        let done = outcome.lock().take();
        done.unwrap_or_else(|| Err(StoreError::Worker("turn lost from its commit batch".into())))
    }

    /// (transactions, turns) committed so far by [`Self::commit_turn`].
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
            transactions: Default::default(),
            turns: Default::default(),
        }
    }
}

impl CommitQueue {
    fn count(&self, outcomes: &[Result<(), StoreError>]) {
        use std::sync::atomic::Ordering::Relaxed;
        let committed = outcomes.iter().filter(|outcome| outcome.is_ok()).count() as u64;
        if committed > 0 {
            self.transactions.fetch_add(1, Relaxed);
            self.turns.fetch_add(committed, Relaxed);
        }
    }
}

/// One transaction for the whole batch, each turn inside its own savepoint;
/// if the transaction itself fails, each turn alone.
pub(super) fn write_batch(
    connection: &mut Connection,
    batch: &[Pending],
) -> Vec<Result<(), StoreError>> {
    if batch.len() == 1 {
        return vec![write_alone(connection, &batch[0].turn)];
    }
    match write_together(connection, batch) {
        Ok(outcomes) => outcomes,
        Err(_) => batch
            .iter()
            .map(|pending| write_alone(connection, &pending.turn))
            .collect(),
    }
}

fn write_alone(connection: &mut Connection, turn: &TurnRecord) -> Result<(), StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    insert_turn(&transaction, turn)?;
    transaction.commit()?;
    Ok(())
}

/// The batch in one transaction. A turn's own refusal rolls back to its
/// savepoint and is its outcome; an outage (or a failed commit) is the
/// whole transaction's error, and nothing of it is kept.
fn write_together(
    connection: &mut Connection,
    batch: &[Pending],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
    transaction.commit()?;
    Ok(outcomes)
}
