//! The HTTP/1.1 wire format of the gateway's own server, as pure functions
//! over buffers: parsing a request head and its body's framing, writing a
//! response head and chunk framing; `crate::server` does the I/O. (Upstream
//! calls use hyper's client, `crate::upstream`.)

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// Most header fields accepted in a request head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (size plus extensions) or trailer field accepted.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// Most trailer bytes accepted after the last chunk (trailers are skipped).
const MAX_TRAILER_BYTES: usize = 16 * 1024;

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

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the buffer the head took up.
    pub len: usize,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body's framing: Content-Length, chunked, or none (a request is
    /// never delimited by the close).
    pub body: BodyFraming,
    /// The client lets the connection carry another request.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestHeadError {
    /// Not a valid HTTP/1.x request head (answered 400).
    Malformed(&'static str),
    /// More than `max_len` bytes or too many fields (answered 431).
    TooLarge,
}

/// Parse a request head at the start of `buf`: `None` until all of it has
/// arrived.
pub fn parse_request_head(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<RequestHead>, RequestHeadError> {
    use RequestHeadError::{Malformed, TooLarge};
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_len => return Err(TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_len => return Err(TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TooLarge),
        Err(_) => return Err(Malformed("request head is not HTTP/1.x")),
    };
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| Malformed("invalid method"))?;
    let uri = Uri::try_from(request.path.unwrap_or_default())
        .map_err(|_| Malformed("invalid request target"))?;
    let version = version_of(request.version);
    let headers = header_map(request.headers).map_err(|bad| {
        Malformed(match bad {
            BadField::Name => "invalid header name",
            BadField::Value => "invalid header value",
        })
    })?;
    let (body, close_after_body) = if headers.contains_key(header::TRANSFER_ENCODING) {
        if !ends_in_chunked(&headers) {
            return Err(Malformed("request Transfer-Encoding must end in chunked"));
        }
        // With a Content-Length as well, chunked wins and the connection
        // must not be reused (RFC 9112 §6.3: a request-smuggling shape).
        (
            BodyFraming::Chunked(Chunked::Size),
            headers.contains_key(header::CONTENT_LENGTH),
        )
    } else {
        let length = content_length(&headers).map_err(Malformed)?;
        (BodyFraming::Length(length.unwrap_or(0)), false)
    };
    let keep_alive = !close_after_body
        && !has_token(&headers, header::CONNECTION, "close")
        && (version == Version::HTTP_11 || has_token(&headers, header::CONNECTION, "keep-alive"));
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        len,
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304): the handler's headers are sent as set.
    Bodiless,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client gets a body of unknown length up to the close.
    UntilClose,
}

/// Append a response head to `out`: the status line, the handler's
/// headers (less framing and connection headers, which are ours), `Date`
/// unless set, and our framing and connection headers.
pub fn write_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    keep_alive: bool,
    http10_client: bool,
    date: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        let ours = name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && framing != ResponseFraming::Bodiless);
        if ours {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::Bodiless | ResponseFraming::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10_client {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append the size line that starts a chunk of `len` bytes.
pub fn write_chunk_size(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
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

/// A request body's framing, and how far decoding has got.
#[derive(Debug)]
pub enum BodyFraming {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
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
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
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
            BodyFraming::Chunked(state) => decode_chunked(state, buf),
        }
    }
}

fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(line_end) = find_line(buf, MAX_LINE_BYTES)? else {
                    return Ok(Decoded::NeedMore);
                };
                // A size, then optional `;extension`s, which are ignored.
                let line = &buf[..line_end];
                let size_part = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = parse_hex(trim(size_part)).ok_or("invalid chunk size")?;
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
                    return Err("chunk data longer than its size");
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
                    return Err("chunked trailers too large");
                }
                *state = Chunked::Trailers(seen);
            }
            Chunked::Done => return Ok(Decoded::End),
        }
    }
}

/// Where the CRLF ending the first line of `buf` starts; `None` if it has
/// not arrived yet.
fn find_line(buf: &[u8], max: usize) -> Result<Option<usize>, &'static str> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(0) => Err("bare LF in chunked framing"),
        Some(lf) if buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err("bare LF in chunked framing"),
        None if buf.len() > max => Err("chunk line too long"),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;name=value\r\nhello\r\n1D\r\n, and twenty-nine bytes more.\r\n0\r\nx-trailer: t\r\n\r\n";
        for step in 1..=wire.len() {
            let mut framing = BodyFraming::Chunked(Chunked::Size);
            let (data, ended) = decode_in_pieces(&mut framing, wire, step);
            assert_eq!(
                String::from_utf8(data).unwrap(),
                "hello, and twenty-nine bytes more."
            );
            assert!(ended, "step {step}");
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
            assert!(result.is_err(), "{wire:?}: {result:?}");
        }
    }

    #[test]
    fn a_sized_body_takes_only_its_length() {
        let mut exact = BodyFraming::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            exact.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(exact.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"def");
    }
}
