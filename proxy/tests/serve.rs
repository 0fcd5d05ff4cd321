//! The HTTP/1 serve loop: graceful shutdown finishes in-flight requests,
//! closes idle keep-alive connections, and stops accepting new ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::routing::get;
use axum::Router;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(400)).await;
    "finished"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_closes_idle_connections() {
    let app = Router::new()
        .route("/slow", get(slow))
        .route("/fast", get(|| async { "fast" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_proxy::serve(listener, app, async {
        let _ = stopped.await;
    }));

    // An idle keep-alive connection (its pool keeps it open after a request).
    let idle_client = reqwest::Client::new();
    let fast = idle_client
        .get(format!("http://{addr}/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(fast.text().await.unwrap(), "fast");

    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("http://{addr}/slow"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();

    assert_eq!(in_flight.await.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once in-flight requests are done, idle connections included")
        .unwrap()
        .unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(200),
        "it waited for the slow request"
    );
    let refused = reqwest::Client::new()
        .get(format!("http://{addr}/fast"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "no new connections after shutdown");
}
