//! Rate limits of one endpoint, kept before the provider has to say 429:
//! the client's own `rpm` and `tpm` (token buckets that refill
//! continuously, as OpenAI's and LiteLLM's limits do, each holding one
//! minute's allowance) and the provider's hold (its answers say how many
//! requests and tokens remain and when they reset; at 0 remaining, new
//! requests wait for that reset).
//!
//! A request asks [`RateLimiter::acquire`] for room, charging one request
//! and its token estimate (estimated prompt plus `max_tokens`), and waits
//! for it within its deadline; room that comes only after the deadline
//! fails the request at once ([`RateLimited`]), without waiting and
//! without touching the network. Once the reply's `usage` is known,
//! [`RateLimiter::correct`] refunds (or charges) the difference.
//! Reservations are taken when the wait is decided, so waiting requests
//! are served in turn; a waiter that is dropped gives its reservation back.
//!
//! Where it sits: after the endpoint is picked and before its bulkhead
//! (a request waiting for its rate must not hold a slot). A pick skips an
//! endpoint whose [`RateLimiter::ready_at`] is later than now.
//!
//! It knows no wire format: `clients` reads the provider's headers into
//! [`ProviderLimits`].

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{journal, CallOutcome, CallSummary};
use crate::config::RateLimitConfig;
use crate::metrics as names;

/// The longest wait the limiter reckons with: room further off is as good
/// as never for any call's deadline, and `Instant` arithmetic stays finite.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// The rate limits of one endpoint; shared by every call to it.
pub struct RateLimiter {
    /// The `service` label, and the service a refused call is journaled under.
    service: String,
    /// The `endpoint` label of `heistd_model_rate_limited_total`.
    endpoint: String,
    state: Mutex<State>,
}

/// What an endpoint's answer said about its limits (OpenAI's
/// `x-ratelimit-*`): each field is absent when the answer did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    pub limit_requests: Option<u64>,
    pub limit_tokens: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// From the answer, how long until the request allowance resets.
    pub reset_requests: Option<Duration>,
    /// From the answer, how long until the token allowance resets.
    pub reset_tokens: Option<Duration>,
}

/// Room taken by one request: kept by the caller to correct the token
/// charge once the reply's `usage` is known.
#[derive(Debug)]
#[must_use = "a permit corrects its charge once usage is known"]
pub struct Permit {
    tokens: u32,
}

/// A request found no room before its deadline; it was not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service}: rate limit of {endpoint}: room only in {} ms, past the call's deadline; call not attempted", wait.as_millis())]
pub struct RateLimited {
    pub service: String,
    pub endpoint: String,
    /// How long the request would have had to wait.
    pub wait: Duration,
}

struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// The provider said an allowance is used up: nothing is sent before this.
    held_until: Option<Instant>,
}

/// A token bucket holding a minute's allowance and refilling continuously;
/// its level goes below 0 when requests reserve room ahead of time.
struct Bucket {
    capacity: f64,
    /// The refill, as configured: kept per minute so that whole limits
    /// give whole waits (1 request at 2 a minute is 30 s, not 30.000000000000004).
    per_minute: f64,
    level: f64,
    updated: Instant,
}

impl RateLimiter {
    /// An endpoint's limiter; `limits` of 0 mean none (only the provider's
    /// hold applies).
    pub fn new(service: &str, endpoint: &str, limits: RateLimitConfig) -> Self {
        let now = Instant::now();
        metrics::counter!(names::MODEL_RATE_LIMITED_TOTAL, "service" => service.to_string(), "endpoint" => endpoint.to_string())
            .increment(0);
        Self {
            service: service.to_string(),
            endpoint: endpoint.to_string(),
            state: Mutex::new(State {
                requests: Bucket::per_minute(limits.rpm, now),
                tokens: Bucket::per_minute(limits.tpm, now),
                held_until: None,
            }),
        }
    }

    /// Waits for room for one request of `tokens` (estimated prompt plus
    /// `max_tokens`) and takes it; fails at once when the room comes only
    /// after `deadline`.
    pub async fn acquire(&self, tokens: u32, deadline: Instant) -> Result<Permit, RateLimited> {
        let now = Instant::now();
        let ready = {
            let mut state = self.state.lock();
            let ready = state.ready_at(now, tokens);
            if ready > deadline {
                return Err(self.refuse(ready - now));
            }
            state.charge(now, 1.0, f64::from(tokens));
            ready
        };
        if ready <= now {
            return Ok(Permit { tokens });
        }
        // Given back if this wait is dropped (its caller gave up).
        let mut reservation = Reservation {
            state: &self.state,
            tokens,
            kept: false,
        };
        tokio::time::sleep_until(ready).await;
        // The provider may have set a hold while this request waited.
        loop {
            let held_until = self.state.lock().held_until;
            let now = Instant::now();
            match held_until {
                Some(until) if until > deadline => return Err(self.refuse(until - now)),
                Some(until) if until > now => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        reservation.kept = true;
        Ok(Permit { tokens })
    }

    /// When a request of `tokens` could go: `None` now. A pick uses it to
    /// pass over an endpoint that would make its call wait.
    pub fn ready_at(&self, tokens: u32) -> Option<Instant> {
        let now = Instant::now();
        let ready = self.state.lock().ready_at(now, tokens);
        (ready > now).then_some(ready)
    }

    /// The reply used `used` tokens (prompt plus completion): the charge
    /// taken by `permit` is corrected to that.
    pub fn correct(&self, permit: Permit, used: u32) {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.charge(now, 0.0, f64::from(used) - f64::from(permit.tokens));
    }

    /// A request sent without a permit (the pick found this endpoint with
    /// room) that used `used` tokens: charged now.
    pub fn record(&self, used: u32) {
        self.state
            .lock()
            .charge(Instant::now(), 1.0, f64::from(used));
    }

    /// An answer's limits: a used-up allowance holds new requests until
    /// its reset.
    pub fn observe(&self, limits: &ProviderLimits) {
        let Some(wait) = limits.exhausted_for() else {
            return;
        };
        let until = Instant::now() + wait.min(MAX_WAIT);
        let mut state = self.state.lock();
        if state.held_until.is_none_or(|held| held < until) {
            tracing::debug!(service = %self.service, endpoint = %self.endpoint, wait_ms = wait.as_millis() as u64,
                limit_requests = ?limits.limit_requests, limit_tokens = ?limits.limit_tokens,
                "provider allowance used up; holding new requests until its reset");
            state.held_until = Some(until);
        }
    }

    fn refuse(&self, wait: Duration) -> RateLimited {
        metrics::counter!(names::MODEL_RATE_LIMITED_TOTAL, "service" => self.service.clone(), "endpoint" => self.endpoint.clone())
            .increment(1);
        RateLimited {
            service: self.service.clone(),
            endpoint: self.endpoint.clone(),
            wait,
        }
    }
}

impl RateLimited {
    /// Records the logical call named `operation` as ended `rate_limited`
    /// (`heistd_service_requests_total`, the journal), as the stack records
    /// a call its breaker refused; returns the error to give the caller.
    pub fn end_call(self, operation: &str) -> Self {
        let summary = CallSummary {
            attempts: 0,
            outcome: CallOutcome::RateLimited,
            last_error: Some(self.to_string()),
            duration: Duration::ZERO,
            endpoint: None,
        };
        metrics::counter!(names::SERVICE_REQUESTS_TOTAL, "service" => self.service.clone(), "outcome" => summary.outcome.as_str()).increment(1);
        metrics::counter!(names::SERVICE_CALLS_BY_RETRY_TOTAL, "service" => self.service.clone(), "kind" => "failed_without_retry").increment(1);
        journal::note(&self.service, operation, &summary);
        self
    }
}

impl Permit {
    /// The tokens this request was charged.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }
}

impl ProviderLimits {
    /// How long until the allowances that are used up (0 remaining) reset:
    /// the later of them; `None` when none is used up, or its reset is unknown.
    pub fn exhausted_for(&self) -> Option<Duration> {
        let requests = self
            .reset_requests
            .filter(|_| self.remaining_requests == Some(0));
        let tokens = self
            .reset_tokens
            .filter(|_| self.remaining_tokens == Some(0));
        requests.max(tokens)
    }

    /// How long a 429 that names no `Retry-After` asks to wait: until the
    /// used-up allowance resets, else the later of the resets it gives.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.exhausted_for()
            .or(self.reset_requests.max(self.reset_tokens))
    }
}

impl State {
    /// When a request of `tokens` finds room: the provider's hold and each
    /// bucket's refill, whichever comes last.
    fn ready_at(&mut self, now: Instant, tokens: u32) -> Instant {
        let mut ready = now.max(self.held_until.unwrap_or(now));
        for (bucket, cost) in [
            (&mut self.requests, 1.0),
            (&mut self.tokens, f64::from(tokens)),
        ] {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                ready = ready.max(now + bucket.wait_for(cost));
            }
        }
        ready
    }

    /// Takes `requests` and `tokens` (a negative charge refunds).
    fn charge(&mut self, now: Instant, requests: f64, tokens: f64) {
        for (bucket, cost) in [(&mut self.requests, requests), (&mut self.tokens, tokens)] {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                bucket.level -= cost;
            }
        }
    }
}

impl Bucket {
    /// A bucket of `per_minute`, full; `None` for 0 (no limit).
    fn per_minute(per_minute: u32, now: Instant) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            capacity: f64::from(per_minute),
            per_minute: f64::from(per_minute),
            level: f64::from(per_minute),
            updated: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_minute / 60.0).min(self.capacity);
        self.updated = now;
    }

    /// How long until `cost` fits; a cost above the capacity waits for a
    /// full bucket, then goes (leaving the bucket in debt).
    fn wait_for(&self, cost: f64) -> Duration {
        let needed = cost.min(self.capacity) - self.level;
        if needed <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(needed * 60.0 / self.per_minute)
            .map_or(MAX_WAIT, |wait| wait.min(MAX_WAIT))
    }
}

/// Room reserved for a waiting request, given back unless kept.
struct Reservation<'a> {
    state: &'a Mutex<State>,
    tokens: u32,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            let mut state = self.state.lock();
            let now = Instant::now();
            state.charge(now, -1.0, -f64::from(self.tokens));
        }
    }
}

#[cfg(test)]
mod tests;
