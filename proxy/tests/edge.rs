//! The adversarial suite for the client side of the edge: raw bytes sent
//! to a running gateway, with the answer expected for each. Deadlines are
//! short here (2 s for heads, bodies and sends) so the suite stays quick.
//! Memory and stall cases assert behaviour (the process answers, with the
//! documented status) and print their figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/raw.rs"]
mod raw;

use common::{chat, chat_stream, metric_sum, start_with, TestGateway};
use raw::{closed, connect_and_send, fill, read_response};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_mock_upstream::Rule;
use tollgate_proxy::ProxyConfig;

/// Short deadlines, as the suite runs them.
fn short_deadlines(config: &mut ProxyConfig) {
    config.server.head_timeout_ms = 2_000;
    config.server.body_timeout_ms = 2_000;
    config.server.send_timeout_ms = 2_000;
    config.routing.read_timeout_ms = 3_000;
}

async fn gateway(adjust: impl FnOnce(&mut ProxyConfig)) -> TestGateway {
    start_with(|c| {
        short_deadlines(c);
        adjust(c);
    })
    .await
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `GET /healthz` answers "ok"; returns how long it took.
async fn health_latency(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let body = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("/healthz answers")
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");
    started.elapsed()
}

fn chat_head(token: &str, framing: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n{framing}\r\n"
    )
    .into_bytes()
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn limit_hits(gw: &TestGateway, limit: &str) -> f64 {
    let text = gw.gateway.metrics.render();
    metric_sum(&text, "tollgate_edge_limit_hits_total", &[("limit", limit)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_framing_faults_get_400_and_a_closed_connection() {
    let gw = gateway(|_| {}).await;
    let t = gw.token.clone();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CL and TE together",
            [
                chat_head(&t, "content-length: 5\r\ntransfer-encoding: chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "two different Content-Lengths",
            chat_head(&t, "content-length: 5\r\ncontent-length: 6\r\n"),
        ),
        (
            "a Content-Length list",
            chat_head(&t, "content-length: 5, 6\r\n"),
        ),
        (
            "a non-numeric Content-Length",
            chat_head(&t, "content-length: abc\r\n"),
        ),
        (
            "a negative Content-Length",
            chat_head(&t, "content-length: -1\r\n"),
        ),
        (
            "a signed Content-Length",
            chat_head(&t, "content-length: +5\r\n"),
        ),
        (
            "TE not ending in chunked",
            chat_head(&t, "transfer-encoding: chunked, gzip\r\n"),
        ),
        (
            "TE gzip alone",
            chat_head(&t, "transfer-encoding: gzip\r\n"),
        ),
        (
            "a chunk size with a sign",
            [
                chat_head(&t, "transfer-encoding: chunked\r\n"),
                b"+5\r\nhello\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "a chunk size with leading spaces",
            [
                chat_head(&t, "transfer-encoding: chunked\r\n"),
                b"  5\r\nhello\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "a chunk size that overflows",
            [
                chat_head(&t, "transfer-encoding: chunked\r\n"),
                b"fffffffffffffffffffff\r\nhello\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "a chunk size that is not hex",
            [
                chat_head(&t, "transfer-encoding: chunked\r\n"),
                b"zz\r\nhello\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "a bare CR in the head",
            b"GET /healthz HTTP/1.1\rhost: x\r\n\r\n".to_vec(),
        ),
        (
            "a bare CR in a header value",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: b\rc\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            b"POST /v1/chat/completions HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "a space before the colon",
            b"GET /healthz HTTP/1.1\r\nhost : x\r\n\r\n".to_vec(),
        ),
        (
            "an obsolete line folding",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in cases {
        let mut stream = connect_and_send(gw.addr, &request).await;
        let mut pending = Vec::new();
        let answer = read_response(&mut stream, &mut pending).await;
        let head = answer.map(|(head, _)| head).unwrap_or_default();
        assert_eq!(status_of(&head), 400, "{what}: {head:?}");
        assert!(closed(&mut stream).await, "{what}: the connection closes");
    }
    // Bare LF line endings are accepted (RFC 9112 §2.2 lets a recipient).
    let mut stream = connect_and_send(gw.addr, b"GET /healthz HTTP/1.1\nhost: x\n\n").await;
    let (head, body) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_after_a_bad_body_is_not_answered() {
    let gw = gateway(|_| {}).await;
    let mut request = chat_head(&gw.token, "transfer-encoding: chunked\r\n");
    request.extend_from_slice(b"zz\r\nhello\r\n");
    request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut stream = connect_and_send(gw.addr, &request).await;
    let mut pending = Vec::new();
    let (head, body) = read_response(&mut stream, &mut pending).await.unwrap();
    assert_eq!(status_of(&head), 400, "{head}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        read_response(&mut stream, &mut pending).await.is_none(),
        "what follows a broken body is never taken for a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_slow_and_silent_heads_are_refused() {
    let gw = gateway(|_| {}).await;
    let big = [
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ".as_slice(),
        &vec![b'a'; 40 * 1024],
        b"\r\n\r\n",
    ]
    .concat();
    let mut stream = connect_and_send(gw.addr, &big).await;
    let (head, _) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(status_of(&head), 431, "{head}");
    assert!(closed(&mut stream).await);

    let mut many = b"GET /healthz HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut stream = connect_and_send(gw.addr, &many).await;
    let (head, _) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(status_of(&head), 431, "too many header fields: {head}");

    // Half a head, then nothing; and nothing at all.
    let started = Instant::now();
    let mut slow = connect_and_send(gw.addr, b"GET /healthz HTTP/1.1\r\nhost:").await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(20)).await);
    let slow_closed = started.elapsed();
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    println!(
        "slow head closed after {} ms, silent connection after {} ms (head timeout 2000 ms)",
        slow_closed.as_millis(),
        started.elapsed().as_millis()
    );
    assert!(limit_hits(&gw, "head_timeout").await >= 1.0);
}

/// Whether the peer closed the connection (EOF or reset) within `within`;
/// whatever it sent first (a 408, say) is skipped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endless_and_declared_huge_bodies_are_refused() {
    let gw = gateway(|c| c.server.max_body_bytes = 64 * 1024).await;
    // A body trickled one byte at a time: 408 when the body deadline passes.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(&chat_head(&gw.token, "content-length: 100\r\n"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut pending = Vec::new();
    let head = loop {
        let _ = stream.write_all(b"{").await;
        match tokio::time::timeout(Duration::from_millis(500), fill(&mut stream, &mut pending))
            .await
        {
            Ok(_) if pending.windows(4).any(|w| w == b"\r\n\r\n") => {
                break String::from_utf8_lossy(&pending).to_string()
            }
            Ok(None) => panic!("closed without an answer"),
            _ => assert!(started.elapsed() < Duration::from_secs(20), "no answer"),
        }
    };
    assert_eq!(status_of(&head), 408, "{head}");
    println!(
        "trickled body refused after {} ms",
        started.elapsed().as_millis()
    );

    // An endless chunked body: 413 once it passes the limit.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(&chat_head(&gw.token, "transfer-encoding: chunked\r\n"))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let feeder = tokio::spawn(async move {
        let chunk = [b"4000\r\n".as_slice(), &[b'x'; 0x4000], b"\r\n"].concat();
        while writer.write_all(&chunk).await.is_ok() {}
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert_eq!(status_of(&head), 413, "{head}");
    assert!(head.contains("request_too_large"), "OpenAI's shape: {head}");
    feeder.abort();

    // Declared over the limit: 413 before a byte of it is sent.
    let mut stream = connect_and_send(
        gw.addr,
        &chat_head(&gw.token, "content-length: 10485760\r\n"),
    )
    .await;
    let (head, _) = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(status_of(&head), 413, "{head}");
    assert!(limit_hits(&gw, "body_size").await >= 2.0);
    assert!(limit_hits(&gw, "body_timeout").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_allocate_nothing_and_the_gateway_keeps_answering() {
    // The attack that used to reserve 10 MiB per connection: 300 heads
    // declaring the default limit, one body byte each.
    let gw = gateway(|_| {}).await;
    let before = rss_kib();
    let mut held = Vec::new();
    for i in 0..300 {
        let head = if i % 2 == 0 {
            chat_head(&gw.token, "content-length: 10485760\r\n")
        } else {
            chat_head("tgk_not_a_key", "content-length: 10485760\r\n")
        };
        let mut stream = connect_and_send(gw.addr, &head).await;
        stream.write_all(b"{").await.unwrap();
        held.push(stream);
    }
    let health = health_latency(gw.addr).await;
    let during = rss_kib();
    let mut statuses = std::collections::BTreeMap::new();
    for stream in &mut held {
        let head = read_response(stream, &mut Vec::new())
            .await
            .map(|(head, _)| head)
            .unwrap_or_default();
        *statuses.entry(status_of(&head)).or_insert(0) += 1;
    }
    println!(
        "300 declared 10 MiB bodies: RSS {} MiB -> {} MiB (+{} KiB); /healthz in {} ms; answers {statuses:?}",
        before / 1024,
        during / 1024,
        during.saturating_sub(before),
        health.as_millis()
    );
    assert_eq!(
        statuses.get(&401),
        Some(&150),
        "no key: 401 before the body"
    );
    assert_eq!(
        statuses.get(&408),
        Some(&150),
        "keyed: 408 at the body deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_sent_with_a_bad_key_are_not_buffered_and_get_their_401() {
    let gw = gateway(|_| {}).await;
    let before = rss_kib();
    // 100 clients without a valid key, each sending ~10 MiB.
    let mut clients = Vec::new();
    for _ in 0..100 {
        let addr = gw.addr;
        clients.push(tokio::spawn(async move {
            let stream = connect_and_send(
                addr,
                &chat_head("tgk_not_a_key", "content-length: 10485759\r\n"),
            )
            .await;
            let (mut reader, mut writer) = stream.into_split();
            let writing = tokio::spawn(async move {
                let block = vec![b'a'; 256 * 1024];
                for _ in 0..40 {
                    if writer.write_all(&block).await.is_err() {
                        break;
                    }
                }
            });
            let mut answer = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(20), reader.read(&mut answer))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            writing.abort();
            status_of(&String::from_utf8_lossy(&answer[..n]))
        }));
    }
    let health = health_latency(gw.addr).await;
    let during = rss_kib();
    let mut unauthorized = 0;
    for client in clients {
        if client.await.unwrap() == 401 {
            unauthorized += 1;
        }
    }
    println!(
        "100 unauthenticated 10 MiB bodies: RSS {} MiB -> {} MiB; /healthz in {} ms",
        before / 1024,
        during / 1024,
        health.as_millis()
    );
    assert_eq!(unauthorized, 100, "every client read its 401");

    // An SDK that writes its whole 5 MiB body before reading gets its
    // authentication error, not a connection reset (lingering close).
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="tgk_wrong", max_retries=0)
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a" * 5_000_000}])
    print("no error")
except openai.AuthenticationError:
    print("authentication error")
except openai.APIConnectionError as err:
    print("connection error", err)
"#;
    let base = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(base)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        "authentication error",
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_one_503_and_are_closed() {
    let gw = gateway(|c| c.server.max_connections = 8).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut stream =
            connect_and_send(gw.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        read_response(&mut stream, &mut Vec::new()).await.unwrap();
        open.push(stream);
    }
    let mut extra = connect_and_send(gw.addr, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (head, body) = read_response(&mut extra, &mut Vec::new()).await.unwrap();
    assert_eq!(status_of(&head), 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(closed(&mut extra).await);
    drop(open);
    // Slots free as the connections close.
    let mut answered = false;
    for _ in 0..50 {
        let mut stream =
            connect_and_send(gw.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        if let Some((head, _)) = read_response(&mut stream, &mut Vec::new()).await {
            if status_of(&head) == 200 {
                answered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "served again once connections closed");
    assert!(limit_hits(&gw, "connections").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_cap_get_503_in_the_clients_api_shape() {
    let gw = gateway(|c| c.server.max_requests = 4).await;
    // Four requests in flight: heads sent, bodies still to come.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            connect_and_send(gw.addr, &chat_head(&gw.token, "content-length: 100\r\n")).await,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = reqwest::Client::new()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.token)
        .header("anthropic-version", "2023-06-01")
        .json(&common::messages("claude-sonnet-4-5", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(common::header(&response, "retry-after"), "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic's shape: {body}");
    assert_eq!(body["error"]["type"], "overloaded_error");
    drop(held);
    assert!(limit_hits(&gw, "requests").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_body_bytes_past_the_cap_get_503() {
    let gw = gateway(|c| c.server.max_buffered_body_bytes = 64 * 1024).await;
    let mut first =
        connect_and_send(gw.addr, &chat_head(&gw.token, "content-length: 60000\r\n")).await;
    first.write_all(&[b' '; 50_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second =
        connect_and_send(gw.addr, &chat_head(&gw.token, "content-length: 60000\r\n")).await;
    second.write_all(&[b' '; 60_000]).await.unwrap();
    let (head, body) = read_response(&mut second, &mut Vec::new()).await.unwrap();
    assert_eq!(status_of(&head), 503, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("buffered request bytes"));
    // The first, finished, is read whole (and refused as the JSON it is not).
    first.write_all(&[b' '; 10_000]).await.unwrap();
    let (head, _) = read_response(&mut first, &mut Vec::new()).await.unwrap();
    assert_eq!(status_of(&head), 400, "{head}");
    assert!(limit_hits(&gw, "buffered_body_bytes").await >= 1.0);
    let text = gw.metrics_text().await;
    assert_eq!(
        metric_sum(&text, "tollgate_edge_buffered_body_bytes", &[]),
        0.0
    );
}

// ---- HTTP/2, cleartext with prior knowledge and over TLS ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_carries_both_apis() {
    let gw = gateway(|_| {}).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.token)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let streamed = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.token)
        .json(&chat_stream("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert!(streamed.text().await.unwrap().contains("[DONE]"));
    let unauthorized = client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "tgk_nope")
        .body(vec![b'a'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(gw.wait_for_events(2).await.len(), 2);
}

fn self_signed(dir: &std::path::Path) -> (tollgate_proxy::config::TlsConfig, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    ));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert_pem = params.self_signed(&key).unwrap().pem();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (
        tollgate_proxy::config::TlsConfig {
            cert_file,
            key_file,
        },
        cert_pem.into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_http2_and_http1_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert_pem) = self_signed(dir.path());
    let gw = gateway(|c| c.server.tls = Some(tls)).await;
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
    for (http1_only, version) in [
        (false, http::Version::HTTP_2),
        (true, http::Version::HTTP_11),
    ] {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert_pem).unwrap())
            .resolve("localhost", gw.addr);
        if http1_only {
            builder = builder.http1_only();
        }
        let response = builder
            .build()
            .unwrap()
            .post(&url)
            .bearer_auth(&gw.token)
            .json(&chat("gpt-4o-mini", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
    }
    // Plain text on the TLS port is a failed handshake, not a crash.
    let mut plain = connect_and_send(gw.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(closed_within(&mut plain, Duration::from_secs(10)).await);
    // Counted just after the failed handshake drops the socket: polled.
    let counted = Instant::now() + Duration::from_secs(10);
    while limit_hits(&gw, "tls_handshake").await < 1.0 {
        assert!(Instant::now() < counted, "the failed handshake is counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The official OpenAI SDK over httpx with `http2=True` speaks HTTP/2 only
/// over TLS: with the gateway's own TLS it needs no front proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_over_httpx_http2_uses_the_gateways_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = self_signed(dir.path());
    let ca = tls.cert_file.clone();
    let gw = gateway(|c| c.server.tls = Some(tls)).await;
    let script = r#"
import sys, httpx, openai
http = httpx.Client(http2=True, verify=sys.argv[2])
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[3], http_client=http, max_retries=0)
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print(raw.http_response.http_version, bool(raw.parse().choices[0].message.content))
"#;
    let base = format!("https://127.0.0.1:{}/v1", gw.addr.port());
    let token = gw.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(base)
            .arg(ca)
            .arg(token)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        "HTTP/2 True",
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.wait_for_events(1).await.len(), 1);
}

/// Just enough HTTP/2 framing to misbehave on purpose.
struct RawH2 {
    stream: TcpStream,
    read: Vec<u8>,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK string literal without Huffman coding.
fn hpack_string(out: &mut Vec<u8>, text: &[u8]) {
    hpack_int(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A literal header field (not indexed) with a name from the static table.
fn hpack_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    hpack_int(out, 0, 4, index);
    hpack_string(out, value);
}

/// `POST /v1/chat/completions` with the key and a body still to come.
fn post_chat_block(token: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    hpack_indexed_name(&mut block, 4, b"/v1/chat/completions"); // :path
    hpack_indexed_name(&mut block, 1, b"localhost"); // :authority
    hpack_indexed_name(&mut block, 23, format!("Bearer {token}").as_bytes()); // authorization
    hpack_indexed_name(&mut block, 28, b"100"); // content-length
    block
}

fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    hpack_indexed_name(&mut block, 4, path.as_bytes());
    hpack_indexed_name(&mut block, 1, b"localhost");
    block
}

impl RawH2 {
    /// Preface and SETTINGS both ways, ours carrying `settings`.
    async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        stream.write_all(&hello).await.unwrap();
        let mut h2 = RawH2 {
            stream,
            read: Vec::new(),
        };
        loop {
            let (kind, flags, _, _) = h2.next(Duration::from_secs(5)).await.expect("settings");
            if kind == SETTINGS && flags & 1 == 0 {
                break;
            }
        }
        h2.send(&frame(SETTINGS, 1, 0, &[])).await;
        h2
    }

    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next frame, or `None` at EOF, an error or after `within`.
    async fn next(&mut self, within: Duration) -> Option<(u8, u8, u32, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.read.len() >= 9 {
                let len = (usize::from(self.read[0]) << 16)
                    | (usize::from(self.read[1]) << 8)
                    | usize::from(self.read[2]);
                if self.read.len() >= 9 + len {
                    let head: Vec<u8> = self.read.drain(..9).collect();
                    let payload = self.read.drain(..len).collect();
                    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    return Some((head[3], head[4], id, payload));
                }
            }
            let mut buf = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.read.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    }
}

fn error_code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_the_per_connection_cap_are_refused() {
    let gw = gateway(|_| {}).await;
    let mut h2 = RawH2::connect(gw.addr, &[]).await;
    let block = post_chat_block(&gw.token);
    let mut burst = Vec::new();
    for i in 0..200u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &block));
    }
    h2.send(&burst).await;
    let (mut refused, mut goaway) = (0, None);
    while let Some((kind, _, _, payload)) = h2.next(Duration::from_secs(1)).await {
        match kind {
            RST_STREAM if error_code(&payload, 0) == 0x7 => refused += 1,
            GOAWAY => goaway = Some(error_code(&payload, 4)),
            _ => {}
        }
    }
    println!("200 streams opened at once: {refused} refused, GOAWAY {goaway:?}");
    assert!(refused >= 72 || goaway.is_some(), "128 streams at most");
    health_latency(gw.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_stream_resets_are_cut_off() {
    let gw = gateway(|_| {}).await;
    let mut h2 = RawH2::connect(gw.addr, &[]).await;
    let block = get_block("/v1/models");
    let started = Instant::now();
    let mut sent = 0u32;
    let mut goaway = None;
    'attack: for round in 0..50u32 {
        let mut burst = Vec::new();
        for i in 0..200u32 {
            let id = 1 + 2 * (round * 200 + i);
            burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if !h2.send(&burst).await {
            break;
        }
        sent += 200;
        while let Some((kind, _, _, payload)) = h2.next(Duration::from_millis(1)).await {
            if kind == GOAWAY {
                goaway = Some(error_code(&payload, 4));
                break 'attack;
            }
        }
    }
    while goaway.is_none() {
        match h2.next(Duration::from_secs(2)).await {
            Some((GOAWAY, _, _, payload)) => goaway = Some(error_code(&payload, 4)),
            Some(_) => {}
            None => break,
        }
    }
    let health = health_latency(gw.addr).await;
    println!(
        "rapid reset: {sent} streams opened and reset in {} ms, GOAWAY {goaway:?}, /healthz in {} ms",
        started.elapsed().as_millis(),
        health.as_millis()
    );
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let gw = gateway(|_| {}).await;
    let before = rss_kib();
    let mut h2 = RawH2::connect(gw.addr, &[]).await;
    h2.send(&frame(HEADERS, 0, 1, &get_block("/healthz"))).await;
    let mut field = Vec::new();
    hpack_int(&mut field, 0, 4, 0);
    hpack_string(&mut field, b"x-flood");
    hpack_string(&mut field, &vec![b'a'; 16_000]);
    let continuation = frame(CONTINUATION, 0, 1, &field);
    let (mut reader, mut writer) = h2.stream.into_split();
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 64 << 20 && writer.write_all(&continuation).await.is_ok() {
            sent += continuation.len();
        }
        sent
    });
    let mut buf = vec![0u8; 64 * 1024];
    let cut = loop {
        match tokio::time::timeout(Duration::from_secs(20), reader.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            // A GOAWAY first, then the close.
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    let sent = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    println!(
        "CONTINUATION flood: connection closed after {} KiB sent; RSS {} MiB -> {} MiB",
        sent / 1024,
        before / 1024,
        rss_kib() / 1024
    );
    assert!(cut, "the flooding connection is closed");
    assert!(sent < 64 << 20, "long before the flood ends");
    health_latency(gw.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_its_window_is_closed_after_the_send_timeout() {
    let gw = gateway(|_| {}).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no response data may be sent.
    let mut h2 = RawH2::connect(gw.addr, &[(0x4, 0)]).await;
    let started = Instant::now();
    h2.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/healthz"),
    ))
    .await;
    let mut got_headers = false;
    loop {
        match h2.next(Duration::from_secs(20)).await {
            Some((HEADERS, _, 1, _)) => got_headers = true,
            Some((DATA, _, _, payload)) => {
                assert!(payload.is_empty(), "no data past a zero window")
            }
            Some(_) => {}
            None => break,
        }
    }
    let after = started.elapsed();
    println!(
        "zero-window client closed after {} ms (send timeout 2000 ms)",
        after.as_millis()
    );
    assert!(got_headers, "the response head went out");
    assert!(
        after < Duration::from_secs(20),
        "closed by the send watchdog"
    );
    assert!(limit_hits(&gw, "send_timeout").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_streams_after_the_grace_and_bills_them() {
    let mut gw = gateway(|c| c.server.shutdown_grace_ms = 1_000).await;
    gw.mock.add_rule(
        Rule::any()
            .reply_text("word ".repeat(400))
            .chunk_delay(Duration::from_millis(100)),
    );
    let response = gw.post_openai(chat_stream("gpt-4o-mini", "hi")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    use futures::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let asked = Instant::now();
    assert!(
        gw.stop_serving(Duration::from_secs(20)).await,
        "serve returns once the grace is over"
    );
    println!(
        "shutdown with a stream in flight took {} ms (grace 1000 ms)",
        asked.elapsed().as_millis()
    );
    // The stream was cut: the rest never arrives whole.
    let mut rest = Vec::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await
    {
        rest.extend_from_slice(&chunk);
    }
    assert!(!String::from_utf8_lossy(&rest).contains("[DONE]"));
    let events = gw.wait_for_events(1).await;
    assert_eq!(events.len(), 1, "the cut stream is billed");
    assert!(events[0].client_disconnected);
    assert!(events[0].tokens.output > 0, "for what was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_keeps_answering_while_streams_are_open() {
    let gw = gateway(|_| {}).await;
    gw.mock.add_rule(
        Rule::any()
            .reply_text("word ".repeat(50))
            .chunk_delay(Duration::from_millis(50)),
    );
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(gw.post_openai(chat_stream("gpt-4o-mini", "hi")).await);
    }
    let health = health_latency(gw.addr).await;
    println!("/healthz with 50 open streams: {} ms", health.as_millis());
    drop(streams);
}
