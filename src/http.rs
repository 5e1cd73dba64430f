//! The one HTTP server loop every listener of heistd uses (each companion
//! and the admin API): hyper's HTTP/1 connection with a header-read timeout
//! (a slowloris is cut), a per-request timeout, an idle timeout on the
//! connection's bytes, and a cap on open connections per listener, beyond
//! which a new connection is closed at once. It also raises the process's
//! open-files limit at start, so the caps, not the kernel, decide.
//!
//! It sits on the lowest layer beside `wire`: it knows axum routers, hyper
//! and sockets, and nothing of heistd's services or config; callers hand it
//! [`ServeLimits`]. `limiter` holds what the listeners that check a secret
//! share: bounded failure tables and per-source refusal summaries.

pub mod limiter;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;
use tower::ServiceExt;

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
    /// Open connections at most; beyond it, new ones are closed at once.
    pub max_connections: usize,
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
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed before a byte is read: cheaper than any answer, and
            // the file descriptor is free again at once.
            drop(stream);
            metrics::counter!(crate::metrics::HTTP_CONNECTIONS_SHED, "listener" => name)
                .increment(1);
            continue;
        };
        let router = router.clone();
        let limits = limits.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, router, &limits, stopping).await;
            drop(permit);
        });
    }
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
}

/// Serves one connection until it ends, times out, or `stopping` says to
/// finish the request in flight and close.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    limits: &ServeLimits,
    mut stopping: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = limits.request_timeout;
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                match tokio::time::timeout(request_timeout, router.oneshot(request)).await {
                    Ok(response) => response,
                    Err(_) => Ok::<Response, Infallible>(request_timed_out(request_timeout)),
                }
            }
        });
    let io = TokioIo::new(IdleStream::new(stream, limits.idle_timeout));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
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
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

fn request_timed_out(after: Duration) -> Response {
    let body = serde_json::json!({
        "success": false,
        "result": null,
        "error": format!("the request took longer than {} ms", after.as_millis()),
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// A stream that fails with `TimedOut` once no byte has moved in either
/// direction for `idle`, so a peer that stops reading or sending (inside
/// a body, say) cannot hold its connection for ever.
struct IdleStream<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleStream<S> {
    fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    fn check_idle(&mut self, context: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.deadline.as_mut().poll(context) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection idle for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buffer.filled().len();
        match Pin::new(&mut self.inner).poll_read(context, buffer) {
            Poll::Ready(outcome) => {
                if buffer.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => match self.check_idle(context) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(context, buffer) {
            Poll::Ready(outcome) => {
                if matches!(outcome, Ok(written) if written > 0) {
                    self.progressed();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => match self.check_idle(context) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
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
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_times_out_and_a_busy_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut idle = IdleStream::new(server, Duration::from_secs(5));
        let mut buffer = [0u8; 8];
        let started = tokio::time::Instant::now();
        let error = idle.read(&mut buffer).await.expect_err("idle");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5));
        drop(client);
    }

    #[test]
    fn the_open_files_limit_is_read_and_never_lowered() {
        use nix::sys::resource::{getrlimit, Resource};
        let (before, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("readable");
        let now = raise_open_files_limit(16).expect("readable");
        assert!(now.soft >= before && now.soft <= now.hard);
    }
}
