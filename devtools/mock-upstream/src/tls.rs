//! The optional HTTPS mode: rustls with ALPN h2 and http/1.1, each
//! connection served by hyper-util's auto (HTTP/1.1 or HTTP/2) server.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::Inner;

pub(crate) fn acceptor(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> std::io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(cert_chain, key)
        })
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accept until the mock is dropped; each connection ends then too.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    inner: Arc<Inner>,
) {
    let mut shutdown = inner.shutdown_rx.clone();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            _ = shutdown.wait_for(|down| *down) => return,
        };
        let _ = tcp.set_nodelay(true);
        inner.connections.fetch_add(1, Ordering::Relaxed);
        let (acceptor, app, mut stop) = (acceptor.clone(), app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let serving =
                builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
            tokio::select! {
                _ = serving => {}
                _ = stop.wait_for(|down| *down) => {}
            }
        });
    }
}
