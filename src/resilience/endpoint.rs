//! One endpoint of a service: where it is (base URL, name, model, tier),
//! and what the stack keeps for it alone: its circuit breaker, its
//! bulkhead (sized from the config or, later, from what the server says),
//! its outstanding requests, and its outlier ejection (Envoy's
//! `consecutive_gateway_failure`: N failures in a row eject it for a time
//! that doubles with each repeat, capped). Whether an ejection is allowed
//! at all (the share of a tier already out, the last one that can serve)
//! is the guard's decision, which sees the whole tier.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::breaker::{CircuitBreaker, Verdict};
use crate::config::{BreakerConfig, OutlierConfig, MAX_EJECTION_MS};
use crate::metrics as names;

/// Where one endpoint is, as the caller configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Its `endpoint` metric label and status name.
    pub name: String,
    pub base_url: String,
    /// The model it runs (empty for a tool service).
    pub model: String,
    /// 0 for the primary list, 1, 2, .. for the fallbacks in order.
    pub tier: u32,
    /// Its share of the picks among its tier.
    pub weight: u32,
    /// Calls in flight at once; 0: the policy's until the server says.
    pub max_concurrent: u32,
}

/// One endpoint and its own share of the stack.
pub struct Endpoint {
    pub(super) index: usize,
    pub(super) spec: EndpointSpec,
    service: String,
    pub(super) breaker: CircuitBreaker,
    pub(super) bulkhead: Semaphore,
    /// The bulkhead's size now (it changes when the server says).
    capacity: AtomicU32,
    /// True once the capacity is no longer the policy's guess.
    pub(super) capacity_settled: std::sync::atomic::AtomicBool,
    outstanding: AtomicU32,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    consecutive_failures: u32,
    until: Option<Instant>,
    /// Ejections so far, for the doubling; forgotten after a spell twice
    /// as long as the longest ejection without one.
    times: u32,
    last_ejected: Option<Instant>,
}

/// An endpoint as status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    pub name: String,
    pub base_url: String,
    pub model: String,
    pub tier: u32,
    pub weight: u32,
    pub outstanding: u32,
    pub max_concurrent: u32,
    pub breaker: &'static str,
    /// How long it stays ejected; `None` when it is not.
    pub ejected_for: Option<Duration>,
}

impl Endpoint {
    pub(super) fn new(
        index: usize,
        service: &str,
        spec: EndpointSpec,
        breaker: BreakerConfig,
        default_capacity: u32,
        export_breaker: bool,
    ) -> Self {
        let capacity = if spec.max_concurrent == 0 {
            default_capacity
        } else {
            spec.max_concurrent
        };
        let breaker = if export_breaker {
            CircuitBreaker::new(service, breaker)
        } else {
            CircuitBreaker::quiet(service, breaker)
        };
        let endpoint = Self {
            index,
            service: service.to_string(),
            breaker,
            bulkhead: Semaphore::new(capacity as usize),
            capacity: AtomicU32::new(capacity),
            capacity_settled: (spec.max_concurrent != 0).into(),
            outstanding: AtomicU32::new(0),
            ejection: Mutex::new(Ejection::default()),
            spec,
        };
        endpoint.create_series();
        endpoint
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn base_url(&self) -> &str {
        &self.spec.base_url
    }

    pub fn model(&self) -> &str {
        &self.spec.model
    }

    pub fn tier(&self) -> u32 {
        self.spec.tier
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn max_concurrent(&self) -> u32 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Whether the endpoint was set to a size, or has learned one from
    /// its server: the server's word is asked only while this is false.
    pub fn capacity_settled(&self) -> bool {
        self.capacity_settled.load(Ordering::Relaxed)
    }

    /// How long it stays ejected, `None` when it is not (an ejection whose
    /// time is over ends here).
    pub fn ejected_for(&self) -> Option<Duration> {
        let mut ejection = self.ejection.lock();
        let until = ejection.until?;
        let now = Instant::now();
        if now >= until {
            ejection.until = None;
            drop(ejection);
            self.export_ejected(false);
            return None;
        }
        Some(until - now)
    }

    /// Not ejected, and its breaker would let a call through now.
    pub fn can_serve(&self) -> bool {
        self.ejected_for().is_none() && self.breaker.would_admit()
    }

    pub fn snapshot(&self) -> EndpointSnapshot {
        EndpointSnapshot {
            name: self.spec.name.clone(),
            base_url: self.spec.base_url.clone(),
            model: self.spec.model.clone(),
            tier: self.spec.tier,
            weight: self.spec.weight,
            outstanding: self.outstanding(),
            max_concurrent: self.max_concurrent(),
            breaker: self.breaker.state().as_str(),
            ejected_for: self.ejected_for(),
        }
    }

    /// Resizes the bulkhead to `slots` (the server said how many it has).
    pub(super) fn set_capacity(&self, slots: u32) {
        let slots = slots.max(1);
        self.capacity_settled.store(true, Ordering::Relaxed);
        let before = self.capacity.swap(slots, Ordering::Relaxed);
        if slots > before {
            self.bulkhead.add_permits((slots - before) as usize);
        } else if slots < before {
            // Slots in use now stay until the next resize: the server is
            // asked before the first calls, when none are.
            self.bulkhead.forget_permits((before - slots) as usize);
        }
        tracing::info!(service = %self.service, endpoint = %self.spec.name, slots, "endpoint capacity set from its server");
    }

    /// Counts a call going out to it; the returned guard counts it back.
    pub(super) fn start_request(&self) -> Outstanding<'_> {
        let now = self.outstanding.fetch_add(1, Ordering::Relaxed) + 1;
        self.export_outstanding(now);
        Outstanding { endpoint: self }
    }

    /// Records what an attempt said for outlier detection; true when this
    /// failure reached the ejection threshold (the guard decides whether
    /// to eject).
    pub(super) fn note_attempt(&self, verdict: Verdict, outlier: &OutlierConfig) -> bool {
        let mut ejection = self.ejection.lock();
        match verdict {
            Verdict::Healthy => {
                ejection.consecutive_failures = 0;
                false
            }
            Verdict::Backpressure => false,
            Verdict::Failed => {
                ejection.consecutive_failures += 1;
                outlier.consecutive_failures > 0
                    && ejection.consecutive_failures >= outlier.consecutive_failures
                    && ejection.until.is_none()
            }
        }
    }

    /// Ejects it: for `base_ejection_ms` doubled per earlier ejection,
    /// capped at [`MAX_EJECTION_MS`]. Returns the ejection's length.
    pub(super) fn eject(&self, outlier: &OutlierConfig) -> Duration {
        let mut ejection = self.ejection.lock();
        let now = Instant::now();
        let cap = Duration::from_millis(MAX_EJECTION_MS);
        if ejection
            .last_ejected
            .is_some_and(|last| now.duration_since(last) > cap * 2)
        {
            ejection.times = 0;
        }
        let base = Duration::from_millis(outlier.base_ejection_ms);
        let length = base
            .saturating_mul(1u32 << ejection.times.min(16))
            .min(cap.max(base));
        ejection.times = ejection.times.saturating_add(1);
        ejection.until = Some(now + length);
        ejection.last_ejected = Some(now);
        ejection.consecutive_failures = 0;
        drop(ejection);
        tracing::warn!(service = %self.service, endpoint = %self.spec.name, ejected_ms = length.as_millis() as u64, "endpoint ejected");
        metrics::counter!(names::ENDPOINT_EJECTIONS_TOTAL, "service" => self.service.clone(), "endpoint" => self.spec.name.clone()).increment(1);
        self.export_ejected(true);
        length
    }

    /// It answered (its health check, or a session's probe): an ejection
    /// ends now.
    pub(super) fn end_ejection(&self) {
        let mut ejection = self.ejection.lock();
        ejection.consecutive_failures = 0;
        if ejection.until.take().is_some() {
            drop(ejection);
            tracing::info!(service = %self.service, endpoint = %self.spec.name, "ejected endpoint answers again");
            self.export_ejected(false);
        }
    }

    pub(super) fn record_attempt_duration(&self, elapsed: Duration) {
        metrics::histogram!(names::ENDPOINT_ATTEMPT_DURATION_SECONDS, "service" => self.service.clone(), "endpoint" => self.spec.name.clone())
            .record(elapsed.as_secs_f64());
    }

    fn export_ejected(&self, ejected: bool) {
        metrics::gauge!(names::ENDPOINT_EJECTED, "service" => self.service.clone(), "endpoint" => self.spec.name.clone())
            .set(if ejected { 1.0 } else { 0.0 });
    }

    fn export_outstanding(&self, outstanding: u32) {
        metrics::gauge!(names::ENDPOINT_OUTSTANDING, "service" => self.service.clone(), "endpoint" => self.spec.name.clone())
            .set(f64::from(outstanding));
    }

    fn create_series(&self) {
        self.export_ejected(false);
        self.export_outstanding(0);
        metrics::counter!(names::ENDPOINT_EJECTIONS_TOTAL, "service" => self.service.clone(), "endpoint" => self.spec.name.clone()).increment(0);
        let _ = metrics::histogram!(names::ENDPOINT_ATTEMPT_DURATION_SECONDS, "service" => self.service.clone(), "endpoint" => self.spec.name.clone());
    }
}

/// A request out to an endpoint, counted until dropped.
pub(super) struct Outstanding<'a> {
    endpoint: &'a Endpoint,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let now = self
            .endpoint
            .outstanding
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.endpoint.export_outstanding(now);
    }
}
