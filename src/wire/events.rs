//! The admin API's event streams on the wire (`GET /api/v1/events`,
//! `GET /api/v1/sessions/{id}/events`): server-sent events as the WHATWG
//! specification frames them, written by the daemon and read back by
//! `heistd sessions watch` and the web console. The event names are spelt
//! once, here; what each event's JSON holds is documented in
//! `docs/operations.md` ("Watching sessions live").
//!
//! It frames and parses only: it knows nothing of sessions or turns.

/// A committed turn; its `id:` resumes the stream after it.
pub const TURN: &str = "turn";
/// The session waits out an outage (the model is unavailable).
pub const WAITING: &str = "waiting";
/// The outage is over; the session plays again.
pub const RESUMED: &str = "resumed";
/// The session ended; the last event of a session's stream.
pub const ENDED: &str = "ended";
/// The daemon closed the stream (it reads too slowly, it lasted its
/// longest, the daemon stops); the client reconnects with `Last-Event-ID`.
pub const CLOSED: &str = "closed";

/// What the daemon sends while nothing happens, so proxies and the
/// listener's idle timeout see bytes move. A comment: clients ignore it.
pub const KEEPALIVE: &str = ": keepalive\n\n";

/// The `Last-Event-ID` request header a client resumes with.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The content type of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// One event: its name, its id (only turns have one) and its data, one
/// JSON value on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Frame {
    /// The frame as it is written: `event:`, `id:` when there is one, a
    /// `data:` line per line of data, and the blank line that ends it.
    /// Line breaks inside a field that cannot hold one are dropped, so a
    /// value can never start a field or an event of its own.
    pub fn encode(&self) -> String {
        let one_line = |text: &str| text.replace(['\r', '\n'], "");
        let mut out = format!("event: {}\n", one_line(&self.event));
        if let Some(id) = &self.id {
            out.push_str(&format!("id: {}\n", one_line(id)));
        }
        for line in self.data.split('\n') {
            out.push_str(&format!("data: {}\n", line.trim_end_matches('\r')));
        }
        out.push('\n');
        out
    }
}

/// Reads frames from bytes as the network delivers them: a chunk may end
/// mid-line or mid-character. Lines end in LF, CRLF or CR; `:` lines are
/// comments; an event is dispatched at its blank line, and one cut off by
/// the end of the stream is not. Unknown fields (`retry`) are skipped.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a line not yet ended.
    pending: Vec<u8>,
    /// The last byte seen was a CR (its LF, if any, is not a second line).
    after_cr: bool,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl Decoder {
    /// Feeds `bytes`; returns the frames they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &byte in bytes {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.pending);
                    if let Some(frame) = self.line(&String::from_utf8_lossy(&line)) {
                        frames.push(frame);
                    }
                }
                _ => self.pending.push(byte),
            }
        }
        frames
    }

    fn line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(Frame {
                event: self.event.take().unwrap_or_else(|| "message".into()),
                id: self.id.take(),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "event" => self.event = Some(value),
            "id" => self.id = Some(value),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: &str, id: Option<&str>, data: &str) -> Frame {
        Frame {
            event: event.into(),
            id: id.map(str::to_string),
            data: data.into(),
        }
    }

    #[test]
    fn a_frame_is_written_as_the_specification_frames_it() {
        assert_eq!(
            frame(TURN, Some("7"), r#"{"turn_id":7}"#).encode(),
            "event: turn\nid: 7\ndata: {\"turn_id\":7}\n\n"
        );
        assert_eq!(
            frame(ENDED, None, "{}").encode(),
            "event: ended\ndata: {}\n\n"
        );
        // Data over several lines is several data lines; a line break in
        // a name or an id cannot start a field of its own.
        assert_eq!(
            frame("a\nid: 9", Some("1\n\ndata: x"), "one\ntwo").encode(),
            "event: aid: 9\nid: 1data: x\ndata: one\ndata: two\n\n"
        );
    }

    #[test]
    fn frames_read_back_whatever_the_chunks_and_line_ends() {
        let frames = [
            frame(TURN, Some("1"), r#"{"message":"héllo"}"#),
            frame(WAITING, None, "{}"),
            frame(TURN, Some("2"), "a\nb"),
        ];
        let text: String = frames.iter().map(Frame::encode).collect();
        let text = format!("{KEEPALIVE}{}", text.replace("data: {}\n", "data: {}\r\n"));
        let bytes = text.as_bytes();
        for chunk_size in [1, 2, 3, 7, bytes.len()] {
            let mut decoder = Decoder::default();
            let read: Vec<Frame> = bytes
                .chunks(chunk_size)
                .flat_map(|chunk| decoder.feed(chunk))
                .collect();
            assert_eq!(read, frames, "chunks of {chunk_size}");
        }
    }

    #[test]
    fn an_event_cut_off_by_the_end_of_the_stream_is_not_dispatched() {
        let mut decoder = Decoder::default();
        assert!(decoder.feed(b"event: turn\nid: 3\ndata: {}\n").is_empty());
        // CR line ends, a comment, and a field without a colon.
        let frames = decoder.feed(b"\r: note\rretry\rdata\r\r");
        assert_eq!(
            frames,
            vec![frame(TURN, Some("3"), "{}"), frame("message", None, "")]
        );
    }
}
