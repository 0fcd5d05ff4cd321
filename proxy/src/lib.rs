//! Tollgate's HTTP gateway. `router` builds the whole axum app; `serve*`
//! runs it on hyper under the edge's limits (`edge`).

pub mod admin_docs;
pub mod admission;
pub mod api;
pub mod config;
pub mod dispatch;
pub mod edge;
pub mod error;
pub mod estimate;
pub mod failover;
pub mod gateway;
pub mod health;
pub mod meter;
pub mod metrics;
pub mod ratelimit;
mod relay;
mod routes;
mod server;
pub mod tokenize;
mod upstream;

pub use config::ProxyConfig;
pub use edge::Edge;
pub use error::ProxyError;
pub use gateway::{Caller, Gateway, InitError, ModelPrice, PriceSource};
pub use routes::{admin_router, router};
pub use server::{serve, serve_gateway, serve_with, tls_acceptor, ServeOptions, TlsError};
