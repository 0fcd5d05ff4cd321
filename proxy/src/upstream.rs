//! The HTTP client for upstream providers: HTTP/1.1 over rustls (webpki
//! roots) or plain TCP, with TCP_NODELAY and a connect timeout, and a pool of
//! keep-alive connections per origin.
//!
//! The client is ours (the wire format is in `crate::http1`) rather than
//! hyper's, for memory and for one task per request. Hyper's client
//! connection keeps two 8 KiB buffers and a 9 KiB request channel for its
//! whole life, and signals between its halves by waking tasks; 1,000 open
//! streams paid ~25 KiB each for that. Here a connection is a socket and
//! one read buffer that starts at 4 KiB, and it is read by the task of the
//! request using it: a proxied request runs in one task from the client's
//! socket to the upstream's and back, and chunks that arrive together are
//! read together. The connection returns to the pool from that same task
//! when the body ends. An idle pooled connection is checked when it is
//! next taken, which is when a close by the upstream is noticed.

use bytes::{Buf, Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Method, Uri};
use http_body_util::{BodyDataStream, BodyExt};
use hyper::body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tower_service::Service;

use crate::http1::{self, BodyFraming, Decoded, ResponseHead};

type Connector = HttpsConnector<HttpConnector>;
type Io = TokioIo<<Connector as Service<Uri>>::Response>;
/// A request to an upstream: absolute URL, headers, whole body.
pub type UpstreamRequest = http::Request<Bytes>;
pub type UpstreamResponse = http::Response<UpstreamBody>;
/// A response body as a stream of data chunks.
pub type UpstreamStream = BodyDataStream<UpstreamBody>;

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// A connection's first read buffer: room for a provider's response head
/// and a burst of stream events, and what an open stream keeps.
const INITIAL_READ_BYTES: usize = 4 * 1024;
/// The read size doubles (up to this) each time a read fills the buffer,
/// so a large body is read in few calls.
const MAX_READ_BYTES: usize = 64 * 1024;
/// Below this much free space the buffer is reclaimed or grown before a read.
const MIN_READ_SPACE: usize = 512;
/// Largest non-streamed response body read into memory: a misbehaving
/// upstream cannot make the gateway hold more (chat answers are far smaller).
pub const MAX_RESPONSE_BODY: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, TLS, timeout).
    #[error("connect error")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Writing the request or reading the response failed.
    #[error("the upstream connection failed")]
    Io(#[source] std::io::Error),
    /// The connection ended without answering the request.
    #[error("the upstream closed the connection without answering")]
    Closed,
    /// What came back is not a valid HTTP/1.1 response.
    #[error("the upstream sent invalid HTTP: {0}")]
    Malformed(&'static str),
    /// The connection ended before the body did.
    #[error("the upstream closed the connection before the body ended")]
    Truncated,
    /// A response body (not streamed) over `MAX_RESPONSE_BODY`.
    #[error("the upstream response body is larger than {} MiB", MAX_RESPONSE_BODY >> 20)]
    TooLarge,
    /// The URL has no host, or a scheme other than http or https (the
    /// URL itself stays out of the text, which may reach a client).
    #[error("the upstream URL is not an absolute http(s) URL")]
    BadUrl,
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// Pooled HTTP/1.1 client for upstream providers; cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    origins: Mutex<HashMap<OriginKey, OriginPool>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct OriginKey {
    https: bool,
    authority: Authority,
}

struct OriginPool {
    /// `Host` for requests to this origin, built once.
    host: HeaderValue,
    /// Idle connections, most recently used last.
    idle: Vec<Idle>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One HTTP/1.1 connection: the socket and what has been read from it but
/// not yet taken. Boxed where it is held, so that handing it between the
/// pool, a request and its body moves a pointer, not the TLS state.
struct Conn {
    io: Io,
    read_buf: BytesMut,
    /// Bytes to make room for before the next read.
    read_size: usize,
}

impl Conn {
    fn new(io: Io) -> Box<Conn> {
        Box::new(Conn {
            io,
            read_buf: BytesMut::new(),
            read_size: INITIAL_READ_BYTES,
        })
    }

    /// Read what the socket has into the buffer; `Ok(0)` when the upstream
    /// closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < MIN_READ_SPACE {
            // Reuses the buffer's memory once the chunks handed out are gone.
            self.read_buf.reserve(self.read_size);
        }
        let space = self.read_buf.capacity() - self.read_buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read_buf
        ))?;
        if read == space && self.read_size < MAX_READ_BYTES {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(read))
    }

    /// Whether an idle connection can take a request: the upstream has
    /// neither closed it nor sent anything unasked.
    fn poll_still_idle(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        Poll::Ready(self.poll_fill(cx).is_pending())
    }

    /// Write the request head and body. On failure, whether nothing at all
    /// was written (so the request can go to another connection).
    async fn write_request(
        &mut self,
        head: &[u8],
        body: &[u8],
    ) -> Result<(), (std::io::Error, bool)> {
        let total = head.len() + body.len();
        let mut written = 0;
        poll_fn(|cx| {
            while written < total {
                let slices = if written < head.len() {
                    [IoSlice::new(&head[written..]), IoSlice::new(body)]
                } else {
                    [
                        IoSlice::new(&body[written - head.len()..]),
                        IoSlice::new(&[]),
                    ]
                };
                match ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices)) {
                    Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                    Ok(n) => written += n,
                    Err(err) => return Poll::Ready(Err(err)),
                }
            }
            Pin::new(&mut self.io).poll_flush(cx)
        })
        .await
        .map_err(|err| (err, written == 0))
    }

    /// Read until a final (non-1xx) response head has arrived.
    async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, UpstreamError> {
        poll_fn(|cx| loop {
            if !self.read_buf.is_empty() {
                if let Some(head) = http1::parse_response_head(&self.read_buf, method)? {
                    self.read_buf.advance(head.len);
                    if head.is_interim() {
                        continue;
                    }
                    return Poll::Ready(Ok(head));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.read_buf.is_empty() => {
                    return Poll::Ready(Err(UpstreamError::Closed))
                }
                Ok(0) => {
                    return Poll::Ready(Err(UpstreamError::Malformed(
                        "the connection closed inside the response head",
                    )))
                }
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(UpstreamError::Io(err))),
            }
        })
        .await
    }
}

pub fn client(connect_timeout: Duration) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    // Without it a keep-alive request can stall ~40 ms (Nagle + delayed ACK).
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(UpstreamClient {
        shared: Arc::new(Shared {
            connector,
            origins: Mutex::new(HashMap::new()),
        }),
    })
}

impl UpstreamClient {
    /// Send `request` (absolute URL) on an idle pooled connection, or a new
    /// one. A pooled connection found closed, or one that fails before any
    /// byte of the request was written, is skipped; a request is never
    /// sent twice.
    pub async fn request(
        &self,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        let key = origin_key(&parts.uri)?;
        let host = self.host(&key);
        parts.headers.entry(header::HOST).or_insert(host);
        let mut head = Vec::with_capacity(512);
        http1::write_request_head(&parts, body.len(), &mut head);
        loop {
            let (mut conn, reused) = match self.checkout(&key).await {
                Some(conn) => (conn, true),
                None => (self.connect(parts.uri.clone()).await?, false),
            };
            match conn.write_request(&head, &body).await {
                Ok(()) => {}
                Err((_, nothing_written)) if reused && nothing_written => continue,
                Err((err, _)) => return Err(UpstreamError::Io(err)),
            }
            let response = conn.read_head(&parts.method).await?;
            return Ok(self.wrap(response, key, conn));
        }
    }

    /// The `Host` value for an origin, built once.
    fn host(&self, key: &OriginKey) -> HeaderValue {
        let mut origins = self.shared.origins.lock();
        let pool = origins.entry(key.clone()).or_insert_with(|| OriginPool {
            host: host_header(&key.authority),
            idle: Vec::new(),
        });
        pool.host.clone()
    }

    /// The most recently used idle connection that is still open, if any
    /// (ones idle too long or closed are dropped on the way).
    async fn checkout(&self, key: &OriginKey) -> Option<Box<Conn>> {
        loop {
            let mut conn = {
                let mut origins = self.shared.origins.lock();
                let idle = origins.get_mut(key)?.idle.pop()?;
                if idle.since.elapsed() >= IDLE_TIMEOUT {
                    continue;
                }
                idle.conn
            };
            if poll_fn(|cx| conn.poll_still_idle(cx)).await {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, uri: Uri) -> Result<Box<Conn>, UpstreamError> {
        let mut connector = self.shared.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector.call(uri).await.map_err(UpstreamError::Connect)?;
        Ok(Conn::new(TokioIo::new(io)))
    }

    fn wrap(&self, head: ResponseHead, key: OriginKey, conn: Box<Conn>) -> UpstreamResponse {
        let mut body = UpstreamBody {
            conn: Some(conn),
            framing: head.body,
            keep_alive: head.keep_alive,
            pool: Some((self.clone(), key)),
        };
        if body.framing.is_complete() {
            body.release();
        }
        let mut response = http::Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        response
    }

    fn put_back(&self, key: OriginKey, conn: Box<Conn>) {
        let now = Instant::now();
        let mut origins = self.shared.origins.lock();
        let Some(pool) = origins.get_mut(&key) else {
            return;
        };
        // The oldest are first: drop the ones idle too long or over the cap.
        let expired = pool
            .idle
            .iter()
            .take_while(|idle| now.duration_since(idle.since) >= IDLE_TIMEOUT)
            .count();
        let over = (pool.idle.len() - expired + 1).saturating_sub(MAX_IDLE_PER_ORIGIN);
        pool.idle.drain(..expired + over);
        pool.idle.push(Idle { conn, since: now });
    }

    /// Idle connections currently pooled for `url`'s origin (tests).
    pub fn idle_connections(&self, url: &Uri) -> usize {
        let Ok(key) = origin_key(url) else { return 0 };
        self.shared
            .origins
            .lock()
            .get(&key)
            .map_or(0, |pool| pool.idle.len())
    }
}

/// `host[:port]` (never any user info the URL may carry).
fn host_header(authority: &Authority) -> HeaderValue {
    let host = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn origin_key(uri: &Uri) -> Result<OriginKey, UpstreamError> {
    let https = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => true,
        Some(s) if *s == Scheme::HTTP => false,
        _ => return Err(UpstreamError::BadUrl),
    };
    let authority = uri.authority().cloned().ok_or(UpstreamError::BadUrl)?;
    Ok(OriginKey { https, authority })
}

/// An upstream response body. Reading it reads its connection; read to
/// its end, the connection goes back to the pool. Dropped before that, the
/// connection is closed (it cannot carry another request with a body still
/// unread), which also cancels the upstream's work.
pub struct UpstreamBody {
    /// `None` once the body has ended or failed.
    conn: Option<Box<Conn>>,
    framing: BodyFraming,
    keep_alive: bool,
    pool: Option<(UpstreamClient, OriginKey)>,
}

impl UpstreamBody {
    /// The body is complete: pool the connection if it can carry another
    /// request (nothing unasked-for left in its buffer).
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.read_buf.is_empty() {
                if let Some((client, key)) = self.pool.take() {
                    client.put_back(key, conn);
                }
            }
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("framing", &self.framing)
            .field("connection", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.decode(&mut conn.read_buf) {
                Ok(Decoded::Data(data)) => {
                    if this.framing.is_complete() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(err) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(err)));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    // Closed by the upstream: never pooled again.
                    this.conn = None;
                    return Poll::Ready(this.framing.at_eof().err().map(Err));
                }
                Ok(_) => {}
                Err(err) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(UpstreamError::Io(err))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_complete()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(remaining) => SizeHint::with_exact(remaining),
            _ => SizeHint::default(),
        }
    }
}

/// The whole body of a response, up to `MAX_RESPONSE_BODY`.
pub async fn body_bytes(response: UpstreamResponse) -> Result<Bytes, UpstreamError> {
    body_bytes_within(response, MAX_RESPONSE_BODY).await
}

async fn body_bytes_within(
    response: UpstreamResponse,
    limit: usize,
) -> Result<Bytes, UpstreamError> {
    let mut body = response.into_body();
    if body.size_hint().lower() > limit as u64 {
        return Err(UpstreamError::TooLarge);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            total += data.len();
            if total > limit {
                return Err(UpstreamError::TooLarge);
            }
            chunks.push(data);
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}

pub fn body_stream(response: UpstreamResponse) -> UpstreamStream {
    BodyDataStream::new(response.into_body())
}

/// Whether a timeout caused the failure (e.g. the connect timeout).
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = inner.source();
    }
    false
}

/// An error with its causes, for logs and the client's error message (no
/// URL: upstream addresses stay out of client-facing text).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// How a test upstream treats each connection after answering.
    #[derive(Clone, Copy)]
    enum AfterAnswer {
        KeepOpen,
        CloseAfter(Duration),
    }

    /// A raw HTTP/1.1 upstream: answers every request with `body`, records
    /// each request head, and counts the connections it accepted.
    struct RawUpstream {
        url: Uri,
        accepted: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    async fn raw_upstream(body: &'static str, after: AfterAnswer) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(socket, body, after, seen.clone()));
            }
        });
        RawUpstream {
            url: format!("http://{addr}/v1/chat/completions")
                .parse()
                .unwrap(),
            accepted,
            heads,
        }
    }

    async fn answer(
        mut socket: TcpStream,
        body: &'static str,
        after: AfterAnswer,
        heads: Arc<Mutex<Vec<String>>>,
    ) {
        let mut buf = Vec::new();
        loop {
            // Read one request: its head, then a Content-Length body.
            let head_end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..head_end + length);
            heads.lock().push(head);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if socket.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            if let AfterAnswer::CloseAfter(delay) = after {
                tokio::time::sleep(delay).await;
                return;
            }
        }
    }

    fn post(url: &Uri) -> UpstreamRequest {
        let mut request = http::Request::new(Bytes::from_static(b"{}"));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = url.clone();
        request
    }

    #[tokio::test]
    async fn sequential_requests_share_one_keep_alive_connection() {
        let upstream = raw_upstream(r#"{"ok":true}"#, AfterAnswer::KeepOpen).await;
        let client = client(Duration::from_secs(2)).unwrap();
        for _ in 0..3 {
            let response = client.request(post(&upstream.url)).await.unwrap();
            assert_eq!(body_bytes(response).await.unwrap(), r#"{"ok":true}"#);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(client.idle_connections(&upstream.url), 1);
        // Origin-form request line and a Host header, as an origin server expects.
        let heads = upstream.heads.lock().clone();
        assert_eq!(heads.len(), 3);
        let authority = upstream.url.authority().unwrap().as_str();
        for head in heads {
            assert!(
                head.starts_with("post /v1/chat/completions http/1.1\r\n"),
                "{head}"
            );
            assert!(head.contains(&format!("host: {authority}\r\n")), "{head}");
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let upstream = raw_upstream(
            r#"{"n":1}"#,
            AfterAnswer::CloseAfter(Duration::from_millis(20)),
        )
        .await;
        let client = client(Duration::from_secs(2)).unwrap();
        for _ in 0..2 {
            let response = client.request(post(&upstream.url)).await.unwrap();
            assert_eq!(body_bytes(response).await.unwrap(), r#"{"n":1}"#);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let upstream = raw_upstream(
            r#"{"long":"enough to leave unread"}"#,
            AfterAnswer::KeepOpen,
        )
        .await;
        let client = client(Duration::from_secs(2)).unwrap();
        let response = client.request(post(&upstream.url)).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        assert_eq!(client.idle_connections(&upstream.url), 0);
        let response = client.request(post(&upstream.url)).await.unwrap();
        assert!(body_bytes(response).await.is_ok());
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(client.idle_connections(&upstream.url), 1);
    }

    #[test]
    fn host_header_is_host_and_port_without_user_info() {
        let with_user = Authority::from_static("user:secret@example.com:8443");
        assert_eq!(host_header(&with_user), "example.com:8443");
        assert_eq!(
            host_header(&Authority::from_static("api.example.com")),
            "api.example.com"
        );
        assert!(origin_key(&Uri::from_static("ftp://example.com/x")).is_err());
        assert!(origin_key(&Uri::from_static("/relative")).is_err());
    }

    /// A URL on a fresh local port, and the listener holding it.
    async fn local_listener() -> (TcpListener, Uri) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        (listener, url)
    }

    /// An upstream that answers one request with `parts` (10 ms apart),
    /// then closes the connection.
    async fn one_reply_upstream(parts: &'static [&'static str]) -> Uri {
        scripted_upstream(parts, true).await.0
    }

    /// An upstream that answers every request with `parts` (10 ms apart),
    /// closing the connection after the first if `close`; and the count of
    /// connections it accepted.
    async fn scripted_upstream(
        parts: &'static [&'static str],
        close: bool,
    ) -> (Uri, Arc<AtomicUsize>) {
        let (listener, url) = local_listener().await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // The client writes head and body at once; one read each.
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                        for part in parts {
                            if socket.write_all(part.as_bytes()).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_whole_and_its_connection_reused() {
        let (url, accepted) = scripted_upstream(
            &[
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                "6\r\ndata: \r\n",
                "3\r\none\r\n4;ext=1\r\n two\r\n",
                "0\r\n\r\n",
            ],
            false,
        )
        .await;
        let client = client(Duration::from_secs(2)).unwrap();
        for _ in 0..2 {
            let response = client.request(post(&url)).await.unwrap();
            assert_eq!(body_bytes(response).await.unwrap(), "data: one two");
            assert_eq!(client.idle_connections(&url), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_streamed_body_reaches_the_reader_chunk_by_chunk() {
        let (listener, url) = local_listener().await;
        let release = Arc::new(tokio::sync::Notify::new());
        let go_on = release.clone();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let first = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\nfirst\n\n\r\n";
            socket.write_all(first.as_bytes()).await.unwrap();
            // The rest only once the client has seen the first chunk.
            go_on.notified().await;
            socket
                .write_all(b"6\r\nlast\n\n\r\n0\r\n\r\n")
                .await
                .unwrap();
        });
        let client = client(Duration::from_secs(2)).unwrap();
        let response = client.request(post(&url)).await.unwrap();
        let mut stream = body_stream(response);
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the first chunk arrives before the body ends");
        assert_eq!(first.unwrap().unwrap(), "first\n\n");
        release.notify_one();
        assert_eq!(stream.next().await.unwrap().unwrap(), "last\n\n");
        assert!(stream.next().await.is_none());
        assert_eq!(client.idle_connections(&url), 1);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let url = one_reply_upstream(&[
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let client = client(Duration::from_secs(2)).unwrap();
        let response = client.request(post(&url)).await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(body_bytes(response).await.unwrap(), "ok");
    }

    /// Answer one request with `reply` (body "ok"): the body comes back
    /// whole and its connection stays out of the pool.
    async fn ok_but_not_pooled(reply: &'static [&'static str]) {
        let (url, _) = scripted_upstream(reply, false).await;
        let client = client(Duration::from_secs(2)).unwrap();
        let response = client.request(post(&url)).await.unwrap();
        assert_eq!(body_bytes(response).await.unwrap(), "ok");
        assert_eq!(client.idle_connections(&url), 0);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_asks_to_close_is_not_pooled() {
        ok_but_not_pooled(&["HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"])
            .await;
    }

    #[tokio::test]
    async fn bytes_beyond_the_body_keep_a_connection_out_of_the_pool() {
        ok_but_not_pooled(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"]).await;
    }

    #[tokio::test]
    async fn a_reply_that_is_not_http_is_an_error() {
        let url = one_reply_upstream(&["SSH-2.0-OpenSSH_9.6\r\n\r\n"]).await;
        let client = client(Duration::from_secs(2)).unwrap();
        let err = client.request(post(&url)).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Malformed(_)), "{err:?}");
        let silent = one_reply_upstream(&[]).await;
        let err = client.request(post(&silent)).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Closed), "{err:?}");
    }

    #[tokio::test]
    async fn a_body_that_ends_when_the_upstream_closes_is_read_whole() {
        // No Content-Length, not chunked: the body is everything up to EOF.
        let url = one_reply_upstream(&[
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
            "first ",
            "second ",
            "third",
        ])
        .await;
        let client = client(Duration::from_secs(2)).unwrap();
        let response = client.request(post(&url)).await.unwrap();
        assert_eq!(body_bytes(response).await.unwrap(), "first second third");
        assert_eq!(client.idle_connections(&url), 0);
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_upstream_is_an_error_not_an_end() {
        let url =
            one_reply_upstream(&["HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b"]).await;
        let client = client(Duration::from_secs(2)).unwrap();
        let response = client.request(post(&url)).await.unwrap();
        assert!(body_bytes(response).await.is_err());
        assert_eq!(client.idle_connections(&url), 0);
    }

    /// A 20-byte body in two chunks, with no length declared up front.
    const TWENTY_CHUNKED_BYTES: &[&str] = &[
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        "a\r\n0123456789\r\n",
        "a\r\n0123456789\r\n0\r\n\r\n",
    ];

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_not_buffered() {
        let declared = one_reply_upstream(&["HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n"]).await;
        let client = client(Duration::from_secs(2)).unwrap();
        let response = client.request(post(&declared)).await.unwrap();
        let err = body_bytes_within(response, 16).await.unwrap_err();
        assert!(matches!(err, UpstreamError::TooLarge), "{err:?}");
        let undeclared = one_reply_upstream(TWENTY_CHUNKED_BYTES).await;
        let response = client.request(post(&undeclared)).await.unwrap();
        let err = body_bytes_within(response, 16).await.unwrap_err();
        assert!(matches!(err, UpstreamError::TooLarge), "{err:?}");
        // Under the limit the same body comes back whole.
        let fits = one_reply_upstream(TWENTY_CHUNKED_BYTES).await;
        let response = client.request(post(&fits)).await.unwrap();
        assert_eq!(
            body_bytes_within(response, 20).await.unwrap(),
            "01234567890123456789"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let (listener, url) = local_listener().await;
        drop(listener);
        let client = client(Duration::from_secs(2)).unwrap();
        let err = client.request(post(&url)).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(!describe(&err).contains("127.0.0.1"), "{}", describe(&err));
    }

    #[test]
    fn timeouts_are_found_among_the_causes() {
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
        assert!(is_timeout(&timed_out));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_timeout(&refused));
        assert_eq!(describe(&refused), "refused");
    }
}
