//! The load generator: closed-loop workers, one persistent HTTP/1.1
//! connection each (as SDK connection pools do), or over HTTP/2 (cleartext,
//! prior knowledge) every worker's requests as concurrent streams on one
//! shared connection (as an HTTP/2 client multiplexes); TCP_NODELAY on every
//! socket, hyper's low-level client so the generator itself stays cheap.

use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The wire protocol the load generator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (no upgrade, no TLS).
    H2,
}

/// Where requests go and how they authenticate.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: &'static str,
    pub authorization: HeaderValue,
    /// Sent with every request (a peer gateway's routing headers).
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub proto: Proto,
    /// A streamed answer counts as done only if its last server-sent event
    /// is this one (e.g. `response.completed`); else it is a failure.
    pub final_event: Option<&'static str>,
}

impl Target {
    pub fn request(&self, host: &HeaderValue) -> anyhow::Result<Request<Full<Bytes>>> {
        let builder = match self.proto {
            Proto::Http1 => Request::post(self.path).header(HOST, host.clone()),
            // HTTP/2 carries the authority in the URI (`:authority`), not `Host`.
            Proto::H2 => Request::post(format!("http://{}{}", self.addr, self.path)),
        };
        let mut builder = builder
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, self.authorization.clone());
        for (name, value) in &self.extra_headers {
            builder = builder.header(name, value);
        }
        Ok(builder.body(Full::new(self.body.clone()))?)
    }

    pub fn host(&self) -> anyhow::Result<HeaderValue> {
        Ok(HeaderValue::from_str(&self.addr.to_string())?)
    }
}

/// A persistent connection's request handle. An HTTP/2 one can be shared
/// (`share`): clones send concurrent streams on the same connection.
pub enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Another handle on the same connection (HTTP/2 only).
    fn share(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(request).await,
            Sender::H2(s) => s.send_request(request).await,
        }
    }
}

/// A persistent connection; its driver task ends when every sender is dropped.
pub async fn connect(addr: SocketAddr, proto: Proto) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    match proto {
        Proto::Http1 => {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(sender))
        }
        Proto::H2 => {
            // Sends the preface only; a server that does not speak HTTP/2
            // shows up as an error on the first request.
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(sender))
        }
    }
}

/// How much of a response body `exchange` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Read and count it only.
    Nothing,
    /// The last frames, at least `TAIL_BYTES` of them (refcounted, not copied
    /// until the end): enough for a stream's final event.
    Tail,
    All,
}

/// What `Keep::Tail` keeps at least (a whole `response.completed` event).
const TAIL_BYTES: usize = 16 * 1024;

/// One request/response exchange, body read to the end.
pub struct Exchange {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    /// Send → last body byte.
    pub total: Duration,
    /// Send → first non-empty body frame (response headers included).
    pub ttfb: Duration,
    /// The body, its tail or nothing, as `Keep` said.
    pub body: Bytes,
}

/// Send one request on `sender` and read the whole body, keeping what `keep` says.
pub async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    keep: Keep,
) -> anyhow::Result<Exchange> {
    sender.ready().await?;
    let t0 = Instant::now();
    let response = sender.send(request).await?;
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    let mut ttfb = None;
    let mut kept = Vec::new();
    let mut tail: VecDeque<Bytes> = VecDeque::new();
    let mut tail_len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if ttfb.is_none() {
            ttfb = Some(t0.elapsed());
        }
        match keep {
            Keep::Nothing => {}
            Keep::All => kept.extend_from_slice(&data),
            Keep::Tail => {
                tail_len += data.len();
                tail.push_back(data);
                while tail
                    .front()
                    .is_some_and(|f| tail_len - f.len() >= TAIL_BYTES)
                {
                    tail_len -= tail.pop_front().map_or(0, |f| f.len());
                }
            }
        }
    }
    let total = t0.elapsed();
    let body = match (keep, tail.len()) {
        (Keep::Tail, 1) => tail.pop_front().unwrap_or_default(),
        (Keep::Tail, _) => Bytes::from(tail.into_iter().flatten().collect::<Vec<u8>>()),
        _ => Bytes::from(kept),
    };
    Ok(Exchange {
        status,
        headers: parts.headers,
        total,
        ttfb: ttfb.unwrap_or(total),
        body,
    })
}

/// The last server-sent event of a body (or of its tail): its `event:` name,
/// if it has one, and its `data:` text.
pub fn last_sse_event(body: &[u8]) -> Option<(Option<&str>, &str)> {
    let text = std::str::from_utf8(body).ok()?;
    let text = text.trim_end_matches(['\n', '\r']);
    // Events end with a blank line: "\n\n", or "\r\n\r\n" from some servers.
    let start = [text.rfind("\n\n"), text.rfind("\n\r\n")]
        .into_iter()
        .flatten()
        .max()
        .map_or(0, |i| i + 1);
    let (mut name, mut data) = (None, None);
    for line in text[start..].lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim());
        } else if let Some(v) = line.strip_prefix("data:") {
            data = Some(v.trim());
        }
    }
    Some((name, data?))
}

/// Why a streamed body does not end with event `want` (its `event:` name,
/// when given, and its data's `"type"`), if it does not.
pub fn check_final_event(body: &[u8], want: &str) -> Option<String> {
    let ok = last_sse_event(body).is_some_and(|(name, data)| {
        name.is_none_or(|n| n == want)
            && (data.contains(&format!("\"type\":\"{want}\""))
                || data.contains(&format!("\"type\": \"{want}\"")))
    });
    if ok {
        return None;
    }
    let end = String::from_utf8_lossy(&body[body.len().saturating_sub(200)..]).into_owned();
    Some(format!(
        "the stream did not end with a `{want}` event; it ended with: {:?}",
        end
    ))
}

/// One request on a fresh connection, body kept (sanity checks); bounded
/// in time, since a server that does not speak the protocol may say nothing.
pub async fn probe(target: &Target) -> anyhow::Result<Exchange> {
    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, async {
        let mut sender = connect(target.addr, target.proto).await?;
        exchange(&mut sender, target.request(&target.host()?)?, Keep::All).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))?
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// Full-response latency of each measured request, nanoseconds.
    pub latencies: Vec<u64>,
    /// Time to first body byte of each measured request, nanoseconds.
    pub ttfbs: Vec<u64>,
    /// Requests that got a non-2xx answer or failed on the wire (measured window).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Every request sent, warm-up included (to check against usage events).
    pub sent: u64,
    /// Streams (warm-up included) that did not end with the target's
    /// `final_event`; also counted in `errors` when measured.
    pub bad_streams: u64,
    pub first_bad_stream: Option<String>,
    /// From the end of warm-up to the last measured response.
    pub elapsed: Duration,
}

impl LoadResult {
    /// Pool another run's samples and counts into this one.
    pub fn merge(&mut self, other: LoadResult) {
        self.latencies.extend(other.latencies);
        self.ttfbs.extend(other.ttfbs);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.sent += other.sent;
        self.bad_streams += other.bad_streams;
        if self.first_bad_stream.is_none() {
            self.first_bad_stream = other.first_bad_stream;
        }
        self.elapsed += other.elapsed;
    }

    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.latencies.len() as f64 / secs
        } else {
            0.0
        }
    }
}

struct WorkerResult {
    latencies: Vec<u64>,
    ttfbs: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    sent: u64,
    bad_streams: u64,
    first_bad_stream: Option<String>,
    last_done: Instant,
}

/// `concurrency` closed-loop workers, each on its own persistent connection
/// over HTTP/1.1, or all sharing one connection over HTTP/2 (connected
/// before the clock starts). Requests started during
/// `warmup` are not measured; no request starts after `warmup + duration`.
pub async fn closed_loop(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let host = target.host()?;
    let mut senders = Vec::with_capacity(concurrency);
    match target.proto {
        Proto::Http1 => {
            for _ in 0..concurrency {
                senders.push(connect(target.addr, target.proto).await?);
            }
        }
        Proto::H2 => {
            let shared = connect(target.addr, target.proto).await?;
            for _ in 0..concurrency {
                senders.push(
                    shared
                        .share()
                        .ok_or_else(|| anyhow::anyhow!("not an HTTP/2 connection"))?,
                );
            }
        }
    }
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for sender in senders {
        let target = target.clone();
        let host = host.clone();
        let expected = (duration.as_secs_f64() * 50_000.0 / concurrency as f64) as usize;
        tasks.push(tokio::spawn(async move {
            worker(sender, target, host, warm_end, end, expected.min(1 << 22)).await
        }));
    }
    let mut result = LoadResult::default();
    let mut last_done = warm_end;
    for task in tasks {
        let w = task.await?;
        result.latencies.extend(w.latencies);
        result.ttfbs.extend(w.ttfbs);
        result.errors += w.errors;
        result.sent += w.sent;
        result.bad_streams += w.bad_streams;
        if result.first_bad_stream.is_none() {
            result.first_bad_stream = w.first_bad_stream;
        }
        if result.first_error.is_none() {
            result.first_error = w.first_error;
        }
        last_done = last_done.max(w.last_done);
    }
    result.elapsed = last_done.saturating_duration_since(warm_end);
    Ok(result)
}

async fn worker(
    mut sender: Sender,
    target: Target,
    host: HeaderValue,
    warm_end: Instant,
    end: Instant,
    capacity: usize,
) -> WorkerResult {
    let mut out = WorkerResult {
        latencies: Vec::with_capacity(capacity),
        ttfbs: Vec::with_capacity(capacity),
        errors: 0,
        first_error: None,
        sent: 0,
        bad_streams: 0,
        first_bad_stream: None,
        last_done: warm_end,
    };
    let keep = if target.final_event.is_some() {
        Keep::Tail
    } else {
        Keep::Nothing
    };
    let mut reconnects = 0;
    loop {
        let issued = Instant::now();
        if issued >= end {
            break;
        }
        let measured = issued >= warm_end;
        let outcome = match target.request(&host) {
            Ok(request) => {
                out.sent += 1;
                exchange(&mut sender, request, keep).await
            }
            Err(err) => Err(err),
        };
        // A streamed answer must end with the expected event to count as done.
        let bad_end = match (&outcome, target.final_event) {
            (Ok(ex), Some(want)) if ex.status.is_success() => check_final_event(&ex.body, want),
            _ => None,
        };
        let failure = match (outcome, bad_end) {
            (Ok(_), Some(why)) => {
                out.bad_streams += 1;
                out.first_bad_stream.get_or_insert_with(|| why.clone());
                Some((why, false))
            }
            (Ok(ex), None) if ex.status.is_success() => {
                if measured {
                    out.latencies.push(ex.total.as_nanos() as u64);
                    out.ttfbs.push(ex.ttfb.as_nanos() as u64);
                    out.last_done = Instant::now();
                }
                None
            }
            (Ok(ex), None) => Some((format!("HTTP {}", ex.status), false)),
            (Err(err), _) => Some((format!("{err:#}"), true)),
        };
        if let Some((why, broken)) = failure {
            if measured {
                out.errors += 1;
            }
            out.first_error.get_or_insert(why);
            if broken {
                // The connection is unusable: reconnect, a bounded number of times.
                reconnects += 1;
                // (Over HTTP/2 this worker then has a connection of its own.)
                match connect(target.addr, target.proto).await {
                    Ok(s) if reconnects <= 100 => sender = s,
                    _ => break,
                }
            }
        }
    }
    out
}

/// Streams held open at once, for the memory measurement.
pub struct OpenStreams {
    stop: watch::Sender<bool>,
    opened: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Option<String>>>,
}

impl OpenStreams {
    /// Opens `n` streaming requests, each on its own connection, and keeps
    /// reading them (so nothing backs up) until `close`.
    pub async fn open(target: &Target, n: usize) -> anyhow::Result<OpenStreams> {
        let host = target.host()?;
        let (stop, stop_rx) = watch::channel(false);
        let opened = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let request = target.request(&host)?;
            let (addr, proto) = (target.addr, target.proto);
            let opened = opened.clone();
            let failed = failed.clone();
            let mut stop_rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let result = hold_stream(addr, proto, request, &opened, &mut stop_rx).await;
                match result {
                    Ok(()) => None,
                    Err(err) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        Some(format!("{err:#}"))
                    }
                }
            }));
            // Let the accept queue drain: connect in small batches.
            if i % 64 == 63 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(OpenStreams {
            stop,
            opened,
            failed,
            tasks,
        })
    }

    /// Wait (bounded) until every stream has delivered its first byte.
    pub async fn wait_all_open(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let opened = self.opened.load(Ordering::Relaxed);
            let failed = self.failed.load(Ordering::Relaxed);
            if opened >= n {
                return Ok(());
            }
            if failed > 0 {
                bail!("{failed} of {n} streams failed while opening ({opened} open)");
            }
            if Instant::now() > deadline {
                bail!("only {opened} of {n} streams open after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Streams still open (first byte seen, not ended).
    pub fn open_now(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// Drop every stream (client disconnect) and wait for the tasks.
    pub async fn close(self) -> (usize, Option<String>) {
        let _ = self.stop.send(true);
        let mut failures = 0;
        let mut first = None;
        for task in self.tasks {
            if let Ok(Some(why)) = task.await {
                failures += 1;
                first.get_or_insert(why);
            }
        }
        (failures, first)
    }
}

async fn hold_stream(
    addr: SocketAddr,
    proto: Proto,
    request: Request<Full<Bytes>>,
    opened: &AtomicUsize,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut sender = connect(addr, proto).await?;
    sender.ready().await?;
    let response = sender.send(request).await?;
    if !response.status().is_success() {
        bail!("HTTP {}", response.status());
    }
    let mut body = response.into_body();
    let mut counted = false;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            frame = body.frame() => match frame {
                Some(Ok(f)) => {
                    if !counted && f.data_ref().is_some_and(|d| !d.is_empty()) {
                        counted = true;
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Err(err)) => return Err(err.into()),
                None => bail!("stream ended before the measurement was over"),
            },
        }
    }
    // Dropping body and sender closes the connection: a client disconnect.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_event_of_a_stream() {
        let ok = b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
                   event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n";
        assert_eq!(
            last_sse_event(ok),
            Some((
                Some("response.completed"),
                "{\"type\":\"response.completed\",\"response\":{}}"
            ))
        );
        assert_eq!(check_final_event(ok, "response.completed"), None);
        let crlf = b"event: a\r\ndata: {}\r\n\r\nevent: response.completed\r\ndata: {\"type\": \"response.completed\"}\r\n\r\n";
        assert_eq!(check_final_event(crlf, "response.completed"), None);
        // Data alone (no event line) is judged by its type.
        assert_eq!(
            check_final_event(
                b"data: {\"type\":\"response.completed\"}\n\n",
                "response.completed"
            ),
            None
        );
        // Cut after a delta, a failed response, an empty body, garbage.
        let cut = b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
                    event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\"}\n\n";
        for bad in [
            &cut[..],
            b"event: response.failed\ndata: {\"type\":\"response.failed\"}\n\n",
            b"",
            b"event: response.completed\ndata: {this is not json\n\n",
        ] {
            let why = check_final_event(bad, "response.completed");
            assert!(why.is_some_and(|w| w.contains("did not end with")));
        }
        // An event line naming another event with matching data does not pass.
        assert!(check_final_event(
            b"event: response.failed\ndata: {\"type\":\"response.completed\"}\n\n",
            "response.completed"
        )
        .is_some());
    }
}
