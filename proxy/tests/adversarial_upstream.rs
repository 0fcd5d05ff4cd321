//! Misbehaving upstreams, each with the gateway's expected answer: bad
//! status lines and framing, stray bytes on a pooled connection, status 600,
//! endless 1xx, an oversized head, streams that stall, break or run to
//! 100 MB; then HTTP/2 over TLS against a TLS mock, and the egress proxy.
//! Run with a 3 s read timeout; deadlines are generous and polled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use futures::StreamExt;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_mock_upstream::{MockOptions, MockUpstream, DEFAULT_REPLY};
use tollgate_proxy::ProxyConfig;

const READ_TIMEOUT_MS: u64 = 3_000;

// ---------------------------------------------------------------------------
// A raw upstream: a TCP listener that writes the bytes a test chooses.

/// One step of a raw reply.
#[derive(Clone)]
enum Step {
    /// Shared bytes: a step repeated many times costs its size once.
    Write(bytes::Bytes),
    Sleep(Duration),
    /// Keep writing these bytes until the gateway hangs up.
    Repeat(Vec<u8>),
}

/// After the reply: keep reading requests, close, or hold the connection open.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    Next,
    Close,
    Stall,
}

/// A request as the raw upstream read it.
struct Seen {
    /// The head, lowercase.
    head: String,
    body: String,
}

type Script = Arc<dyn Fn(&Seen) -> (Vec<Step>, Then) + Send + Sync>;

struct RawUpstream {
    base_url: String,
    accepted: Arc<AtomicUsize>,
    /// Connections the gateway closed (seen on a read or a failed write).
    closed_by_gateway: Arc<AtomicUsize>,
}

async fn raw_upstream(
    script: impl Fn(&Seen) -> (Vec<Step>, Then) + Send + Sync + 'static,
) -> RawUpstream {
    let script: Script = Arc::new(script);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed_by_gateway = Arc::new(AtomicUsize::new(0));
    let (count, closed) = (accepted.clone(), closed_by_gateway.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer(socket, script.clone(), closed.clone()));
        }
    });
    RawUpstream {
        base_url,
        accepted,
        closed_by_gateway,
    }
}

async fn answer(mut socket: TcpStream, script: Script, closed: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        let Some(seen) = read_request(&mut socket, &mut buf).await else {
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let (steps, then) = script(&seen);
        for step in steps {
            let written = match step {
                Step::Write(bytes) => socket.write_all(&bytes).await,
                Step::Sleep(pause) => {
                    tokio::time::sleep(pause).await;
                    Ok(())
                }
                Step::Repeat(bytes) => loop {
                    if let Err(err) = socket.write_all(&bytes).await {
                        break Err(err);
                    }
                    tokio::task::yield_now().await;
                },
            };
            if written.is_err() {
                // Only the gateway hanging up makes a write fail here.
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        match then {
            Then::Next => {}
            Then::Close => return,
            Then::Stall => {
                tokio::time::sleep(Duration::from_secs(120)).await;
                return;
            }
        }
    }
}

/// Read one request (head and Content-Length body).
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 8192];
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
    let body = String::from_utf8_lossy(&buf[end..end + length]).into_owned();
    buf.drain(..end + length);
    Some(Seen { head, body })
}

fn write(text: impl Into<Vec<u8>>) -> Step {
    Step::Write(bytes::Bytes::from(text.into()))
}

/// A complete OpenAI chat answer saying `text`.
fn chat_answer(text: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    })
    .to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One chunk of a chunked body.
fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// An OpenAI stream event carrying `content`.
fn content_event(content: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                           transfer-encoding: chunked\r\n\r\n";

/// A gateway whose OpenAI provider is `base_url`, reads time out after 3 s.
async fn gateway_for(base_url: &str, adjust: impl FnOnce(&mut ProxyConfig)) -> TestGateway {
    let base_url = base_url.to_owned();
    start_with(move |c| {
        c.routing.read_timeout_ms = READ_TIMEOUT_MS;
        c.providers.get_mut("openai").unwrap().base_url = Some(base_url);
        adjust(c);
    })
    .await
}

/// The gateway answered 502 `upstream_failed`, naming no upstream address.
async fn assert_upstream_failed(response: reqwest::Response, case: &str) {
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 502, "{case}: {body}");
    assert_eq!(body["error"]["code"], "upstream_failed", "{case}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("127.0.0.1"), "{case}: {message}");
}

// ---------------------------------------------------------------------------
// Heads and framing.

/// Replies the gateway must treat as an upstream failure, by case name.
const BAD_REPLIES: &[(&str, &str)] = &[
    ("not http", "SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ("letters for a status", "HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n"),
    ("two-digit status", "HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n"),
    ("four-digit status", "HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n"),
    ("status 600", "HTTP/1.1 600 Weird\r\ncontent-length: 2\r\n\r\n{}"),
    ("status 999", "HTTP/1.1 999 Max\r\ncontent-length: 2\r\n\r\n{}"),
    ("unknown version", "HTTP/3.7 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
    ("space in a header name", "HTTP/1.1 200 OK\r\nbad header: x\r\ncontent-length: 2\r\n\r\n{}"),
    ("negative length", "HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\n{}"),
    (
        "conflicting lengths",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
    ),
    (
        "content-length with transfer-encoding",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ),
    ("head cut by the close", "HTTP/1.1 200 OK\r\ncontent-"),
    ("closed without a byte", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_status_lines_and_framing_are_upstream_failures() {
    // The request's prompt names the case to answer with.
    let upstream = raw_upstream(|seen| {
        let (_, reply) = BAD_REPLIES
            .iter()
            .find(|(case, _)| seen.body.contains(&format!("case: {case}.")))
            .unwrap();
        (vec![write(*reply)], Then::Close)
    })
    .await;
    let gw = gateway_for(&upstream.base_url, |_| {}).await;
    for (case, _) in BAD_REPLIES {
        let prompt = format!("case: {case}.");
        let response = gw.post_openai(chat("gpt-4o-mini", &prompt)).await;
        assert_upstream_failed(response, case).await;
    }
    // Every failure is metered as one (unbilled) request.
    let events = gw.wait_for_events(BAD_REPLIES.len()).await;
    assert_eq!(events.len(), BAD_REPLIES.len());
    assert!(events.iter().all(|e| e.status == 502), "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_600_fails_over_like_a_5xx() {
    let upstream = raw_upstream(|seen| {
        let reply = if seen.head.contains(&OPENAI_KEY.to_lowercase()) {
            b"HTTP/1.1 600 Weird\r\ncontent-length: 2\r\n\r\n{}".to_vec()
        } else {
            chat_answer("from the second key")
        };
        (vec![write(reply)], Then::Next)
    })
    .await;
    let gw = gateway_for(&upstream.base_url, |c| {
        set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2]);
    })
    .await;
    let response = gw.post_openai(chat("gpt-4o-mini", "hi")).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "from the second key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_interim_responses_are_an_upstream_failure() {
    let upstream = raw_upstream(|_| {
        let continues = "HTTP/1.1 100 Continue\r\n\r\n".repeat(10);
        (vec![Step::Repeat(continues.into_bytes())], Then::Close)
    })
    .await;
    let gw = gateway_for(&upstream.base_url, |_| {}).await;
    let response = gw.post_openai(chat("gpt-4o-mini", "hi")).await;
    // A failure (more than 10 interim responses), not the attempt timeout.
    assert_upstream_failed(response, "endless 100 Continue").await;
    // The gateway hung up on the upstream.
    assert!(
        eventually(Duration::from_secs(10), || {
            upstream.closed_by_gateway.load(Ordering::SeqCst) == 1
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_response_head_is_an_upstream_failure() {
    let upstream = raw_upstream(|_| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nx-padding: {}\r\ncontent-length: 2\r\n\r\n{{}}",
            "a".repeat(100 * 1024)
        );
        (vec![write(head)], Then::Next)
    })
    .await;
    let gw = gateway_for(&upstream.base_url, |_| {}).await;
    let response = gw.post_openai(chat("gpt-4o-mini", "hi")).await;
    assert_upstream_failed(response, "100 KB head").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_stray_bytes_on_a_pooled_connection_are_never_the_next_response() {
    let answered = AtomicUsize::new(0);
    let upstream = raw_upstream(move |_| {
        if answered.fetch_add(1, Ordering::SeqCst) > 0 {
            return (vec![write(chat_answer("second"))], Then::Next);
        }
        // A complete answer, then, once the connection is idle in the
        // gateway's pool, a whole unasked-for response.
        let steps = vec![
            write(chat_answer("first")),
            Step::Sleep(Duration::from_millis(200)),
            write(chat_answer("INJECTED")),
        ];
        (steps, Then::Next)
    })
    .await;
    let gw = gateway_for(&upstream.base_url, |_| {}).await;
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", "one")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "first");
    // The gateway notices the stray bytes and closes that connection...
    assert!(
        eventually(Duration::from_secs(10), || {
            upstream.closed_by_gateway.load(Ordering::SeqCst) == 1
        })
        .await,
        "the connection with stray bytes stayed open"
    );
    // ...so the next request gets its own answer on a new one.
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", "two")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "second");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// Streams.

/// Stream `steps` after a head and one content event, then `then`; the
/// client gets the first event, then an error event, and the request is
/// metered as a 502 stream error.
async fn stream_ends_with_an_error_event(steps: Vec<Step>, then: Then) {
    let upstream = raw_upstream(move |_| {
        let mut all = vec![write(STREAM_HEAD), write(chunk(&content_event("Hello")))];
        all.extend(steps.iter().cloned());
        (all, then)
    })
    .await;
    let gw = gateway_for(&upstream.base_url, |_| {}).await;
    let response = gw.post_openai(chat_stream("gpt-4o-mini", "hi")).await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let body = tokio::time::timeout(Duration::from_secs(60), response.text())
        .await
        .expect("the stream ends")
        .unwrap();
    assert_eq!(openai_stream_text(&body), "Hello", "{body}");
    let events = sse_events(&body);
    let (_, last) = events.last().unwrap();
    let error: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(error["error"]["code"], "upstream_stream_error", "{body}");
    assert!(!body.contains("[DONE]"), "{body}");
    let event = gw.event(&event_id).await;
    assert_eq!(event.status, 502);
    assert_eq!(event.error_kind.as_deref(), Some("upstream_stream_error"));
    assert!(event.streamed);
    assert!(event.tokens.output > 0, "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_after_its_first_event_ends_after_the_read_timeout() {
    stream_ends_with_an_error_event(vec![], Then::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_connection_closes_mid_way_ends_with_an_error_event() {
    let half_an_event = b"40\r\ndata: {\"choices\"".to_vec();
    stream_ends_with_an_error_event(vec![write(half_an_event)], Then::Close).await;
}

/// The process's resident memory in KiB (Linux), if it can be read.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_stream_is_relayed_and_metered() {
    const EVENT_TEXT: usize = 64 * 1024;
    const EVENTS: usize = 1_600; // 1,600 × 64 KiB ≈ 105 MB of text
    let upstream = raw_upstream(|_| {
        let word_run = "word ".repeat(EVENT_TEXT / 5);
        let event = bytes::Bytes::from(chunk(&content_event(&word_run)));
        let finish = serde_json::json!({
            "id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        });
        let usage = serde_json::json!({
            "id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 21_000_000, "total_tokens": 21_000_001},
        });
        let mut steps = vec![write(STREAM_HEAD)];
        steps.extend(std::iter::repeat_n(Step::Write(event), EVENTS));
        steps.push(write(chunk(&format!("data: {finish}\n\n"))));
        steps.push(write(chunk(&format!("data: {usage}\n\ndata: [DONE]\n\n"))));
        steps.push(write("0\r\n\r\n"));
        (steps, Then::Next)
    })
    .await;
    let gw = gateway_for(&upstream.base_url, |_| {}).await;
    let before = rss_kib();
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = rss_kib() {
                    peak.fetch_max(rss as usize, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let response = gw.post_openai(chat_stream("gpt-4o-mini", "hi")).await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let mut received = 0usize;
    let mut tail = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        received += piece.len();
        tail = piece.to_vec();
    }
    sampler.abort();
    assert!(received > 100_000_000, "only {received} bytes arrived");
    assert!(String::from_utf8_lossy(&tail).contains("[DONE]"));
    let event = gw.event(&event_id).await;
    assert_eq!(event.status, 200);
    assert_eq!(event.tokens.output, 21_000_000);
    assert!(!event.tokens_estimated);
    if let Some(before) = before {
        let peak = peak.load(Ordering::Relaxed) as u64;
        // One process holds the gateway, the raw upstream and the client.
        println!(
            "100 MB stream: test process RSS {} MiB before, {} MiB at peak (+{} MiB)",
            before / 1024,
            peak / 1024,
            peak.saturating_sub(before) / 1024
        );
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 over TLS, and the egress proxy.

/// A TLS mock (h2 and http/1.1 by ALPN) with a certificate for 127.0.0.1
/// from a fresh CA, and that CA's PEM file.
async fn tls_mock(dir: &std::path::Path) -> (MockUpstream, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join("test-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let options = MockOptions {
        // Streams overlap, so concurrent ones share the connection at once.
        chunk_delay: Duration::from_millis(20),
        ..MockOptions::default()
    };
    let mock = MockUpstream::start_tls(options, vec![leaf.der().clone()], key)
        .await
        .unwrap();
    (mock, ca_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_carries_concurrent_streams_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, ca_file) = tls_mock(dir.path()).await;
    let base_url = mock.base_url();
    assert!(base_url.starts_with("https://127.0.0.1:"), "{base_url}");
    let gw = gateway_for(&base_url, |c| c.upstream.ca_files = vec![ca_file]).await;
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", "warm up")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.requests()[0].version, "HTTP/2.0");

    let streams = (0..16).map(|i| {
        let gw = &gw;
        async move {
            let response = gw
                .post_openai(chat_stream("gpt-4o-mini", &format!("n{i}")))
                .await;
            assert_eq!(response.status(), 200);
            openai_stream_text(&response.text().await.unwrap())
        }
    });
    for text in futures::future::join_all(streams).await {
        assert_eq!(text, DEFAULT_REPLY);
    }
    let requests = mock.requests();
    assert_eq!(requests.len(), 17);
    assert!(requests.iter().all(|r| r.version == "HTTP/2.0"));
    assert_eq!(mock.connections(), 1, "every stream shared one connection");

    // Without the CA file the same upstream is refused (unknown issuer).
    let untrusting = gateway_for(&base_url, |_| {}).await;
    let response = untrusting.post_openai(chat("gpt-4o-mini", "hi")).await;
    assert_upstream_failed(response, "untrusted certificate").await;
}

/// An HTTP proxy: CONNECT tunnels and absolute-form requests, each
/// connection relayed to its target; it records each first request line.
async fn egress_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match client.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                seen.lock().push(line.clone());
                let target = line.split(' ').nth(1).unwrap_or_default();
                let connected = if line.starts_with("CONNECT ") {
                    let upstream = TcpStream::connect(target).await;
                    let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
                    if upstream.is_ok() && client.write_all(ok).await.is_err() {
                        return;
                    }
                    upstream
                } else {
                    // Absolute form: the request goes on as read.
                    let uri: http::Uri = target.parse().unwrap();
                    match TcpStream::connect(uri.authority().unwrap().as_str()).await {
                        Ok(mut upstream) => upstream.write_all(&buf).await.map(|()| upstream),
                        Err(err) => Err(err),
                    }
                };
                let Ok(mut upstream) = connected else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_go_through_the_proxy_in_a_connect_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, ca_file) = tls_mock(dir.path()).await;
    let (proxy_url, lines) = egress_proxy().await;
    let gw = gateway_for(&mock.base_url(), |c| {
        c.upstream.ca_files = vec![ca_file];
        c.upstream.proxy_url = Some(proxy_url);
    })
    .await;
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", "hi")).await).await;
    assert_eq!(status, 200, "{body}");
    let expected = format!("CONNECT {} HTTP/1.1", mock.addr());
    assert_eq!(lines.lock().clone(), vec![expected]);
    // TLS and HTTP/2 run end to end inside the tunnel.
    assert_eq!(mock.requests()[0].version, "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_upstreams_go_through_the_proxy_in_absolute_form() {
    let (proxy_url, lines) = egress_proxy().await;
    let gw = start_with(|c| c.upstream.proxy_url = Some(proxy_url)).await;
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", "hi")).await).await;
    assert_eq!(status, 200, "{body}");
    let expected = format!(
        "POST http://{}/v1/chat/completions HTTP/1.1",
        gw.mock.addr()
    );
    assert_eq!(lines.lock().clone(), vec![expected]);
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_hosts_bypass_the_proxy() {
    let (proxy_url, lines) = egress_proxy().await;
    let gw = start_with(|c| {
        c.upstream.proxy_url = Some(proxy_url);
        c.upstream.no_proxy = Some(vec!["127.0.0.1".to_owned()]);
    })
    .await;
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", "hi")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.mock.requests().len(), 1);
    assert!(lines.lock().is_empty(), "{:?}", lines.lock());
}
