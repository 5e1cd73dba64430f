//! Fault injection for companion services: added latency, a rate of error
//! replies (with a status and optional `Retry-After`), hanging, and refusing
//! connections. Set at start (the config's [`Fault`] settings) or at run time
//! with `POST /fault`, so tests and the demo can show the resilience stack at
//! work against a real socket.
//!
//! It must not change a service's behaviour while no fault is set.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use rand::Rng;

use super::{error_response, JsonBody};
use crate::config::Fault;
use crate::wire::FAULT_PATH;

#[derive(Debug, Default)]
pub struct FaultSwitch {
    current: Mutex<Fault>,
    /// Requests that reached the service (past `refuse`), `/fault` excluded:
    /// tests prove that an open breaker sends nothing.
    requests_seen: AtomicU64,
    /// Mirrors `refuse` for the connections' hot path.
    refusing: AtomicBool,
    /// The seeded source of `error_rate` draws, when the fault has a seed.
    draws: Mutex<Option<rand_chacha::ChaCha8Rng>>,
}

impl FaultSwitch {
    pub fn set(&self, fault: Fault) {
        self.refusing.store(fault.refuse, Ordering::SeqCst);
        *self.draws.lock() = fault
            .seed
            .map(<rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64);
        *self.current.lock() = fault;
    }

    pub fn clear(&self) {
        self.set(Fault::default());
    }

    /// A number in [0, 1) for `error_rate`: seeded when the fault says so.
    fn draw(&self) -> f64 {
        match self.draws.lock().as_mut() {
            Some(seeded) => seeded.random::<f64>(),
            None => rand::rng().random::<f64>(),
        }
    }

    pub fn requests_seen(&self) -> u64 {
        self.requests_seen.load(Ordering::SeqCst)
    }

    /// The fault for one request, counting `fail_next` down.
    fn take(&self) -> (Fault, bool) {
        let mut current = self.current.lock();
        let forced = current.fail_next > 0;
        if forced {
            current.fail_next -= 1;
        }
        (current.clone(), forced)
    }

    pub fn get(&self) -> Fault {
        self.current.lock().clone()
    }
}

/// Wraps a service router in the fault layer; with `control` on, adds
/// `GET/POST/DELETE /fault`, which latency, errors and hangs never affect.
/// `refuse` closes every connection, `/fault`'s too: it is cleared from
/// inside the process (tests, the demo) or by a restart.
pub fn wrap(router: Router, switch: Arc<FaultSwitch>, control: bool) -> Router {
    let faulty = router
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(switch.clone(), inject));
    if !control {
        // Said plainly, so a test harness pointed at a production companion
        // learns why its faults do nothing.
        return faulty.route(FAULT_PATH, axum::routing::any(fault_injection_off));
    }
    let control_routes = Router::new()
        .route(
            FAULT_PATH,
            get(show_fault).post(set_fault).delete(clear_fault),
        )
        .with_state(switch);
    faulty.merge(control_routes)
}

async fn fault_injection_off() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "fault injection is off; set companions.fault_injection = true to enable /fault",
    )
}

/// A listener that drops new connections while `refuse` is set.
pub struct FaultyListener {
    inner: tokio::net::TcpListener,
    switch: Arc<FaultSwitch>,
}

impl FaultyListener {
    pub fn new(inner: tokio::net::TcpListener, switch: Arc<FaultSwitch>) -> Self {
        Self { inner, switch }
    }
}

impl axum::serve::Listener for FaultyListener {
    type Io = FaultyStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
            if self.switch.get().refuse {
                // Closed before a byte is read: the client sees a connection
                // error, the way a dead service looks.
                drop(stream);
                continue;
            }
            return (
                FaultyStream {
                    inner: stream,
                    switch: self.switch.clone(),
                },
                address,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that breaks as soon as `refuse` is set, so a
/// client's pooled keep-alive connection sees the outage too.
pub struct FaultyStream {
    inner: tokio::net::TcpStream,
    switch: Arc<FaultSwitch>,
}

impl FaultyStream {
    fn refused(&self) -> Option<std::io::Error> {
        self.switch.refusing.load(Ordering::SeqCst).then(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fault injection: refusing",
            )
        })
    }
}

impl tokio::io::AsyncRead for FaultyStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(error) = self.refused() {
            return std::task::Poll::Ready(Err(error));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

impl tokio::io::AsyncWrite for FaultyStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // Replies in flight still go out (the one to `POST /fault` among
        // them); the connection breaks at its next read.
        std::pin::Pin::new(&mut self.inner).poll_write(context, buffer)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

async fn inject(State(switch): State<Arc<FaultSwitch>>, request: Request, next: Next) -> Response {
    switch.requests_seen.fetch_add(1, Ordering::SeqCst);
    let (fault, forced) = switch.take();
    if fault.hang {
        std::future::pending::<()>().await;
    }
    if fault.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(fault.latency_ms)).await;
    }
    let fail = forced || (fault.error_rate > 0.0 && switch.draw() < fault.error_rate);
    if !fail {
        return next.run(request).await;
    }
    if fault.after_handling {
        let _handled = next.run(request).await;
    }
    let status =
        StatusCode::from_u16(fault.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error_response(status, "injected fault");
    if let Some(seconds) = fault.retry_after_seconds {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(seconds));
    }
    response
}

async fn show_fault(State(switch): State<Arc<FaultSwitch>>) -> Json<Fault> {
    Json(switch.get())
}

async fn set_fault(
    State(switch): State<Arc<FaultSwitch>>,
    JsonBody(fault): JsonBody<Fault>,
) -> Response {
    if let Err(message) = fault.validate() {
        return error_response(StatusCode::UNPROCESSABLE_ENTITY, message);
    }
    switch.set(fault.clone());
    tracing::warn!(?fault, "fault injected");
    Json(fault).into_response()
}

async fn clear_fault(State(switch): State<Arc<FaultSwitch>>) -> Json<Fault> {
    switch.clear();
    Json(Fault::default())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn the_fault_route_says_how_to_turn_injection_on_when_it_is_off() {
        for method in ["GET", "POST", "DELETE"] {
            let router = wrap(Router::new(), Arc::new(FaultSwitch::default()), false);
            let request = Request::builder()
                .method(method)
                .uri(FAULT_PATH)
                .body(Body::empty())
                .expect("request");
            let response = router.oneshot(request).await.expect("answers");
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method}");
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .expect("body");
            let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains("companions.fault_injection"), "{body}");
        }
    }
}
