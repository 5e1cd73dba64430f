//! Reconciliation: the store is the source of truth for memory. Beside the
//! outbox deliverer, this task compares, for every session still running
//! or ended within `outbox.reconcile_window_hours`, the content the memory
//! service holds of heistd's own writes (`GET /sessions/{id}/digest`: its
//! entries by heistd's client, each with a SHA-256 of its content) with the
//! writes the store says were delivered, hashed the same way
//! ([`MemoryWrite::content_hash`]). Entries another client wrote (an
//! agent's own memories) are not in the digest, so they never stand in for
//! heistd's. When a delivered write is missing or held with other content
//! (the service restarted empty, lost a file, or something wrote in
//! heistd's place) it marks that session's delivered writes undelivered
//! again and delivers them at once with their idempotency keys
//! (`session:turn`), so what the service still held counts once and the
//! result is exact. A service without the digest (the prototype's) is
//! compared by count (`GET /sessions/{id}/count`). It runs every
//! `outbox.reconcile_interval_ms`, and at once when `GET /health` shows a
//! new instance id. Sessions whose last delivery is past the memory
//! service's retention are not compared (it should have dropped them), and
//! abandoned writes (refused for a quota) are never sent again.
//!
//! It adds no SQL (that is `store`) and no HTTP of its own (that is
//! `clients`); delivery is the heist runner's, through [`Runs`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::runs::{RunContext, Runs};
use crate::metrics as names;
use crate::store::{DeliveredCount, StoreHandle};
use crate::wire::memory::EntryDigest;
use crate::wire::MemoryWrite;

/// The instance id is looked at this often at most (more often when the
/// reconcile interval is shorter), so a restart is seen quickly.
const INSTANCE_PROBE_EVERY: Duration = Duration::from_secs(5);
/// Sessions compared per pass.
const SESSIONS_PER_PASS: usize = 1_000;
/// Outbox batches one session's re-delivery sends before it leaves the
/// rest to the outbox deliverer.
const MAX_BATCHES: usize = 64;

/// Watches the memory service's instance id and reconciles on a change
/// and every `outbox.reconcile_interval_ms`, until `stop` becomes true.
pub async fn run(runs: Arc<Runs>, store: StoreHandle, mut stop: watch::Receiver<bool>) {
    let mut known: Option<String> = None;
    let mut last_pass: Option<Instant> = None;
    loop {
        let context = runs.context();
        let interval = Duration::from_millis(context.config.outbox.reconcile_interval_ms);
        let new_instance = seen_new_instance(&context, &mut known).await;
        let due = last_pass.is_none_or(|last| last.elapsed() >= interval);
        if new_instance || due {
            last_pass = Some(Instant::now());
            reconcile_once(&runs, &store, &context).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval.min(INSTANCE_PROBE_EVERY)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Whether the memory service reports an instance id other than the one
/// last seen (the first one seen counts: heistd cannot know what the
/// service held before it started).
async fn seen_new_instance(context: &RunContext, known: &mut Option<String>) -> bool {
    let Ok(Some(id)) = context.clients.memory.instance_id().await else {
        return false;
    };
    if known.as_deref() == Some(id.as_str()) {
        return false;
    }
    if let Some(previous) = known.as_deref() {
        tracing::warn!(%previous, current = %id, "the memory service restarted empty; reconciling");
        metrics::counter!(names::MEMORY_INSTANCE_CHANGES_TOTAL).increment(1);
    }
    *known = Some(id);
    true
}

/// One pass over every session the memory service should hold.
pub async fn reconcile_once(runs: &Arc<Runs>, store: &StoreHandle, context: &RunContext) -> u64 {
    let now = chrono::Utc::now();
    let window = chrono::Duration::hours(context.config.outbox.reconcile_window_hours as i64);
    let retention =
        chrono::Duration::hours(context.config.companions.memory.retention_hours as i64);
    let sessions = match store
        .delivered_counts(now - window, now - retention, SESSIONS_PER_PASS)
        .await
    {
        Ok(sessions) => sessions,
        Err(error) => {
            tracing::error!(%error, "cannot count delivered memory writes to reconcile");
            metrics::counter!(names::MEMORY_RECONCILE_RUNS_TOTAL, "outcome" => "error")
                .increment(1);
            return 0;
        }
    };
    let mut missing_total = 0;
    let mut failed = false;
    for session in &sessions {
        match reconcile_session(runs, store, context, session).await {
            Ok(missing) => missing_total += missing,
            Err(()) => failed = true,
        }
    }
    let outcome = match (failed, missing_total) {
        (true, _) => "error",
        (false, 0) => "exact",
        (false, _) => "redelivered",
    };
    metrics::counter!(names::MEMORY_RECONCILE_RUNS_TOTAL, "outcome" => outcome).increment(1);
    tracing::debug!(
        sessions = sessions.len(),
        missing = missing_total,
        outcome,
        "memory reconciled"
    );
    missing_total
}

/// Compares one session and delivers again what the service lacks (or
/// holds differently); returns how many delivered writes it lacked.
async fn reconcile_session(
    runs: &Arc<Runs>,
    store: &StoreHandle,
    context: &RunContext,
    session: &DeliveredCount,
) -> Result<u64, ()> {
    let session_id = session.session_id.as_str();
    // The store is read first: a write marked delivered there was
    // acknowledged by the service before, so a service that lost nothing
    // holds it.
    let payloads = store.delivered_payloads(session_id).await.map_err(
        |error| tracing::error!(%session_id, %error, "cannot read delivered memory writes"),
    )?;
    let (held, missing) = match context.clients.memory.session_digest(session_id).await {
        Ok(Some(digest)) => (
            digest.len() as u64,
            missing_by_content(session_id, &payloads, digest),
        ),
        Ok(None) => match context.clients.memory.session_count(session_id).await {
            Ok(held) => (held, session.delivered.saturating_sub(held)),
            Err(error) => {
                tracing::warn!(%session_id, %error, "cannot read the memory service's count");
                return Err(());
            }
        },
        Err(error) => {
            tracing::warn!(%session_id, %error, "cannot read the memory service's digest");
            return Err(());
        }
    };
    if missing == 0 {
        return Ok(0);
    }
    let marked = store
        .mark_outbox_undelivered(session_id)
        .await
        .map_err(|error| tracing::error!(%session_id, %error, "cannot mark memory writes for delivery again"))?;
    tracing::warn!(
        %session_id,
        held,
        delivered = payloads.len(),
        missing,
        marked,
        "the memory service lacks delivered writes; delivering them again"
    );
    metrics::counter!(names::MEMORY_RECONCILE_REDELIVERED_TOTAL).increment(missing);
    deliver_now(runs, store, session_id).await;
    Ok(missing)
}

/// How many of the delivered `payloads` the service's `held` entries (its
/// digest of heistd's writes) lack, each entry standing for one write: a
/// write held with other content counts as missing. A payload that is not
/// a memory write is skipped (it cannot be compared; the outbox wrote it).
fn missing_by_content(session_id: &str, payloads: &[String], held: Vec<EntryDigest>) -> u64 {
    let mut held: BTreeMap<EntryDigest, u64> =
        held.into_iter().fold(BTreeMap::new(), |mut counts, entry| {
            *counts.entry(entry).or_default() += 1;
            counts
        });
    let mut missing = 0;
    for payload in payloads {
        let Ok(write) = serde_json::from_str::<MemoryWrite>(payload) else {
            tracing::warn!(%session_id, "a delivered outbox payload is not a memory write");
            continue;
        };
        let digest = EntryDigest {
            hash: write.content_hash(),
            agent_id: write.agent_id,
            turn_id: write.turn_id,
        };
        match held.get_mut(&digest) {
            Some(count) if *count > 0 => *count -= 1,
            _ => missing += 1,
        }
    }
    missing
}

/// Delivers a session's outbox now, batch after batch, until it is empty
/// or the service refuses (the outbox deliverer then carries on).
async fn deliver_now(runs: &Arc<Runs>, store: &StoreHandle, session_id: &str) {
    for _ in 0..MAX_BATCHES {
        match runs.deliver_outbox(session_id).await {
            Ok(0) => {}
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%session_id, %error, "re-delivery paused; the outbox deliverer retries");
                return;
            }
        }
        match store.pending_outbox(session_id, 1).await {
            Ok(pending) if pending.is_empty() => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(turn_id: i64, message: &str) -> MemoryWrite {
        MemoryWrite {
            agent_id: "mole".into(),
            turn_id,
            message: message.into(),
            game_session_id: "s1".into(),
        }
    }

    fn digest(write: &MemoryWrite) -> EntryDigest {
        EntryDigest {
            agent_id: write.agent_id.clone(),
            turn_id: write.turn_id,
            hash: write.content_hash(),
        }
    }

    #[test]
    fn content_not_counts_decides_what_is_missing() {
        let delivered = [write(1, "In."), write(2, "Out.")];
        let payloads: Vec<String> = delivered
            .iter()
            .map(|write| serde_json::to_string(write).expect("json"))
            .collect();
        let exact = delivered.iter().map(digest).collect();
        assert_eq!(missing_by_content("s1", &payloads, exact), 0);
        // As many entries as delivered, one of them different: one missing.
        let forged = vec![digest(&delivered[0]), digest(&write(2, ""))];
        assert_eq!(missing_by_content("s1", &payloads, forged), 1);
        // One entry cannot stand for two writes.
        let once = vec![digest(&delivered[0])];
        let twice = [payloads[0].clone(), payloads[0].clone()];
        assert_eq!(missing_by_content("s1", &twice, once), 1);
        assert_eq!(missing_by_content("s1", &payloads, Vec::new()), 2);
    }
}
