//! Sessions on PostgreSQL: creating one (leased to this node from the
//! start, under the cluster cap), ending it once and only by its lease
//! holder, and the reads. It never writes a turn.

use super::rows::{
    message_row, service_call_row, session_row, tool_usage_row, MESSAGE_COLUMNS,
    SERVICE_CALL_COLUMNS, SESSION_COLUMNS, TOOL_USAGE_COLUMNS,
};
use super::{is_unique_violation, PgStore};
use crate::store::{
    new_session_id, timestamp, NewSession, ScheduleTokens, SessionDetail, SessionRow,
    SessionStatus, StoreError, TokenTotals,
};

impl PgStore {
    /// Creates a session leased to this node (epoch 1). A schedule slot
    /// that already has a session is [`StoreError::DuplicateRun`]; with
    /// `cluster.max_concurrent_sessions` reached, [`StoreError::ClusterFull`].
    pub async fn create_session(&self, new: &NewSession) -> Result<String, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let room = self.cluster_room(&transaction).await?;
        if room <= 0 {
            return Err(StoreError::ClusterFull {
                running: (self.cluster_cap - room).max(0) as u64,
            });
        }
        let now = chrono::Utc::now();
        loop {
            let session_id = new_session_id(now);
            let inserted = transaction
                .execute(
                    "INSERT INTO sessions (session_id, start_time, num_turns, status, seed, scenario, planned_turns,
                         schedule, scheduled_time, owner_node, lease_epoch, lease_expires_at, trigger)
                     VALUES ($1, $2, 0, 'active', $3, $4, $5, $6, $7, $8, 1, now() + make_interval(secs => $9::float8 / 1000.0), $10)
                     ON CONFLICT (session_id) DO NOTHING",
                    &[
                        &session_id,
                        &timestamp(now),
                        &(new.seed as i64),
                        &new.scenario,
                        &(new.planned_turns as i64),
                        &new.schedule,
                        &new.scheduled_time,
                        &self.node_id,
                        &(self.lease_ms as f64),
                        &new.trigger.map(|trigger| trigger.as_str()),
                    ],
                )
                .await;
            match inserted {
                Ok(1) => {
                    transaction.commit().await?;
                    self.hold(&session_id, 1);
                    return Ok(session_id);
                }
                Ok(_) => continue,
                Err(error) if is_unique_violation(&error) => {
                    return Err(StoreError::DuplicateRun {
                        schedule: new.schedule.clone().unwrap_or_default(),
                        scheduled_time: new.scheduled_time.clone().unwrap_or_default(),
                    })
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Ends an `active` session; `false` when it had already ended or is
    /// another live node's. A session held here is ended only under the
    /// epoch held (fencing); one not held only when no live node holds it.
    pub async fn finish_session(
        &self,
        session_id: &str,
        status: SessionStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let epoch = self.held_epoch(session_id).unwrap_or(-1);
        let changed = client
            .execute(
                "UPDATE sessions SET status = $2, end_time = $3, failure_reason = $4,
                     num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = $1),
                     lease_expires_at = NULL
                 WHERE session_id = $1 AND status = 'active'
                   AND (($6::bigint >= 0 AND owner_node = $5 AND lease_epoch = $6)
                     OR ($6::bigint < 0 AND (owner_node IS NULL OR owner_node = $5
                                     OR lease_expires_at IS NULL OR lease_expires_at < now())))",
                &[
                    &session_id,
                    &status.as_str(),
                    &timestamp(chrono::Utc::now()),
                    &reason,
                    &self.node_id,
                    &epoch,
                ],
            )
            .await?;
        if changed > 0 {
            self.forget(session_id);
            return Ok(true);
        }
        let exists = client
            .query_opt(
                "SELECT 1 FROM sessions WHERE session_id = $1",
                &[&session_id],
            )
            .await?
            .is_some();
        if !exists {
            return Err(StoreError::SessionNotFound(session_id.to_string()));
        }
        Ok(false)
    }

    /// Sessions newest first, optionally only those with `status` and/or
    /// started by `schedule`.
    pub async fn find_sessions(
        &self,
        status: Option<SessionStatus>,
        schedule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR schedule = $2)
                     ORDER BY start_time DESC, session_id DESC LIMIT $3"
                ),
                &[
                    &status.map(SessionStatus::as_str),
                    &schedule,
                    &(limit as i64),
                ],
            )
            .await?;
        Ok(rows.iter().map(session_row).collect())
    }

    /// A session with everything recorded for it.
    pub async fn session(&self, session_id: &str) -> Result<SessionDetail, StoreError> {
        let client = self.client().await?;
        let session = client
            .query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"),
                &[&session_id],
            )
            .await?
            .map(|row| session_row(&row))
            .ok_or_else(|| StoreError::SessionNotFound(session_id.to_string()))?;
        let messages = client
            .query(
                &format!("{MESSAGE_COLUMNS} WHERE session_id = $1 ORDER BY turn_id"),
                &[&session_id],
            )
            .await?;
        let tool_usage = client
            .query(
                &format!("{TOOL_USAGE_COLUMNS} WHERE session_id = $1 ORDER BY id"),
                &[&session_id],
            )
            .await?;
        let service_calls = client
            .query(
                &format!("{SERVICE_CALL_COLUMNS} WHERE session_id = $1 ORDER BY id"),
                &[&session_id],
            )
            .await?;
        Ok(SessionDetail {
            session,
            messages: messages.iter().map(message_row).collect(),
            tool_usage: tool_usage.iter().map(tool_usage_row).collect(),
            service_calls: service_calls.iter().map(service_call_row).collect(),
        })
    }

    /// The latest slot a schedule has a session for (RFC 3339), if any.
    pub async fn last_scheduled_time(&self, schedule: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT MAX(scheduled_time) FROM sessions WHERE schedule = $1",
                &[&schedule],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The token totals of the sessions started at or after `since`, per
    /// schedule (a range read on the `sessions_start_time` index).
    pub async fn token_totals_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ScheduleTokens>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT schedule, COUNT(*), COALESCE(SUM(prompt_tokens), 0)::bigint,
                        COALESCE(SUM(completion_tokens), 0)::bigint,
                        COALESCE(SUM(usage_estimated), 0)::bigint, SUM(cost)
                 FROM sessions WHERE start_time >= $1 GROUP BY schedule ORDER BY schedule NULLS FIRST",
                &[&timestamp(since)],
            )
            .await?;
        let count = |row: &tokio_postgres::Row, index| row.get::<_, i64>(index).max(0) as u64;
        Ok(rows
            .iter()
            .map(|row| ScheduleTokens {
                schedule: row.get(0),
                totals: TokenTotals {
                    sessions: count(row, 1),
                    prompt_tokens: count(row, 2),
                    completion_tokens: count(row, 3),
                    usage_estimated: count(row, 4),
                    cost: row.get(5),
                },
            })
            .collect())
    }

    /// The tokens of the sessions started in `[from, to)`, of `schedule`
    /// or of all (a range read on the `sessions_start_time` index).
    pub async fn tokens_used_between(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        schedule: Option<&str>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0)::bigint FROM sessions
                 WHERE start_time >= $1 AND start_time < $2 AND ($3::text IS NULL OR schedule = $3)",
                &[&timestamp(from), &timestamp(to), &schedule],
            )
            .await?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}
