//! The roles a process runs — proxy, ledger, analytics — each a module that
//! takes the node and the config and returns a [`Role`]: what it serves and
//! what it runs.

pub mod analytics;
pub mod ledger;
pub mod proxy;

use crate::node::Node;
use axum::Router;
use std::future::Future;
use std::pin::Pin;
use tokio::task::JoinHandle;

/// Work a role finishes after the stop signal.
pub type Finish = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a role adds to its process.
#[derive(Default)]
pub struct Role {
    /// Routes on the process's main listener.
    pub routes: Router,
    /// Routes behind the admin token: on the admin listener where the proxy
    /// runs, else on the main listener.
    pub admin_routes: Option<Router>,
    /// Loops that run as long as the process (tails, tickers, retention),
    /// aborted once everything has finished.
    pub loops: Vec<JoinHandle<()>>,
    /// What finishes after the stop signal, awaited in order: the admin
    /// listener, the ledger's last commit, the sink's last batch.
    pub finish: Vec<Finish>,
}

impl Role {
    /// A role that only serves `routes`.
    pub fn serving(routes: Router) -> Role {
        Role {
            routes,
            ..Role::default()
        }
    }

    /// The main listener's routes, taken: this role's, and its admin routes
    /// when no proxy took them for its admin listener.
    pub fn main_routes(&mut self) -> Router {
        let routes = std::mem::take(&mut self.routes);
        match self.admin_routes.take() {
            Some(admin) => routes.merge(admin),
            None => routes,
        }
    }

    /// `other` joins this role: routes merged, work added after this one's.
    pub fn merge(mut self, other: Role) -> Role {
        self.routes = self.routes.merge(other.routes);
        self.admin_routes = match (self.admin_routes, other.admin_routes) {
            (Some(mine), Some(theirs)) => Some(mine.merge(theirs)),
            (mine, theirs) => mine.or(theirs),
        };
        self.loops.extend(other.loops);
        self.finish.extend(other.finish);
        self
    }
}

/// `/healthz`, `/readyz` and `/metrics` for a process without the proxy
/// (the gateway's router merges the same router, on the same node's log and registry).
pub fn health_router(node: &Node) -> Router {
    tollgate_proxy::health::router(node.log.clone(), node.metrics.clone())
}
