//! The one HTTP server loop every listener of heistd uses (each companion
//! and the admin API): hyper's HTTP/1 connection with a header-read timeout
//! (a slowloris is cut), a per-request timeout, an idle timeout on the
//! connection's bytes ([`idle`]), caps on open connections per listener
//! and per source address, with idle connections replaced rather than new
//! ones refused ([`admission`]), so one source cannot starve `/health`, and
//! a per-request and per-listener limit on request bodies held in memory
//! ([`body`]). It also raises the process's open-files limit at start, so
//! the caps, not the kernel, decide.
//!
//! It sits on the lowest layer beside `wire`: it knows axum routers, hyper
//! and sockets, and nothing of heistd's services or config; callers hand it
//! [`ServeLimits`]. Checking a token before reading a body is the
//! handlers' part: a body nobody reads costs nothing here. `limiter` holds
//! what the listeners that check a secret share: bounded failure tables
//! and per-source refusal summaries.

mod admission;
mod body;
mod idle;
pub mod limiter;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt;

use admission::{Admission, ConnectionState};
use body::{BodyBudget, HeldWhileSent};
use idle::IdleStream;

/// About the most one connection buffers before a handler sees its bytes
/// (hyper checks after each read, so up to twice this): a request's
/// headers must fit (tokens and ids are a few KiB at most).
const MAX_CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// What one listener allows its clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeLimits {
    /// A request's headers must arrive within this (also the longest a
    /// kept-alive connection may wait for its next request).
    pub header_timeout: Duration,
    /// A handler that has not answered within this gets 503.
    pub request_timeout: Duration,
    /// A connection on which no byte moves for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; beyond it an idle connection of the
    /// source holding the most is closed to make room, or the new one is.
    pub max_connections: usize,
    /// Open connections from one source address at most; beyond it that
    /// source's oldest idle connection is closed, or the new one is.
    pub max_connections_per_ip: usize,
    /// The longest request body a handler may read (413 beyond it).
    pub max_body_bytes: usize,
    /// Request body bytes held by all requests in flight on the listener
    /// at most (503 beyond it), so a flood of large bodies costs a bounded
    /// amount of memory.
    pub body_budget_bytes: usize,
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// resolves, then lets requests in flight finish and returns. The peer's
/// address is in each request's extensions as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ServeLimits,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_ip);
    let budget = BodyBudget::new(limits.body_budget_bytes, limits.max_body_bytes);
    // Every connection task holds a receiver: the sender learns they are
    // all gone when `closed()` resolves.
    let (stop, stopping) = watch::channel(false);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // One source as the failure tables count it: an IPv6 host holds a
        // whole /64, so its addresses share one per-source cap.
        let admitted = match admission.admit(limiter::source_of(peer.ip())) {
            Ok((admitted, replaced)) => {
                if replaced {
                    metrics::counter!(crate::metrics::HTTP_CONNECTIONS_SHED, "listener" => name)
                        .increment(1);
                }
                admitted
            }
            Err(refused) => {
                // Closed before a byte is read: cheaper than any answer,
                // and the file descriptor is free again at once.
                drop(stream);
                tracing::debug!(%peer, ?refused, listener = name, "connection shed");
                metrics::counter!(crate::metrics::HTTP_CONNECTIONS_SHED, "listener" => name)
                    .increment(1);
                continue;
            }
        };
        let connection = Connection {
            peer,
            router: router.clone(),
            limits: limits.clone(),
            budget: budget.clone(),
            state: admitted.state(),
        };
        let stopping = stopping.clone();
        tokio::spawn(async move {
            connection.serve(stream, stopping).await;
            drop(admitted);
        });
    }
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
}

/// What one connection's task needs.
struct Connection {
    peer: SocketAddr,
    router: Router,
    limits: Arc<ServeLimits>,
    budget: BodyBudget,
    state: Arc<ConnectionState>,
}

impl Connection {
    /// Serves the connection until it ends, times out, is replaced while
    /// idle, or `stopping` says to finish the request in flight and close.
    async fn serve<S>(self, stream: S, mut stopping: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            router,
            limits,
            budget,
            state,
        } = self;
        let request_timeout = limits.request_timeout;
        let connection_state = state.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let busy = connection_state.busy();
                let (request, tally) = {
                    let (parts, incoming) = request.into_parts();
                    let (counted, tally) = budget.wrap(incoming, Some(connection_state.clone()));
                    let mut request =
                        hyper::Request::from_parts(parts, axum::body::Body::new(counted));
                    request.extensions_mut().insert(ConnectInfo(peer));
                    (request, tally)
                };
                let router = router.clone();
                async move {
                    let outcome =
                        tokio::time::timeout(request_timeout, router.oneshot(request)).await;
                    let response = match (tally.finish(), outcome) {
                        (Some(refused), _) => refused.response(),
                        (None, Ok(Ok(response))) => response,
                        (None, Ok(Err(never))) => match never {},
                        (None, Err(_)) => request_timed_out(request_timeout),
                    };
                    // Busy until the reply is sent, so a streamed one is
                    // not cut as idle.
                    Ok::<Response, Infallible>(
                        response.map(|body| axum::body::Body::new(HeldWhileSent::new(body, busy))),
                    )
                }
            });
        let io = TokioIo::new(IdleStream::new(stream, limits.idle_timeout));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // What one connection buffers of headers (431 beyond) and of a
            // body per read: hyper's default, 400 KiB, times 512
            // connections would be 200 MiB a listener outside any budget.
            .max_buf_size(MAX_CONNECTION_BUFFER_BYTES)
            .keep_alive(true);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(error) = outcome {
                    tracing::debug!(%peer, %error, "connection closed with an error");
                }
                return;
            }
            _ = stopping.wait_for(|stop| *stop) => {}
            () = state.evicted() => {
                // Replaced while idle, or while its request waited for a
                // slow body: close at once. A request being served (one
                // that came in since, say) is finished first.
                if !state.is_busy() || state.is_waiting_for_client() {
                    return;
                }
            }
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }
}

fn request_timed_out(after: Duration) -> Response {
    let body = serde_json::json!({
        "success": false,
        "result": null,
        "error": format!("the request took longer than {} ms", after.as_millis()),
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// What raising the open-files limit came to.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenFiles {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit, which only root may raise.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit, and logs a warning
/// when even the hard limit is below `needed` (the listeners' connection
/// caps plus the process's own files). `None` where the limit cannot be
/// read.
pub fn raise_open_files_limit(needed: u64) -> Option<OpenFiles> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let mut now = OpenFiles { soft, hard };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                now.soft = hard;
                tracing::info!(from = soft, to = hard, "raised the open-files limit");
            }
            Err(error) => tracing::warn!(%error, soft, hard, "cannot raise the open-files limit"),
        }
    }
    if now.soft < needed {
        tracing::warn!(
            limit = now.soft,
            needed,
            "the open-files limit is below what the listeners' max_connections need; \
             raise LimitNOFILE (systemd) or `ulimit -n`, or lower http.max_connections"
        );
    }
    Some(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_open_files_limit_is_read_and_never_lowered() {
        use nix::sys::resource::{getrlimit, Resource};
        let (before, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("readable");
        let now = raise_open_files_limit(16).expect("readable");
        assert!(now.soft >= before && now.soft <= now.hard);
    }
}
