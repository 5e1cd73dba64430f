//! Keeping the store fit: opening it (WAL, pragmas, the writer's lock
//! file, migrations from `schema`), capping its size, pruning old sessions,
//! compacting, and the readiness check. It reads and writes no session's
//! contents except to delete whole sessions when pruning.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection};

use super::{schema, Store};
use crate::config::Synchronous;
use crate::store::{timestamp, StoreError, SCHEMA_VERSION};

/// Statements kept prepared per connection; more than the store has.
const STATEMENT_CACHE_CAPACITY: usize = 64;
/// A new audit trail (and its lock file) is readable by its owner and
/// group only, whatever the umask: it holds every message and tool result.
/// SQLite gives its `-wal` and `-shm` files the database's mode.
pub(crate) const NEW_FILE_MODE: u32 = 0o640;

/// Creates `path` empty with [`NEW_FILE_MODE`] if it does not exist (an
/// empty file is an empty SQLite database); an existing file keeps its
/// mode, which is its owner's choice.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

impl Store {
    /// Opens (creating if needed) the store, sets WAL mode and migrates.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        // Should it fail (a missing or read-only folder), SQLite's own open
        // below fails the same way and its error is the one reported.
        let _ = create_private(path);
        let connection = Connection::open(path).map_err(open_error)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        let synchronous = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        connection
            .pragma_update(None, "synchronous", synchronous)
            .map_err(open_error)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        // One plan per statement whatever is bound: without it SQLite
        // re-prepared the outbox read on every call (it compares the bound
        // session id against the partial index `outbox_pending`), a tenth
        // of the daemon's instructions per turn (BENCHMARKS.md).
        connection
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(open_error)?;
        migrate(&connection)?;
        // Only once the migration succeeded: a database that cannot be
        // adopted is left in the journal mode it came with.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        // Each turn's savepoint journal (group commit) stays in memory; with
        // temporary files on disk SQLite spilled it to a new file in
        // /var/tmp per transaction, more writes than the WAL itself. Set
        // after the migrations, whose index builds over an adopted
        // database may sort more than belongs in RAM; what sorts now (the
        // reconciliation's per-session counts) is bounded by its window.
        connection
            .pragma_update(None, "temp_store", "MEMORY")
            .map_err(open_error)?;
        // Room for every statement the store caches (rusqlite keeps 16), so
        // a turn's statements are never evicted and parsed again.
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(Self {
            path: path.to_path_buf(),
            _writer_lock: None,
            identity: Some(super::identity::FileIdentity::of(path).map_err(|error| {
                StoreError::Unavailable {
                    path: path.display().to_string(),
                    reason: error.to_string(),
                }
            })?),
            size_cap: None,
            commits: Default::default(),
            full_sync: synchronous == "FULL",
            sync_lost: Default::default(),
            connection: Mutex::new(connection),
        })
    }

    /// Opens the store as `[store]` configures it, size cap included, as
    /// its one writing process: a second writer is refused with a clear
    /// error rather than fighting over SQLite's write lock.
    pub fn open_configured(config: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        let lock = take_writer_lock(&config.path)?;
        let mut store = Self::open(&config.path, config.synchronous)?;
        store._writer_lock = Some(lock);
        store.commits.enabled = config.group_commit;
        store.commits.delay = std::time::Duration::from_millis(config.commit_delay_ms);
        if config.max_size_mb > 0 {
            let cap = config.max_size_mb.saturating_mul(1024 * 1024);
            let granted = store.limit_size(cap)?;
            // SQLite never shrinks below the current size: a database
            // already over the cap would fail every write.
            if granted > cap {
                return Err(StoreError::OverSizeCap {
                    size_mb: granted.div_ceil(1024 * 1024),
                    cap_mb: config.max_size_mb,
                });
            }
            // The WAL counts too: keep it well under the cap once it has
            // been checkpointed.
            store
                .lock()
                .pragma_update(None, "journal_size_limit", (cap / 8) as i64)?;
            store.size_cap = Some(cap);
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Caps the database at about `max_bytes` (SQLite's `max_page_count`);
    /// a write past it fails with "database or disk is full", which is
    /// handled like a real full disk. Returns the cap in bytes.
    pub fn limit_size(&self, max_bytes: u64) -> Result<u64, StoreError> {
        let connection = self.lock();
        let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let pages = (max_bytes / page_size.max(1) as u64).max(1);
        let granted: i64 =
            connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| {
                row.get(0)
            })?;
        Ok(granted as u64 * page_size as u64)
    }

    /// Whether the database answers a trivial query (for `/readyz`).
    pub fn is_usable(&self) -> bool {
        self.lock()
            .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
            .is_ok()
    }

    /// Deletes up to `batch` sessions that ended before `cutoff`, with all
    /// their rows, in one transaction; returns how many went.
    pub fn prune_sessions_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        let mut connection = self.lock();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ids: Vec<String> = {
            let mut statement = transaction.prepare_cached(
                "SELECT session_id FROM sessions WHERE status != 'active' AND end_time IS NOT NULL AND end_time < ?1
                 ORDER BY end_time LIMIT ?2",
            )?;
            let rows = statement.query_map(params![timestamp(cutoff), batch], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for id in &ids {
            for table in [
                "session_cancels",
                "service_calls",
                "outbox",
                "tool_usage",
                "messages",
                "sessions",
            ] {
                transaction.execute(
                    &format!("DELETE FROM {table} WHERE session_id = ?1"),
                    params![id],
                )?;
            }
        }
        transaction.commit()?;
        Ok(ids.len())
    }

    /// Hands free pages back and folds the WAL into the database, a little
    /// at a time, so maintenance never stalls a turn for long.
    pub fn compact(&self, pages: u32) -> Result<(), StoreError> {
        let connection = self.lock();
        connection.execute_batch(&format!("PRAGMA incremental_vacuum({pages});"))?;
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl Store {
    /// A writer's clean close: the WAL checkpointed into the database and
    /// the file left in rollback-journal mode (`journal_mode = DELETE`,
    /// which removes the WAL; the next writer's open sets WAL again), so a
    /// reader opening it later (`heistd sessions`) creates no `-wal` or
    /// `-shm` either; the connection closed (SQLite then removes `-shm`,
    /// the last connection to the file being this one: the reader beside it
    /// closes first); and the lock file removed while it is still held, so
    /// no other writer can have taken it in between. Should another
    /// process still read the file, the mode stays WAL and the WAL is only
    /// truncated. A crash leaves the files, which is harmless: the next open
    /// replays the WAL, and the lock is taken by `flock`, not by the file's
    /// existence.
    pub(super) fn close_cleanly(&mut self) {
        let connection = self.connection.get_mut();
        let left_wal = connection
            .query_row("PRAGMA journal_mode = DELETE", [], |row| {
                row.get::<_, String>(0)
            })
            .is_ok_and(|mode| mode.eq_ignore_ascii_case("delete"));
        if !left_wal {
            if let Err(error) =
                connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            {
                tracing::warn!(path = %self.path.display(), %error, "the store's WAL could not be checkpointed at close");
                return;
            }
        }
        let Ok(placeholder) = Connection::open_in_memory() else {
            return;
        };
        let connection = std::mem::replace(self.connection.get_mut(), placeholder);
        if let Err((_, error)) = connection.close() {
            tracing::warn!(path = %self.path.display(), %error, "the store could not be closed cleanly");
            return;
        }
        let _ = std::fs::remove_file(lock_path(&self.path));
    }
}

/// The writer's lock beside `database`, held by `flock` for as long as the
/// file is open. A writer closing cleanly removes the lock file while it
/// holds it, so a lock taken on a file that is no longer the one at the path
/// (opened just before that removal) is worthless: it is let go and the
/// path opened again, or a second writer could lock the new file beside it.
fn take_writer_lock(database: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let lock_path = lock_path(database);
    let lock_error = |source| StoreError::LockFile {
        path: lock_path.display().to_string(),
        source,
    };
    // A handful of tries: each lost one means a writer closed just then.
    for _ in 0..8 {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(NEW_FILE_MODE)
            .open(&lock_path)
            .map_err(lock_error)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::InUse {
                path: database.display().to_string(),
            });
        }
        let held = lock.metadata().map_err(lock_error)?;
        match std::fs::metadata(&lock_path) {
            Ok(at_path) if at_path.ino() == held.ino() && at_path.dev() == held.dev() => {
                return Ok(lock)
            }
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(lock_error(error)),
        }
    }
    Err(StoreError::InUse {
        path: database.display().to_string(),
    })
}

/// `heistd.db` → `heistd.db.lock`, beside the database.
fn lock_path(database: &Path) -> PathBuf {
    let mut name = database
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    database.with_file_name(name)
}

pub(super) fn migrate(connection: &Connection) -> Result<(), StoreError> {
    let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == 0 {
        // Only settable before the first table exists: lets retention give
        // pages back with `incremental_vacuum` instead of a full VACUUM.
        connection.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        connection.execute_batch("BEGIN IMMEDIATE;")?;
        let adopted = schema::adopt_prototype_tables(connection)
            .and_then(|()| super::collisions::split_same_second_collisions(connection));
        match adopted {
            Ok(report) => {
                connection.execute_batch("COMMIT;")?;
                for sentence in report {
                    tracing::warn!(path = %connection.path().unwrap_or_default(), "adopting a prototype database: {sentence}");
                }
            }
            Err(error) => {
                connection.execute_batch("ROLLBACK;")?;
                return Err(error.into());
            }
        }
    }
    for (index, migration) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE; {migration} PRAGMA user_version = {version}; COMMIT;"
        ))?;
    }
    Ok(())
}
