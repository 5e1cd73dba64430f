//! How much request body one listener holds in memory. Each body is
//! counted as its bytes are read, against `max_body_bytes` for the request
//! (413 past it, also at once when `Content-Length` says so) and against
//! `body_budget_bytes` for the listener, shared by every request in flight
//! (503 past it). Nothing is counted until a handler reads the body, so a
//! request refused before that (no token, say) costs the budget nothing;
//! what a body took is given back when its request is answered.
//!
//! A refused body fails its handler's read; `serve_connection` then
//! answers the status here instead of whatever the handler made of it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admission::{BusyGuard, ConnectionState};

/// One listener's budget for bodies in flight.
#[derive(Clone)]
pub(super) struct BodyBudget {
    available: Arc<Semaphore>,
    max_body_bytes: usize,
}

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyRefused {
    /// Longer than `max_body_bytes`: 413.
    TooLarge { max_body_bytes: usize },
    /// The listener's bodies in flight would pass `body_budget_bytes`: 503.
    OverBudget,
}

/// What one request's body holds of the budget, and whether it was
/// refused; shared by the body and the request's task.
#[derive(Default)]
pub(super) struct BodyTally {
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    held: Option<OwnedSemaphorePermit>,
    refused: Option<BodyRefused>,
}

/// A request body counted against a [`BodyBudget`].
pub(super) struct BudgetedBody<B> {
    inner: B,
    budget: BodyBudget,
    tally: Arc<BodyTally>,
    read: usize,
    length_checked: bool,
    /// Told while the body waits for its client, so a slow sender's
    /// connection may be replaced like an idle one.
    connection: Option<Arc<ConnectionState>>,
}

impl BodyBudget {
    pub(super) fn new(body_budget_bytes: usize, max_body_bytes: usize) -> Self {
        Self {
            available: Arc::new(Semaphore::new(
                body_budget_bytes.clamp(1, Semaphore::MAX_PERMITS),
            )),
            max_body_bytes,
        }
    }

    /// `body`, counted; the tally says afterwards whether it was refused.
    /// `connection` is told while the body waits for its client.
    pub(super) fn wrap<B>(
        &self,
        body: B,
        connection: Option<Arc<ConnectionState>>,
    ) -> (BudgetedBody<B>, Arc<BodyTally>) {
        let tally = Arc::new(BodyTally::default());
        let wrapped = BudgetedBody {
            inner: body,
            budget: self.clone(),
            tally: tally.clone(),
            read: 0,
            length_checked: false,
            connection,
        };
        (wrapped, tally)
    }

    /// Bytes of the budget not held by any body now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.available.available_permits()
    }
}

impl BodyTally {
    /// Gives the body's bytes back to the budget and says whether it was
    /// refused; called once the request is answered.
    pub(super) fn finish(&self) -> Option<BodyRefused> {
        let mut inner = self.inner.lock();
        inner.held = None;
        inner.refused
    }

    fn refuse(&self, why: BodyRefused) {
        let mut inner = self.inner.lock();
        inner.held = None;
        inner.refused.get_or_insert(why);
    }

    fn reserve(&self, available: &Arc<Semaphore>, bytes: usize) -> bool {
        let Ok(bytes) = u32::try_from(bytes) else {
            return false;
        };
        let Ok(permit) = available.clone().try_acquire_many_owned(bytes) else {
            return false;
        };
        let mut inner = self.inner.lock();
        match &mut inner.held {
            Some(held) => held.merge(permit),
            None => inner.held = Some(permit),
        }
        true
    }
}

impl BodyRefused {
    /// The JSON error reply, in the companions' shape.
    pub(super) fn response(self) -> Response {
        let (status, message) = match self {
            Self::TooLarge { max_body_bytes } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is longer than {max_body_bytes} bytes"),
            ),
            Self::OverBudget => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies in flight; retry shortly".to_string(),
            ),
        };
        let body = serde_json::json!({ "success": false, "result": null, "error": message });
        (status, axum::Json(body)).into_response()
    }
}

impl std::fmt::Display for BodyRefused {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { max_body_bytes } => {
                write!(formatter, "request body over {max_body_bytes} bytes")
            }
            Self::OverBudget => formatter.write_str("request bodies in flight over budget"),
        }
    }
}

impl std::error::Error for BodyRefused {}

impl<B> Drop for BudgetedBody<B> {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            connection.set_waiting_for_client(false);
        }
    }
}

impl<B> BudgetedBody<B> {
    fn refuse(&mut self, why: BodyRefused) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        self.tally.refuse(why);
        Poll::Ready(Some(Err(Box::new(why))))
    }
}

impl<B> Body for BudgetedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let too_large = BodyRefused::TooLarge {
            max_body_bytes: this.budget.max_body_bytes,
        };
        if !this.length_checked {
            this.length_checked = true;
            if this.inner.size_hint().lower() > this.budget.max_body_bytes as u64 {
                return this.refuse(too_large);
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(context);
        if let Some(connection) = &this.connection {
            connection.set_waiting_for_client(polled.is_pending());
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let bytes = frame.data_ref().map_or(0, Bytes::len);
                this.read = this.read.saturating_add(bytes);
                if this.read > this.budget.max_body_bytes {
                    return this.refuse(too_large);
                }
                if bytes > 0 && !this.tally.reserve(&this.budget.available, bytes) {
                    return this.refuse(BodyRefused::OverBudget);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its connection marked busy until it is
/// sent, so a connection streaming a reply is not replaced as idle.
pub(super) struct HeldWhileSent<B> {
    inner: B,
    _busy: BusyGuard,
}

impl<B> HeldWhileSent<B> {
    pub(super) fn new(inner: B, busy: BusyGuard) -> Self {
        Self { inner, _busy: busy }
    }
}

impl<B: Body + Unpin> Body for HeldWhileSent<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: usize) -> axum::body::Body {
        axum::body::Body::from(vec![b'a'; bytes])
    }

    impl BodyBudget {
        fn wrap_plain<B>(&self, body: B) -> (BudgetedBody<B>, Arc<BodyTally>) {
            self.wrap(body, None)
        }
    }

    async fn read(body: BudgetedBody<axum::body::Body>) -> Result<Bytes, axum::Error> {
        axum::body::to_bytes(axum::body::Body::new(body), usize::MAX).await
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_until_its_request_is_answered() {
        let budget = BodyBudget::new(1000, 600);
        let (first, first_tally) = budget.wrap_plain(body(500));
        let collected = read(first).await.expect("within both limits");
        assert_eq!(collected.len(), 500);
        assert_eq!(budget.available(), 500);
        // A second body that would pass the budget is refused, and gives
        // back what it had taken.
        let (second, second_tally) = budget.wrap_plain(body(600));
        assert!(read(second).await.is_err());
        assert_eq!(second_tally.finish(), Some(BodyRefused::OverBudget));
        assert_eq!(budget.available(), 500);
        assert_eq!(first_tally.finish(), None);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_a_byte_is_counted() {
        let budget = BodyBudget::new(1000, 100);
        let (long, tally) = budget.wrap_plain(body(101));
        assert!(read(long).await.is_err());
        assert_eq!(
            tally.finish(),
            Some(BodyRefused::TooLarge {
                max_body_bytes: 100
            })
        );
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn a_body_never_read_costs_nothing() {
        let budget = BodyBudget::new(1000, 1000);
        let (unread, tally) = budget.wrap_plain(body(900));
        drop(unread);
        assert_eq!(tally.finish(), None);
        assert_eq!(budget.available(), 1000);
    }
}
