//! The HTTP/1.1 wire format, both sides, as pure functions over buffers.
//! Upstream calls: writing a request head, parsing a response head (with
//! `httparse`) and framing its body (Content-Length, chunked, or until the
//! connection closes, per RFC 9112 §6.3); `crate::upstream` does the I/O.
//! Clients: parsing a request head and its body's framing, writing a
//! response head and chunk framing; `crate::server` does the I/O.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use crate::upstream::UpstreamError;

/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 128;
/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (size plus extensions) or trailer field accepted.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// Most trailer bytes accepted after the last chunk (trailers are skipped).
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Append the request head for `parts` to `out`: origin-form request line,
/// the headers as given (a `Host` among them), and a Content-Length of
/// `body_len` in place of any framing header the caller set.
pub fn write_request_head(parts: &http::request::Parts, body_len: usize, out: &mut Vec<u8>) {
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_body_semantics = !matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    if body_len > 0 || has_body_semantics {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the buffer the head took up.
    pub len: usize,
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: BodyFraming,
    /// The connection can carry another request once this body is read.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// A 1xx head, which a final response follows on the same connection.
    pub fn is_interim(&self) -> bool {
        self.status.is_informational()
    }
}

/// Parse a response head at the start of `buf`: `None` until all of it has
/// arrived.
pub fn parse_response_head(
    buf: &[u8],
    method: &Method,
) -> Result<Option<ResponseHead>, UpstreamError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(UpstreamError::Malformed("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpstreamError::Malformed("too many response header fields"))
        }
        Err(_) => return Err(UpstreamError::Malformed("response head is not HTTP/1.x")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(UpstreamError::Malformed("invalid response status"))?;
    let version = version_of(response.version);
    let headers = header_map(response.headers).map_err(|bad| {
        UpstreamError::Malformed(match bad {
            BadField::Name => "invalid response header name",
            BadField::Value => "invalid response header value",
        })
    })?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamError::Malformed("unexpected protocol switch"));
    }
    let body = body_framing(method, status, &headers)?;
    let keep_alive = version == Version::HTTP_11
        && !has_token(&headers, header::CONNECTION, "close")
        && !matches!(body, BodyFraming::UntilClose);
    Ok(Some(ResponseHead {
        len,
        status,
        version,
        headers,
        body,
        keep_alive,
    }))
}

/// `HTTP/1.0` for minor version 0, `HTTP/1.1` otherwise (httparse reads 1.x only).
fn version_of(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// Which part of a header field was invalid.
enum BadField {
    Name,
    Value,
}

/// Parsed header fields as a `HeaderMap` (values copied).
fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, BadField> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| BadField::Name)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| BadField::Value)?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// How the body of a response is delimited (RFC 9112 §6.3).
fn body_framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<BodyFraming, UpstreamError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyFraming::Length(0));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Chunked must be the final coding; otherwise the body runs to the
        // close. Either way any Content-Length is ignored.
        return Ok(if ends_in_chunked(headers) {
            BodyFraming::Chunked(Chunked::Size)
        } else {
            BodyFraming::UntilClose
        });
    }
    let length = content_length(headers).map_err(UpstreamError::Malformed)?;
    Ok(length.map_or(BodyFraming::UntilClose, BodyFraming::Length))
}

/// Whether the last Transfer-Encoding coding is `chunked`.
fn ends_in_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|c| !c.is_empty())
        .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
}

/// The Content-Length, if any; repeated values must agree.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let parsed = parse_decimal(trim(part)).ok_or("invalid Content-Length")?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err("conflicting Content-Length");
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
    })
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let value = (*d as char).to_digit(16)?;
        Some(n * 16 + u64::from(value))
    })
}

/// The body's framing, and how far decoding has got.
#[derive(Debug)]
pub enum BodyFraming {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many data bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: skipping trailer fields (bytes seen so far).
    Trailers(usize),
    Done,
}

/// One step of decoding a body from buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The body is complete.
    End,
    /// More bytes must be read first.
    NeedMore,
}

impl BodyFraming {
    /// Decode the next piece of body from the front of `buf`, consuming it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, UpstreamError> {
        match self {
            BodyFraming::Length(0) => Ok(Decoded::End),
            BodyFraming::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                *remaining -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            BodyFraming::UntilClose => {
                if buf.is_empty() {
                    Ok(Decoded::NeedMore)
                } else {
                    Ok(Decoded::Data(buf.split().freeze()))
                }
            }
            BodyFraming::Chunked(state) => decode_chunked(state, buf),
        }
    }

    /// The body is complete with what has been decoded so far.
    pub fn is_complete(&self) -> bool {
        matches!(
            self,
            BodyFraming::Length(0) | BodyFraming::Chunked(Chunked::Done)
        )
    }

    /// The upstream closed the connection: the end of a close-delimited
    /// body, and a truncated one otherwise.
    pub fn at_eof(&mut self) -> Result<(), UpstreamError> {
        match self {
            BodyFraming::UntilClose => Ok(()),
            _ if self.is_complete() => Ok(()),
            _ => Err(UpstreamError::Truncated),
        }
    }
}

fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, UpstreamError> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(line_end) = find_line(buf, MAX_LINE_BYTES)? else {
                    return Ok(Decoded::NeedMore);
                };
                // A size, then optional `;extension`s, which are ignored.
                let line = &buf[..line_end];
                let size_part = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = parse_hex(trim(size_part))
                    .ok_or(UpstreamError::Malformed("invalid chunk size"))?;
                buf.advance(line_end + 2);
                *state = if size == 0 {
                    Chunked::Trailers(0)
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let left = remaining - take as u64;
                *state = if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(UpstreamError::Malformed("chunk data longer than its size"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers(seen) => {
                let Some(line_end) = find_line(buf, MAX_LINE_BYTES)? else {
                    return Ok(Decoded::NeedMore);
                };
                buf.advance(line_end + 2);
                if line_end == 0 {
                    *state = Chunked::Done;
                    return Ok(Decoded::End);
                }
                let seen = seen + line_end + 2;
                if seen > MAX_TRAILER_BYTES {
                    return Err(UpstreamError::Malformed("chunked trailers too large"));
                }
                *state = Chunked::Trailers(seen);
            }
            Chunked::Done => return Ok(Decoded::End),
        }
    }
}

/// Where the CRLF ending the first line of `buf` starts; `None` if it has
/// not arrived yet.
fn find_line(buf: &[u8], max: usize) -> Result<Option<usize>, UpstreamError> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(0) => Err(UpstreamError::Malformed("bare LF in chunked framing")),
        Some(lf) if buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(UpstreamError::Malformed("bare LF in chunked framing")),
        None if buf.len() > max => Err(UpstreamError::Malformed("chunk line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn head(text: &str) -> ResponseHead {
        parse_response_head(text.as_bytes(), &Method::POST)
            .unwrap()
            .unwrap()
    }

    /// Decode `wire` fed in pieces of `step` bytes; the data and whether
    /// the body ended.
    fn decode_in_pieces(framing: &mut BodyFraming, wire: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match framing.decode(&mut buf).unwrap() {
                    Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                    Decoded::End => return (data, true),
                    Decoded::NeedMore => break,
                }
            }
        }
        (data, false)
    }

    #[test]
    fn request_head_is_origin_form_with_our_content_length() {
        let mut request = http::Request::post("http://up.example:8080/v1/messages?beta=true")
            .header("host", "up.example:8080")
            .header("x-api-key", "k")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        request
            .headers_mut()
            .append("x-api-key", "second".parse().unwrap());
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        write_request_head(&parts, 12, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/messages?beta=true HTTP/1.1\r\nhost: up.example:8080\r\n\
             x-api-key: k\r\nx-api-key: second\r\ncontent-length: 12\r\n\r\n"
        );
        let (parts, ()) = http::Request::get("http://h/v1/models")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        write_request_head(&parts, 0, &mut out);
        assert_eq!(out, b"GET /v1/models HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_head_is_parsed_only_once_complete() {
        let text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: r1\r\n\
                    Content-Length: 5\r\n\r\nhello";
        for cut in 0..text.len() - 5 {
            assert!(parse_response_head(&text.as_bytes()[..cut], &Method::POST)
                .unwrap()
                .is_none());
        }
        let parsed = head(text);
        assert_eq!(parsed.len, text.len() - 5);
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(parsed.headers["x-request-id"], "r1");
        assert!(matches!(parsed.body, BodyFraming::Length(5)));
        assert!(parsed.keep_alive);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let chunked = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert!(matches!(chunked.body, BodyFraming::Chunked(Chunked::Size)));
        let not_last = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert!(matches!(not_last.body, BodyFraming::UntilClose));
        assert!(!not_last.keep_alive);
        let no_length = head("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(no_length.body, BodyFraming::UntilClose));
        assert!(!no_length.keep_alive);
        let no_content = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert!(no_content.body.is_complete());
        assert!(head("HTTP/1.1 100 Continue\r\n\r\n").is_interim());
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        let no_reason = head("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(no_reason.status, StatusCode::OK);
        let same_twice = head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n");
        assert!(matches!(same_twice.body, BodyFraming::Length(4)));
    }

    #[test]
    fn malformed_heads_are_errors() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let result = parse_response_head(bad.as_bytes(), &Method::POST);
            assert!(
                matches!(result, Err(UpstreamError::Malformed(_))),
                "{bad:?}: {result:?}"
            );
        }
        let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
        let too_many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(parse_response_head(too_many.as_bytes(), &Method::POST).is_err());
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(parse_response_head(endless.as_bytes(), &Method::POST).is_err());
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;name=value\r\nhello\r\n1D\r\n, and twenty-nine bytes more.\r\n0\r\nx-trailer: t\r\n\r\n";
        for step in 1..=wire.len() {
            let mut framing = BodyFraming::Chunked(Chunked::Size);
            let (data, ended) = decode_in_pieces(&mut framing, wire, step);
            assert_eq!(
                String::from_utf8(data).unwrap(),
                "hello, and twenty-nine bytes more."
            );
            assert!(ended && framing.is_complete(), "step {step}");
        }
    }

    #[test]
    fn a_chunked_body_keeps_bytes_after_its_end_in_the_buffer() {
        let mut framing = BodyFraming::Chunked(Chunked::Size);
        let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"ok"))
        );
        assert_eq!(framing.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        for wire in [
            &b"zz\r\n"[..],
            b"3\r\nabcd\r\n",
            b"3\nabc\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            let mut framing = BodyFraming::Chunked(Chunked::Size);
            let mut buf = BytesMut::from(wire);
            let result = loop {
                match framing.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(
                matches!(result, Err(UpstreamError::Malformed(_))),
                "{wire:?}: {result:?}"
            );
        }
    }

    #[test]
    fn an_early_close_truncates_all_but_a_close_delimited_body() {
        let mut length = BodyFraming::Length(10);
        let (data, ended) = decode_in_pieces(&mut length, b"0123", 2);
        assert_eq!((data.len(), ended), (4, false));
        assert!(matches!(length.at_eof(), Err(UpstreamError::Truncated)));
        let mut chunked = BodyFraming::Chunked(Chunked::Size);
        decode_in_pieces(&mut chunked, b"4\r\nabcd\r\n", 3);
        assert!(matches!(chunked.at_eof(), Err(UpstreamError::Truncated)));
        let mut until_close = BodyFraming::UntilClose;
        let (data, _) = decode_in_pieces(&mut until_close, b"all of it", 4);
        assert_eq!(data, b"all of it");
        assert!(until_close.at_eof().is_ok());
        let mut exact = BodyFraming::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            exact.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert!(exact.is_complete());
        assert_eq!(exact.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"def");
    }
}
