//! Every listener (gateway, admin, ledger, analytics) is served here, by
//! hyper: hyper-util's auto server speaks HTTP/1.1 and HTTP/2 (cleartext
//! with prior knowledge, or over TLS by ALPN). What hyper does not bound
//! on its own, `crate::edge` does: caps on connections, requests and
//! buffered bytes, body deadlines, the send watchdog and lingering close.
//!
//! The gateway's proxied routes (`routes::proxied_api`) skip the
//! router when served by `serve_gateway`: their handler authenticates from
//! the headers before it reads the body.

use crate::config::{ServerConfig, TlsConfig};
use crate::edge::{
    declared_length, error_shape, ConnectionSlot, ConnectionWatch, Edge, EdgeBody, GuardedBody,
    Limit, RequestState, Verdict,
};
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::{dispatch, routes};
use axum::response::Response;
use axum::Router;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

/// Connections past `max_connections` get one 503 each; past this many at
/// once, they are closed without a word.
const MAX_REFUSING_CONNECTIONS: usize = 64;

/// How a listener is served.
#[derive(Clone)]
pub struct ServeOptions {
    /// The process's limits, shared by its listeners.
    pub edge: Arc<Edge>,
    /// TLS (HTTP/2 and HTTP/1.1 by ALPN) when set.
    pub tls: Option<TlsAcceptor>,
}

impl ServeOptions {
    pub fn new(edge: Arc<Edge>) -> ServeOptions {
        ServeOptions { edge, tls: None }
    }
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Pem {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("the TLS configuration is invalid: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS acceptor from PEM files, offering h2 and http/1.1 by ALPN.
pub fn tls_acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem_error = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| TlsError::Pem { path, source }
    };
    let certs = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(pem_error(&config.cert_file))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(&config.cert_file))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(
            config.cert_file.display().to_string(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(&config.key_file).map_err(pem_error(&config.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Serve `app` with default limits until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let edge = Edge::standalone(&ServerConfig::default()).map_err(io::Error::other)?;
    serve_with(listener, app, shutdown, ServeOptions::new(edge)).await
}

/// Serve `app` until `shutdown` resolves; then stop accepting, let
/// in-flight requests finish for `shutdown_grace_ms`, cut what is left
/// (streams end and are billed for what was sent), and return once every
/// connection has ended.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> io::Result<()> {
    serve_target(listener, Target::Router(app), shutdown, options).await
}

/// `serve_with` for an app holding the gateway's router: its proxied routes
/// go straight to the gateway's handler, without the router's work.
pub async fn serve_gateway(
    listener: TcpListener,
    app: Router,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> io::Result<()> {
    serve_target(listener, Target::Gateway(app, gateway), shutdown, options).await
}

/// What requests are handed to.
#[derive(Clone)]
enum Target {
    Router(Router),
    Gateway(Router, Arc<Gateway>),
}

impl Target {
    async fn call(&self, request: Request<axum::body::Body>) -> Response {
        let router = match self {
            Target::Router(router) => router,
            Target::Gateway(router, gateway) => {
                if let Some(api) = routes::proxied_api(request.method(), request.uri().path()) {
                    return dispatch::handle(gateway.clone(), api, request).await;
                }
                router
            }
        };
        match router.clone().call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Everything a connection task needs, shared by all of a listener's.
struct Listener {
    edge: Arc<Edge>,
    target: Target,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    refusing: AtomicUsize,
}

async fn serve_target(
    listener: TcpListener,
    target: Target,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> io::Result<()> {
    let shared = Arc::new(Listener {
        builder: builder(&options.edge.config),
        edge: options.edge,
        target,
        tls: options.tls,
        refusing: AtomicUsize::new(0),
    });
    let graceful = GracefulShutdown::new();
    // Each connection task holds a receiver: `closed` below resolves once
    // all of them have ended.
    let (cut, cut_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
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
        // Without it a keep-alive response can stall ~40 ms (Nagle + delayed ACK).
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        match shared.edge.admit_connection() {
            Some(slot) => {
                let watcher = graceful.watcher();
                let cut = cut_rx.clone();
                tokio::spawn(async move { shared.run(tcp, peer, slot, watcher, cut).await });
            }
            None => {
                shared.edge.hit(Limit::Connections);
                tokio::spawn(async move { shared.refuse(tcp).await });
            }
        }
    }
    drop(listener);
    let grace = Duration::from_millis(shared.edge.config.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = shared.edge.config.shutdown_grace_ms,
            "shutdown grace over: cutting the requests still in flight"
        );
        let _ = cut.send(true);
    }
    drop(cut_rx);
    cut.closed().await;
    Ok(())
}

/// hyper's settings from the edge's limits.
fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.head_timeout_ms))
        .max_buf_size(config.max_head_bytes)
        .max_headers(config.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_head_bytes).unwrap_or(u32::MAX))
        // A client that resets streams as fast as it opens them is sent
        // GOAWAY (the "rapid reset" attack); hyper's defaults, made explicit.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        // Dead peers are found by pings; a live one that never reads is the
        // send watchdog's.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

impl Listener {
    async fn run(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
        watcher: Watcher,
        mut cut: watch::Receiver<bool>,
    ) {
        let _slot = slot;
        let served = async {
            match &self.tls {
                None => self.serve_io(TokioIo::new(tcp), watcher).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(self.edge.head_timeout(), handshake).await {
                        Ok(Ok(tls)) => self.serve_io(TokioIo::new(tls), watcher).await,
                        Ok(Err(err)) => {
                            self.edge.hit(Limit::TlsHandshake);
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => self.edge.hit(Limit::TlsHandshake),
                    }
                }
            }
        };
        tokio::select! {
            () = served => {}
            _ = cut.wait_for(|cut| *cut) => {}
        }
    }

    async fn serve_io<I>(self: &Arc<Self>, io: TokioIo<I>, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let watch = ConnectionWatch::new();
        let this = self.clone();
        let conn_watch = watch.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let this = this.clone();
            let watch = conn_watch.clone();
            async move { Ok::<_, Infallible>(this.answer(request, watch).await) }
        });
        let mut connection = pin!(watcher.watch(self.builder.serve_connection(io, service)));
        // Usage events of requests that finished during a poll are emitted
        // after it, once their responses are written (off the client's path).
        let connection = std::future::poll_fn(|cx| {
            crate::meter::poll_then_emit(|| connection.as_mut().poll(cx))
        });
        tokio::select! {
            result = connection => {
                if let Err(err) = result {
                    self.count_connection_error(err.as_ref());
                }
            }
            () = self.watchdog(&watch) => {}
        }
    }

    /// Resolves when the connection must close: its client stopped reading
    /// a response, or it sat idle (before its first request: the head timeout).
    async fn watchdog(&self, watch: &ConnectionWatch) {
        let config = &self.edge.config;
        let shortest = config
            .send_timeout_ms
            .min(config.idle_timeout_ms)
            .min(config.head_timeout_ms);
        let tick = Duration::from_millis((shortest / 4).clamp(50, 1000));
        loop {
            tokio::time::sleep(tick).await;
            let idle = if watch.started() {
                self.edge.idle_timeout()
            } else {
                self.edge.head_timeout()
            };
            match watch.verdict(self.edge.send_timeout(), Some(idle)) {
                Verdict::Fine => {}
                Verdict::Stalled => return self.edge.hit(Limit::SendTimeout),
                Verdict::Idle if watch.started() => return self.edge.hit(Limit::IdleTimeout),
                Verdict::Idle => return self.edge.hit(Limit::HeadTimeout),
            }
        }
    }

    fn count_connection_error(&self, err: &(dyn std::error::Error + 'static)) {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_timeout() {
                self.edge.hit(Limit::HeadTimeout);
            } else if err.is_parse_too_large() {
                self.edge.hit(Limit::HeadTooLarge);
            }
        }
        let mut source = Some(err);
        while let Some(err) = source {
            if err.downcast_ref::<h2::Error>().is_some() {
                self.edge.hit(Limit::Http2Protocol);
                break;
            }
            source = err.source();
        }
        tracing::debug!(error = %err, "client connection ended with an error");
    }

    /// One request under the edge's limits.
    async fn answer(
        &self,
        request: Request<Incoming>,
        watch: Arc<ConnectionWatch>,
    ) -> http::Response<EdgeBody> {
        let in_flight = watch.start_request();
        let shape = error_shape(request.uri().path(), request.headers());
        let refuse = |err: ProxyError, in_flight| {
            EdgeBody::new(err.into_response_for(shape), None, in_flight)
        };
        let slot = match self.edge.admit_request() {
            Ok(slot) => slot,
            Err(err) => return refuse(err, in_flight),
        };
        let state = Arc::new(RequestState::default());
        let (parts, incoming) = request.into_parts();
        let body = GuardedBody::new(
            incoming,
            self.edge.clone(),
            state.clone(),
            parts.version,
            &parts.headers,
        );
        let limit = self.edge.config.max_body_bytes;
        if declared_length(&parts.headers).is_some_and(|len| len > limit as u64) {
            // Refused unread: dropping the body drains what the client sends.
            self.edge.hit(Limit::BodySize);
            drop(body);
            return refuse(ProxyError::BodyTooLarge { limit_bytes: limit }, in_flight);
        }
        let request = Request::from_parts(parts, axum::body::Body::new(body));
        let mut response = self.target.call(request).await;
        state.release(&self.edge);
        if let Some(failure) = state.failure() {
            // A handler that read through axum's extractors answered in its
            // own words; the edge's refusal says which limit it was.
            let err = failure.into_proxy_error();
            if response.status() != err.status() {
                response = err.into_response_for(shape);
            }
        }
        EdgeBody::new(response, Some(slot), in_flight)
    }

    /// A connection over the cap: one 503 over HTTP/1.1, then closed.
    async fn refuse(self: Arc<Self>, tcp: TcpStream) {
        // Over TLS there is no cheap way to say it: close.
        if self.tls.is_some() {
            return;
        }
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING_CONNECTIONS {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
            let shape = error_shape(request.uri().path(), request.headers());
            let mut response = crate::edge::overloaded("open connections").into_response_for(shape);
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            Ok::<_, Infallible>(response)
        });
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(self.edge.head_timeout())
            .max_buf_size(self.edge.config.max_head_bytes)
            .keep_alive(false);
        let connection = http1.serve_connection(TokioIo::new(tcp), service);
        let _ = tokio::time::timeout(self.edge.head_timeout() * 2, connection).await;
        self.refusing.fetch_sub(1, Ordering::Relaxed);
    }
}
