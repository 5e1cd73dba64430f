//! A server-sent events reader, small enough to read in one sitting: bytes
//! go in as the network delivers them (a chunk may end mid-line, or mid
//! character), and each complete event's `data` comes out. Lines end in
//! LF, CRLF or CR; `:` lines are comments (keep-alives); fields other than
//! `data` (`event`, `id`, `retry`) are not used by OpenAI-compatible
//! servers and are skipped. An event is dispatched at its blank line, as
//! the WHATWG specification says; one cut off by the end of the stream is
//! not.
//!
//! [`read_events`] reads a reply with it, the way OpenAI-compatible
//! servers stream: each event's data one JSON value, `data: [DONE]` last.
//! It knows that framing only: what the values mean is the caller's.

use serde::de::DeserializeOwned;

use super::{error_chain, error_message, too_large, CallError};
use crate::resilience::Progress;

/// The event that ends an OpenAI-compatible stream.
const DONE: &str = "[DONE]";

/// Reads an event stream to `data: [DONE]`, each event's data parsed as
/// an `E`, marking `progress` as events arrive. The total read is capped at
/// `max_bytes`. A stream that ends before `[DONE]` or carries an event that
/// is not JSON is a decode error; an `{"error": ...}` event (servers report
/// a failure mid-stream so, having already answered 200) is a server error.
pub(super) async fn read_events<E: DeserializeOwned>(
    service: &str,
    mut response: reqwest::Response,
    max_bytes: usize,
    progress: &Progress,
) -> Result<Vec<E>, CallError> {
    let decode = |message: String| CallError::Decode {
        service: service.into(),
        message,
    };
    let mut parser = SseParser::default();
    let mut data = Vec::new();
    let mut events = Vec::new();
    let mut read = 0usize;
    loop {
        let chunk = response.chunk().await.map_err(|error| CallError::Connect {
            service: service.into(),
            message: error_chain(&error),
        })?;
        let Some(chunk) = chunk else {
            return Err(decode(format!(
                "the reply stream ended without `data: {DONE}` after {} events (llm.stream = false turns streaming off)",
                events.len()
            )));
        };
        read += chunk.len();
        if read > max_bytes {
            return Err(too_large(service, max_bytes));
        }
        parser.feed(&chunk, &mut data);
        // A whole event is a piece of the reply; bytes of a comment (a
        // keep-alive) are not: a server that only says it is alive stalls.
        if !data.is_empty() {
            progress.mark();
        }
        for payload in data.drain(..) {
            let payload = payload.trim();
            if payload == DONE {
                finish(&mut response).await;
                return Ok(events);
            }
            if payload.is_empty() {
                continue;
            }
            if let Some(error) = stream_error(service, payload) {
                return Err(error);
            }
            let event = serde_json::from_str(payload).map_err(|error| {
                decode(format!(
                    "event {} of the reply stream is not the JSON expected: {error}",
                    events.len() + 1
                ))
            })?;
            events.push(event);
        }
    }
}

/// Reads the body's end when it has already come, so the connection goes
/// back to the pool; a server that keeps it open after `[DONE]` is not
/// waited for (the connection is closed instead).
async fn finish(response: &mut reqwest::Response) {
    tokio::select! {
        biased;
        _ = response.chunk() => {}
        () = std::future::ready(()) => {}
    }
}

/// An `{"error": ...}` event as the server's error: its `code` when that is
/// an HTTP status, else 500 (the server failed after it had started).
fn stream_error(service: &str, payload: &str) -> Option<CallError> {
    if !payload.contains("\"error\"") {
        return None;
    }
    let message = error_message(payload.as_bytes())?;
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let status = value["error"]["code"]
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (400..600).contains(code))
        .unwrap_or(500);
    Some(CallError::Status {
        service: service.into(),
        status,
        message: crate::wire::loggable(&format!("in the reply stream: {message}")),
        retry_after: None,
        overflow: matches!(status, 400 | 413)
            .then(|| super::ContextOverflow::from_body(payload.as_bytes()))
            .flatten(),
    })
}

/// The reader's state between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The current line, not yet ended.
    line: Vec<u8>,
    /// The current event's `data` lines, joined by LF.
    data: Vec<u8>,
    /// A `data` field has been seen since the last dispatch.
    has_data: bool,
    /// The last chunk ended in CR: an LF starting the next one belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// Reads `bytes` and appends the data of each event they complete.
    /// Whole runs between line ends are copied at once, and the line and
    /// data buffers keep their room from one line to the next.
    pub fn feed(&mut self, mut bytes: &[u8], events: &mut Vec<String>) {
        while let Some((&first, rest)) = bytes.split_first() {
            // An LF right after a CR (perhaps at the end of the last chunk)
            // ends no second line.
            if std::mem::replace(&mut self.after_cr, false) && first == b'\n' {
                bytes = rest;
                continue;
            }
            match bytes
                .iter()
                .position(|&byte| byte == b'\n' || byte == b'\r')
            {
                Some(end) => {
                    self.line.extend_from_slice(&bytes[..end]);
                    self.after_cr = bytes[end] == b'\r';
                    self.end_line(events);
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.line.extend_from_slice(bytes);
                    return;
                }
            }
        }
    }

    fn end_line(&mut self, events: &mut Vec<String>) {
        if self.line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                // `from_utf8` checks ASCII a word at a time; the lossy
                // walk, a byte at a time, is for a stream that is not UTF-8.
                events.push(match std::str::from_utf8(&self.data) {
                    Ok(text) => text.to_owned(),
                    Err(_) => String::from_utf8_lossy(&self.data).into_owned(),
                });
                self.data.clear();
            }
            return;
        }
        let line = &self.line;
        if line[0] != b':' {
            let (field, value) = match line.iter().position(|&byte| byte == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (&line[..], &[][..]),
            };
            if field == b"data" {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut events);
        }
        events
    }

    #[test]
    fn events_come_out_however_the_bytes_are_cut() {
        let stream = "data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":\"é\"}\n\ndata: [DONE]\n\n";
        let whole = events_of(&[stream.as_bytes()]);
        assert_eq!(whole, ["{\"a\":1}", "{\"b\":\"é\"}", "[DONE]"]);
        // Every split point, including mid-line and mid-character.
        let bytes = stream.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(
                events_of(&[&bytes[..cut], &bytes[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let byte_by_byte: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(events_of(&byte_by_byte), whole);
    }

    #[test]
    fn crlf_and_cr_end_lines_too_even_split_between_chunks() {
        let crlf = events_of(&[b"data: one\r\n\r\ndata: two\r", b"\n\r", b"\n"]);
        assert_eq!(crlf, ["one", "two"]);
        assert_eq!(events_of(&[b"data: a\r\rdata: b\r\r"]), ["a", "b"]);
    }

    #[test]
    fn several_events_in_one_chunk_and_comments_and_other_fields_are_skipped() {
        let events = events_of(&[
            b": hello\nevent: message\nid: 7\nretry: 10\ndata: x\n\n:ping\n\ndata:y\n\n",
        ]);
        assert_eq!(events, ["x", "y"]);
    }

    #[test]
    fn multi_line_data_joins_with_lf_and_an_unfinished_event_is_not_dispatched() {
        assert_eq!(
            events_of(&[b"data: first\ndata: second\n\ndata: cut off"]),
            ["first\nsecond"]
        );
        assert_eq!(events_of(&[b"data: no blank line\n"]), Vec::<String>::new());
        assert_eq!(
            events_of(&[b"data\n\n"]),
            [""],
            "a field without a colon has an empty value"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_any_pieces_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            cut in 0usize..512,
        ) {
            let cut = cut.min(bytes.len());
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            parser.feed(&bytes[..cut], &mut events);
            parser.feed(&bytes[cut..], &mut events);
            let total: usize = events.iter().map(String::len).sum();
            // Lossy UTF-8 may widen a byte to three, never more.
            proptest::prop_assert!(total <= bytes.len() * 3);
        }
    }
}
