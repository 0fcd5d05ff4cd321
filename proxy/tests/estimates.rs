//! Local token estimates under load: they run off the runtime's workers, so
//! the gateway keeps answering while they run, and what a request keeps for
//! one is bounded whatever the length of its stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::time::{Duration, Instant};
use tollgate_mock_upstream::{MockUpstream, Rule};
use tollgate_proxy::{estimate, tokenize};

/// The estimate threads are the process's, and these tests watch them (and
/// its RSS): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The mock on a runtime of its own: its work on huge bodies (debug
/// builds parse and count them slowly) must not be what delays the
/// gateway's answers in these tests.
fn mock_on_its_own_runtime() -> MockUpstream {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            tx.send(MockUpstream::start().await.unwrap()).unwrap();
            std::future::pending::<()>().await
        });
    });
    rx.recv().unwrap()
}

/// Stream a chat completion to its end, keeping none of it: its event id,
/// the bytes streamed and the highest RSS seen meanwhile.
async fn stream_to_the_end(gw: &TestGateway) -> ((String, usize), Option<u64>) {
    let mut response = gw.post_openai(chat_stream("gpt-4o-mini", "go on")).await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let (mut streamed, mut chunks, mut peak) = (0usize, 0usize, rss_bytes());
    while let Some(chunk) = response.chunk().await.unwrap() {
        streamed += chunk.len();
        chunks += 1;
        if chunks % 16 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    ((event_id, streamed), peak.max(rss_bytes()))
}

/// This process's resident memory in bytes (Linux), if it can be read.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A gateway whose upstream reports no usage (so every request is
/// estimated) and that accepts bodies of 9 MiB and more.
/// Deadlines these tests never mean to reach: the mock renders tens of MB
/// up front and estimates tokenize MBs, slow on a loaded machine.
fn generous_deadlines(mut config: tollgate_proxy::ProxyConfig) -> tollgate_proxy::ProxyConfig {
    config.routing.attempt_timeout_ms = 60_000;
    config.routing.total_timeout_ms = 120_000;
    config
}

async fn gateway_without_upstream_usage() -> TestGateway {
    let mock = mock_on_its_own_runtime();
    mock.add_rule(Rule::any().omit_usage());
    let mut config = generous_deadlines(mock_config(&mock));
    config.server.max_body_bytes = 24 << 20;
    start_on(mock, config).await
}

/// Two 9 MiB prompts of one repeated letter, estimated at once (the
/// upstream reports no usage), while `/healthz` is polled: it answers
/// while the estimates run, and both requests are billed on an estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_huge_prompts_are_estimated() {
    let _serial = SERIAL.lock().await;
    let gw = gateway_without_upstream_usage().await;

    // The two requests are sent from another runtime, so serializing them
    // does not occupy the gateway's.
    let (url, token) = (gw.url("/v1/chat/completions"), gw.token.clone());
    let senders = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let sends = ["a", "b"].map(|letter| {
                let body = chat("gpt-4o-mini", &letter.repeat(9 << 20));
                let (url, token) = (url.clone(), token.clone());
                tokio::spawn(async move {
                    let response = TestGateway::client()
                        .post(url)
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    response.status().as_u16()
                })
            });
            let mut statuses = Vec::new();
            for send in sends {
                statuses.push(send.await.unwrap());
            }
            statuses
        })
    });

    let client = TestGateway::client();
    let started = Instant::now();
    let (mut polls, mut while_estimating, mut slowest) = (0, 0, Duration::ZERO);
    while !senders.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the two requests did not finish in 120 s"
        );
        let estimating = estimate::running() > 0;
        let asked = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.get(gw.url("/healthz")).send(),
        )
        .await
        .expect("/healthz answers within 5 s")
        .unwrap();
        let took = asked.elapsed();
        assert_eq!(answer.status(), 200);
        if estimating && estimate::running() > 0 {
            while_estimating += 1;
        }
        polls += 1;
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let statuses = senders.join().unwrap();
    eprintln!(
        "two 9 MiB prompts estimated in {:?}: /healthz answered {polls} times, \
         {while_estimating} of them while an estimate ran; slowest answer {slowest:?}",
        started.elapsed()
    );
    assert_eq!(statuses, [200, 200]);
    assert!(
        while_estimating > 0,
        "no /healthz answer came while an estimate ran ({polls} polls)"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest /healthz: {slowest:?}"
    );

    let events = gw.wait_for_events(2).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in &events {
        assert!(event.tokens_estimated, "{event:#?}");
        assert_eq!(event.status, 200);
        // 9 MiB of one letter is ~1.2M o200k tokens (8 letters a token).
        assert!(event.tokens.input > 1_000_000, "{:?}", event.tokens);
    }
}

/// A stream of tens of MB whose upstream reports no usage is billed on an
/// estimate, while the gateway keeps only its first 1 MiB of text (RSS
/// growth printed); the estimate extrapolates the rest at the same rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_without_usage_is_estimated_in_bounded_memory() {
    let _serial = SERIAL.lock().await;
    const WORDS: usize = 24_000;
    let word = "x".repeat(999) + " ";
    let text = word.repeat(WORDS);
    let mock = mock_on_its_own_runtime();
    // Streams that report usage come first and last: the first warms up
    // what the test process itself allocates for a stream this size (the
    // mock builds all of its frames up front), the last measures that
    // again, for comparison with the stream billed on an estimate.
    mock.add_rule(Rule::any().once().reply_text(text.clone()));
    mock.add_rule(Rule::any().once().omit_usage().reply_text(text.clone()));
    mock.add_rule(Rule::any().reply_text(text.clone()));
    let config = generous_deadlines(mock_config(&mock));
    let gw = start_on(mock, config).await;

    let ((warm_up, _), _) = stream_to_the_end(&gw).await;
    let before = rss_bytes();
    let ((event_id, streamed), peak) = stream_to_the_end(&gw).await;
    assert!(streamed > text.len(), "streamed {streamed} bytes");
    let before_reported = rss_bytes();
    let ((reported, _), peak_reported) = stream_to_the_end(&gw).await;
    for id in [warm_up, reported] {
        assert!(!gw.event(&id).await.tokens_estimated);
    }

    let event = gw.event(&event_id).await;
    assert!(event.tokens_estimated, "{event:#?}");
    assert_eq!(event.status, 200);
    // The first 1 MiB counted, the rest at its rate: within 2 % of the
    // whole's exact count (its pieces: the first word, then each word with
    // the space before it, then the last space).
    let model = "gpt-4o-mini";
    let spaced = format!(" {}", &word[..999]);
    let expected = (tokenize::count_tokens(model, &word[..999])
        + (WORDS as u64 - 1) * tokenize::count_tokens(model, &spaced)
        + 1) as f64;
    let output = event.tokens.output as f64;
    assert!(
        (output - expected).abs() / expected < 0.02,
        "estimated {output} output tokens, expected ~{expected}"
    );
    let growth = |before: Option<u64>, peak: Option<u64>| match (before, peak) {
        (Some(before), Some(peak)) => format!("{:.1} MB", peak.saturating_sub(before) as f64 / 1e6),
        _ => "unknown".to_owned(),
    };
    eprintln!(
        "streamed {:.1} MB ({:.1} MB of text) without usage: estimated {} output tokens \
         (exact: {expected}); test process RSS growth while streaming: {} (estimated), {} \
         (usage reported, for comparison)",
        streamed as f64 / 1e6,
        text.len() as f64 / 1e6,
        event.tokens.output,
        growth(before, peak),
        growth(before_reported, peak_reported),
    );
}

/// A client that leaves while its request's estimate runs: the request is
/// still billed on an estimate (as a disconnect), and the estimate work it
/// left behind settles in bounded time (shutdown waits for exactly that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_mid_estimate_is_billed_and_settles() {
    let _serial = SERIAL.lock().await;
    let gw = gateway_without_upstream_usage().await;

    let body = chat("gpt-4o-mini", &"a".repeat(9 << 20));
    let (url, token) = (gw.url("/v1/chat/completions"), gw.token.clone());
    let request = tokio::spawn(async move {
        TestGateway::client()
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
    });
    let started = Instant::now();
    while estimate::running() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no estimate started"
        );
        assert!(
            !request.is_finished(),
            "answered before an estimate was seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The client leaves: its connection closes mid-estimate.
    request.abort();
    let _ = request.await;

    let settled = Instant::now();
    assert!(estimate::settle(Duration::from_secs(30)).await);
    let events = gw.wait_for_events(1).await;
    eprintln!(
        "request dropped mid-estimate: estimates settled {:?} after the client left",
        settled.elapsed()
    );
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert!(event.tokens_estimated, "{event:#?}");
    assert!(event.client_disconnected, "{event:#?}");
    assert!(event.tokens.input > 1_000_000, "{:?}", event.tokens);
}
