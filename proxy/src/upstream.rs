//! The HTTP client for upstream providers: HTTP/1.1 over rustls (webpki
//! roots) or plain TCP, with TCP_NODELAY and a connect timeout, and a pool of
//! keep-alive connections per origin.
//!
//! The pool is ours rather than hyper-util's, for two reasons. A connection
//! is driven by the task of the request using it (while it waits for the
//! response head and while it reads the body), not by a task of its own, so
//! a proxied request runs in one task from the client's socket to the
//! upstream's and back: no hand-off between tasks per request or per
//! streamed chunk, and chunks that arrive together are read together. And
//! the connection returns to the pool from that same task when the body
//! ends. An idle pooled connection is polled again when it is next taken,
//! which is when a close by the upstream is noticed.

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Uri};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

use crate::inplace::InPlace;

type Connector = HttpsConnector<HttpConnector>;
type Io = <Connector as Service<Uri>>::Response;
type UpstreamRequest = http::Request<Full<Bytes>>;
pub type UpstreamResponse = http::Response<UpstreamBody>;
/// A response body as a stream of data chunks.
pub type UpstreamStream = BodyDataStream<UpstreamBody>;

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, TLS, timeout).
    #[error("connect error")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request was sent, or the connection failed while sending it.
    #[error("request error")]
    Request(#[source] hyper::Error),
    /// The connection ended without answering the request.
    #[error("the upstream closed the connection without answering")]
    Closed,
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
    conn: Conn,
    since: Instant,
}

/// One HTTP/1.1 connection: hyper's request handle and the connection
/// state machine, which whoever uses the connection polls.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: Connection<Io, Full<Bytes>>,
    /// The connection future has completed: it must not be polled again.
    ended: bool,
    /// Hyper's wakes between the connection, its request handle and its
    /// body, absorbed while the request's task polls them.
    in_place: InPlace,
}

/// What became of a request given to a connection.
enum Sent {
    Response(http::Response<Incoming>),
    /// Not written: the connection was closing. Safe to send elsewhere.
    Unsent(UpstreamRequest),
    Failed(UpstreamError),
}

impl Conn {
    fn new(sender: SendRequest<Full<Bytes>>, connection: Connection<Io, Full<Bytes>>) -> Conn {
        Conn {
            sender,
            connection,
            ended: false,
            in_place: InPlace::default(),
        }
    }

    /// Run `step` on this connection, polled in place (see `crate::inplace`).
    fn poll_in_place<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Conn, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let in_place = self.in_place.clone();
        in_place.poll(cx, |cx| step(self, cx))
    }

    /// Poll the connection; false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended && Pin::new(&mut self.connection).poll(cx).is_ready() {
            self.ended = true;
        }
        !self.ended
    }

    /// Drive the connection until it can take a request; false if it
    /// closed (e.g. the upstream closed it while it sat in the pool).
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            self.poll_in_place(cx, |conn, cx| {
                if !conn.drive(cx) {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|ready| ready.is_ok())
            })
        })
        .await
    }

    /// Send `request` and drive the connection until the response head.
    async fn send(&mut self, request: UpstreamRequest) -> Sent {
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        poll_fn(|cx| {
            self.poll_in_place(cx, |conn, cx| {
                if let Poll::Ready(result) = response.as_mut().poll(cx) {
                    return Poll::Ready(sent(result));
                }
                let open = conn.drive(cx);
                // Driving may have produced the head (or the error).
                if let Poll::Ready(result) = response.as_mut().poll(cx) {
                    return Poll::Ready(sent(result));
                }
                if open {
                    Poll::Pending
                } else {
                    Poll::Ready(Sent::Failed(UpstreamError::Closed))
                }
            })
        })
        .await
    }
}

fn sent(
    result: Result<http::Response<Incoming>, hyper::client::conn::TrySendError<UpstreamRequest>>,
) -> Sent {
    match result {
        Ok(response) => Sent::Response(response),
        Err(mut failed) => match failed.take_message() {
            Some(unsent) => Sent::Unsent(unsent),
            None => Sent::Failed(UpstreamError::Request(failed.into_error())),
        },
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
    /// one. A pooled connection that turns out to be closed before the
    /// request was written is skipped; the request is never sent twice.
    pub async fn request(
        &self,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        let key = origin_key(&parts.uri)?;
        // HTTP/1.1 to an origin server: origin-form target plus `Host`;
        // the absolute URL is kept only to connect.
        let origin_form = Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let connect_uri = std::mem::replace(&mut parts.uri, origin_form);
        let (host, mut pooled) = self.checkout(&key);
        parts.headers.entry(header::HOST).or_insert(host);
        let mut request = http::Request::from_parts(parts, body);
        while let Some(mut conn) = pooled.take() {
            if conn.ready().await {
                match conn.send(request).await {
                    Sent::Response(response) => return Ok(self.wrap(response, key, conn)),
                    Sent::Unsent(unsent) => request = unsent,
                    Sent::Failed(err) => return Err(err),
                }
            }
            pooled = self.checkout(&key).1;
        }
        let mut conn = self.connect(connect_uri).await?;
        match conn.send(request).await {
            Sent::Response(response) => Ok(self.wrap(response, key, conn)),
            Sent::Unsent(_) => Err(UpstreamError::Closed),
            Sent::Failed(err) => Err(err),
        }
    }

    /// The origin's `Host` value and its most recently used idle
    /// connection, if any (ones idle too long are dropped on the way).
    fn checkout(&self, key: &OriginKey) -> (HeaderValue, Option<Conn>) {
        let mut origins = self.shared.origins.lock();
        let pool = origins.entry(key.clone()).or_insert_with(|| OriginPool {
            host: host_header(&key.authority),
            idle: Vec::new(),
        });
        while let Some(idle) = pool.idle.pop() {
            if !idle.conn.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return (pool.host.clone(), Some(idle.conn));
            }
        }
        (pool.host.clone(), None)
    }

    async fn connect(&self, uri: Uri) -> Result<Conn, UpstreamError> {
        let mut connector = self.shared.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector.call(uri).await.map_err(UpstreamError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(UpstreamError::Request)?;
        Ok(Conn::new(sender, connection))
    }

    fn wrap(
        &self,
        response: http::Response<Incoming>,
        key: OriginKey,
        conn: Conn,
    ) -> UpstreamResponse {
        response.map(|inner| {
            let mut body = UpstreamBody {
                inner,
                conn: Some(conn),
                pool: Some((self.clone(), key)),
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    fn put_back(&self, key: OriginKey, conn: Conn) {
        if conn.ended || conn.sender.is_closed() {
            return;
        }
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

/// An upstream response body. Reading it drives its connection; read to
/// its end, the connection goes back to the pool. Dropped before that, the
/// connection is closed (it cannot carry another request with a body still
/// unread), which also cancels the upstream's work.
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<Conn>,
    pool: Option<(UpstreamClient, OriginKey)>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let (Some(conn), Some((client, key))) = (self.conn.take(), self.pool.take()) {
            client.put_back(key, conn);
        }
    }

    /// Bookkeeping for a frame (or the end) about to be handed out.
    fn deliver(
        &mut self,
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.inner.is_end_stream() => self.release(),
            Some(Err(_)) => self.conn = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("connection", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(frame) => this.deliver(frame),
                Poll::Pending => Poll::Pending,
            };
        };
        let inner = &mut this.inner;
        let step = conn.poll_in_place(cx, |conn, cx| {
            if let Poll::Ready(frame) = Pin::new(&mut *inner).poll_frame(cx) {
                return Poll::Ready(Some(frame));
            }
            // Nothing buffered: let the connection read what has arrived.
            if !conn.drive(cx) {
                return Poll::Ready(None);
            }
            Pin::new(&mut *inner).poll_frame(cx).map(Some)
        });
        match step {
            Poll::Ready(Some(frame)) => this.deliver(frame),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                // The connection is over; without it the body ends (or
                // fails) at once instead of waiting for data that cannot come.
                this.conn = None;
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(frame) => this.deliver(frame),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The whole body of a response.
pub async fn body_bytes(response: UpstreamResponse) -> Result<Bytes, hyper::Error> {
    Ok(response.into_body().collect().await?.to_bytes())
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

    fn post(url: &Uri) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(Bytes::from_static(b"{}")));
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
        let (listener, url) = local_listener().await;
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            for part in parts {
                socket.write_all(part.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        url
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
