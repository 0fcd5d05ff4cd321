//! The HTTP client for upstream providers: hyper-util's pooled client over
//! rustls (webpki roots plus any configured CA files). TLS offers h2 and
//! http/1.1 by ALPN, so an upstream that speaks HTTP/2 carries many
//! concurrent requests on one connection; plain http is HTTP/1.1. TCP_NODELAY
//! and the connect timeout are set on every socket. An egress proxy (config,
//! else `HTTPS_PROXY`/`HTTP_PROXY` with `NO_PROXY`) carries HTTPS upstreams
//! through a CONNECT tunnel and plain-http ones in absolute form.
//!
//! What an upstream sends is bounded here: a response head over 64 KiB, a
//! final status outside 200–599 (hyper accepts up to 999), more than 10
//! interim (1xx) responses, and an HTTP/1 head with both Content-Length and
//! Transfer-Encoding are errors; a body waits at most the read timeout for
//! each next frame; a non-streamed body is read up to `MAX_RESPONSE_BODY`.

use bytes::Bytes;
use http::uri::Scheme;
use http::{header, Uri, Version};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::{RoutingConfig, UpstreamConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connector = HttpsConnector<EgressConnector>;
/// A request to an upstream: absolute URL, headers, whole body.
pub type UpstreamRequest = http::Request<Bytes>;
pub type UpstreamResponse = http::Response<UpstreamBody>;
/// A response body as a stream of data chunks.
pub type UpstreamStream = BodyDataStream<UpstreamBody>;

/// Largest non-streamed response body read into memory: a misbehaving
/// upstream cannot make the gateway hold more (chat answers are far smaller).
pub const MAX_RESPONSE_BODY: usize = 32 << 20;
/// Largest response head (HTTP/1 read buffer, HTTP/2 header list).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// `HTTP/1.1 200 OK\r\n` and the blank line ending a head.
const STATUS_LINE_BYTES: usize = 19;
/// Most interim (1xx) responses accepted before the final one.
pub const MAX_INTERIM_RESPONSES: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, proxy, TLS, timeout).
    #[error("connect error")]
    Connect(#[source] BoxError),
    /// Sending the request or reading the response head failed (including
    /// a head that is not valid HTTP or is over 64 KiB).
    #[error("the upstream request failed")]
    Request(#[source] BoxError),
    /// A final status outside 200–599.
    #[error("the upstream answered with invalid status {0}")]
    InvalidStatus(u16),
    /// Content-Length and Transfer-Encoding together (RFC 9112 §6.3: a
    /// smuggling shape, handled as an error).
    #[error("the upstream response has both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("the upstream sent more than {MAX_INTERIM_RESPONSES} interim (1xx) responses")]
    TooManyInterim,
    /// A response head over `MAX_HEAD_BYTES`.
    #[error("the upstream response head is larger than {} KiB", MAX_HEAD_BYTES >> 10)]
    HeadTooLarge,
    /// Reading the body failed (including a connection that ended early).
    #[error("the upstream response body failed")]
    Body(#[source] hyper::Error),
    /// No body data arrived within the read timeout.
    #[error("no data from the upstream for {} ms", .0.as_millis())]
    ReadTimeout(Duration),
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

    fn from_client(err: hyper_util::client::legacy::Error) -> UpstreamError {
        if err.is_connect() {
            UpstreamError::Connect(Box::new(err))
        } else {
            UpstreamError::Request(Box::new(err))
        }
    }
}

/// Pooled HTTP/1.1 + HTTP/2 client for upstream providers; cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Connector, Full<Bytes>>,
    proxies: Arc<Matcher>,
    read_timeout: Duration,
}

/// Build the client from the routing timeouts and the `[upstream]` section,
/// with proxies from the process environment where the config sets none.
pub fn client(
    routing: &RoutingConfig,
    upstream: &UpstreamConfig,
) -> Result<UpstreamClient, String> {
    client_with_env(routing, upstream, |name| std::env::var(name).ok())
}

fn client_with_env(
    routing: &RoutingConfig,
    upstream: &UpstreamConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<UpstreamClient, String> {
    let proxies = Arc::new(egress_matcher(upstream, env)?);
    let mut http = HttpConnector::new();
    // Without it a keep-alive request can stall ~40 ms (Nagle + delayed ACK).
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(routing.connect_timeout_ms)));
    http.enforce_http(false);
    let egress = EgressConnector {
        direct: http,
        proxies: proxies.clone(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(&upstream.ca_files)?)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(egress);
    let client = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(upstream.pool_idle_timeout_ms))
        .pool_max_idle_per_host(upstream.pool_max_idle_per_host)
        // Also the cap on a response head; hyper's other buffers keep their defaults.
        .http1_max_buf_size(MAX_HEAD_BYTES)
        .http2_max_header_list_size(MAX_HEAD_BYTES as u32)
        .build(connector);
    Ok(UpstreamClient {
        client,
        proxies,
        read_timeout: Duration::from_millis(routing.read_timeout_ms),
    })
}

/// TLS for upstreams: webpki roots plus the configured CA files; ALPN is
/// set by the connector builder.
fn tls_config(ca_files: &[std::path::PathBuf]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (i, path) in ca_files.iter().enumerate() {
        for cert in load_ca_file(path).map_err(|why| format!("upstream.ca_files[{i}]: {why}"))? {
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca_files[{i}]: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates of a PEM file (at least one).
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Check an egress proxy URL: `http://[user:pass@]host[:port]` (a missing
/// scheme means http). The URL, which may hold a password, is never in the
/// message.
pub fn parse_proxy_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some(_) => return Err("only http:// proxies are supported".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the proxy URL has no host".into());
    }
    Ok(uri)
}

/// Which upstreams go through which proxy: config first, then the
/// conventional environment variables (curl's rules for `NO_PROXY`).
fn egress_matcher(
    config: &UpstreamConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Matcher, String> {
    let first = |names: [&str; 2]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
    let (http, https) = match &config.proxy_url {
        Some(url) => (Some(url.clone()), Some(url.clone())),
        None => (
            first(["HTTP_PROXY", "http_proxy"]),
            first(["HTTPS_PROXY", "https_proxy"]),
        ),
    };
    let source = |env_name: &'static str| {
        if config.proxy_url.is_some() {
            "upstream.proxy_url"
        } else {
            env_name
        }
    };
    let no = match &config.no_proxy {
        Some(hosts) => hosts.join(","),
        None => first(["NO_PROXY", "no_proxy"]).unwrap_or_default(),
    };
    let mut builder = Matcher::builder().no(no);
    if let Some(url) = http {
        parse_proxy_url(&url).map_err(|why| format!("{}: {why}", source("HTTP_PROXY")))?;
        builder = builder.http(url);
    }
    if let Some(url) = https {
        parse_proxy_url(&url).map_err(|why| format!("{}: {why}", source("HTTPS_PROXY")))?;
        builder = builder.https(url);
    }
    Ok(builder.build())
}

/// Opens the TCP connection for an upstream: to the upstream itself, to
/// the proxy (plain http, sent in absolute form), or through a CONNECT
/// tunnel (https; TLS to the upstream then runs inside it).
#[derive(Clone)]
struct EgressConnector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<EgressIo, BoxError>> + Send>>;

impl Service<Uri> for EgressConnector {
    type Response = EgressIo;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // `HttpConnector` is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let mut direct = self.direct.clone();
        match self.proxies.intercept(&dst) {
            None => Box::pin(async move {
                let io = direct.call(dst).await?;
                Ok(EgressIo {
                    io,
                    via_proxy: false,
                })
            }),
            Some(proxy) if dst.scheme() == Some(&Scheme::HTTPS) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move {
                    let io = tunnel.call(dst).await?;
                    Ok(EgressIo {
                        io,
                        via_proxy: false,
                    })
                })
            }
            Some(proxy) => {
                let at = proxy.uri().clone();
                Box::pin(async move {
                    let io = direct.call(at).await?;
                    Ok(EgressIo {
                        io,
                        via_proxy: true,
                    })
                })
            }
        }
    }
}

/// A TCP connection, marked when it goes to a proxy that takes plain-http
/// requests in absolute form.
struct EgressIo {
    io: TokioIo<TcpStream>,
    via_proxy: bool,
}

impl Connection for EgressIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.via_proxy)
    }
}

impl hyper::rt::Read for EgressIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EgressIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// Counts a request's interim responses (hyper reports them for HTTP/1;
/// the h2 library skips them) and wakes the request past the limit.
#[derive(Default)]
struct InterimCount {
    seen: AtomicU32,
    over: Notify,
}

impl InterimCount {
    fn record(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) == MAX_INTERIM_RESPONSES {
            self.over.notify_one();
        }
    }

    fn exceeded(&self) -> bool {
        self.seen.load(Ordering::Relaxed) > MAX_INTERIM_RESPONSES
    }
}

impl UpstreamClient {
    /// Send `request` (absolute URL) on a pooled connection or a new one and
    /// wait for the final response head. A pooled connection that closed
    /// before the request was written is retried on another (hyper-util's
    /// rule); a request is never sent twice.
    pub async fn request(
        &self,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        parts.uri = without_user_info(parts.uri)?;
        if parts.uri.scheme() == Some(&Scheme::HTTP) {
            // Sent to the proxy in absolute form: its credentials go in the head.
            if let Some(auth) = self
                .proxies
                .intercept(&parts.uri)
                .and_then(|proxy| proxy.basic_auth().cloned())
            {
                parts.headers.insert(header::PROXY_AUTHORIZATION, auth);
            }
        }
        let mut request = http::Request::from_parts(parts, Full::new(body));
        let interim = Arc::new(InterimCount::default());
        let counter = interim.clone();
        hyper::ext::on_informational(&mut request, move |_| counter.record());
        let connection = capture_connection(&mut request);
        let response = tokio::select! {
            biased;
            sent = self.client.request(request) => sent.map_err(UpstreamError::from_client)?,
            () = interim.over.notified() => {
                // Dropping the request closes its HTTP/1 connection.
                return Err(UpstreamError::TooManyInterim);
            }
        };
        if let Err(err) = check_head(&response, &interim) {
            poison_http1(&connection, response.version());
            return Err(err);
        }
        let read_timeout = self.read_timeout;
        Ok(response.map(|body| UpstreamBody::new(body, read_timeout)))
    }
}

/// The response head checks hyper leaves to us.
fn check_head(
    response: &http::Response<Incoming>,
    interim: &InterimCount,
) -> Result<(), UpstreamError> {
    let status = response.status().as_u16();
    if !(200..=599).contains(&status) {
        return Err(UpstreamError::InvalidStatus(status));
    }
    if interim.exceeded() {
        return Err(UpstreamError::TooManyInterim);
    }
    let headers = response.headers();
    // hyper's read buffer bounds what a head can take (about twice its
    // 64 KiB cap) but not the head itself; count it as sent: `name: value\r\n`.
    let head_bytes = headers.iter().fold(STATUS_LINE_BYTES, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    });
    if head_bytes > MAX_HEAD_BYTES {
        return Err(UpstreamError::HeadTooLarge);
    }
    if response.version() < Version::HTTP_2
        && headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err(UpstreamError::ConflictingFraming);
    }
    Ok(())
}

/// Keep an HTTP/1 connection whose response was refused out of the pool
/// (an HTTP/2 connection's framing is sound and it carries other streams).
fn poison_http1(connection: &CaptureConnection, version: Version) {
    if version < Version::HTTP_2 {
        if let Some(connected) = connection.connection_metadata().as_ref() {
            connected.poison();
        }
    }
}

/// The URL checked to be absolute http(s), without any user info (which
/// would otherwise reach the upstream in an HTTP/2 `:authority`).
fn without_user_info(uri: Uri) -> Result<Uri, UpstreamError> {
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS || *s == Scheme::HTTP => {}
        _ => return Err(UpstreamError::BadUrl),
    }
    let authority = uri.authority().ok_or(UpstreamError::BadUrl)?;
    let Some((_, host)) = authority.as_str().rsplit_once('@') else {
        return Ok(uri);
    };
    let host = host.to_owned();
    let mut parts = uri.into_parts();
    parts.authority = Some(host.parse().map_err(|_| UpstreamError::BadUrl)?);
    Uri::from_parts(parts).map_err(|_| UpstreamError::BadUrl)
}

/// An upstream response body. Each next frame is awaited at most the read
/// timeout (counted from when the gateway starts waiting, so a slow client
/// does not use it up); then the body ends with `ReadTimeout`. Dropped
/// before its end, an HTTP/1 connection closes, which cancels the
/// upstream's work (an HTTP/2 stream is reset).
pub struct UpstreamBody {
    inner: Incoming,
    read_timeout: Duration,
    /// When the current wait for a frame began; `None` when not waiting.
    waiting_since: Option<Instant>,
    /// Made on the first wait; reset only when it fires before the deadline
    /// of the current wait, so a frame costs no timer update.
    timer: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

impl UpstreamBody {
    fn new(inner: Incoming, read_timeout: Duration) -> UpstreamBody {
        UpstreamBody {
            inner,
            read_timeout,
            waiting_since: None,
            timer: None,
            ended: false,
        }
    }

    /// Whether the current wait has lasted the read timeout (registering
    /// for a wake-up when it has not).
    fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let due = since + self.read_timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if Instant::now() >= due {
            return true;
        }
        // It was set for an earlier wait.
        timer.as_mut().reset(due);
        timer.as_mut().poll(cx).is_ready()
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("ended", &self.ended)
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
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting_since = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.ended = true;
                Poll::Ready(Some(Err(UpstreamError::Body(err))))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending if this.poll_timed_out(cx) => {
                this.ended = true;
                Poll::Ready(Some(Err(UpstreamError::ReadTimeout(this.read_timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The whole body of a response, up to `MAX_RESPONSE_BODY`.
pub async fn body_bytes(response: UpstreamResponse) -> Result<Bytes, UpstreamError> {
    body_bytes_within(response, MAX_RESPONSE_BODY).await
}

/// The body read as it arrives, refused the moment it passes `limit` (or
/// at once when its declared length does).
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

/// Whether a timeout caused the failure (the connect or the read timeout).
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if let Some(UpstreamError::ReadTimeout(_)) = inner.downcast_ref::<UpstreamError>() {
            return true;
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use futures::StreamExt;
    use parking_lot::Mutex;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What a raw test upstream does after writing a reply.
    #[derive(Clone, Copy, PartialEq)]
    enum Then {
        KeepOpen,
        Close,
        Stall,
    }

    /// The reply to the `n`th request on a connection (0-based): parts
    /// written 10 ms apart, then what to do with the connection.
    type Script = Arc<dyn Fn(usize) -> (Vec<Vec<u8>>, Then) + Send + Sync>;

    /// A raw HTTP/1.1 upstream answering by `script`: its URL, the
    /// connections it accepted, and every request head it read.
    struct Raw {
        url: Uri,
        accepted: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    async fn raw(script: impl Fn(usize) -> (Vec<Vec<u8>>, Then) + Send + Sync + 'static) -> Raw {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (script, seen) = (script.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for n in 0.. {
                        let Some(head) = read_request(&mut socket, &mut buf).await else {
                            return;
                        };
                        seen.lock().push(head);
                        let (parts, then) = script(n);
                        for part in parts {
                            if socket.write_all(&part).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        match then {
                            Then::KeepOpen => {}
                            Then::Close => return,
                            Then::Stall => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Raw {
            url,
            accepted,
            heads,
        }
    }

    /// Read one request (head and Content-Length body); its head, lowercase.
    async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + length);
        Some(head)
    }

    /// The same reply to every request, keeping the connection open.
    fn always(reply: &'static str) -> impl Fn(usize) -> (Vec<Vec<u8>>, Then) + Send + Sync {
        move |_| (vec![reply.as_bytes().to_vec()], Then::KeepOpen)
    }

    fn ok_reply(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn test_client(read_timeout: Duration) -> UpstreamClient {
        let routing = RoutingConfig {
            read_timeout_ms: read_timeout.as_millis() as u64,
            connect_timeout_ms: 2_000,
            ..RoutingConfig::default()
        };
        client_with_env(&routing, &UpstreamConfig::default(), |_| None).unwrap()
    }

    /// The error a request to `url` ends with (only the status if it succeeds).
    async fn refused(client: &UpstreamClient, url: &Uri) -> UpstreamError {
        match client.request(post(url)).await {
            Ok(response) => panic!("accepted with status {}", response.status()),
            Err(err) => err,
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
        let upstream = raw(|_| (vec![ok_reply(r#"{"ok":true}"#)], Then::KeepOpen)).await;
        let client = test_client(Duration::from_secs(5));
        for _ in 0..3 {
            let response = client.request(post(&upstream.url)).await.unwrap();
            assert_eq!(body_bytes(response).await.unwrap(), r#"{"ok":true}"#);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
        // Origin-form request line and a Host header, as an origin server expects.
        let heads = upstream.heads.lock().clone();
        assert_eq!(heads.len(), 3);
        let authority = upstream.url.authority().unwrap().as_str();
        for head in heads {
            assert!(head.starts_with("post /v1/x http/1.1\r\n"), "{head}");
            assert!(head.contains(&format!("host: {authority}\r\n")), "{head}");
            assert!(head.contains("content-length: 2\r\n"), "{head}");
        }
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let upstream = raw(|_| {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst".to_vec();
            (vec![head, b"-rest".to_vec()], Then::KeepOpen)
        })
        .await;
        let client = test_client(Duration::from_secs(5));
        let response = client.request(post(&upstream.url)).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        let response = client.request(post(&upstream.url)).await.unwrap();
        assert_eq!(body_bytes(response).await.unwrap(), "first-rest");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn up_to_ten_interim_responses_are_skipped_and_more_are_refused() {
        let interim = |n: usize| {
            let mut reply = "HTTP/1.1 100 Continue\r\n\r\n".repeat(n);
            reply.push_str("HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok");
            reply
        };
        let (ten, eleven) = (interim(10), interim(11));
        let client = test_client(Duration::from_secs(5));
        let upstream = raw(move |_| (vec![ten.clone().into_bytes()], Then::KeepOpen)).await;
        let response = client.request(post(&upstream.url)).await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(body_bytes(response).await.unwrap(), "ok");
        let upstream = raw(move |_| (vec![eleven.clone().into_bytes()], Then::KeepOpen)).await;
        let err = refused(&client, &upstream.url).await;
        assert!(matches!(err, UpstreamError::TooManyInterim), "{err:?}");
    }

    #[tokio::test]
    async fn endless_interim_responses_end_the_request() {
        // 10,000 interim heads, 10 ms apart in batches of 100: far more than
        // the limit, and far longer than the request takes to be refused.
        let batch = "HTTP/1.1 100 Continue\r\n\r\n".repeat(100).into_bytes();
        let upstream = raw(move |_| (vec![batch.clone(); 100], Then::Stall)).await;
        let client = test_client(Duration::from_secs(5));
        let result =
            tokio::time::timeout(Duration::from_secs(30), client.request(post(&upstream.url)))
                .await
                .expect("refused well before the upstream stops");
        assert!(
            matches!(result, Err(UpstreamError::TooManyInterim)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_status_outside_200_to_599_is_refused_and_its_connection_dropped() {
        for status in ["600 Weird", "999 Max", "101 Switching Protocols"] {
            let first = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").into_bytes();
            let answered = AtomicUsize::new(0);
            let upstream = raw(move |_| {
                // Numbered across connections: only the very first is bad.
                let reply = if answered.fetch_add(1, Ordering::SeqCst) == 0 {
                    first.clone()
                } else {
                    ok_reply("ok")
                };
                (vec![reply], Then::KeepOpen)
            })
            .await;
            let client = test_client(Duration::from_secs(5));
            let err = refused(&client, &upstream.url).await;
            assert!(
                matches!(err, UpstreamError::InvalidStatus(_)),
                "{status}: {err:?}"
            );
            let response = client.request(post(&upstream.url)).await.unwrap();
            assert_eq!(body_bytes(response).await.unwrap(), "ok");
            // The refused response's connection was not reused.
            assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2, "{status}");
        }
    }

    #[tokio::test]
    async fn content_length_with_transfer_encoding_is_refused() {
        let upstream = raw(always(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ))
        .await;
        let client = test_client(Duration::from_secs(5));
        let err = refused(&client, &upstream.url).await;
        assert!(matches!(err, UpstreamError::ConflictingFraming), "{err:?}");
    }

    #[tokio::test]
    async fn malformed_and_oversized_heads_are_request_errors() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        let big: &'static str = Box::leak(big.into_boxed_str());
        let client = test_client(Duration::from_secs(5));
        for reply in [
            "SSH-2.0-OpenSSH_9.6\r\n\r\n",
            "HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
        ] {
            let upstream = raw(always(reply)).await;
            let err = refused(&client, &upstream.url).await;
            assert!(
                matches!(err, UpstreamError::Request(_)),
                "{:?}: {err:?}",
                &reply[..20]
            );
        }
        // Over 64 KiB: refused by hyper's buffer cap, or by its size when
        // the buffer took it whole.
        let just_over = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let just_over: &'static str = Box::leak(just_over.into_boxed_str());
        for reply in [big, just_over] {
            let upstream = raw(always(reply)).await;
            let err = refused(&client, &upstream.url).await;
            assert!(
                matches!(err, UpstreamError::Request(_) | UpstreamError::HeadTooLarge),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_upstream_is_an_error_not_an_end() {
        let upstream = raw(|_| {
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b".to_vec();
            (vec![reply], Then::Close)
        })
        .await;
        let client = test_client(Duration::from_secs(5));
        let response = client.request(post(&upstream.url)).await.unwrap();
        let err = body_bytes(response).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Body(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_not_buffered() {
        let client = test_client(Duration::from_secs(5));
        let declared = raw(always("HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n")).await;
        let response = client.request(post(&declared.url)).await.unwrap();
        let err = body_bytes_within(response, 16).await.unwrap_err();
        assert!(matches!(err, UpstreamError::TooLarge), "{err:?}");
        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                       a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n";
        let undeclared = raw(always(chunked)).await;
        let response = client.request(post(&undeclared.url)).await.unwrap();
        let err = body_bytes_within(response, 16).await.unwrap_err();
        assert!(matches!(err, UpstreamError::TooLarge), "{err:?}");
        // Under the limit the same body comes back whole.
        let response = client.request(post(&undeclared.url)).await.unwrap();
        assert_eq!(
            body_bytes_within(response, 20).await.unwrap(),
            "01234567890123456789"
        );
    }

    #[tokio::test]
    async fn a_stream_that_stalls_ends_after_the_read_timeout() {
        let upstream = raw(|_| {
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            let events = vec![b"7\r\nfirst\n\n\r\n".to_vec(); 3];
            ([vec![head], events].concat(), Then::Stall)
        })
        .await;
        let client = test_client(Duration::from_millis(300));
        let response = client.request(post(&upstream.url)).await.unwrap();
        let mut stream = body_stream(response);
        // Events 10 ms apart, well within the timeout, all arrive.
        for _ in 0..3 {
            assert_eq!(stream.next().await.unwrap().unwrap(), "first\n\n");
        }
        let waited = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stall ends")
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, UpstreamError::ReadTimeout(_)), "{err:?}");
        assert!(is_timeout(&err));
        assert!(waited.elapsed() >= Duration::from_millis(300));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("http://{}/v1/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let err = test_client(Duration::from_secs(5))
            .request(post(&url))
            .await
            .unwrap_err();
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
        let connect = UpstreamError::Connect(Box::new(timed_out));
        assert!(is_timeout(&connect));
        assert_eq!(describe(&connect), "connect error: connect timeout");
    }

    #[test]
    fn urls_lose_user_info_and_must_be_absolute_http() {
        let stripped = without_user_info(Uri::from_static("https://u:p@api.example:8443/v1?a=b"));
        assert_eq!(stripped.unwrap(), "https://api.example:8443/v1?a=b");
        assert!(without_user_info(Uri::from_static("ftp://example.com/x")).is_err());
        assert!(without_user_info(Uri::from_static("/relative")).is_err());
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn proxied(matcher: &Matcher, url: &'static str) -> Option<String> {
        matcher
            .intercept(&Uri::from_static(url))
            .map(|i| i.uri().to_string())
    }

    #[test]
    fn the_egress_proxy_comes_from_config_then_environment() {
        let env = env_of(&[
            ("HTTPS_PROXY", "http://env-tls:3128"),
            ("http_proxy", "env-plain:8080"),
            ("NO_PROXY", "internal.example,10.0.0.0/8"),
        ]);
        let from_env = egress_matcher(&UpstreamConfig::default(), &env).unwrap();
        let via = proxied(&from_env, "https://api.openai.com/v1");
        assert_eq!(via.as_deref(), Some("http://env-tls:3128/"));
        let via = proxied(&from_env, "http://10.1.2.3/v1");
        assert_eq!(via, None);
        let via = proxied(&from_env, "http://192.168.1.2/v1");
        assert_eq!(via.as_deref(), Some("http://env-plain:8080/"));
        assert_eq!(proxied(&from_env, "https://api.internal.example/v1"), None);

        let config = UpstreamConfig {
            proxy_url: Some("http://user:pw@config-proxy:3128".into()),
            no_proxy: Some(vec!["api.anthropic.com".into()]),
            ..UpstreamConfig::default()
        };
        let from_config = egress_matcher(&config, &env).unwrap();
        let via = proxied(&from_config, "https://api.internal.example/v1");
        assert_eq!(via.as_deref(), Some("http://config-proxy:3128/"));
        assert_eq!(proxied(&from_config, "https://api.anthropic.com/v1"), None);
        let auth = from_config
            .intercept(&Uri::from_static("http://10.0.0.1/v1"))
            .and_then(|i| i.basic_auth().cloned())
            .unwrap();
        assert_eq!(auth, "Basic dXNlcjpwdw==");

        let none = egress_matcher(&UpstreamConfig::default(), |_| None).unwrap();
        assert_eq!(proxied(&none, "https://api.openai.com/v1"), None);
    }

    #[test]
    fn only_http_proxies_are_accepted_and_urls_stay_out_of_errors() {
        for bad in [
            "https://user:secret@proxy:443",
            "socks5://user:secret@proxy:1080",
        ] {
            let why = parse_proxy_url(bad).unwrap_err();
            assert!(!why.contains("secret"), "{why}");
            let env = move |name: &str| (name == "HTTPS_PROXY").then(|| bad.to_owned());
            let err = egress_matcher(&UpstreamConfig::default(), env)
                .err()
                .unwrap();
            assert!(err.starts_with("HTTPS_PROXY: "), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
        assert!(parse_proxy_url("http://proxy:3128").is_ok());
        assert!(parse_proxy_url("proxy.internal:3128").is_ok());
        assert!(parse_proxy_url("not a url").is_err());
    }

    #[tokio::test]
    async fn plain_http_through_a_proxy_is_sent_in_absolute_form_with_its_credentials() {
        let proxy = raw(always("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
        let config = UpstreamConfig {
            proxy_url: Some(format!("http://user:pw@{}", proxy.url.authority().unwrap())),
            ..UpstreamConfig::default()
        };
        let client = client_with_env(&RoutingConfig::default(), &config, |_| None).unwrap();
        let target = Uri::from_static("http://10.255.255.1:9/v1/chat/completions");
        let response = client.request(post(&target)).await.unwrap();
        assert_eq!(body_bytes(response).await.unwrap(), "ok");
        let heads = proxy.heads.lock().clone();
        assert!(
            heads[0].starts_with("post http://10.255.255.1:9/v1/chat/completions http/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains("proxy-authorization: basic dxnlcjpwdw==\r\n"),
            "{}",
            heads[0]
        );
    }
}
