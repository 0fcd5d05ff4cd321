//! The limits every listener applies before it buffers anything a client
//! sends: process-wide caps on connections, requests in flight (HTTP/2
//! streams included) and buffered request bytes; a declared length checked
//! before the body is read; a deadline on the whole body; a watchdog that
//! closes connections whose client stopped reading; and a lingering drain
//! for bodies a handler refused without reading, so the client gets the
//! answer instead of a reset.
//!
//! Everything here is shared by the listeners of one process (`Edge`), so
//! the caps hold for the process, not per listener.

use crate::api::openai_chat::OpenAiChat;
use crate::api::ClientApi;
use crate::config::ServerConfig;
use crate::error::ProxyError;
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT};
use http::{HeaderMap, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// After refusing a body it did not read, the server reads and discards
/// what the client still sends, up to this long and this much, so the
/// client (often an SDK still writing) receives the answer, not a reset.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
pub const LINGER_BYTES: u64 = 1024 * 1024;
/// `retry-after` on 503s from a limit: capacity frees as requests finish.
const RETRY_AFTER_SECS: u64 = 1;

/// Which limit refused work: the label of `tollgate_edge_limit_hits_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Connections,
    Requests,
    BufferedBytes,
    BodySize,
    BodyTimeout,
    HeadTimeout,
    HeadTooLarge,
    SendTimeout,
    IdleTimeout,
    TlsHandshake,
    Http2Protocol,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Requests => "requests",
            Limit::BufferedBytes => "buffered_body_bytes",
            Limit::BodySize => "body_size",
            Limit::BodyTimeout => "body_timeout",
            Limit::HeadTimeout => "head_timeout",
            Limit::HeadTooLarge => "head_too_large",
            Limit::SendTimeout => "send_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::TlsHandshake => "tls_handshake",
            Limit::Http2Protocol => "http2_protocol",
        }
    }
}

/// The edge's metrics: one counter per limit, and the levels the caps bound.
#[derive(Clone)]
pub struct EdgeMetrics {
    pub limit_hits: IntCounterVec,
    pub open_connections: IntGauge,
    pub requests_in_flight: IntGauge,
    pub buffered_body_bytes: IntGauge,
}

impl EdgeMetrics {
    pub fn new(registry: &Registry) -> Result<EdgeMetrics, prometheus::Error> {
        let metrics = EdgeMetrics {
            limit_hits: IntCounterVec::new(
                Opts::new(
                    "tollgate_edge_limit_hits_total",
                    "Work refused or connections closed by an edge limit, by limit.",
                ),
                &["limit"],
            )?,
            open_connections: IntGauge::new(
                "tollgate_edge_open_connections",
                "Client connections open, all listeners.",
            )?,
            requests_in_flight: IntGauge::new(
                "tollgate_edge_requests_in_flight",
                "Requests (HTTP/2 streams included) in flight, all listeners.",
            )?,
            buffered_body_bytes: IntGauge::new(
                "tollgate_edge_buffered_body_bytes",
                "Request body bytes held in memory, all listeners.",
            )?,
        };
        registry.register(Box::new(metrics.limit_hits.clone()))?;
        registry.register(Box::new(metrics.open_connections.clone()))?;
        registry.register(Box::new(metrics.requests_in_flight.clone()))?;
        registry.register(Box::new(metrics.buffered_body_bytes.clone()))?;
        Ok(metrics)
    }
}

/// The process's edge: its limits and what they have handed out.
pub struct Edge {
    pub config: ServerConfig,
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    body_bytes: Arc<Semaphore>,
    pub metrics: EdgeMetrics,
}

impl Edge {
    /// Limits from `config`, metrics on `registry`.
    pub fn new(config: &ServerConfig, registry: &Registry) -> Result<Arc<Edge>, prometheus::Error> {
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Ok(Arc::new(Edge {
            connections: permits(config.max_connections),
            requests: permits(config.max_requests),
            body_bytes: permits(config.max_buffered_body_bytes),
            config: config.clone(),
            metrics: EdgeMetrics::new(registry)?,
        }))
    }

    /// Limits from `config`, metrics on a registry of their own (tests and
    /// listeners of a process without a metrics endpoint).
    pub fn standalone(config: &ServerConfig) -> Result<Arc<Edge>, prometheus::Error> {
        Edge::new(config, &Registry::new())
    }

    pub fn hit(&self, limit: Limit) {
        self.metrics
            .limit_hits
            .with_label_values(&[limit.as_str()])
            .inc();
    }

    /// A connection slot, or `None` at the cap.
    pub fn admit_connection(&self) -> Option<ConnectionSlot> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        self.metrics.open_connections.inc();
        Some(ConnectionSlot {
            _permit: permit,
            gauge: self.metrics.open_connections.clone(),
        })
    }

    /// A request slot, or the 503 to answer at the cap.
    pub fn admit_request(&self) -> Result<RequestSlot, ProxyError> {
        match self.requests.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.requests_in_flight.inc();
                Ok(RequestSlot {
                    _permit: permit,
                    gauge: self.metrics.requests_in_flight.clone(),
                })
            }
            Err(_) => {
                self.hit(Limit::Requests);
                Err(overloaded("requests in flight"))
            }
        }
    }

    pub fn head_timeout(&self) -> Duration {
        Duration::from_millis(self.config.head_timeout_ms)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.config.send_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.config.idle_timeout_ms)
    }
}

pub fn overloaded(limit: &'static str) -> ProxyError {
    ProxyError::Overloaded {
        limit,
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

/// An open connection; releases its slot when dropped.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A request in flight; released when its response body ends or is dropped.
pub struct RequestSlot {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The API whose error shape a refusal takes, from the path (and the
/// Anthropic SDK's version header); everything else speaks OpenAI's shape,
/// which the admin, credits and usage APIs share.
pub fn error_shape(path: &str, headers: &HeaderMap) -> &'static dyn ClientApi {
    let apis = crate::routes::CLIENT_APIS.iter();
    apis.clone()
        .find(|api| api.named_by(headers))
        .or_else(|| apis.clone().find(|api| path.starts_with(api.path())))
        .copied()
        .unwrap_or(&OpenAiChat)
}

/// The declared Content-Length, when there is exactly one valid value
/// (hyper refuses the others before a request reaches us).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Why reading a request body stopped early.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimitError {
    #[error("request body is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0} ms")]
    TimedOut(u64),
    #[error("the gateway is buffering as many request bytes as it may")]
    Overloaded,
}

impl BodyLimitError {
    pub fn into_proxy_error(self) -> ProxyError {
        match self {
            BodyLimitError::TooLarge(limit_bytes) => ProxyError::BodyTooLarge { limit_bytes },
            BodyLimitError::TimedOut(timeout_ms) => ProxyError::BodyTimeout { timeout_ms },
            BodyLimitError::Overloaded => overloaded("buffered request bytes"),
        }
    }

    fn limit(self) -> Limit {
        match self {
            BodyLimitError::TooLarge(_) => Limit::BodySize,
            BodyLimitError::TimedOut(_) => Limit::BodyTimeout,
            BodyLimitError::Overloaded => Limit::BufferedBytes,
        }
    }

    /// The edge error behind a body error, wherever it sits in the chain
    /// (axum wraps body errors in its own).
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<BodyLimitError> {
        let mut current = Some(err);
        while let Some(err) = current {
            if let Some(found) = err.downcast_ref::<BodyLimitError>() {
                return Some(*found);
            }
            if let Some(BodyError::Limit(found)) = err.downcast_ref::<BodyError>() {
                return Some(*found);
            }
            current = err.source();
        }
        None
    }
}

/// What one request's body reader and the server share: the buffered
/// bytes it holds (released when the response head is ready) and why the
/// body failed, if it did.
#[derive(Default)]
pub struct RequestState {
    held: Mutex<Option<OwnedSemaphorePermit>>,
    failed: Mutex<Option<BodyLimitError>>,
}

impl RequestState {
    pub fn failure(&self) -> Option<BodyLimitError> {
        *self.failed.lock()
    }

    /// The body's bytes are no longer counted (the handler has answered).
    pub fn release(&self, edge: &Edge) {
        if let Some(permit) = self.held.lock().take() {
            edge.metrics
                .buffered_body_bytes
                .sub(permit.num_permits() as i64);
        }
    }
}

/// A request body as the edge hands it on: read as it arrives, never
/// allocated from a declared length, refused the moment it passes the
/// size limit, the process's byte budget or the body deadline. Dropped
/// before its end on HTTP/1.1, it drains the rest (lingering close).
pub struct GuardedBody {
    inner: Option<Incoming>,
    edge: Arc<Edge>,
    state: Arc<RequestState>,
    limit: usize,
    received: usize,
    deadline: Pin<Box<Sleep>>,
    linger: bool,
    done: bool,
}

impl GuardedBody {
    pub fn new(
        inner: Incoming,
        edge: Arc<Edge>,
        state: Arc<RequestState>,
        version: Version,
        headers: &HeaderMap,
    ) -> GuardedBody {
        let deadline = Instant::now() + Duration::from_millis(edge.config.body_timeout_ms);
        // An HTTP/2 stream is reset cleanly instead; a client waiting for
        // `100 Continue` has sent nothing to drain.
        let linger = version <= Version::HTTP_11 && !headers.contains_key(EXPECT);
        GuardedBody {
            done: inner.is_end_stream(),
            inner: Some(inner),
            limit: edge.config.max_body_bytes,
            edge,
            state,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            linger,
        }
    }

    fn fail(&mut self, err: BodyLimitError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.edge.hit(err.limit());
        *self.state.failed.lock() = Some(err);
        self.done = true;
        Poll::Ready(Some(Err(BodyError::Limit(err))))
    }

    /// Count `len` more buffered bytes against the process's budget.
    fn take_budget(&mut self, len: usize) -> bool {
        let Ok(len32) = u32::try_from(len) else {
            return false;
        };
        if len32 == 0 {
            return true;
        }
        let Ok(permit) = self.edge.body_bytes.clone().try_acquire_many_owned(len32) else {
            return false;
        };
        self.edge.metrics.buffered_body_bytes.add(i64::from(len32));
        let mut held = self.state.held.lock();
        match held.as_mut() {
            Some(existing) => existing.merge(permit),
            None => *held = Some(permit),
        }
        true
    }
}

/// A request body failure: a limit, or the connection's own error.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Limit(BodyLimitError),
    #[error("reading the request body failed: {0}")]
    Connection(#[from] hyper::Error),
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len());
                    if this.received > this.limit {
                        return this.fail(BodyLimitError::TooLarge(this.limit));
                    }
                    if !this.take_budget(data.len()) {
                        return this.fail(BodyLimitError::Overloaded);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.done = true;
                Poll::Ready(Some(Err(BodyError::Connection(err))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.fail(BodyLimitError::TimedOut(this.edge.config.body_timeout_ms))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        // Never pass a declared length on: nothing may allocate from it.
        SizeHint::default()
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.done && self.state.failure().is_none() || !self.linger {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(inner));
        }
    }
}

/// Read and discard what is left of a refused body, within `LINGER_*`;
/// a body that ends in time leaves its connection open for the next request.
async fn linger(mut body: Incoming) {
    let mut discarded = 0u64;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                discarded += data.len() as u64;
                if discarded > LINGER_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Read a whole request body under the edge's limits (the limits live in
/// the body itself when it came through `GuardedBody`; `limit` is checked
/// here too for bodies that did not).
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, ProxyError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            if let Some(found) = BodyLimitError::find(err.as_ref()) {
                return Err(found.into_proxy_error());
            }
            if err.is::<http_body_util::LengthLimitError>() {
                return Err(ProxyError::BodyTooLarge { limit_bytes: limit });
            }
            Err(ProxyError::invalid(format!(
                "cannot read request body: {err}"
            )))
        }
    }
}

/// One connection's watch: its requests in flight, when it last had
/// work, and the responses it is sending. The watchdog closes a connection
/// whose client stopped reading (a response waiting to be taken for longer
/// than the send timeout) or that sat idle with nothing in flight.
pub struct ConnectionWatch {
    epoch: Instant,
    streams: Mutex<Vec<Weak<StreamWatch>>>,
    in_flight: AtomicUsize,
    started: AtomicBool,
    /// Milliseconds since `epoch` of the last request start or end.
    last_activity_ms: AtomicU64,
}

/// One response body's state: 0 while it waits on its source (an upstream
/// that is slow is the read timeout's business), else one more than the
/// time (ms since the connection's epoch) since which it has a frame the
/// connection has not come back for.
#[derive(Default)]
pub struct StreamWatch {
    waiting_since_ms: AtomicU64,
}

pub enum Verdict {
    Fine,
    Stalled,
    Idle,
}

impl ConnectionWatch {
    pub fn new() -> Arc<ConnectionWatch> {
        Arc::new(ConnectionWatch {
            epoch: Instant::now(),
            streams: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            last_activity_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a request has arrived on this connection yet.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// A request has arrived; in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_activity_ms
            .store(self.now_ms(), Ordering::Relaxed);
        InFlight { conn: self.clone() }
    }

    fn watch_stream(&self) -> Arc<StreamWatch> {
        // Waiting from the start: a body never polled (an HTTP/2 window the
        // client never opened) is as stuck as one polled once.
        let stream = Arc::new(StreamWatch {
            waiting_since_ms: AtomicU64::new(self.now_ms() + 1),
        });
        let mut streams = self.streams.lock();
        streams.retain(|s| s.strong_count() > 0);
        streams.push(Arc::downgrade(&stream));
        stream
    }

    /// Whether the connection should be closed now.
    pub fn verdict(&self, send_timeout: Duration, idle_timeout: Option<Duration>) -> Verdict {
        let now = self.now_ms();
        let send_ms = u64::try_from(send_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut streams = self.streams.lock();
        streams.retain(|s| s.strong_count() > 0);
        let stalled = streams.iter().filter_map(Weak::upgrade).any(|s| {
            let since = s.waiting_since_ms.load(Ordering::Relaxed);
            since > 0 && now.saturating_sub(since - 1) >= send_ms
        });
        if stalled {
            return Verdict::Stalled;
        }
        let idle_for = now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed));
        match idle_timeout {
            Some(idle)
                if self.in_flight.load(Ordering::Relaxed) == 0
                    && u128::from(idle_for) >= idle.as_millis() =>
            {
                Verdict::Idle
            }
            _ => Verdict::Fine,
        }
    }
}

/// A request in flight on its connection.
pub struct InFlight {
    conn: Arc<ConnectionWatch>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.conn
            .last_activity_ms
            .store(self.conn.now_ms(), Ordering::Relaxed);
    }
}

/// A response body under the edge: holds the request's slot and its place
/// in the connection until it ends, and tells the connection's watch when
/// a frame waits for the client to take it.
pub struct EdgeBody {
    inner: axum::body::Body,
    slot: Option<RequestSlot>,
    in_flight: Option<InFlight>,
    stream: Option<Arc<StreamWatch>>,
}

impl EdgeBody {
    pub fn new(
        response: Response,
        slot: Option<RequestSlot>,
        in_flight: InFlight,
    ) -> http::Response<EdgeBody> {
        let (parts, inner) = response.into_parts();
        let stream = (!inner.is_end_stream()).then(|| in_flight.conn.watch_stream());
        http::Response::from_parts(
            parts,
            EdgeBody {
                inner,
                slot,
                in_flight: Some(in_flight),
                stream,
            },
        )
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(stream), Some(in_flight)) = (&self.stream, &self.in_flight) {
            let mark = match &polled {
                Poll::Ready(Some(Ok(_))) => in_flight.conn.now_ms() + 1,
                _ => 0,
            };
            stream.waiting_since_ms.store(mark, Ordering::Relaxed);
        }
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = polled {
            self.stream = None;
            self.slot = None;
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tollgate_core::ApiSurface;

    #[test]
    fn refusals_take_the_shape_of_the_api_the_path_names() {
        let none = HeaderMap::new();
        assert_eq!(
            error_shape("/v1/messages", &none).surface(),
            ApiSurface::Anthropic
        );
        assert_eq!(
            error_shape("/v1/messages/count_tokens", &none).surface(),
            ApiSurface::Anthropic
        );
        assert_eq!(
            error_shape("/v1/chat/completions", &none).surface(),
            ApiSurface::Openai
        );
        assert_eq!(
            error_shape("/admin/v1/accounts", &none).surface(),
            ApiSurface::Openai
        );
        let mut anthropic = HeaderMap::new();
        anthropic.insert(
            "anthropic-version",
            http::HeaderValue::from_static("2023-06-01"),
        );
        assert_eq!(
            error_shape("/v1/models", &anthropic).surface(),
            ApiSurface::Anthropic
        );
    }

    #[test]
    fn a_body_error_is_found_behind_wrappers() {
        let err = axum::Error::new(BodyError::Limit(BodyLimitError::TimedOut(5)));
        assert_eq!(
            BodyLimitError::find(&err),
            Some(BodyLimitError::TimedOut(5))
        );
    }

    #[test]
    fn a_response_waiting_past_the_send_timeout_stalls_its_connection() {
        let conn = ConnectionWatch::new();
        let request = conn.start_request();
        let stream = conn.watch_stream();
        assert!(matches!(
            conn.verdict(Duration::from_secs(60), Some(Duration::ZERO)),
            Verdict::Fine
        ));
        assert!(matches!(
            conn.verdict(Duration::ZERO, None),
            Verdict::Stalled
        ));
        // Waiting on its source (an upstream) is not a stall.
        stream.waiting_since_ms.store(0, Ordering::Relaxed);
        assert!(matches!(conn.verdict(Duration::ZERO, None), Verdict::Fine));
        drop(stream);
        drop(request);
        assert!(matches!(
            conn.verdict(Duration::ZERO, Some(Duration::ZERO)),
            Verdict::Idle
        ));
    }
}
