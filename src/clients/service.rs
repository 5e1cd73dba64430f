//! [`ServiceClient`], one configured service, and its request/reply
//! plumbing: every call runs through the service's resilience guard, is
//! counted in its [`ServiceStats`], and its reply is read under the body
//! cap, whole or (for `post_streaming`) as server-sent events. A service
//! of several endpoints is one client: each attempt is addressed to the
//! endpoint the guard picked; probes go to one endpoint (`on_endpoint`).

mod reply;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{classify_send_error, error_chain, status_error, too_large};
use super::stats::{InFlight, ServiceStats};
use super::{rate_limit_headers, sse, CallError};
use crate::config::{endpoint_label, OutlierConfig, ServiceConfig};
use crate::resilience::{
    BreakerState, Endpoint, EndpointSpec, Guard, Policy, Progress, RateLimiter,
};
use reply::{exchange, exchange_discarding, exchange_streaming, ReplyReader};

/// How a request that asked for a stream was answered.
#[derive(Debug)]
pub enum Streamed<E, W> {
    /// Server-sent events: each `data:` payload before `data: [DONE]`.
    Events(Vec<E>),
    /// A plain JSON body: the server did not stream, which is allowed.
    Whole(W),
}

/// Health probes get this long at most, whatever the call timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One configured service: its name (the metrics label), base URL, HTTP
/// client, and the resilience guard every call goes through.
#[derive(Clone)]
pub struct ServiceClient {
    pub name: String,
    /// The base URL of the endpoint probes go to (`home`).
    pub base_url: String,
    /// The endpoint probes go to: the first, unless [`Self::on_endpoint`].
    home: usize,
    http: reqwest::Client,
    guard: Arc<Guard>,
    pub stats: Arc<ServiceStats>,
    /// A reply body larger than this is refused rather than read.
    max_reply_bytes: usize,
    /// The URL of each fixed path (a turn's calls) on each endpoint,
    /// parsed once: parsing it on every call, its host's IDNA check
    /// included, was 1% of the daemon's CPU per turn. Paths carrying an id
    /// are not kept.
    urls: Arc<Mutex<HashMap<(usize, String), reqwest::Url>>>,
    /// Per endpoint, the limiter told the `x-ratelimit-*` headers of every
    /// answer (success or error), when the service has them (the model).
    rate_limiters: Arc<Vec<Option<Arc<RateLimiter>>>>,
}

/// Every endpoint may take the call.
pub fn any_endpoint(_: &Endpoint) -> bool {
    true
}

/// Fixed paths whose parsed URL a client keeps; past this many (which no
/// client has) the kept ones are dropped and parsed again as used.
const MAX_CACHED_URLS: usize = 32;

/// Reply bodies are capped at this unless the config says otherwise.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024;

impl ServiceClient {
    pub fn new(name: &str, base_url: &str, policy: Policy, http: reqwest::Client) -> Self {
        let only = EndpointSpec {
            name: endpoint_label(base_url),
            base_url: base_url.to_string(),
            model: String::new(),
            tier: 0,
            weight: 1,
            max_concurrent: policy.config.max_concurrent,
        };
        Self::with_endpoints(name, policy, OutlierConfig::default(), vec![only], http)
    }

    /// A service of several endpoints (at least one), each attempt picked
    /// among them by the guard.
    pub fn with_endpoints(
        name: &str,
        policy: Policy,
        outlier: OutlierConfig,
        mut endpoints: Vec<EndpointSpec>,
        http: reqwest::Client,
    ) -> Self {
        for endpoint in &mut endpoints {
            endpoint.base_url = endpoint.base_url.trim_end_matches('/').to_string();
        }
        let guard = Guard::with_endpoints(name, policy, outlier, endpoints);
        Self {
            name: name.to_string(),
            base_url: guard.endpoints()[0].base_url().to_string(),
            home: 0,
            http,
            guard: Arc::new(guard),
            stats: Arc::new(ServiceStats::default()),
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            urls: Arc::default(),
            rate_limiters: Arc::default(),
        }
    }

    /// This client with its probes (and `base_url`) aimed at endpoint
    /// `index`; calls still go wherever the guard picks.
    pub fn on_endpoint(&self, index: usize) -> Self {
        let mut client = self.clone();
        if let Some(endpoint) = self.guard.endpoints().get(index) {
            client.home = index;
            client.base_url = endpoint.base_url().to_string();
        }
        client
    }

    /// The service's endpoints, primaries first.
    pub fn endpoints(&self) -> &[Endpoint] {
        self.guard.endpoints()
    }

    /// The guard of this service's calls.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Every answer of endpoint `i` has its rate-limit headers told to
    /// `limiters[i]`.
    pub fn with_rate_limiters(mut self, limiters: Vec<Option<Arc<RateLimiter>>>) -> Self {
        self.rate_limiters = Arc::new(limiters);
        self
    }

    /// When a call starting now must end: its policy's `deadline_ms` away.
    pub fn call_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.guard.policy().config.deadline_ms)
    }

    /// Replies larger than `bytes` are refused with a decode error.
    pub fn with_max_reply_bytes(mut self, bytes: usize) -> Self {
        self.max_reply_bytes = bytes;
        self
    }

    pub fn from_config(name: &str, service: &ServiceConfig, http: reqwest::Client) -> Self {
        let policy = Policy::new(service.timeout_ms, service.policy.clone());
        let endpoints = service
            .endpoint_urls()
            .into_iter()
            .map(|base_url| EndpointSpec {
                name: endpoint_label(&base_url),
                base_url,
                model: String::new(),
                tier: 0,
                weight: 1,
                max_concurrent: service.policy.max_concurrent,
            })
            .collect();
        Self::with_endpoints(name, policy, service.outlier.clone(), endpoints, http)
            .with_max_reply_bytes(service.max_reply_bytes)
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.guard.breaker_state()
    }

    /// How long until this service's open breaker lets a probe through;
    /// `None` when it is not open. See [`Guard::open_remaining`].
    pub fn breaker_open_remaining(&self) -> Option<Duration> {
        self.guard.open_remaining()
    }

    /// The service was seen answering: an open breaker half-opens now.
    pub fn half_open_breaker(&self) {
        self.guard.half_open_now();
    }

    /// Holds this service's breaker open while it is seen down.
    pub fn hold_breaker_open(&self) {
        self.guard.hold_open();
    }

    /// Ends the hold once the service is seen up: the breaker closes.
    pub fn release_breaker_hold(&self) {
        self.guard.release_hold();
    }

    pub async fn post_json<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        headers: &[(&str, String)],
    ) -> Result<R, CallError> {
        let build = |endpoint: &Endpoint| self.post_request(endpoint.index(), path, body, headers);
        self.send(operation_name(path), build).await
    }

    /// A `POST` whose body and headers are made for the endpoint each
    /// attempt goes to, among those `eligible` accepts; with the index of
    /// the endpoint of the last attempt (the one that answered, if any).
    pub async fn post_json_via<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        eligible: &(dyn Fn(&Endpoint) -> bool + Sync),
        make: impl Fn(&Endpoint) -> (B, Vec<(&'static str, String)>),
    ) -> (Result<R, CallError>, Option<usize>) {
        let build = |endpoint: &Endpoint| {
            let (body, headers) = make(endpoint);
            self.post_request(endpoint.index(), path, &body, &headers)
        };
        self.guarded(operation_name(path), None, eligible, |endpoint, _| {
            exchange(self.reply_reader(endpoint.index()), build(endpoint), None)
        })
        .await
    }

    /// A fresh `POST` of `body` with `headers` to endpoint `index`, for
    /// each attempt.
    fn post_request<B: Serialize + ?Sized>(
        &self,
        index: usize,
        path: &str,
        body: &B,
        headers: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut request = self.request(index, reqwest::Method::POST, path).json(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
    }

    /// A request for the fixed `path` on endpoint `index`, its URL parsed
    /// once and kept. A path that makes no URL is left to reqwest, whose
    /// builder error is then the call's (`CallError::Refused`).
    fn request(
        &self,
        index: usize,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let key = (index, path.to_string());
        if let Some(url) = self.urls.lock().get(&key) {
            return self.http.request(method, url.clone());
        }
        let base_url = self
            .guard
            .endpoints()
            .get(index)
            .map_or(self.base_url.as_str(), Endpoint::base_url);
        let text = format!("{base_url}{path}");
        match reqwest::Url::parse(&text) {
            Ok(url) => {
                let mut urls = self.urls.lock();
                if urls.len() >= MAX_CACHED_URLS {
                    urls.clear();
                }
                urls.insert(key, url.clone());
                self.http.request(method, url)
            }
            Err(_) => self.http.request(method, text),
        }
    }

    /// A `POST` of `body`, sent byte for byte (a signature over it must
    /// match what arrives), with `headers`; any 2xx is success and its body
    /// is read under the cap but not decoded (a webhook receiver answers
    /// what it likes). Named `operation` in metrics and the journal.
    pub async fn post_bytes(
        &self,
        operation: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Result<(), CallError> {
        let build = |endpoint: &Endpoint| {
            let mut request = self
                .request(endpoint.index(), reqwest::Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            request
        };
        self.guarded(operation, None, &any_endpoint, |endpoint, _| {
            exchange_discarding(&self.name, build(endpoint), self.max_reply_bytes)
        })
        .await
        .0
    }

    /// A `POST` whose reply may stream as server-sent events, each event's
    /// data a JSON `E`, ended by `data: [DONE]`; a plain JSON answer is a
    /// `W`. Each piece that arrives tells the stack the reply is still
    /// coming: the per-attempt timeout caps the wait for the first, and
    /// `idle` the gaps after it (see [`Guard::call_streaming`]). A cut or
    /// cancelled attempt drops its response, closing the connection.
    pub async fn post_streaming<B, E, W>(
        &self,
        path: &str,
        body: &B,
        headers: &[(&str, String)],
        idle: Duration,
    ) -> Result<Streamed<E, W>, CallError>
    where
        B: Serialize + ?Sized,
        E: DeserializeOwned,
        W: DeserializeOwned,
    {
        let build = |endpoint: &Endpoint| self.post_request(endpoint.index(), path, body, headers);
        self.guarded(
            operation_name(path),
            Some(idle),
            &any_endpoint,
            |endpoint, progress| {
                exchange_streaming(
                    self.reply_reader(endpoint.index()),
                    build(endpoint),
                    progress,
                )
            },
        )
        .await
        .0
    }

    /// [`Self::post_streaming`] with the body and headers made for each
    /// attempt's endpoint, among those `eligible` accepts; with the index of
    /// the endpoint of the last attempt.
    pub async fn post_streaming_via<B, E, W>(
        &self,
        path: &str,
        idle: Duration,
        eligible: &(dyn Fn(&Endpoint) -> bool + Sync),
        make: impl Fn(&Endpoint) -> (B, Vec<(&'static str, String)>),
    ) -> (Result<Streamed<E, W>, CallError>, Option<usize>)
    where
        B: Serialize,
        E: DeserializeOwned,
        W: DeserializeOwned,
    {
        let build = |endpoint: &Endpoint| {
            let (body, headers) = make(endpoint);
            self.post_request(endpoint.index(), path, &body, &headers)
        };
        self.guarded(
            operation_name(path),
            Some(idle),
            eligible,
            |endpoint, progress| {
                exchange_streaming(
                    self.reply_reader(endpoint.index()),
                    build(endpoint),
                    progress,
                )
            },
        )
        .await
    }

    pub async fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, CallError> {
        self.send(operation_name(path), |endpoint: &Endpoint| {
            self.request(endpoint.index(), reqwest::Method::GET, path)
        })
        .await
    }

    /// A `GET` with headers, named `operation` in metrics and the journal
    /// (a path carrying an id would make a label per id).
    pub async fn get_json_as<R: DeserializeOwned>(
        &self,
        operation: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<R, CallError> {
        // A path carrying an id: parsed each time, not kept.
        let build = |endpoint: &Endpoint| {
            let mut request = self.http.get(format!("{}{path}", endpoint.base_url()));
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            request
        };
        self.send(operation, build).await
    }

    /// One `GET` with only a short timeout: no retry, no breaker. A health
    /// probe must see the service as it is, and must not move the breaker.
    pub async fn probe_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, CallError> {
        self.probe_json_within(path, PROBE_TIMEOUT.min(self.guard.policy().attempt_timeout))
            .await
    }

    /// [`Self::probe_json`] with the caller's timeout (the health checker's).
    pub async fn probe_json_within<R: DeserializeOwned>(
        &self,
        path: &str,
        limit: Duration,
    ) -> Result<R, CallError> {
        let request = self.request(self.home, reqwest::Method::GET, path);
        let reply = exchange(self.reply_reader(self.home), request, None);
        match tokio::time::timeout(limit, reply).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout {
                service: self.name.clone(),
                after: limit,
            }),
        }
    }

    /// One `GET` of an absolute `url` (a path outside the base URL, such
    /// as llama.cpp's `/props`) as a probe: no retry, no breaker.
    pub async fn probe_url_json<R: DeserializeOwned>(
        &self,
        url: &str,
        limit: Duration,
    ) -> Result<R, CallError> {
        let reply = exchange(self.reply_reader(self.home), self.http.get(url), None);
        match tokio::time::timeout(limit, reply).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout {
                service: self.name.clone(),
                after: limit,
            }),
        }
    }

    async fn send<R: DeserializeOwned>(
        &self,
        operation: &str,
        build: impl Fn(&Endpoint) -> reqwest::RequestBuilder,
    ) -> Result<R, CallError> {
        self.guarded(operation, None, &any_endpoint, |endpoint, _| {
            exchange(self.reply_reader(endpoint.index()), build(endpoint), None)
        })
        .await
        .0
    }

    /// The reader of endpoint `index`'s answers.
    fn reply_reader(&self, index: usize) -> ReplyReader<'_> {
        ReplyReader {
            service: &self.name,
            max_reply_bytes: self.max_reply_bytes,
            rate_limiter: self
                .rate_limiters
                .get(index)
                .and_then(|limiter| limiter.as_deref()),
        }
    }

    /// One call through the stack, counted in flight and in the stats;
    /// with the index of the endpoint of the last attempt.
    async fn guarded<T, Fut>(
        &self,
        operation: &str,
        idle: Option<Duration>,
        eligible: &(dyn Fn(&Endpoint) -> bool + Sync),
        attempt: impl FnMut(&Endpoint, Progress) -> Fut,
    ) -> (Result<T, CallError>, Option<usize>)
    where
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // Counted down on drop, so a cancelled call is not in flight forever.
        let _in_flight = InFlight(&self.stats);
        let (outcome, summary) = self.guard.call_on(operation, idle, eligible, attempt).await;
        self.stats
            .record(summary.duration.as_secs_f64(), outcome.is_ok());
        (outcome.map_err(CallError::from), summary.endpoint)
    }
}

/// `/tools/calculator` → `tools/calculator`: the operation's audit name.
fn operation_name(path: &str) -> &str {
    path.trim_start_matches('/')
}
