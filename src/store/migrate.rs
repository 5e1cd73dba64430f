//! `heistd store migrate`: copies a SQLite audit trail (sessions with their
//! messages, tool usage, service calls and outbox, and the health events)
//! into a PostgreSQL store. Each session goes in one transaction and only
//! if the target lacks it, so a second run copies nothing and an
//! interrupted run resumes; health events are matched on their columns.
//! Ends with a count check: every table's rows for the copied sessions are
//! counted on both sides.
//!
//! It reads through the SQLite backend (`sqlite::export`) and writes
//! through the PostgreSQL backend (`postgres::copy`), the two meeting in
//! `bundle`; it changes nothing in the source.

use serde::Serialize;

use super::bundle::COUNTED_TABLES;
use super::postgres::PgStore;
use super::sqlite::SqliteBackend;
use super::{StoreError, StoreHandle};

/// What a migration did, and the count check's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MigrationReport {
    pub sessions_in_source: u64,
    pub sessions_copied: u64,
    pub sessions_already_there: u64,
    pub health_events_copied: u64,
    /// (table, rows in SQLite, rows in PostgreSQL for the same sessions).
    pub counts: Vec<(String, u64, u64)>,
}

impl MigrationReport {
    /// Whether every table holds as many rows on both sides.
    pub fn counts_match(&self) -> bool {
        self.counts
            .iter()
            .all(|(_, source, target)| source == target)
    }
}

impl StoreHandle {
    /// Copies `source`, a SQLite store, into this store, which must be
    /// PostgreSQL.
    pub async fn import_sqlite(&self, source: &StoreHandle) -> Result<MigrationReport, StoreError> {
        let Some(target) = self.backend_as::<PgStore>() else {
            return Err(StoreError::Worker(
                "store migrate writes to PostgreSQL only".into(),
            ));
        };
        let Some(source) = source.backend_as::<SqliteBackend>() else {
            return Err(StoreError::Worker(
                "store migrate reads from SQLite only".into(),
            ));
        };
        let ids = source.run(|reader| reader.all_session_ids()).await?;
        let mut report = MigrationReport {
            sessions_in_source: ids.len() as u64,
            ..MigrationReport::default()
        };
        for id in &ids {
            let id = id.clone();
            let bundle = source.run(move |reader| reader.export_session(&id)).await?;
            if target.import_session(&bundle).await? {
                report.sessions_copied += 1;
            } else {
                report.sessions_already_there += 1;
            }
        }
        let events = source.run(|reader| reader.health_events(None)).await?;
        report.health_events_copied = target.import_health_events(&events).await?;
        let counted = ids.clone();
        let source_counts = source
            .run(move |reader| reader.counts_for_sessions(&counted))
            .await?;
        let target_counts = target.counts_for_sessions(&ids).await?;
        report.counts = COUNTED_TABLES
            .iter()
            .zip(source_counts.into_iter().zip(target_counts))
            .map(|(table, (source, target))| (table.to_string(), source, target))
            .collect();
        Ok(report)
    }
}
