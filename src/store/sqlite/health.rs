//! Health events: the `health_events` rows the health checker writes when
//! a service's state changes, and reading them back. It does not decide
//! what a state is; the checker does.

use rusqlite::params;

use super::rows::HEALTH_EVENT_COLUMNS;
use super::Store;
use crate::store::{timestamp, HealthEvent, StoreError};

impl Store {
    pub fn record_health_event(
        &self,
        service: &str,
        from_state: &str,
        to_state: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO health_events (timestamp, service, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![timestamp(chrono::Utc::now()), service, from_state, to_state, reason],
        )?;
        Ok(())
    }

    /// Health events oldest first, optionally of one service.
    pub fn health_events(&self, service: Option<&str>) -> Result<Vec<HealthEvent>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "{HEALTH_EVENT_COLUMNS} WHERE (?1 IS NULL OR service = ?1) ORDER BY id"
        ))?;
        let rows = statement
            .query_map(params![service], |row| {
                Ok(HealthEvent {
                    timestamp: row.get(0)?,
                    service: row.get(1)?,
                    from_state: row.get(2)?,
                    to_state: row.get(3)?,
                    reason: row.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
