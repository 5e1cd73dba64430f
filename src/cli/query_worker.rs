//! `heistd services query-worker` (not a companion, so not listed): the
//! database tool's worker process, which the services process starts itself
//! (`services::query_pool`). It only hands stdin and stdout to
//! `services::query_worker::serve`; stdout carries the pool's protocol, so
//! nothing else may print there.

use super::CliError;
use crate::services::{query_worker, ServiceError};

/// Serves one pool until it closes stdin.
pub async fn query_worker() -> Result<(), CliError> {
    let served = tokio::task::spawn_blocking(|| {
        query_worker::serve(std::io::stdin().lock(), std::io::stdout().lock())
    })
    .await
    .map_err(|error| CliError::Runtime(error.to_string()))?;
    served.map_err(|error| CliError::Service(ServiceError::Database(error.to_string())))
}
