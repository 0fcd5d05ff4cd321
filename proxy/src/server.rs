//! The HTTP/1.1 server: one task per client connection reads a request
//! head and its whole body, hands the request to the axum router (or, for
//! the proxied routes under `serve_gateway`, straight to the gateway's
//! handler), and writes the response — with a Content-Length when the
//! body's size is known, otherwise chunked, each chunk as soon as the
//! handler produces it.
//!
//! Why our own and not hyper's: requests to the gateway are JSON bodies that
//! are read whole before anything else happens, so hyper's per-request body
//! channel and dispatch state machine were pure overhead, and it kept two
//! 8 KiB buffers for each connection's whole life. Here a connection is its
//! socket, one read buffer and one write buffer sized to what it carried.
//!
//! While a handler runs or a response streams, the socket is watched: a
//! client that goes away (EOF or reset) drops the handler's future, which
//! cancels the upstream call.

use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::http1::{self, BodyFraming, Decoded, RequestHead, RequestHeadError, ResponseFraming};
use crate::{dispatch, routes};
use axum::body::Body;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::Either;
use http::{Method, Request, StatusCode, Version};
use hyper::body::Body as _;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_service::Service;

/// How the server treats requests.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Largest request body read. A larger one reaches the app as a body
    /// whose first read fails with a length-limit error (axum's extractors
    /// answer 413), and the connection closes after the response.
    pub max_body_bytes: usize,
    /// A request head, and each read of a body, must arrive within this
    /// time: a keep-alive connection idle this long is closed (SDK pools
    /// drop theirs after a few seconds) and a slow client cannot hold a
    /// socket.
    pub read_timeout: Duration,
}

impl Default for ServeOptions {
    /// axum's default body limit, and a 30 s read timeout.
    fn default() -> Self {
        ServeOptions {
            max_body_bytes: 2 * 1024 * 1024,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// Largest request head (request line and header fields); 431 beyond.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Free space made in the read buffer before each read.
const READ_RESERVE: usize = 4 * 1024;
/// Bytes of a next (pipelined) request buffered while the current one is
/// answered; past this the socket is left unread until the response is out.
const MAX_PIPELINED_BYTES: usize = 64 * 1024;
/// Response bytes gathered before a write even if the body has more ready.
const MAX_GATHERED_BYTES: usize = 64 * 1024;
/// A data frame at least this large is written from where it is, not copied.
const WRITE_IN_PLACE_BYTES: usize = 16 * 1024;
/// A write buffer grown beyond this by a large response is let go after it.
const KEEP_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// After refusing a body it did not read, the server reads and discards
/// what the client still sends for this long (at most this much), so the
/// client receives the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Serve HTTP/1.1 until `shutdown` resolves, with default options.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, app, shutdown, ServeOptions::default()).await
}

/// Serve HTTP/1.1 until `shutdown` resolves; then stop accepting, close
/// idle connections, let in-flight requests finish, and return when every
/// connection has ended. TCP_NODELAY avoids the 40 ms Nagle/delayed-ACK
/// stall on keep-alive connections.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> io::Result<()> {
    serve_inner(listener, app, None, shutdown, options).await
}

/// `serve_with` for an app holding the gateway's router: its proxied
/// routes (`routes::proxied_api`) go straight to the gateway's handler,
/// without the router's per-request work, under the gateway's body limit.
pub async fn serve_gateway(
    listener: TcpListener,
    app: Router,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> io::Result<()> {
    let options = ServeOptions {
        max_body_bytes: gateway.config.server.max_body_bytes,
        ..options
    };
    serve_inner(listener, app, Some(gateway), shutdown, options).await
}

async fn serve_inner(
    listener: TcpListener,
    app: Router,
    gateway: Option<Arc<Gateway>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> io::Result<()> {
    // Each connection holds a receiver: `closed` below resolves once all
    // of them are gone.
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or similar: back off, don't spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            tcp,
            app: app.clone(),
            gateway: gateway.clone(),
            options,
            stopping: stopping.clone(),
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
        };
        tokio::spawn(async move {
            let mut run = pin!(connection.run());
            // Usage events are emitted after each poll, once the response
            // bytes that poll produced are written.
            poll_fn(|cx| crate::meter::poll_then_emit(|| run.as_mut().poll(cx))).await;
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
    Ok(())
}

/// Why a connection stops reading requests.
enum Stop {
    /// Close without a word: the client left, went idle too long, or the
    /// server is shutting down between requests.
    Quietly,
    /// Answer with this status (the request was not valid HTTP), then close.
    Refuse(StatusCode),
}

/// A request body as read.
enum ReadBody {
    Whole(Bytes),
    /// Over the limit; left unread.
    TooLarge,
}

/// What a response body has for the writer next.
enum BodyStep {
    Frame(hyper::body::Frame<Bytes>),
    /// Nothing ready yet: what is gathered goes out before waiting.
    NothingYet,
    End,
    /// The body failed, or the client left.
    Broken(String),
}

/// What became of a response.
enum Sent {
    /// Written whole; the connection may carry another request.
    Complete,
    /// Written, but the connection must close (framing or a client gone).
    Close,
}

struct Connection {
    tcp: TcpStream,
    app: Router,
    /// Given, the proxied routes skip the router.
    gateway: Option<Arc<Gateway>>,
    options: ServeOptions,
    stopping: watch::Receiver<bool>,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
}

impl Connection {
    async fn run(mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(head) => head,
                Err(Stop::Quietly) => return,
                Err(Stop::Refuse(status)) => {
                    self.refuse(status).await;
                    return;
                }
            };
            match self.exchange(head).await {
                Ok(Sent::Complete) => {}
                Ok(Sent::Close) | Err(_) => return,
            }
        }
    }

    /// Read until a whole request head is buffered, and parse it.
    async fn read_head(&mut self) -> Result<RequestHead, Stop> {
        let deadline = Instant::now() + self.options.read_timeout;
        loop {
            if !self.read_buf.is_empty() {
                match http1::parse_request_head(&self.read_buf, MAX_HEAD_BYTES) {
                    Ok(Some(head)) => {
                        let _ = self.read_buf.split_to(head.len);
                        return Ok(head);
                    }
                    Ok(None) => {}
                    Err(RequestHeadError::TooLarge) => {
                        return Err(Stop::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
                    }
                    Err(RequestHeadError::Malformed(why)) => {
                        tracing::debug!(why, "refusing a malformed request");
                        return Err(Stop::Refuse(StatusCode::BAD_REQUEST));
                    }
                }
            } else if *self.stopping.borrow() {
                return Err(Stop::Quietly);
            }
            let idle = self.read_buf.is_empty();
            reserve(&mut self.read_buf);
            tokio::select! {
                // Biased: a read that is ready at once costs no timer.
                biased;
                read = read_into(&mut self.tcp, &mut self.read_buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Err(Stop::Quietly);
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(Stop::Quietly),
                _ = self.stopping.changed(), if idle => return Err(Stop::Quietly),
            }
        }
    }

    /// Read the body, run the app, write its response.
    async fn exchange(&mut self, head: RequestHead) -> io::Result<Sent> {
        let RequestHead {
            method,
            uri,
            version,
            headers,
            body: framing,
            mut keep_alive,
            expect_continue,
            ..
        } = head;
        let body = match self.read_body(framing, expect_continue).await {
            Ok(body) => body,
            Err(Stop::Quietly) => return Ok(Sent::Close),
            Err(Stop::Refuse(status)) => {
                self.refuse(status).await;
                return Ok(Sent::Close);
            }
        };
        // Nothing pipelined behind this request: the read buffer goes until
        // the next one, so a long stream does not hold it.
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
        // A body left unread ends the connection after the answer.
        let refused_body = matches!(body, ReadBody::TooLarge);
        if refused_body {
            keep_alive = false;
        }
        let direct = self.gateway.as_ref().and_then(|gateway| {
            routes::proxied_api(&method, uri.path()).map(|api| (gateway.clone(), api))
        });
        let handling = if let Some((gateway, api)) = direct {
            let body = match body {
                ReadBody::Whole(bytes) => Ok(bytes),
                ReadBody::TooLarge => Err(ProxyError::BodyTooLarge {
                    limit_bytes: self.options.max_body_bytes,
                }),
            };
            Either::Left(dispatch::handle(gateway, api, headers, body))
        } else {
            let body = match body {
                ReadBody::Whole(bytes) if bytes.is_empty() => Body::empty(),
                ReadBody::Whole(bytes) => Body::from(bytes),
                ReadBody::TooLarge => length_limit_exceeded(),
            };
            let mut request = Request::new(body);
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri;
            *request.version_mut() = version;
            *request.headers_mut() = headers;
            // A router is always ready; asked anyway, as the Service contract wants.
            if let Err(never) =
                poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut self.app, cx)).await
            {
                match never {}
            }
            let routed = self.app.call(request);
            Either::Right(async move {
                match routed.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            })
        };
        let Some(response) = self.unless_client_leaves(handling).await else {
            // The client left: dropping the handler cancels its work.
            return Ok(Sent::Close);
        };
        let keep_alive = keep_alive && !*self.stopping.borrow();
        let sent = self
            .respond(response, method == Method::HEAD, version, keep_alive)
            .await?;
        if refused_body {
            self.linger_close().await;
        }
        Ok(sent)
    }

    /// Read the whole body, or find it too large.
    async fn read_body(
        &mut self,
        mut framing: BodyFraming,
        expect_continue: bool,
    ) -> Result<ReadBody, Stop> {
        let limit = self.options.max_body_bytes;
        let declared = match framing {
            BodyFraming::Length(0) => return Ok(ReadBody::Whole(Bytes::new())),
            BodyFraming::Length(len) => Some(len),
            _ => None,
        };
        if declared.is_some_and(|len| len > limit as u64) {
            return Ok(ReadBody::TooLarge);
        }
        if expect_continue && self.read_buf.is_empty() {
            let continued = self.tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            if continued.is_err() {
                return Err(Stop::Quietly);
            }
        }
        if let Some(len) = declared {
            // Content-Length: read to it, then take the body in one piece.
            let len = len as usize;
            if self.read_buf.len() < len {
                self.read_buf.reserve(len - self.read_buf.len());
            }
            while self.read_buf.len() < len {
                self.read_more().await?;
            }
            return Ok(ReadBody::Whole(self.read_buf.split_to(len).freeze()));
        }
        let mut body = BytesMut::new();
        loop {
            match framing.decode(&mut self.read_buf) {
                Ok(Decoded::Data(data)) => {
                    if body.len() + data.len() > limit {
                        return Ok(ReadBody::TooLarge);
                    }
                    body.put(data);
                }
                Ok(Decoded::End) => return Ok(ReadBody::Whole(body.freeze())),
                Ok(Decoded::NeedMore) => self.read_more().await?,
                Err(err) => {
                    tracing::debug!(error = %err, "refusing a malformed chunked body");
                    return Err(Stop::Refuse(StatusCode::BAD_REQUEST));
                }
            }
        }
    }

    /// One read into the buffer, within the read timeout.
    async fn read_more(&mut self) -> Result<(), Stop> {
        reserve(&mut self.read_buf);
        let read = tokio::time::timeout(
            self.options.read_timeout,
            read_into(&mut self.tcp, &mut self.read_buf),
        )
        .await;
        match read {
            Ok(Ok(n)) if n > 0 => Ok(()),
            _ => Err(Stop::Quietly),
        }
    }

    /// Run `work` to its end, unless the client leaves first (`None`).
    async fn unless_client_leaves<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if self.client_left(cx) {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Whether the client has closed or reset the connection. Anything it
    /// sent meanwhile (a pipelined request) is kept for later; `cx` is woken
    /// when the socket has more to say.
    fn client_left(&mut self, cx: &mut Context<'_>) -> bool {
        while self.read_buf.len() < MAX_PIPELINED_BYTES {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) => {
                    reserve(&mut self.read_buf);
                    match self.tcp.try_read_buf(&mut self.read_buf) {
                        Ok(0) => return true,
                        Ok(_) => {}
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return true,
                    }
                }
            }
        }
        false
    }

    /// Write the response head and body.
    async fn respond(
        &mut self,
        response: http::Response<Body>,
        head_request: bool,
        version: Version,
        mut keep_alive: bool,
    ) -> io::Result<Sent> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        if http1::has_token(&parts.headers, http::header::CONNECTION, "close") {
            keep_alive = false;
        }
        let framing = if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            ResponseFraming::Bodiless
        } else if let Some(len) = body.size_hint().exact() {
            ResponseFraming::Length(len)
        } else if version == Version::HTTP_11 {
            ResponseFraming::Chunked
        } else {
            keep_alive = false;
            ResponseFraming::UntilClose
        };
        self.write_buf.clear();
        date::with(|date| {
            http1::write_response_head(
                status,
                &parts.headers,
                framing,
                keep_alive,
                version == Version::HTTP_10,
                date,
                &mut self.write_buf,
            );
        });
        let sent = if framing == ResponseFraming::Bodiless {
            drop(body);
            self.flush(&[]).await?;
            if keep_alive {
                Sent::Complete
            } else {
                Sent::Close
            }
        } else {
            self.send_body(&mut body, framing, keep_alive).await?
        };
        if self.write_buf.capacity() > KEEP_WRITE_BUFFER_BYTES {
            self.write_buf = Vec::new();
        }
        Ok(sent)
    }

    /// Send the body's frames as they come: what is ready at once goes out
    /// in one write; when the body has nothing ready, what is gathered is
    /// written before waiting (a streamed event is never held back).
    async fn send_body(
        &mut self,
        body: &mut Body,
        framing: ResponseFraming,
        keep_alive: bool,
    ) -> io::Result<Sent> {
        let declared = match framing {
            ResponseFraming::Length(len) => Some(len),
            _ => None,
        };
        let mut sent_len: u64 = 0;
        loop {
            let gathered = !self.write_buf.is_empty();
            let step = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(BodyStep::Frame(frame)),
                Poll::Ready(Some(Err(err))) => Poll::Ready(BodyStep::Broken(err.to_string())),
                Poll::Ready(None) => Poll::Ready(BodyStep::End),
                Poll::Pending if gathered => Poll::Ready(BodyStep::NothingYet),
                Poll::Pending if self.client_left(cx) => {
                    Poll::Ready(BodyStep::Broken("the client left".into()))
                }
                Poll::Pending => Poll::Pending,
            })
            .await;
            match step {
                BodyStep::NothingYet => self.flush(&[]).await?,
                BodyStep::Frame(frame) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers: not sent over HTTP/1.1 here
                    };
                    if let Some(len) = declared {
                        // Never more than the declared length.
                        let room = len - sent_len;
                        if data.len() as u64 > room {
                            data.truncate(room as usize);
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    sent_len += data.len() as u64;
                    if framing == ResponseFraming::Chunked {
                        http1::write_chunk_size(data.len(), &mut self.write_buf);
                    }
                    if data.len() >= WRITE_IN_PLACE_BYTES {
                        self.flush(&data).await?;
                    } else {
                        self.write_buf.extend_from_slice(&data);
                    }
                    if framing == ResponseFraming::Chunked {
                        self.write_buf.extend_from_slice(b"\r\n");
                    }
                    if self.write_buf.len() >= MAX_GATHERED_BYTES {
                        self.flush(&[]).await?;
                    }
                }
                BodyStep::Broken(why) => {
                    // What was sent stands, and the cut is visible as a
                    // close before the body's end.
                    tracing::debug!(why, "response body ended early");
                    let _ = self.flush(&[]).await;
                    return Ok(Sent::Close);
                }
                BodyStep::End => {
                    if framing == ResponseFraming::Chunked {
                        self.write_buf.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.flush(&[]).await?;
                    let short = declared.is_some_and(|len| sent_len < len);
                    return Ok(if keep_alive && !short {
                        Sent::Complete
                    } else {
                        Sent::Close
                    });
                }
            }
        }
    }

    /// Write the gathered bytes, then `data`, and empty the write buffer.
    async fn flush(&mut self, data: &[u8]) -> io::Result<()> {
        let mut slices = [IoSlice::new(&self.write_buf), IoSlice::new(data)];
        let mut remaining: &mut [IoSlice<'_>] = &mut slices;
        IoSlice::advance_slices(&mut remaining, 0);
        while !remaining.is_empty() {
            let written = self.tcp.write_vectored(remaining).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut remaining, written);
        }
        self.write_buf.clear();
        Ok(())
    }

    /// Answer a request that was not valid HTTP, and close.
    async fn refuse(&mut self, status: StatusCode) {
        self.write_buf.clear();
        date::with(|date| {
            http1::write_response_head(
                status,
                &http::HeaderMap::new(),
                ResponseFraming::Length(0),
                false,
                false,
                date,
                &mut self.write_buf,
            );
        });
        if self.flush(&[]).await.is_ok() {
            self.linger_close().await;
        }
    }

    /// Close after an answer sent before the request was read to its end:
    /// stop sending, then read and discard what the client still sends for
    /// a while, so that closing with unread bytes (which resets the
    /// connection) does not destroy the answer before the client reads it.
    async fn linger_close(&mut self) {
        if self.tcp.shutdown().await.is_err() {
            return;
        }
        let mut discarded = 0;
        let mut scratch = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while discarded < LINGER_MAX_BYTES {
                match tokio::io::AsyncReadExt::read(&mut self.tcp, &mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => discarded += n,
                }
            }
        })
        .await;
    }
}

/// Make room for the next read.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_RESERVE / 4 {
        buf.reserve(READ_RESERVE);
    }
}

async fn read_into(tcp: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    tokio::io::AsyncReadExt::read_buf(tcp, buf).await
}

/// A body whose first read fails as one over axum's length limit does, so
/// every extractor answers 413 the way it would for a body it read.
fn length_limit_exceeded() -> Body {
    let one_byte = http_body_util::Full::new(Bytes::from_static(b" "));
    Body::new(http_body_util::Limited::new(one_byte, 0))
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    /// Run `f` with the current date, as an HTTP-date.
    pub fn with<R>(f: impl FnOnce(&[u8]) -> R) -> R {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != second || text.is_empty() {
                *at = second;
                *text = httpdate::fmt_http_date(now);
            }
            f(text.as_bytes())
        })
    }
}
