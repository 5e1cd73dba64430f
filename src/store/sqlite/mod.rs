//! The SQLite backend of the audit store: one file, the source of truth
//! for every session, message, tool call and memory outbox entry, written
//! by one process. It keeps the prototype's `sessions`, `messages` and
//! `tool_usage` tables and column names so the prototype's SQL still
//! works, and adds columns and tables under a versioned schema migrated at
//! open.
//!
//! Only this module holds SQLite SQL. It must not call services. It owns
//! the one connection (one writer) in [`Store`], whose methods are
//! synchronous and split by concern: `sessions`, `turns`, `outbox`,
//! `control` (cancel requests, paused schedules),
//! `group_commit`, `health` (events), `maintenance` (open, size cap,
//! prune, compact) with the migrations in `schema` and the prototype's
//! adoption in `collisions`, the file's own checks in `identity`, the
//! read-only opening in `reader`, the rusqlite row readers in `rows`, and
//! what `store migrate` reads in `export`. Async code reaches it only
//! through [`SqliteBackend`] (`backend`), the store's
//! [`crate::store::backend::Backend`] for SQLite, which runs each call on
//! the blocking pool in one place.

use std::path::PathBuf;

use parking_lot::{Mutex, MutexGuard};
use rusqlite::Connection;

mod backend;
mod collisions;
mod control;
mod export;
mod group_commit;
mod health;
mod identity;
mod maintenance;
mod outbox;
mod reader;
mod rows;
pub(super) mod schema;
mod sessions;
mod stream;
mod turns;

pub(crate) use backend::SqliteBackend;

/// The audit store's connection and the lock that makes its process the
/// one writer. Its methods live beside their concern (`sessions`, `turns`,
/// `outbox`, `health`, `maintenance`); async code uses
/// [`crate::store::StoreHandle`].
pub(crate) struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
    /// Held by a writing process (`run`, `demo`, `daemon`) for as long as
    /// the store is open, so two never write one store: a session found
    /// `active` then really was left by a process that died.
    _writer_lock: Option<std::fs::File>,
    /// The file as opened, so a deleted or replaced database is noticed
    /// before a commit goes into it (none for read-only stores).
    identity: Option<identity::FileIdentity>,
    /// `store.max_size_mb` in bytes, counted with the WAL.
    size_cap: Option<u64>,
    /// Turns waiting for the next commit (`group_commit`).
    commits: group_commit::CommitQueue,
    /// `synchronous = full`: outbox marks then relax it for themselves.
    full_sync: bool,
    /// Set if `synchronous = FULL` could not be restored after a mark:
    /// turns are then refused rather than committed without an fsync.
    sync_lost: std::sync::atomic::AtomicBool,
}

impl Store {
    /// The connection, with the delivered marks queued so far written
    /// first, so what is read or written next sees them.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        // The lock does not poison: a panic while holding it cannot leave a
        // half-done transaction committed (rusqlite rolls back on drop).
        let connection = self.connection.lock();
        self.write_queued_marks(&connection);
        connection
    }
}

impl Drop for Store {
    /// A clean close writes the marks still queued, so a restart does not
    /// send their writes again; a writer then leaves only the database
    /// behind (see `close_cleanly`).
    fn drop(&mut self) {
        self.flush_delivered();
        if self._writer_lock.is_some() {
            self.close_cleanly();
        }
    }
}

#[cfg(test)]
mod tests;
