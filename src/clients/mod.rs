//! Typed clients for every service heistd calls: OAuth, memory, the three
//! tools and the LLM. Each call goes through [`ServiceClient`], which runs it
//! inside the resilience stack, classifies failures into [`CallError`] and
//! records metrics and per-service statistics.
//!
//! `CallError` speaks resilience's vocabulary: it implements
//! [`Classify`] (transient or not, `Retry-After`, the attempt's metric
//! label), and the stack's own outcomes ([`GuardError`]: timeout, open
//! breaker, full bulkhead, exhausted budget) become its matching variants,
//! so callers branch on one error type.
//!
//! Clients know the wire formats; they must not decide on retries (that is
//! `resilience`) nor write to the store.

mod llm;
mod memory;
mod oauth;
#[cfg(test)]
mod reply_cap_tests;
mod sse;
mod tools;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use llm::{context_window_in, ChatMessage, ChatRequest, LlmClient, ModelReply, ToolSpec};
pub use memory::{MemoryClient, MemoryWrite};
pub use oauth::{AccessToken, OAuthClient, TokenCache};
pub use tools::ToolClient;

use crate::config::{Config, ServiceConfig};
use crate::resilience::{BreakerState, Classify, Guard, GuardError, Policy, Progress};

/// Why a call to a service failed, precise enough for retry decisions.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{service}: no answer within {} ms", after.as_millis())]
    Timeout { service: String, after: Duration },
    /// A streamed reply started, then nothing came for the idle timeout
    /// (resilience's cut, like `Timeout`).
    #[error("{service}: the reply stopped coming: nothing for {} ms", idle.as_millis())]
    Stalled { service: String, idle: Duration },
    #[error("{service}: cannot connect: {message}")]
    Connect { service: String, message: String },
    #[error("{service}: HTTP {status}: {message}")]
    Status {
        service: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{service}: unreadable reply: {message}")]
    Decode { service: String, message: String },
    #[error("{service}: {message}")]
    Refused { service: String, message: String },
    // The stack's own refusals, converted from resilience's `GuardError`
    // (as is its `Timeout`), so callers branch on this one type.
    #[error("{service}: circuit breaker is open; call not attempted")]
    CircuitOpen { service: String },
    #[error("{service}: too many calls in flight; call not attempted")]
    BulkheadFull { service: String },
    #[error("{service}: retry budget exhausted; last error: {last}")]
    BudgetExhausted { service: String, last: String },
}

/// The shared HTTP client could not be built (e.g. no TLS backend).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {message}")]
pub struct ClientBuildError {
    message: String,
}

impl Classify for CallError {
    /// Never true of the stack's own rejections.
    fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Stalled { .. } | Self::Connect { .. } => true,
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Timeout { .. } | Self::Stalled { .. } => "timeout",
            Self::Connect { .. } => "connect_error",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Decode { .. } => "decode_error",
            Self::Refused { .. } => "refused",
            Self::CircuitOpen { .. } => "rejected_open",
            Self::BulkheadFull { .. } => "rejected_bulkhead",
            Self::BudgetExhausted { .. } => "rejected_budget",
        }
    }

    fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Stalled { .. })
    }

    fn is_backpressure(&self) -> bool {
        matches!(self, Self::Status { status: 429, .. })
    }
}

impl From<GuardError<CallError>> for CallError {
    fn from(error: GuardError<CallError>) -> Self {
        match error {
            GuardError::Service(error) => error,
            GuardError::Timeout { service, after } => Self::Timeout { service, after },
            GuardError::Stalled { service, idle } => Self::Stalled { service, idle },
            GuardError::CircuitOpen { service } => Self::CircuitOpen { service },
            GuardError::BulkheadFull { service } => Self::BulkheadFull { service },
            GuardError::BudgetExhausted { service, last } => {
                Self::BudgetExhausted { service, last }
            }
        }
    }
}

impl CallError {
    /// The service is unavailable rather than the request wrong: it could
    /// not be reached, did not answer in time, failed on its side (5xx),
    /// pushed back (408, 429), or the stack would not call it (an open
    /// breaker, a full bulkhead, an exhausted budget). Waiting may help;
    /// changing the request will not.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::Stalled { .. }
            | Self::Connect { .. }
            | Self::CircuitOpen { .. }
            | Self::BulkheadFull { .. }
            | Self::BudgetExhausted { .. } => true,
            Self::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            Self::Decode { .. } | Self::Refused { .. } => false,
        }
    }

    /// The stack refused the call without making it: it says nothing new
    /// about the service, so it never replaces a real error in a report.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::CircuitOpen { .. } | Self::BulkheadFull { .. })
    }

    /// The service judged the request itself unacceptable (400, 413, 422),
    /// or it could not be built: sending it again can never succeed. A 401,
    /// 403 or 404 is not permanent: it says the setup is wrong (a bad URL or
    /// key), and the request may succeed once that is fixed.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 400 | 413 | 422),
            Self::Refused { .. } => true,
            _ => false,
        }
    }
}

/// How a request that asked for a stream was answered.
#[derive(Debug)]
pub enum Streamed<E, W> {
    /// Server-sent events: each `data:` payload before `data: [DONE]`.
    Events(Vec<E>),
    /// A plain JSON body: the server did not stream, which is allowed.
    Whole(W),
}

/// Counts and recent latencies of one service's calls, for summaries.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// The most recent call durations in seconds (bounded).
    recent_seconds: Mutex<VecDeque<f64>>,
    /// Calls under way now: a one-slot model server answers nothing else
    /// (not even `/models`) while it generates.
    in_flight: AtomicU64,
    /// When a call last succeeded: passive health for the checker.
    last_success: Mutex<Option<tokio::time::Instant>>,
}

/// A summary of [`ServiceStats`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    pub calls: u64,
    pub failures: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const RECENT_SAMPLES: usize = 4096;

impl ServiceStats {
    /// Whether a call succeeded within `window` of now.
    pub fn answered_within(&self, window: Duration) -> bool {
        self.last_success
            .lock()
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// Whether a call is under way now.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    fn record(&self, seconds: f64, ok: bool) {
        if ok {
            *self.last_success.lock() = Some(tokio::time::Instant::now());
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut recent = self.recent_seconds.lock();
        if recent.len() == RECENT_SAMPLES {
            recent.pop_front();
        }
        recent.push_back(seconds);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut samples: Vec<f64> = self.recent_seconds.lock().iter().copied().collect();
        samples.sort_by(f64::total_cmp);
        let percentile = |fraction: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let index = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
            samples[index] * 1000.0
        };
        StatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            p50_ms: percentile(0.5),
            p99_ms: percentile(0.99),
        }
    }
}

/// Health probes get this long at most, whatever the call timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One configured service: its name (the metrics label), base URL, HTTP
/// client, and the resilience guard every call goes through.
#[derive(Clone)]
pub struct ServiceClient {
    pub name: String,
    pub base_url: String,
    http: reqwest::Client,
    guard: Arc<Guard>,
    pub stats: Arc<ServiceStats>,
    /// A reply body larger than this is refused rather than read.
    max_reply_bytes: usize,
    /// The URL of each fixed path (a turn's calls), parsed once: parsing
    /// it on every call, its host's IDNA check included, was 1% of the
    /// daemon's CPU per turn. Paths carrying an id are not kept.
    urls: Arc<Mutex<HashMap<String, reqwest::Url>>>,
}

/// Fixed paths whose parsed URL a client keeps; past this many (which no
/// client has) the kept ones are dropped and parsed again as used.
const MAX_CACHED_URLS: usize = 32;

/// Reply bodies are capped at this unless the config says otherwise.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024;

impl ServiceClient {
    pub fn new(name: &str, base_url: &str, policy: Policy, http: reqwest::Client) -> Self {
        Self {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            http,
            guard: Arc::new(Guard::new(name, policy)),
            stats: Arc::new(ServiceStats::default()),
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            urls: Arc::default(),
        }
    }

    /// Replies larger than `bytes` are refused with a decode error.
    pub fn with_max_reply_bytes(mut self, bytes: usize) -> Self {
        self.max_reply_bytes = bytes;
        self
    }

    pub fn from_config(name: &str, service: &ServiceConfig, http: reqwest::Client) -> Self {
        Self::new(
            name,
            &service.base_url,
            Policy::new(service.timeout_ms, service.policy.clone()),
            http,
        )
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
        let build = || self.post_request(path, body, headers);
        self.send(operation_name(path), build).await
    }

    /// A fresh `POST` of `body` with `headers`, for each attempt.
    fn post_request<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        headers: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut request = self.request(reqwest::Method::POST, path).json(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
    }

    /// A request for the fixed `path` on this service, its URL parsed once
    /// and kept. A path that makes no URL is left to reqwest, whose
    /// builder error is then the call's (`CallError::Refused`).
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        if let Some(url) = self.urls.lock().get(path) {
            return self.http.request(method, url.clone());
        }
        let text = format!("{}{path}", self.base_url);
        match reqwest::Url::parse(&text) {
            Ok(url) => {
                let mut urls = self.urls.lock();
                if urls.len() >= MAX_CACHED_URLS {
                    urls.clear();
                }
                urls.insert(path.to_string(), url.clone());
                self.http.request(method, url)
            }
            Err(_) => self.http.request(method, text),
        }
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
        let build = || self.post_request(path, body, headers);
        self.guarded(operation_name(path), Some(idle), |progress| {
            exchange_streaming(&self.name, build(), self.max_reply_bytes, progress)
        })
        .await
    }

    pub async fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, CallError> {
        self.send(operation_name(path), || {
            self.request(reqwest::Method::GET, path)
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
        let url = format!("{}{path}", self.base_url);
        let build = || {
            let mut request = self.http.get(&url);
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
        let request = self.request(reqwest::Method::GET, path);
        let reply = exchange(&self.name, request, self.max_reply_bytes, None);
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
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<R, CallError> {
        self.guarded(operation, None, |_| {
            exchange(&self.name, build(), self.max_reply_bytes, None)
        })
        .await
    }

    /// One call through the stack, counted in flight and in the stats.
    async fn guarded<T, Fut>(
        &self,
        operation: &str,
        idle: Option<Duration>,
        attempt: impl FnMut(Progress) -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // Counted down on drop, so a cancelled call is not in flight forever.
        let _in_flight = InFlight(&self.stats);
        let (outcome, summary) = self.guard.call_streaming(operation, idle, attempt).await;
        self.stats
            .record(summary.duration.as_secs_f64(), outcome.is_ok());
        outcome.map_err(CallError::from)
    }
}

/// One call in flight, counted down when dropped.
struct InFlight<'a>(&'a ServiceStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `/tools/calculator` → `tools/calculator`: the operation's audit name.
fn operation_name(path: &str) -> &str {
    path.trim_start_matches('/')
}

async fn exchange<R: DeserializeOwned>(
    service: &str,
    request: reqwest::RequestBuilder,
    max_reply_bytes: usize,
    progress: Option<&Progress>,
) -> Result<R, CallError> {
    let response = request
        .send()
        .await
        .map_err(|error| classify_send_error(service, &error))?;
    read_reply(service, response, max_reply_bytes, progress).await
}

/// One attempt of [`ServiceClient::post_streaming`]: an error status or a
/// body that is not an event stream is read whole, as [`exchange`] does.
async fn exchange_streaming<E: DeserializeOwned, W: DeserializeOwned>(
    service: &str,
    request: reqwest::RequestBuilder,
    max_reply_bytes: usize,
    progress: Progress,
) -> Result<Streamed<E, W>, CallError> {
    let response = request
        .send()
        .await
        .map_err(|error| classify_send_error(service, &error))?;
    let is_event_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("text/event-stream"));
    if !response.status().is_success() || !is_event_stream {
        return read_reply(service, response, max_reply_bytes, Some(&progress))
            .await
            .map(Streamed::Whole);
    }
    sse::read_events(service, response, max_reply_bytes, &progress)
        .await
        .map(Streamed::Events)
}

/// Every client a heist needs, built once from the config.
#[derive(Clone)]
pub struct Clients {
    pub oauth: OAuthClient,
    pub memory: MemoryClient,
    pub tools: ToolClient,
    pub llm: LlmClient,
}

impl Clients {
    pub fn from_config(config: &Config) -> Result<Self, ClientBuildError> {
        let http = http_client()?;
        let service = |name: &str, service: &ServiceConfig| {
            ServiceClient::from_config(name, service, http.clone())
        };
        let oauth = OAuthClient::new(service("oauth", &config.services.oauth));
        let mut memory = MemoryClient::new(service("memory", &config.services.memory));
        let own_id = &config.oauth.memory_client_id;
        if let Some(secret) = config.client_secret(own_id) {
            memory = memory.with_credentials(oauth.clone(), own_id, secret);
        }
        Ok(Self {
            oauth,
            memory,
            tools: ToolClient::new(
                service("calculator", &config.services.calculator),
                service("file_reader", &config.services.file_reader),
                service("database_query", &config.services.database_query),
            ),
            llm: LlmClient::from_config(&config.llm, http),
        })
    }

    /// The companion services' clients (every one but the model's).
    pub fn companions(&self) -> Vec<&ServiceClient> {
        let mut companions = vec![&self.oauth.service, &self.memory.service];
        companions.extend(self.tools.services());
        companions
    }

    /// Every service client, for health checks and summaries.
    pub fn all(&self) -> Vec<&ServiceClient> {
        let mut all = vec![&self.oauth.service, &self.memory.service];
        all.extend(self.tools.services());
        all.push(&self.llm.service);
        all
    }
}

/// One connection pool shared by every client. Fails where reqwest cannot
/// set up its TLS backend or resolver, where `reqwest::Client::new()` would
/// panic.
pub fn http_client() -> Result<reqwest::Client, ClientBuildError> {
    reqwest::Client::builder()
        .user_agent(concat!("heistd/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| ClientBuildError {
            message: error_chain(&error),
        })
}

fn classify_send_error(service: &str, error: &reqwest::Error) -> CallError {
    let message = error_chain(error);
    if error.is_builder() {
        // Our own request could not be built: no attempt will ever do better.
        return CallError::Refused {
            service: service.into(),
            message,
        };
    }
    if error.is_timeout() {
        return CallError::Timeout {
            service: service.into(),
            after: Duration::ZERO,
        };
    }
    // Connect, request and body errors alike: the service may answer next time.
    CallError::Connect {
        service: service.into(),
        message,
    }
}

async fn read_reply<R: DeserializeOwned>(
    service: &str,
    response: reqwest::Response,
    max_reply_bytes: usize,
    progress: Option<&Progress>,
) -> Result<R, CallError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| crate::resilience::backoff::parse_retry_after(value, chrono::Utc::now()));
    let bytes = read_capped(service, response, max_reply_bytes, progress).await?;
    if !status.is_success() {
        return Err(CallError::Status {
            service: service.into(),
            status: status.as_u16(),
            // The service's own words end up in logs and the audit trail:
            // escaped and cut, so they cannot forge lines or flood either.
            message: crate::wire::loggable(
                &error_message(&bytes)
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
            ),
            retry_after,
        });
    }
    serde_json::from_slice(&bytes).map_err(|error| CallError::Decode {
        service: service.into(),
        message: error.to_string(),
    })
}

/// The body, refused as soon as it is known to be over `max_bytes` (by
/// `Content-Length`, or while it streams in), so a hostile or broken server
/// cannot make heistd hold an arbitrarily large reply.
async fn read_capped(
    service: &str,
    mut response: reqwest::Response,
    max_bytes: usize,
    progress: Option<&Progress>,
) -> Result<Vec<u8>, CallError> {
    let too_large = || too_large(service, max_bytes);
    if response
        .content_length()
        .is_some_and(|length| length > max_bytes as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| CallError::Connect {
        service: service.into(),
        message: error_chain(&error),
    })? {
        if let Some(progress) = progress {
            progress.mark();
        }
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large(service: &str, max_bytes: usize) -> CallError {
    CallError::Decode {
        service: service.into(),
        message: format!("reply is over the {max_bytes}-byte limit (max_reply_bytes)"),
    }
}

/// The human message inside a JSON error body, in the shapes our services
/// and OpenAI-compatible servers use.
fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let text = match error {
        serde_json::Value::String(code) => match value
            .get("error_description")
            .and_then(|description| description.as_str())
        {
            Some(description) => format!("{code}: {description}"),
            None => code.clone(),
        },
        serde_json::Value::Object(object) => object.get("message")?.as_str()?.to_string(),
        _ => return None,
    };
    Some(text)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stacks_outcomes_become_the_matching_call_errors() {
        let service = || "svc".to_string();
        let cases: [(GuardError<CallError>, &str); 5] = [
            (
                GuardError::Service(CallError::Status {
                    service: service(),
                    status: 401,
                    message: "unauthorized".into(),
                    retry_after: None,
                }),
                "svc: HTTP 401: unauthorized",
            ),
            (
                GuardError::Timeout {
                    service: service(),
                    after: Duration::from_millis(1500),
                },
                "svc: no answer within 1500 ms",
            ),
            (
                GuardError::CircuitOpen { service: service() },
                "svc: circuit breaker is open; call not attempted",
            ),
            (
                GuardError::BulkheadFull { service: service() },
                "svc: too many calls in flight; call not attempted",
            ),
            (
                GuardError::BudgetExhausted {
                    service: service(),
                    last: "svc: HTTP 503: busy".into(),
                },
                "svc: retry budget exhausted; last error: svc: HTTP 503: busy",
            ),
        ];
        for (guard_error, text) in cases {
            assert_eq!(guard_error.to_string(), text);
            let label = guard_error.label();
            let call_error = CallError::from(guard_error);
            assert_eq!(call_error.to_string(), text, "same text after conversion");
            assert_eq!(call_error.label(), label, "same attempt label");
        }
        let open = CallError::from(GuardError::CircuitOpen { service: service() });
        assert!(matches!(open, CallError::CircuitOpen { .. }));
    }

    #[test]
    fn call_errors_classify_as_before() {
        let status = |status: u16| CallError::Status {
            service: "svc".into(),
            status,
            message: "x".into(),
            retry_after: None,
        };
        for (code, transient, label) in [
            (404, false, "client_error"),
            (408, true, "client_error"),
            (429, true, "client_error"),
            (500, true, "server_error"),
            (503, true, "server_error"),
        ] {
            assert_eq!(status(code).is_transient(), transient, "HTTP {code}");
            assert_eq!(status(code).label(), label, "HTTP {code}");
        }
        let timeout = CallError::Timeout {
            service: "svc".into(),
            after: Duration::ZERO,
        };
        assert!(timeout.is_transient() && timeout.is_timeout());
        let refused = CallError::Refused {
            service: "svc".into(),
            message: "bad url".into(),
        };
        assert!(!refused.is_transient() && refused.label() == "refused");
    }
}
