//! Incremental Server-Sent-Events decoding and encoding.
//!
//! The decoder follows the WHATWG event-stream parsing rules (line endings
//! `\n`, `\r\n` or a lone `\r`; `field: value` with one optional leading space
//! stripped; comments starting with `:`; multi-line `data` joined with `\n`)
//! and additionally keeps the exact bytes of every event so a pass-through
//! proxy can forward them untouched.

use bytes::{Bytes, BytesMut};

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `None` when absent or empty (the SSE default
    /// event type `message`).
    pub event: Option<String>,
    /// All `data:` lines of the event joined with `\n`.
    pub data: String,
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// Exact bytes of the event as received, including any comment lines it
    /// contained and its terminating blank line.
    pub raw: Bytes,
}

/// Fields of the event being assembled.
#[derive(Debug, Default)]
struct Pending {
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl Pending {
    /// Applies one non-blank line.
    fn line(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return; // comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let (n, v) = line.split_at(i);
                let v = v.get(1..).unwrap_or_default();
                (n, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                // Valid UTF-8 (the usual case) is checked in one pass.
                match std::str::from_utf8(value) {
                    Ok(text) => self.data.push_str(text),
                    Err(_) => self.data.push_str(&String::from_utf8_lossy(value)),
                }
                self.has_data = true;
            }
            b"event" => {
                let v = String::from_utf8_lossy(value).into_owned();
                self.event = (!v.is_empty()).then_some(v);
            }
            // Per the spec an id containing NUL is ignored.
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            _ => {} // `retry` and unknown fields do not affect dispatch
        }
    }

    fn take(&mut self, raw: Bytes) -> Option<SseEvent> {
        let p = std::mem::take(self);
        // Blocks without any `data` line (comments, keep-alives) are not
        // events per the spec; their bytes are dropped.
        p.has_data.then_some(SseEvent {
            event: p.event,
            data: p.data,
            id: p.id,
            raw,
        })
    }
}

/// Incremental SSE decoder: feed arbitrary byte chunks, get complete events.
///
/// Each byte is examined once: the decoder remembers where the unfinished line
/// starts and where it stopped scanning, so feeding a large event in many
/// small chunks stays linear. Memory is bounded only by the size of the
/// largest single event.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current (undispatched) event, from its first byte.
    buf: BytesMut,
    /// Offset in `buf` of the first byte of the line not yet parsed.
    line_start: usize,
    /// Offset in `buf` where the search for the next line ending resumes.
    scan_pos: usize,
    pending: Pending,
    /// False until the first line was parsed (a leading BOM is ignored).
    seen_first_line: bool,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held for the event not yet complete (a relay caps this, so an
    /// upstream that never ends an event cannot grow it without bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends `chunk` and returns every event completed by it, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(rest) = self.buf.get(self.scan_pos..) {
            let Some(off) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.scan_pos = self.buf.len();
                break;
            };
            let end = self.scan_pos + off;
            let next = match (self.buf.get(end), self.buf.get(end + 1)) {
                (Some(b'\n'), _) => end + 1,
                (Some(b'\r'), Some(b'\n')) => end + 2,
                (Some(b'\r'), Some(_)) => end + 1,
                // A `\r` at the end of the buffer may be the first half of
                // `\r\n`: wait for the next byte before deciding.
                _ => {
                    self.scan_pos = end;
                    break;
                }
            };
            if let Some(ev) = self.line_ended(end, next) {
                events.push(ev);
            }
        }
        events
    }

    /// Handles the line `buf[line_start..end]` whose terminator ends at `next`.
    fn line_ended(&mut self, end: usize, next: usize) -> Option<SseEvent> {
        if end == self.line_start {
            // Blank line: dispatch everything up to and including it.
            let raw = self.buf.split_to(next.min(self.buf.len())).freeze();
            self.line_start = 0;
            self.scan_pos = 0;
            return self.pending.take(raw);
        }
        let line = self.buf.get(self.line_start..end).unwrap_or_default();
        let line = if self.seen_first_line {
            line
        } else {
            self.seen_first_line = true;
            line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line)
        };
        self.pending.line(line);
        self.line_start = next;
        self.scan_pos = next;
        None
    }

    /// Ends the stream: returns the trailing event if the stream stopped after
    /// `data` lines without the closing blank line. Its `raw` holds exactly
    /// the remaining bytes. The decoder is reset afterwards.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let len = self.buf.len();
        if self.line_start < len {
            // A final `\r` was held back in case `\n` followed; it ends the line.
            let end = if self.buf.last() == Some(&b'\r') {
                len - 1
            } else {
                len
            };
            if end > self.line_start {
                if let Some(line) = self.buf.get(self.line_start..end) {
                    let line = if self.seen_first_line {
                        line
                    } else {
                        line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line)
                    };
                    self.pending.line(line);
                }
            }
        }
        let raw = self.buf.split().freeze();
        self.line_start = 0;
        self.scan_pos = 0;
        self.seen_first_line = false;
        self.pending.take(raw)
    }
}

/// Encodes one event. Line breaks inside `data` become separate `data:` lines
/// (so decoding yields `data` back with `\n` line endings); line breaks in the
/// event name are removed because they would corrupt the framing.
pub fn encode_event(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(name) = event {
        out.push_str("event: ");
        out.extend(name.chars().filter(|c| *c != '\n' && *c != '\r'));
        out.push('\n');
    }
    let mut rest = data;
    loop {
        let (line, tail) = match rest.find(['\n', '\r']) {
            Some(i) => {
                let skip = if rest.get(i..i + 2) == Some("\r\n") {
                    2
                } else {
                    1
                };
                (rest.get(..i).unwrap_or(""), rest.get(i + skip..))
            }
            None => (rest, None),
        };
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
        match tail {
            Some(t) => rest = t,
            None => break,
        }
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ev(event: Option<&str>, data: &str, raw: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
            raw: Bytes::copy_from_slice(raw.as_bytes()),
        }
    }

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
        event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n\
        : keep-alive comment\n\n\
        event: content_block_delta\ndata: {\"a\":\ndata: 1}\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            ev(
                Some("message_start"),
                "{\"type\":\"message_start\"}",
                "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
            ),
            ev(
                Some("ping"),
                "{\"type\": \"ping\"}",
                "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
            ),
            ev(
                Some("content_block_delta"),
                "{\"a\":\n1}",
                "event: content_block_delta\ndata: {\"a\":\ndata: 1}\n\n",
            ),
        ]
    }

    #[test]
    fn whole_stream() {
        let mut d = SseDecoder::new();
        assert_eq!(d.push(ANTHROPIC.as_bytes()), expected());
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let mut d = SseDecoder::new();
        let mut got = Vec::new();
        for b in ANTHROPIC.as_bytes() {
            got.extend(d.push(std::slice::from_ref(b)));
        }
        assert_eq!(got, expected());
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn every_split_point_equals_whole() {
        let bytes = ANTHROPIC.as_bytes();
        for i in 0..=bytes.len() {
            let mut d = SseDecoder::new();
            let mut got = d.push(&bytes[..i]);
            got.extend(d.push(&bytes[i..]));
            assert_eq!(got, expected(), "split at {i}");
        }
    }

    #[test]
    fn raw_concatenation_preserves_events() {
        // Forwarding raw bytes of all events reproduces the stream minus
        // the data-less comment block.
        let mut d = SseDecoder::new();
        let raw: Vec<u8> = d
            .push(ANTHROPIC.as_bytes())
            .iter()
            .flat_map(|e| e.raw.to_vec())
            .collect();
        let expected_raw = ANTHROPIC.replace(": keep-alive comment\n\n", "");
        assert_eq!(String::from_utf8(raw).unwrap(), expected_raw);
    }

    #[test]
    fn openai_style_and_done() {
        let s = "data: {\"x\":1}\n\ndata: [DONE]\n\n";
        let mut d = SseDecoder::new();
        let got = d.push(s.as_bytes());
        assert_eq!(
            got,
            vec![
                ev(None, "{\"x\":1}", "data: {\"x\":1}\n\n"),
                ev(None, "[DONE]", "data: [DONE]\n\n"),
            ]
        );
    }

    #[test]
    fn lone_cr_line_endings() {
        let s = "event: a\rdata: 1\r\rdata: 2\r\r";
        let mut whole = SseDecoder::new();
        let mut a = whole.push(s.as_bytes());
        // The final `\r` could still be followed by `\n`, so the second
        // event is only complete once the stream ends.
        assert_eq!(a, vec![ev(Some("a"), "1", "event: a\rdata: 1\r\r")]);
        a.extend(whole.finish());
        assert_eq!(
            a,
            vec![
                ev(Some("a"), "1", "event: a\rdata: 1\r\r"),
                ev(None, "2", "data: 2\r\r"),
            ]
        );
        let mut bytewise = SseDecoder::new();
        let mut b = Vec::new();
        for byte in s.as_bytes() {
            b.extend(bytewise.push(std::slice::from_ref(byte)));
        }
        b.extend(bytewise.finish());
        assert_eq!(b, a);
    }

    #[test]
    fn cr_at_chunk_end_waits_for_lf() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: x\r").is_empty());
        assert!(d.push(b"\n\r").is_empty());
        let got = d.push(b"\n");
        assert_eq!(got, vec![ev(None, "x", "data: x\r\n\r\n")]);
    }

    #[test]
    fn field_parsing_rules() {
        let s = "data:no-space\ndata:  two-spaces\ndata\nid: 7\nretry: 100\nunknown: z\n\n";
        let mut d = SseDecoder::new();
        let got = d.push(s.as_bytes());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, "no-space\n two-spaces\n");
        assert_eq!(got[0].id.as_deref(), Some("7"));
        assert_eq!(got[0].event, None);
    }

    #[test]
    fn empty_data_dispatches_and_dataless_does_not() {
        let mut d = SseDecoder::new();
        let got = d.push(b"event: x\n\ndata:\n\n\n\n");
        assert_eq!(got, vec![ev(None, "", "data:\n\n")]);
    }

    #[test]
    fn finish_returns_trailing_event() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"event: e\ndata: tail").is_empty());
        assert_eq!(
            d.finish(),
            Some(ev(Some("e"), "tail", "event: e\ndata: tail"))
        );
        // The decoder is reusable after finish.
        assert_eq!(d.push(b"data: 1\n\n"), vec![ev(None, "1", "data: 1\n\n")]);
        assert!(d.push(b"data: 2\r").is_empty());
        assert_eq!(d.finish(), Some(ev(None, "2", "data: 2\r")));
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn bom_and_invalid_utf8() {
        let mut d = SseDecoder::new();
        let mut input = "\u{feff}data: a".as_bytes().to_vec();
        input.extend_from_slice(&[0xff, b'\n', b'\n']);
        let got = d.push(&input);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, "a\u{fffd}");
        assert_eq!(got[0].raw.as_ref(), &input[..]);
    }

    #[test]
    fn large_event_in_small_chunks() {
        let payload = "x".repeat(200_000);
        let s = format!("data: {payload}\n\n");
        let mut d = SseDecoder::new();
        let mut got = Vec::new();
        for c in s.as_bytes().chunks(7) {
            got.extend(d.push(c));
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, payload);
    }

    #[test]
    fn encode_round_trips() {
        let b = encode_event(Some("content_block_delta"), "{\"a\":1}");
        assert_eq!(
            b.as_ref(),
            b"event: content_block_delta\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(encode_event(None, "").as_ref(), b"data: \n\n");
        let b = encode_event(Some("bad\nname"), "l1\r\nl2\rl3\nl4");
        assert_eq!(
            b.as_ref(),
            b"event: badname\ndata: l1\ndata: l2\ndata: l3\ndata: l4\n\n"
        );
        let mut d = SseDecoder::new();
        let got = d.push(&b);
        assert_eq!(got[0].data, "l1\nl2\nl3\nl4");
        assert_eq!(got[0].event.as_deref(), Some("badname"));
        assert_eq!(got[0].raw, b);
    }
}
