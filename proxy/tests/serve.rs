//! The server (hyper under the edge's limits), over raw sockets where the
//! wire matters: keep-alive and pipelining, body framing and limits,
//! refused heads, streaming, clients that leave, idle timeouts, and
//! graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
#[path = "common/raw.rs"]
mod raw;

use raw::{closed, connect_and_send, fill, read_response};
use tollgate_proxy::config::ServerConfig;
use tollgate_proxy::{Edge, ServeOptions};

/// Default limits adjusted by `adjust`.
fn options(adjust: impl FnOnce(&mut ServerConfig)) -> ServeOptions {
    let mut config = ServerConfig::default();
    adjust(&mut config);
    ServeOptions::new(Edge::standalone(&config).unwrap())
}

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

/// A server on a free port with `options`; dropping the sender stops it.
async fn start(app: Router, options: ServeOptions) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(tollgate_proxy::serve_with(
        listener,
        app,
        async {
            let _ = stopped.await;
        },
        options,
    ));
    (addr, stop)
}

/// Echoes the body's length, so tests see what the handler received.
fn echo_app() -> Router {
    Router::new()
        .route(
            "/echo",
            post(|body: Bytes| async move { format!("got {} bytes", body.len()) }),
        )
        .route("/fast", get(|| async { "fast" }))
}

#[tokio::test]
async fn pipelined_keep_alive_requests_are_answered_in_order_on_one_connection() {
    let (addr, _stop) = start(echo_app(), options(|_| {})).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Two requests in one write, then a third after the answers.
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /fast HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (head, body) = read_response(&mut stream, &mut pending).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
    assert_eq!(body, b"got 5 bytes");
    let (_, body) = read_response(&mut stream, &mut pending).await.unwrap();
    assert_eq!(body, b"fast");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let (_, body) = read_response(&mut stream, &mut pending).await.unwrap();
    assert_eq!(body, b"got 2 bytes");
}

#[tokio::test]
async fn a_chunked_request_body_reaches_the_handler_whole() {
    let (addr, _stop) = start(echo_app(), options(|_| {})).await;
    let mut stream = connect_and_send(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let mut pending = Vec::new();
    let (_, body) = read_response(&mut stream, &mut pending).await.unwrap();
    assert_eq!(body, b"got 11 bytes");
    // Bad chunk framing is a 400, and the connection closes.
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream, &mut pending).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(closed(&mut stream).await);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_a_drained_connection_stays_open() {
    let options = options(|c| c.max_body_bytes = 1000);
    let (addr, _stop) = start(echo_app(), options).await;
    // Declared too large: refused before any of it is read.
    let mut stream = connect_and_send(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n",
    )
    .await;
    stream.write_all(&[b'a'; 5000]).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut stream, &mut pending).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    // The refused body was drained (lingering close), so the connection
    // carries the next request.
    stream
        .write_all(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (_, body) = read_response(&mut stream, &mut pending).await.unwrap();
    assert_eq!(body, b"fast");

    // Chunked, and too large only once read.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let chunk = [b'b'; 600];
    let mut request =
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2 {
        request.extend_from_slice(b"258\r\n");
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut stream, &mut pending).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");

    // At the limit: read and passed on.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'c'; 1000]);
    stream.write_all(&request).await.unwrap();
    let (_, body) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(body, b"got 1000 bytes");
}

#[tokio::test]
async fn expect_continue_gets_an_interim_response_unless_the_body_is_too_large() {
    let options = options(|c| c.max_body_bytes = 1000);
    let (addr, _stop) = start(echo_app(), options).await;
    let mut stream = connect_and_send(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
    )
    .await;
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut stream, &mut pending).await.unwrap();
    assert_eq!(head, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"abc").await.unwrap();
    let (_, body) = read_response(&mut stream, &mut pending).await.unwrap();
    assert_eq!(body, b"got 3 bytes");

    let mut stream = connect_and_send(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2000\r\n\r\n",
    )
    .await;
    let (head, _) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert!(
        head.starts_with("HTTP/1.1 413 "),
        "no 100 Continue first: {head}"
    );
}

#[tokio::test]
async fn malformed_and_oversized_heads_are_refused_and_closed() {
    let (addr, _stop) = start(echo_app(), options(|_| {})).await;
    for (request, status) in [
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "400"),
        (
            b"POST /echo HTTP/1.1\r\ncontent-length: 1, 2\r\n\r\n".to_vec(),
            "400",
        ),
        (
            b"POST /echo HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(),
            "400",
        ),
        (
            [
                b"GET /fast HTTP/1.1\r\nx-big: ".as_slice(),
                &[b'a'; 40_000],
                b"\r\n\r\n",
            ]
            .concat(),
            "431",
        ),
    ] {
        let mut stream = connect_and_send(addr, &request).await;
        let (head, _) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(closed(&mut stream).await, "closed after {status}");
    }
}

#[tokio::test]
async fn http10_and_connection_close_clients_get_their_connection_closed_and_head_gets_no_body() {
    let (addr, _stop) = start(echo_app(), options(|_| {})).await;
    for request in [
        b"GET /fast HTTP/1.0\r\n\r\n".as_slice(),
        b"GET /fast HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ] {
        let mut stream = connect_and_send(addr, request).await;
        let (head, body) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
        // HTTP/1.0 closes unless asked not to; 1.1 says so.
        assert!(
            head.starts_with("HTTP/1.0 200 ")
                || head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert_eq!(body, b"fast");
        assert!(closed(&mut stream).await);
    }
    // HTTP/1.0 asking for keep-alive gets it.
    let mut stream = connect_and_send(addr, b"GET /fast HTTP/1.0\r\nconnection: keep-alive\r\n\r\nHEAD /fast HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut stream, &mut pending).await.unwrap();
    assert!(
        head.to_ascii_lowercase().contains("connection: keep-alive"),
        "{head}"
    );
    // HEAD: the length the body would have, and no body.
    let mut rest = std::mem::take(&mut pending);
    let _ = tokio::time::timeout(Duration::from_millis(300), stream.read_to_end(&mut rest)).await;
    let text = String::from_utf8(rest).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 4\r\n"),
        "{text:?}"
    );
    assert!(
        text.ends_with("\r\n\r\n"),
        "a HEAD response has no body: {text:?}"
    );
}

#[tokio::test]
async fn a_streamed_response_goes_out_chunk_by_chunk() {
    let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let receive = std::sync::Arc::new(std::sync::Mutex::new(Some(receive)));
    let app = Router::new().route(
        "/stream",
        get(move || {
            let receive = receive.lock().unwrap().take().unwrap();
            async move {
                Body::from_stream(futures::stream::unfold(receive, |mut receive| async move {
                    receive.recv().await.map(|item| (item, receive))
                }))
            }
        }),
    );
    let (addr, _stop) = start(app, options(|_| {})).await;
    let mut stream = connect_and_send(addr, b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n").await;
    send.send(Ok(Bytes::from_static(b"data: one\n\n")))
        .await
        .unwrap();
    // The first event arrives while the handler still holds the second.
    let mut pending = Vec::new();
    while !String::from_utf8_lossy(&pending).contains("data: one") {
        fill(&mut stream, &mut pending)
            .await
            .expect("the first chunk, alone");
    }
    let text = String::from_utf8_lossy(&pending).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    send.send(Ok(Bytes::from_static(b"data: two\n\n")))
        .await
        .unwrap();
    drop(send);
    while !pending.ends_with(b"0\r\n\r\n") {
        fill(&mut stream, &mut pending)
            .await
            .expect("the rest and the last chunk");
    }
    assert!(String::from_utf8_lossy(&pending).contains("data: two"));
}

/// Signals when dropped (the handler's future was dropped).
struct DropSignal(Option<oneshot::Sender<()>>);
impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(signal) = self.0.take() {
            let _ = signal.send(());
        }
    }
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_handler() {
    let (dropped_tx, dropped) = oneshot::channel::<()>();
    let guard = std::sync::Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let app = Router::new().route(
        "/forever",
        get(move || {
            let signal = DropSignal(guard.lock().unwrap().take());
            async move {
                let _signal = signal;
                std::future::pending::<()>().await;
                "never"
            }
        }),
    );
    let (addr, _stop) = start(app, options(|_| {})).await;
    let stream = connect_and_send(addr, b"GET /forever HTTP/1.1\r\nhost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), dropped)
        .await
        .expect("the handler is dropped once its client leaves")
        .unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_read_timeout() {
    let options = options(|c| {
        c.head_timeout_ms = 300;
        c.idle_timeout_ms = 300;
    });
    let (addr, _stop) = start(echo_app(), options).await;
    let mut stream = connect_and_send(addr, b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (_, body) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(body, b"fast");
    let idle_since = Instant::now();
    assert!(closed(&mut stream).await);
    assert!(idle_since.elapsed() >= Duration::from_millis(250));
}
