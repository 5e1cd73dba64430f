//! The SQLite side of `store migrate`: every session id, one session with
//! all its rows as a [`SessionBundle`], and the counts the copy's check
//! compares. It only reads.

use rusqlite::params;

use super::rows::{session_row, SESSION_COLUMNS};
use super::Store;
use crate::store::bundle::{OutboxExport, SessionBundle, ToolUsageExport, COUNTED_TABLES};
use crate::store::StoreError;

impl Store {
    pub(crate) fn all_session_ids(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT session_id FROM sessions ORDER BY start_time, session_id")?;
        let ids = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    pub(crate) fn export_session(&self, session_id: &str) -> Result<SessionBundle, StoreError> {
        let detail = self.session(session_id)?;
        let connection = self.lock();
        let session = connection.query_row(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
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

    pub(crate) fn counts_for_sessions(&self, ids: &[String]) -> Result<Vec<u64>, StoreError> {
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
