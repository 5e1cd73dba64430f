//! Which endpoint an attempt goes to, and when one is ejected.
//!
//! The pick: tiers in order (0 the primaries, then each fallback list), and
//! in the first tier with an endpoint that can serve (not ejected, breaker
//! admits), the endpoints the call has not tried yet when there are any;
//! among those with a free slot, power of two choices by outstanding
//! requests per unit of weight (Envoy's `LEAST_REQUEST`); when every slot
//! of the tier is busy, the first slot freed on any of them, within
//! `max_queue_wait_ms`. A tier that cannot serve or stays full is skipped.
//! One endpoint alone takes its breaker's permit, then waits for its
//! bulkhead, as the stack always did.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{AcquireError, SemaphorePermit};
use tokio::time::Instant;

use super::breaker::{self, Permit};
use super::{Endpoint, Guard};

/// An endpoint with leave to call it: its breaker's permit and a slot.
pub(super) struct Chosen<'a> {
    pub endpoint: &'a Endpoint,
    pub permit: Permit<'a>,
    pub slot: SemaphorePermit<'a>,
}

/// Why no endpoint was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No endpoint can serve: ejected or breakers open.
    Open,
    /// Some could, but every slot stayed busy past the queue wait.
    Full,
}

type Acquire<'a> =
    Pin<Box<dyn Future<Output = Result<SemaphorePermit<'a>, AcquireError>> + Send + 'a>>;

impl Guard {
    pub(super) async fn choose<'a>(
        &'a self,
        eligible: &(dyn Fn(&Endpoint) -> bool + Sync),
        tried: &[bool],
        deadline: Instant,
    ) -> Result<Chosen<'a>, Refusal> {
        let mut tiers: Vec<u32> = self
            .endpoints
            .iter()
            .filter(|endpoint| eligible(endpoint))
            .map(Endpoint::tier)
            .collect();
        tiers.sort_unstable();
        tiers.dedup();
        let mut refusal = Refusal::Open;
        for tier in tiers {
            let serving: Vec<&Endpoint> = self
                .endpoints
                .iter()
                .filter(|endpoint| endpoint.tier() == tier && eligible(endpoint))
                .filter(|endpoint| endpoint.can_serve())
                .collect();
            let untried: Vec<&Endpoint> = serving
                .iter()
                .copied()
                .filter(|endpoint| !tried[endpoint.index])
                .collect();
            let pool = if untried.is_empty() { serving } else { untried };
            if pool.is_empty() {
                continue;
            }
            let taken = if pool.len() == 1 {
                self.take_the_one(pool[0], deadline).await
            } else {
                self.take_one_of(pool, deadline).await
            };
            match taken {
                Ok(chosen) => return Ok(chosen),
                Err(Refusal::Full) => refusal = Refusal::Full,
                Err(Refusal::Open) => {}
            }
        }
        Err(refusal)
    }

    /// One endpoint: its breaker's permit, then a slot within the queue
    /// wait (a full bulkhead gives the permit back unrecorded: it says
    /// nothing about the service's health).
    async fn take_the_one<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        deadline: Instant,
    ) -> Result<Chosen<'a>, Refusal> {
        let permit = endpoint.breaker.try_acquire().ok_or(Refusal::Open)?;
        let waited =
            tokio::time::timeout_at(self.queue_deadline(deadline), endpoint.bulkhead.acquire());
        match waited.await {
            Ok(Ok(slot)) => Ok(Chosen {
                endpoint,
                permit,
                slot,
            }),
            _ => Err(Refusal::Full),
        }
    }

    /// Several: P2C among those with a free slot, else the first slot
    /// freed among them; one whose breaker refuses meanwhile is dropped.
    async fn take_one_of<'a>(
        &'a self,
        mut pool: Vec<&'a Endpoint>,
        deadline: Instant,
    ) -> Result<Chosen<'a>, Refusal> {
        let queue_deadline = self.queue_deadline(deadline);
        while !pool.is_empty() {
            let free: Vec<&Endpoint> = pool
                .iter()
                .copied()
                .filter(|endpoint| endpoint.bulkhead.available_permits() > 0)
                .collect();
            let (endpoint, slot) = if free.is_empty() {
                let waited = tokio::time::timeout_at(queue_deadline, first_slot(&pool)).await;
                match waited {
                    Ok(Some(taken)) => taken,
                    _ => return Err(Refusal::Full),
                }
            } else {
                let endpoint = self.power_of_two(&free);
                match endpoint.bulkhead.try_acquire() {
                    Ok(slot) => (endpoint, slot),
                    Err(_) => continue,
                }
            };
            match endpoint.breaker.try_acquire() {
                Some(permit) => {
                    return Ok(Chosen {
                        endpoint,
                        permit,
                        slot,
                    })
                }
                None => pool.retain(|other| other.index != endpoint.index),
            }
        }
        Err(Refusal::Open)
    }

    fn queue_deadline(&self, deadline: Instant) -> Instant {
        let wait = Duration::from_millis(self.policy.config.max_queue_wait_ms);
        (Instant::now() + wait).min(deadline)
    }

    /// Two endpoints drawn by weight; the one with fewer outstanding
    /// requests per unit of weight wins (a tie: the first drawn).
    pub(super) fn power_of_two<'a>(&self, pool: &[&'a Endpoint]) -> &'a Endpoint {
        if pool.len() == 1 {
            return pool[0];
        }
        let (first, second) = {
            let mut random = self.random.lock();
            let first = draw_by_weight(pool, None, &mut *random);
            let second = draw_by_weight(pool, Some(first), &mut *random);
            (pool[first], pool[second])
        };
        let load = |endpoint: &Endpoint, other: &Endpoint| {
            u64::from(endpoint.outstanding() + 1) * u64::from(other.spec.weight.max(1))
        };
        if load(second, first) < load(first, second) {
            second
        } else {
            first
        }
    }

    /// Ejects `endpoint` (it reached `consecutive_failures`) unless its
    /// tier has `max_ejection_percent` out already, or no other endpoint
    /// of the tier can serve.
    pub(super) fn maybe_eject(&self, endpoint: &Endpoint) {
        let tier: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|other| other.tier() == endpoint.tier())
            .collect();
        let others_serving = tier
            .iter()
            .filter(|other| other.index != endpoint.index && other.can_serve())
            .count();
        let ejected = tier
            .iter()
            .filter(|other| other.ejected_for().is_some())
            .count();
        let percent_out = ejected * 100 / tier.len();
        if others_serving == 0 || percent_out >= self.outlier.max_ejection_percent as usize {
            tracing::debug!(service = %self.service, endpoint = endpoint.name(), "ejection not allowed: too few endpoints left");
            return;
        }
        endpoint.eject(&self.outlier);
    }

    /// With several endpoints, the service's breaker series show the
    /// service as a whole ([`Guard::breaker_state`]); one endpoint's
    /// breaker writes them itself.
    pub(super) fn export_breaker(&self) {
        if self.endpoints.len() > 1 {
            breaker::export_state(&self.service, self.breaker_state());
        }
    }
}

/// Index of an endpoint of `pool` drawn with probability by weight,
/// `skip` excluded.
fn draw_by_weight(pool: &[&Endpoint], skip: Option<usize>, random: &mut impl Rng) -> usize {
    let weight = |index: usize| {
        if Some(index) == skip {
            0
        } else {
            u64::from(pool[index].spec.weight.max(1))
        }
    };
    let total: u64 = (0..pool.len()).map(weight).sum();
    let mut point = random.random_range(0..total.max(1));
    for index in 0..pool.len() {
        if point < weight(index) {
            return index;
        }
        point -= weight(index);
    }
    pool.len() - 1
}

/// The first slot freed among `pool`'s bulkheads; `None` if all closed.
async fn first_slot<'a>(pool: &[&'a Endpoint]) -> Option<(&'a Endpoint, SemaphorePermit<'a>)> {
    let mut waits: Vec<(&'a Endpoint, Option<Acquire<'a>>)> = pool
        .iter()
        .map(|endpoint| {
            let acquire: Acquire<'a> = Box::pin(endpoint.bulkhead.acquire());
            (*endpoint, Some(acquire))
        })
        .collect();
    std::future::poll_fn(|context| {
        for (endpoint, wait) in &mut waits {
            let Some(acquire) = wait else { continue };
            match acquire.as_mut().poll(context) {
                Poll::Ready(Ok(slot)) => return Poll::Ready(Some((*endpoint, slot))),
                // A closed bulkhead (never, today) is not waited on again.
                Poll::Ready(Err(_)) => *wait = None,
                Poll::Pending => {}
            }
        }
        if waits.iter().all(|(_, wait)| wait.is_none()) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await
}
