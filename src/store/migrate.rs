//! `heistd store migrate`: copies a SQLite audit trail (sessions with their
//! messages, tool usage, service calls and outbox, and the health events)
//! into a PostgreSQL store. Each session goes in one transaction and only
//! if the target lacks it, so a second run copies nothing and an
//! interrupted run resumes; health events are matched on their columns.
//! Ends with a count check: every table's rows for the copied sessions are
//! counted on both sides.
//!
//! It reads SQLite here and writes through the PostgreSQL backend; it
//! changes nothing in the source.

use std::sync::Arc;

use rusqlite::params;
use serde::Serialize;

use super::rows::{session_row, SESSION_COLUMNS};
use super::{MessageRow, ServiceCallRow, SessionRow, Store, StoreError, StoreHandle};

/// One session and every row that belongs to it, as SQLite holds them.
#[derive(Debug, Clone)]
pub(crate) struct SessionBundle {
    pub session: SessionRow,
    pub messages: Vec<MessageRow>,
    pub tool_usage: Vec<ToolUsageExport>,
    pub service_calls: Vec<ServiceCallRow>,
    pub outbox: Vec<OutboxExport>,
}

/// A `tool_usage` row with the columns the API's row leaves out.
#[derive(Debug, Clone)]
pub(crate) struct ToolUsageExport {
    pub turn_id: i64,
    pub agent_name: String,
    pub tool_name: String,
    pub tool_params: String,
    pub tool_result: String,
    pub timestamp: String,
    pub success: bool,
    pub error: Option<String>,
    pub duration_ms: Option<f64>,
}

/// An `outbox` row, delivery state included.
#[derive(Debug, Clone)]
pub(crate) struct OutboxExport {
    pub turn_id: i64,
    pub payload: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub abandoned_at: Option<String>,
}

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

/// The tables the count check compares, by session.
pub(crate) const COUNTED_TABLES: [&str; 5] = [
    "sessions",
    "messages",
    "tool_usage",
    "service_calls",
    "outbox",
];

impl StoreHandle {
    /// Copies `source` into this store, which must be PostgreSQL.
    pub async fn import_sqlite(&self, source: Arc<Store>) -> Result<MigrationReport, StoreError> {
        let Some(target) = self.postgres() else {
            return Err(StoreError::Worker(
                "store migrate writes to PostgreSQL only".into(),
            ));
        };
        let reader = source.clone();
        let ids = super::handle::blocking(move || reader.all_session_ids()).await?;
        let mut report = MigrationReport {
            sessions_in_source: ids.len() as u64,
            ..MigrationReport::default()
        };
        for id in &ids {
            let (reader, id) = (source.clone(), id.clone());
            let bundle = super::handle::blocking(move || reader.export_session(&id)).await?;
            if target.import_session(&bundle).await? {
                report.sessions_copied += 1;
            } else {
                report.sessions_already_there += 1;
            }
        }
        let reader = source.clone();
        let events = super::handle::blocking(move || reader.health_events(None)).await?;
        report.health_events_copied = target.import_health_events(&events).await?;
        let (reader, counted) = (source.clone(), ids.clone());
        let source_counts =
            super::handle::blocking(move || reader.counts_for_sessions(&counted)).await?;
        let target_counts = target.counts_for_sessions(&ids).await?;
        report.counts = COUNTED_TABLES
            .iter()
            .zip(source_counts.into_iter().zip(target_counts))
            .map(|(table, (source, target))| (table.to_string(), source, target))
            .collect();
        Ok(report)
    }
}

impl Store {
    fn all_session_ids(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT session_id FROM sessions ORDER BY start_time, session_id")?;
        let ids = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    fn export_session(&self, session_id: &str) -> Result<SessionBundle, StoreError> {
        let detail = self.session(session_id)?;
        let connection = self.lock();
        let session = connection.query_row(
            &format!("{SESSION_COLUMNS} WHERE session_id = ?1"),
            params![session_id],
            session_row,
        )?;
        let tool_usage = connection
            .prepare(
                "SELECT turn_id, agent_name, tool_name, tool_params, tool_result, timestamp, success, error, duration_ms
                 FROM tool_usage WHERE session_id = ?1 ORDER BY id",
            )?
            .query_map(params![session_id], |row| {
                Ok(ToolUsageExport {
                    turn_id: row.get(0)?,
                    agent_name: row.get(1)?,
                    tool_name: row.get(2)?,
                    tool_params: row.get(3)?,
                    tool_result: row.get(4)?,
                    timestamp: row.get(5)?,
                    success: row.get(6)?,
                    error: row.get(7)?,
                    duration_ms: row.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let outbox = connection
            .prepare(
                "SELECT turn_id, payload, created_at, delivered_at, attempts, last_error, abandoned_at
                 FROM outbox WHERE session_id = ?1 ORDER BY id",
            )?
            .query_map(params![session_id], |row| {
                Ok(OutboxExport {
                    turn_id: row.get(0)?,
                    payload: row.get(1)?,
                    created_at: row.get(2)?,
                    delivered_at: row.get(3)?,
                    attempts: row.get(4)?,
                    last_error: row.get(5)?,
                    abandoned_at: row.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(SessionBundle {
            session,
            messages: detail.messages,
            tool_usage,
            service_calls: detail.service_calls,
            outbox,
        })
    }

    fn counts_for_sessions(&self, ids: &[String]) -> Result<Vec<u64>, StoreError> {
        let connection = self.lock();
        let mut counts = Vec::new();
        for table in COUNTED_TABLES {
            let mut total = 0u64;
            let mut statement = connection.prepare(&format!(
                "SELECT COUNT(*) FROM {table} WHERE session_id = ?1"
            ))?;
            for id in ids {
                let count: i64 = statement.query_row(params![id], |row| row.get(0))?;
                total += count.max(0) as u64;
            }
            counts.push(total);
        }
        Ok(counts)
    }
}
