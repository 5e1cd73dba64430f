//! Tests of the SQLite backend against real SQLite files, by concern; the
//! fixtures they share are here.
use super::*;
use crate::config::Synchronous;
use crate::store::*;

mod commit_delay;
mod group_commit;
mod handle;
mod maintenance;
mod outbox;
mod sessions;

/// What a SQLite commit owes, which it always reads back.
pub(super) trait ReadBack {
    fn read_back(self) -> Vec<OutboxEntry>;
}

impl ReadBack for Owed {
    fn read_back(self) -> Vec<OutboxEntry> {
        match self {
            Owed::Entries(entries) => entries,
            Owed::ClaimFirst => panic!("SQLite reads the outbox back in the commit"),
        }
    }
}

pub(super) fn open() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&directory.path().join("audit.db"), Synchronous::Normal).expect("open");
    (directory, store)
}

pub(super) use crate::store::fixtures::{new_session, turn};
