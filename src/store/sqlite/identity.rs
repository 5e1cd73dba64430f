//! The SQLite store's own checks that it can still take a commit: that the
//! file it has open is still the file at its path (device and inode; a
//! link count of 0 means deleted), that the database and its write-ahead
//! log together are under `store.max_size_mb`, and a small write probe. A
//! deleted file takes commits happily, into a file nobody will ever read:
//! every commit checks first. What the daemon does about an unusable store
//! (readiness, refusing runs, pausing sessions) is not here but in the
//! backend-neutral handle and its callers.
//!
//! It must not change any row.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Store;
use crate::store::StoreError;

/// The database file as it was opened: a handle on it, and its device and
/// inode, to tell a deleted or replaced file from the one we write.
pub(super) struct FileIdentity {
    file: std::fs::File,
    device: u64,
    inode: u64,
}

impl FileIdentity {
    pub(super) fn of(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let metadata = file.metadata()?;
        Ok(Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            file,
        })
    }
}

/// Below this share of the cap the WAL is left alone; above it, it is
/// checkpointed and truncated before the store counts as full.
const CHECKPOINT_AT_PERCENT: u64 = 90;

impl Store {
    /// Whether the file this store writes is still the one at its path.
    pub fn check_identity(&self) -> Result<(), StoreError> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        let unavailable = |reason: String| StoreError::Unavailable {
            path: self.path.display().to_string(),
            reason,
        };
        let open = identity
            .file
            .metadata()
            .map_err(|error| unavailable(format!("cannot stat the open database: {error}")))?;
        if open.nlink() == 0 {
            return Err(unavailable("the database file was deleted".into()));
        }
        match std::fs::metadata(&self.path) {
            Ok(now) if now.dev() == identity.device && now.ino() == identity.inode => Ok(()),
            Ok(_) => Err(unavailable(
                "the database file was replaced by another file".into(),
            )),
            Err(error) => Err(unavailable(format!(
                "the database file is gone from its path: {error}"
            ))),
        }
    }

    /// The database and its write-ahead log, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        let length = |path: &Path| std::fs::metadata(path).map_or(0, |metadata| metadata.len());
        length(&self.path) + length(&wal_path(&self.path))
    }

    /// Refuses when the database and its WAL have reached the size cap,
    /// after folding the WAL into the database and truncating it.
    pub fn check_size_cap(&self) -> Result<(), StoreError> {
        let Some(cap) = self.size_cap else {
            return Ok(());
        };
        if self.size_on_disk() * 100 >= cap * CHECKPOINT_AT_PERCENT {
            // Best effort: a busy checkpoint leaves the WAL as it is.
            let _ = self
                .lock()
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        let size = self.size_on_disk();
        if size >= cap {
            return Err(StoreError::OverSizeCap {
                size_mb: size.div_ceil(1024 * 1024),
                cap_mb: cap / (1024 * 1024),
            });
        }
        Ok(())
    }

    /// A small real write (the header's `user_version`, rewritten as it
    /// is) in a transaction: fails on a full disk, a read-only file or
    /// directory, or a deleted file.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        self.check_identity()?;
        self.check_size_cap()?;
        let connection = self.lock();
        let probe = connection
            .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
            .and_then(|version| {
                connection.execute_batch(&format!(
                    "BEGIN IMMEDIATE; PRAGMA user_version = {version}; COMMIT;"
                ))
            });
        probe.map_err(|error| {
            // A failed COMMIT leaves the transaction open.
            let _ = connection.execute_batch("ROLLBACK;");
            StoreError::Unavailable {
                path: self.path.display().to_string(),
                reason: format!("a write probe failed: {error}"),
            }
        })
    }
}

/// `heistd.db` → `heistd.db-wal`.
fn wal_path(database: &Path) -> std::path::PathBuf {
    let mut name = database.as_os_str().to_os_string();
    name.push("-wal");
    name.into()
}
