//! Reading one service's answers: an attempt's request sent, its
//! rate-limit headers told to the endpoint's limiter, its reply read under
//! the body cap (whole, discarded, or as server-sent events), and a 429's
//! reset read as the wait before a retry.

use super::*;

/// What reading one service's answers needs, borrowed for an attempt.
#[derive(Clone, Copy)]
pub(super) struct ReplyReader<'a> {
    pub(super) service: &'a str,
    pub(super) max_reply_bytes: usize,
    pub(super) rate_limiter: Option<&'a RateLimiter>,
}

impl ReplyReader<'_> {
    /// Sends `request`; the answer's rate-limit headers are told to the
    /// limiter before its body is read.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        let response = request
            .send()
            .await
            .map_err(|error| classify_send_error(self.service, &error))?;
        if let Some(limiter) = self.rate_limiter {
            if let Some(limits) = rate_limit_headers::provider_limits(response.headers()) {
                limiter.observe(&limits);
            }
        }
        Ok(response)
    }
}

pub(super) async fn exchange<R: DeserializeOwned>(
    reader: ReplyReader<'_>,
    request: reqwest::RequestBuilder,
    progress: Option<&Progress>,
) -> Result<R, CallError> {
    let response = reader.send(request).await?;
    read_reply(reader.service, response, reader.max_reply_bytes, progress).await
}

/// One attempt of [`ServiceClient::post_bytes`]: a 2xx whatever its body
/// (read, capped, dropped), else the status as [`exchange`] reports it.
pub(super) async fn exchange_discarding(
    service: &str,
    request: reqwest::RequestBuilder,
    max_reply_bytes: usize,
) -> Result<(), CallError> {
    let response = request
        .send()
        .await
        .map_err(|error| classify_send_error(service, &error))?;
    if response.status().is_success() {
        read_capped(service, response, max_reply_bytes, None).await?;
        return Ok(());
    }
    read_reply::<serde::de::IgnoredAny>(service, response, max_reply_bytes, None)
        .await
        .map(|_| ())
}

/// One attempt of [`ServiceClient::post_streaming`]: an error status or a
/// body that is not an event stream is read whole, as [`exchange`] does.
pub(super) async fn exchange_streaming<E: DeserializeOwned, W: DeserializeOwned>(
    reader: ReplyReader<'_>,
    request: reqwest::RequestBuilder,
    progress: Progress,
) -> Result<Streamed<E, W>, CallError> {
    let (service, max_reply_bytes) = (reader.service, reader.max_reply_bytes);
    let response = reader.send(request).await?;
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
        .and_then(|value| crate::resilience::backoff::parse_retry_after(value, chrono::Utc::now()))
        .or_else(|| reset_of_429(status, response.headers()));
    let bytes = read_capped(service, response, max_reply_bytes, progress).await?;
    if !status.is_success() {
        return Err(status_error(service, status.as_u16(), &bytes, retry_after));
    }
    serde_json::from_slice(&bytes).map_err(|error| CallError::Decode {
        service: service.into(),
        message: error.to_string(),
    })
}

/// A 429 with no `Retry-After` but `x-ratelimit-reset-*` headers asks to
/// wait for that reset (not the backoff's guess); capped, like
/// `Retry-After`, by `retry_after_cap_ms`.
fn reset_of_429(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> Option<Duration> {
    if status != reqwest::StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    rate_limit_headers::provider_limits(headers)?.retry_delay()
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
