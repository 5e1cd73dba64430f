//! A per-task journal of calls that failed or were retried, so the heist
//! runner can commit them with the turn they belong to (the `service_calls`
//! table) without every client threading a session id through its API.
//! Outside a journal scope, calls are simply not journaled.

use std::cell::RefCell;
use std::future::Future;

use super::CallSummary;

/// One journaled call.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub service: String,
    pub operation: String,
    pub summary: CallSummary,
}

tokio::task_local! {
    static JOURNAL: RefCell<Vec<JournalEntry>>;
}

/// Runs `work` with a fresh journal; returns its output and what it noted.
pub async fn scope<T>(work: impl Future<Output = T>) -> (T, Vec<JournalEntry>) {
    JOURNAL
        .scope(RefCell::new(Vec::new()), async move {
            let output = work.await;
            let entries = JOURNAL.with(|journal| journal.take());
            (output, entries)
        })
        .await
}

/// Notes a call if it failed or needed more than one attempt.
pub(super) fn note(service: &str, operation: &str, summary: &CallSummary) {
    if summary.outcome.is_success() && summary.attempts <= 1 {
        return;
    }
    let _ = JOURNAL.try_with(|journal| {
        journal.borrow_mut().push(JournalEntry {
            service: service.to_string(),
            operation: operation.to_string(),
            summary: summary.clone(),
        });
    });
}
