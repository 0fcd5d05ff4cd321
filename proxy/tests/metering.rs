//! Metering: exactly one metadata-only usage event per authenticated request,
//! token estimates when the upstream does not report usage, client
//! disconnects, and the Prometheus counters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tollgate_core::{Catalog, CredentialSource, UsageEvent};
use tollgate_eventlog::EventLog;
use tollgate_mock_upstream::Rule;

const PROMPT: &str = "Please write a short greeting for the test suite"; // 9 words

/// Sends `request`, reads the whole body, returns the event id header.
async fn send(gw: &TestGateway, path: &str, request: &serde_json::Value, status: u16) -> String {
    let response = if path == "/v1/messages" {
        gw.post_anthropic(request.clone()).await
    } else {
        gw.post_openai(request.clone()).await
    };
    let id = header(&response, "x-tollgate-event-id");
    let got = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert!(!id.is_empty(), "no event id header: {body}");
    id
}

/// Waits for `n` events, then makes sure no further event shows up.
async fn exactly_events(gw: &TestGateway, n: usize) -> Vec<UsageEvent> {
    let events = gw.wait_for_events(n).await;
    assert_eq!(events.len(), n, "{events:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = gw.usage_events().await;
    assert_eq!(events.len(), n, "more events than requests: {events:#?}");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_usage_event_per_request() {
    let gw = start().await;
    gw.mock.add_rule(Rule::for_model("gpt-4o").fail(500));
    let mut ids = Vec::new();
    // Success, not streamed, both APIs.
    ids.push(
        send(
            &gw,
            "/v1/chat/completions",
            &chat("gpt-4o-mini", PROMPT),
            200,
        )
        .await,
    );
    ids.push(
        send(
            &gw,
            "/v1/messages",
            &messages("claude-haiku-4-5", PROMPT),
            200,
        )
        .await,
    );
    // Success, streamed, both APIs and translated.
    ids.push(
        send(
            &gw,
            "/v1/chat/completions",
            &chat_stream("gpt-4o-mini", PROMPT),
            200,
        )
        .await,
    );
    ids.push(
        send(
            &gw,
            "/v1/messages",
            &messages_stream("claude-haiku-4-5", PROMPT),
            200,
        )
        .await,
    );
    ids.push(
        send(
            &gw,
            "/v1/chat/completions",
            &chat_stream("claude-haiku-4-5", PROMPT),
            200,
        )
        .await,
    );
    // Upstream failure, streamed and not.
    ids.push(send(&gw, "/v1/chat/completions", &chat("gpt-4o", PROMPT), 502).await);
    ids.push(send(&gw, "/v1/messages", &messages_stream("gpt-4o", PROMPT), 502).await);
    // Validation failures of an authenticated caller.
    ids.push(send(&gw, "/v1/chat/completions", &json!({"messages": []}), 400).await);
    ids.push(
        send(
            &gw,
            "/v1/chat/completions",
            &chat("no-such-model", PROMPT),
            404,
        )
        .await,
    );
    let no_max_tokens = json!({"model": "claude-haiku-4-5", "messages": []});
    ids.push(send(&gw, "/v1/messages", &no_max_tokens, 400).await);

    let events = exactly_events(&gw, ids.len()).await;
    let stored: BTreeSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let sent: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(sent.len(), ids.len(), "event ids are unique");
    assert_eq!(stored, sent, "each response names its own stored event");
    for event in &events {
        assert_eq!(event.account_id.as_str(), event.account_id.to_string());
        assert!(event.access_key_id.as_str().starts_with("ak_"));
        assert!(event.finished_at >= event.started_at);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usage_event_for_unauthenticated_requests() {
    let gw = start().await;
    let client = TestGateway::client();
    let unauthenticated = [
        client
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("gpt-4o-mini", PROMPT)),
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("tgk_wrong")
            .json(&chat("gpt-4o-mini", PROMPT)),
        client
            .post(gw.url("/v1/messages"))
            .header("x-api-key", "tgk_wrong")
            .json(&messages("claude-haiku-4-5", PROMPT)),
        client
            .post(gw.url("/v1/messages"))
            .header("content-type", "application/json")
            .body("not json"),
    ];
    for request in unauthenticated {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(header(&response, "x-tollgate-event-id"), "");
    }
    assert!(gw.mock.requests().is_empty());
    // One authenticated request afterwards: it is the only event.
    let id = send(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", PROMPT),
        200,
    )
    .await;
    let events = exactly_events(&gw, 1).await;
    assert_eq!(events[0].event_id.to_string(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_and_response_text_never_reach_the_event_store() {
    const CANARY: &str = "CANARY-b7e1f3-prompt-text";
    const REPLY_CANARY: &str = "REPLYCANARY-99d2 is part of the answer";
    let gw = start().await;
    gw.mock.add_rule(Rule::for_model("gpt-4o").fail_with(
        400,
        json!({"error": {
            "message": format!("cannot process {CANARY}"), "type": "invalid_request_error",
            "param": null, "code": null}}),
    ));
    gw.mock.add_rule(
        Rule::for_model("gpt-4.1")
            .omit_usage()
            .reply_text(REPLY_CANARY),
    );
    gw.mock.add_rule(Rule::any().reply_text(REPLY_CANARY));
    let prompt = format!("Remember {CANARY} please");
    let system = json!({"role": "system", "content": format!("system {CANARY}")});
    let mut with_system = chat("gpt-4o-mini", &prompt);
    with_system["messages"]
        .as_array_mut()
        .unwrap()
        .insert(0, system);

    let mut ids = Vec::new();
    ids.push(send(&gw, "/v1/chat/completions", &with_system, 200).await);
    ids.push(
        send(
            &gw,
            "/v1/chat/completions",
            &chat_stream("gpt-4o-mini", &prompt),
            200,
        )
        .await,
    );
    ids.push(
        send(
            &gw,
            "/v1/messages",
            &messages("claude-haiku-4-5", &prompt),
            200,
        )
        .await,
    );
    ids.push(
        send(
            &gw,
            "/v1/messages",
            &messages_stream("claude-haiku-4-5", &prompt),
            200,
        )
        .await,
    );
    ids.push(
        send(
            &gw,
            "/v1/chat/completions",
            &chat_stream("claude-haiku-4-5", &prompt),
            200,
        )
        .await,
    );
    // Usage estimated from the text: the text itself is still not stored.
    ids.push(send(&gw, "/v1/chat/completions", &chat("gpt-4.1", &prompt), 200).await);
    ids.push(
        send(
            &gw,
            "/v1/chat/completions",
            &chat_stream("gpt-4.1", &prompt),
            200,
        )
        .await,
    );
    // An upstream error that echoes the prompt.
    ids.push(send(&gw, "/v1/chat/completions", &chat("gpt-4o", &prompt), 400).await);
    // A validation failure.
    let invalid = json!({"messages": [{"role": "user", "content": prompt}]});
    ids.push(send(&gw, "/v1/chat/completions", &invalid, 400).await);

    let events = exactly_events(&gw, ids.len()).await;
    assert!(events.iter().any(|e| e.tokens_estimated));
    let records = gw
        .events
        .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100_000)
        .await
        .unwrap();
    assert_eq!(records.len(), ids.len());
    for record in &records {
        let payload = String::from_utf8_lossy(&record.payload);
        assert!(
            !payload.contains("CANARY"),
            "text stored in an event: {payload}"
        );
        assert!(!payload.contains("REPLYCANARY"), "text stored: {payload}");
        assert!(!payload.contains("Remember"), "text stored: {payload}");
    }

    // Nor anywhere in the raw database files.
    gw.events.flush().await.unwrap();
    let mut raw = std::fs::read(&gw.db_path).unwrap();
    let wal = gw.db_path.with_file_name(format!(
        "{}-wal",
        gw.db_path.file_name().unwrap().to_str().unwrap()
    ));
    if let Ok(bytes) = std::fs::read(&wal) {
        raw.extend_from_slice(&bytes);
    }
    // The scan does see stored events (so a miss below means something).
    assert!(
        contains(&raw, ids[0].as_bytes()),
        "event not in the db files"
    );
    for needle in ["CANARY-b7e1f3", "REPLYCANARY", "Remember CANARY"] {
        assert!(
            !contains(&raw, needle.as_bytes()),
            "`{needle}` found in the SQLite files"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts a plausible local estimate for PROMPT in / DEFAULT_REPLY out.
fn assert_estimated(event: &UsageEvent) {
    assert!(event.tokens_estimated, "{event:#?}");
    assert_eq!(event.status, 200);
    // 9 words of prompt; the mock's 5-word reply is ~6 tokens.
    assert!(
        (5..=30).contains(&event.tokens.input),
        "input estimate {}",
        event.tokens.input
    );
    assert!(
        (3..=15).contains(&event.tokens.output),
        "output estimate {}",
        event.tokens.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_usage_is_estimated_locally() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().omit_usage());
    let requests = [
        ("/v1/chat/completions", chat("gpt-4o-mini", PROMPT)),
        ("/v1/chat/completions", chat_stream("gpt-4o-mini", PROMPT)),
        ("/v1/messages", messages("claude-haiku-4-5", PROMPT)),
        ("/v1/messages", messages_stream("claude-haiku-4-5", PROMPT)),
        (
            "/v1/chat/completions",
            chat_stream("claude-haiku-4-5", PROMPT),
        ),
        ("/v1/messages", messages_stream("gpt-4o-mini", PROMPT)),
    ];
    for (path, request) in &requests {
        let id = send(&gw, path, request, 200).await;
        let event = gw.event(&id).await;
        assert_estimated(&event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_zero_usage_with_content_is_treated_as_missing() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().zero_usage());
    let requests = [
        ("/v1/chat/completions", chat("gpt-4o-mini", PROMPT)),
        ("/v1/chat/completions", chat_stream("gpt-4o-mini", PROMPT)),
        ("/v1/messages", messages("claude-haiku-4-5", PROMPT)),
        ("/v1/messages", messages_stream("claude-haiku-4-5", PROMPT)),
    ];
    for (path, request) in &requests {
        let id = send(&gw, path, request, 200).await;
        let event = gw.event(&id).await;
        assert_estimated(&event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_without_usage_is_estimated_from_its_arguments() {
    let gw = start().await;
    gw.mock.add_rule(
        Rule::any()
            .tool_call("lookup", json!({"query": "the weather in Paris tomorrow"}))
            .omit_usage(),
    );
    for (path, request) in [
        ("/v1/chat/completions", chat("gpt-4o-mini", PROMPT)),
        ("/v1/chat/completions", chat_stream("gpt-4o-mini", PROMPT)),
        ("/v1/messages", messages("claude-haiku-4-5", PROMPT)),
        ("/v1/messages", messages_stream("claude-haiku-4-5", PROMPT)),
    ] {
        let id = send(&gw, path, &request, 200).await;
        let event = gw.event(&id).await;
        assert!(event.tokens_estimated, "{path}: {event:#?}");
        assert!(event.tokens.input > 0, "{path}");
        assert!(event.tokens.output > 0, "{path}: tool arguments are output");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_is_metered_and_the_upstream_cancelled() {
    let gw = start().await;
    let long_reply = "lorem ipsum dolor sit amet ".repeat(100); // 500 words
    gw.mock.add_rule(
        Rule::any()
            .reply_text(long_reply)
            .chunk_delay(Duration::from_millis(20)),
    );
    let mut response = gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let mut received = String::new();
    while openai_stream_text(&complete_events(&received))
        .split_whitespace()
        .count()
        < 3
    {
        let chunk = response.chunk().await.unwrap().expect("stream ended early");
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(response);

    let cancelled = eventually(Duration::from_secs(20), || gw.mock.cancelled_streams() == 1).await;
    assert!(cancelled, "upstream stream was not cancelled");

    let event = gw.event(&event_id).await;
    assert!(event.client_disconnected, "{event:#?}");
    assert!(event.streamed);
    assert_eq!(event.error_kind.as_deref(), Some("client_disconnected"));
    assert!(event.tokens.output > 0, "streamed output is billed");
    assert!(
        event.tokens.output < 500,
        "only what was streamed: {}",
        event.tokens.output
    );
    assert!(event.tokens.input > 0);
    assert!(event.tokens_estimated);
    assert!(event.ttft_us.is_some());
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_client_that_disconnects_keeps_the_reported_input() {
    let gw = start().await;
    let long_reply = "lorem ipsum dolor sit amet ".repeat(100);
    gw.mock.add_rule(
        Rule::any()
            .reply_text(long_reply)
            .cached_tokens(4)
            .chunk_delay(Duration::from_millis(20)),
    );
    let mut response = gw
        .post_anthropic(messages_stream("claude-haiku-4-5", PROMPT))
        .await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let mut received = String::new();
    while !received.contains("content_block_delta") {
        let chunk = response.chunk().await.unwrap().expect("stream ended early");
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(response);

    let cancelled = eventually(Duration::from_secs(20), || gw.mock.cancelled_streams() == 1).await;
    assert!(cancelled, "upstream stream was not cancelled");
    let event = gw.event(&event_id).await;
    assert!(event.client_disconnected);
    // Input as reported in message_start, output estimated.
    assert_eq!(event.tokens.input, 9);
    assert_eq!(event.tokens.cached_input, 4);
    assert!(event.tokens.output > 0 && event.tokens.output < 500);
    assert!(event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_before_the_response_still_gets_one_event() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().delay(Duration::from_secs(60)));
    let request = TestGateway::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.token)
        .json(&chat("gpt-4o-mini", PROMPT))
        .send();
    let pending = tokio::spawn(request);
    // Give up once the upstream call is under way.
    let started = eventually(Duration::from_secs(10), || gw.mock.requests().len() == 1).await;
    assert!(started);
    pending.abort();
    let _ = pending.await;

    let events = exactly_events(&gw, 1).await;
    let event = &events[0];
    assert!(event.client_disconnected, "{event:#?}");
    assert_eq!(event.error_kind.as_deref(), Some("client_disconnected"));
    assert_eq!(event.attempts, 1);
    assert_eq!(event.tokens.total(), 0, "nothing was generated");
}

/// The prefix of `body` that ends at an SSE event boundary.
fn complete_events(body: &str) -> String {
    match body.rfind("\n\n") {
        Some(end) => body[..end + 2].to_owned(),
        None => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_prices_request_id_latency_and_status() {
    let gw = start().await;
    let catalog = Catalog::builtin().unwrap();

    let id = send(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", PROMPT),
        200,
    )
    .await;
    let event = gw.event(&id).await;
    assert_eq!(event.prices, catalog.model("gpt-4o-mini").unwrap().prices);
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_1"));
    assert!(event.latency_us > 0);
    assert!(event
        .upstream_latency_us
        .is_some_and(|u| u > 0 && u <= event.latency_us));
    assert_eq!(event.ttft_us, None, "not streamed");
    assert_eq!(event.status, 200);
    assert_eq!(event.error_kind, None);
    assert!(!event.client_disconnected);
    assert_eq!(event.attempts, 1);
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.client_api.as_str(), "openai");
    assert_eq!(event.model_requested, "gpt-4o-mini");
    assert_eq!(event.tokens.input, 9);
    assert_eq!(event.tokens.output, 5);

    let id = send(
        &gw,
        "/v1/messages",
        &messages_stream("claude-sonnet-4-5", PROMPT),
        200,
    )
    .await;
    let event = gw.event(&id).await;
    assert_eq!(
        event.prices,
        catalog.model("claude-sonnet-4-5").unwrap().prices
    );
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_2"));
    assert!(event.streamed);
    let ttft = event.ttft_us.expect("streams record time to first token");
    assert!(ttft > 0 && ttft <= event.latency_us);
    assert_eq!(event.status, 200);
    assert_eq!(event.client_api.as_str(), "anthropic");

    // Failures: status and error kind.
    gw.mock.add_rule(Rule::for_model("gpt-4o").fail(503));
    let id = send(&gw, "/v1/chat/completions", &chat("gpt-4o", PROMPT), 502).await;
    let event = gw.event(&id).await;
    assert_eq!(event.status, 502);
    assert_eq!(event.error_kind.as_deref(), Some("upstream_failed"));
    assert_eq!(event.provider.as_deref(), Some("openai"));
    assert_eq!(event.model_served.as_deref(), Some("gpt-4o"));
    assert_eq!(event.prices, catalog.model("gpt-4o").unwrap().prices);
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_3"));
    assert_eq!(event.tokens.total(), 0);
    assert!(event.latency_us > 0);

    let id = send(
        &gw,
        "/v1/chat/completions",
        &chat("nope-model", PROMPT),
        404,
    )
    .await;
    let event = gw.event(&id).await;
    assert_eq!(event.status, 404);
    assert_eq!(event.error_kind.as_deref(), Some("model_unknown"));
    assert_eq!(event.model_requested, "nope-model");
    assert_eq!(event.provider, None);
    assert_eq!(event.attempts, 0);
    assert_eq!(event.tokens.total(), 0);

    let id = send(
        &gw,
        "/v1/messages",
        &json!({"model": "claude-haiku-4-5", "messages": []}),
        400,
    )
    .await;
    let event = gw.event(&id).await;
    assert_eq!(event.status, 400);
    assert_eq!(event.error_kind.as_deref(), Some("invalid_request"));
    assert_eq!(event.client_api.as_str(), "anthropic");
}

/// Every event records the endpoint that served it — chat, messages or
/// embeddings, successes and refusals alike — and writes it on the log as
/// `"endpoint":"<name>"` right after `client_api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_record_the_endpoint_that_served_them() {
    use tollgate_core::Endpoint;
    let gw = start().await;
    let mut cases = Vec::new();
    let id = send(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", PROMPT),
        200,
    )
    .await;
    cases.push((id, Endpoint::Chat, "openai"));
    let id = send(
        &gw,
        "/v1/chat/completions",
        &chat("nope-model", PROMPT),
        404,
    )
    .await;
    cases.push((id, Endpoint::Chat, "openai"));
    let id = send(
        &gw,
        "/v1/messages",
        &messages_stream("claude-sonnet-4-5", PROMPT),
        200,
    )
    .await;
    cases.push((id, Endpoint::Messages, "anthropic"));
    // Translated: an Anthropic client answered by an OpenAI model.
    let id = send(
        &gw,
        "/v1/messages",
        &json!({"model": "gpt-4o-mini", "max_tokens": 16,
                "messages": [{"role": "user", "content": PROMPT}]}),
        200,
    )
    .await;
    cases.push((id, Endpoint::Messages, "anthropic"));
    for (input, status) in [(json!("one two three"), 200), (json!([]), 400)] {
        let response = gw
            .post_json(
                "/v1/embeddings",
                &json!({"model": "text-embedding-3-small", "input": input}),
            )
            .await;
        let id = header(&response, "x-tollgate-event-id");
        let got = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(got, status, "{body}");
        cases.push((id, Endpoint::Embeddings, "openai"));
    }
    for (id, endpoint, client_api) in &cases {
        let event = gw.event(id).await;
        assert_eq!(event.endpoint, Some(*endpoint), "{id}");
        assert_eq!(event.served_endpoint(), *endpoint);
        assert_eq!(event.client_api.as_str(), *client_api);
    }
    // On the log, as written.
    gw.events.flush().await.unwrap();
    let records = gw
        .events
        .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 1_000)
        .await
        .unwrap();
    for (id, endpoint, client_api) in &cases {
        let payload = records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .find(|p| p.contains(id.as_str()))
            .unwrap_or_else(|| panic!("no record of {id}"));
        let written = format!(
            r#""client_api":"{client_api}","endpoint":"{}","#,
            endpoint.as_str()
        );
        assert!(payload.contains(&written), "{payload}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counters_move() {
    let gw = start().await;
    let before = gw.metrics_text().await;
    assert!(before.contains("tollgate_proxy_usage_events_emitted_total"));
    assert_eq!(
        metric_sum(&before, "tollgate_proxy_usage_events_emitted_total", &[]),
        0.0
    );

    send(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", PROMPT),
        200,
    )
    .await;
    send(
        &gw,
        "/v1/messages",
        &messages_stream("claude-haiku-4-5", PROMPT),
        200,
    )
    .await;
    gw.mock.add_rule(Rule::for_model("gpt-4o").fail(500));
    send(&gw, "/v1/chat/completions", &chat("gpt-4o", PROMPT), 502).await;
    let unauthenticated = TestGateway::client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("gpt-4o-mini", PROMPT))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = gw.metrics_text().await;
        let emitted = metric_sum(&text, "tollgate_proxy_usage_events_emitted_total", &[]);
        if emitted >= 3.0 || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let requests = |api: &str, class: &str| {
        metric_sum(
            &text,
            "tollgate_proxy_requests_total",
            &[("api", api), ("status_class", class)],
        )
    };
    assert_eq!(requests("openai", "2xx"), 1.0, "{text}");
    assert_eq!(requests("anthropic", "2xx"), 1.0, "{text}");
    assert_eq!(requests("openai", "5xx"), 1.0, "{text}");
    assert_eq!(
        requests("openai", "4xx"),
        1.0,
        "unauthenticated is counted: {text}"
    );
    assert_eq!(
        metric_sum(&text, "tollgate_proxy_usage_events_emitted_total", &[]),
        3.0,
        "no event for the unauthenticated request"
    );
    assert_eq!(
        metric_sum(
            &text,
            "tollgate_proxy_errors_total",
            &[("kind", "missing_key")]
        ),
        1.0
    );
    assert!(metric_sum(&text, "tollgate_proxy_tokens_total", &[("class", "output")]) >= 10.0);
    assert_eq!(
        metric_sum(&text, "tollgate_proxy_in_flight_requests", &[]),
        0.0
    );
    assert!(
        metric_sum(
            &text,
            "tollgate_proxy_time_to_first_token_seconds_count",
            &[("api", "anthropic")]
        ) >= 1.0
    );
}

/// What the client paid for a response (its cost header), the same as the
/// event's counts cost without their reasoning part: reasoning is a part of
/// output, billed once.
fn assert_reasoning_billed_once(total_header: &str, event: &UsageEvent) {
    let plain = tollgate_core::TokenCounts {
        reasoning: 0,
        ..event.tokens
    };
    let cost = |tokens: &tollgate_core::TokenCounts| {
        tollgate_core::pricing::cost_for(
            tokens,
            &event.prices,
            event.credential_source,
            event.plan.as_ref(),
        )
    };
    assert_eq!(cost(&event.tokens), cost(&plain));
    assert_eq!(total_header, cost(&plain).total().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_reasoning_tokens_are_their_own_count_inside_output() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().reasoning_tokens(40));
    // OpenAI client, OpenAI upstream: the answer, a stream whose client
    // asked for usage, and one whose usage chunk the gateway asked for.
    let mut bodies = vec![
        (chat("gpt-4o-mini", PROMPT), false),
        (chat_stream("gpt-4o-mini", PROMPT), true),
    ];
    let mut with_usage = chat_stream("gpt-4o-mini", PROMPT);
    with_usage["stream_options"] = json!({"include_usage": true});
    bodies.push((with_usage, true));
    for (body, streamed) in bodies {
        let response = gw.post_openai(body.clone()).await;
        assert_eq!(response.status(), 200);
        let event_id = header(&response, "x-tollgate-event-id");
        let total = header(&response, "x-tollgate-cost-total");
        let text = response.text().await.unwrap();
        if !streamed {
            let usage: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                usage["usage"]["completion_tokens_details"]["reasoning_tokens"],
                40
            );
        }
        let event = gw.event(&event_id).await;
        assert_eq!(event.streamed, streamed);
        assert_eq!(
            (event.tokens.output, event.tokens.reasoning),
            (45, 40),
            "{body}"
        );
        assert!(!event.tokens_estimated);
        if !streamed {
            assert_reasoning_billed_once(&total, &event);
        }
    }

    // Anthropic client, OpenAI upstream: the event keeps the count; the
    // client's usage (Anthropic's shape) has no such field.
    for body in [
        messages("gpt-4o-mini", PROMPT),
        messages_stream("gpt-4o-mini", PROMPT),
    ] {
        let response = gw.post_anthropic(body.clone()).await;
        assert_eq!(response.status(), 200);
        let event_id = header(&response, "x-tollgate-event-id");
        let total = header(&response, "x-tollgate-cost-total");
        let text = response.text().await.unwrap();
        assert!(!text.contains("reasoning"), "{text}");
        assert!(text.contains("\"output_tokens\":45"), "{text}");
        let event = gw.event(&event_id).await;
        assert_eq!(
            (event.tokens.output, event.tokens.reasoning),
            (45, 40),
            "{body}"
        );
        if body.get("stream").is_none() {
            assert_reasoning_billed_once(&total, &event);
        }
    }

    // OpenAI client, Anthropic upstream: Anthropic reports no reasoning
    // count (the mock puts the tokens in output_tokens only), so none.
    for body in [
        chat("claude-haiku-4-5", PROMPT),
        chat_stream("claude-haiku-4-5", PROMPT),
    ] {
        let response = gw.post_openai(body.clone()).await;
        assert_eq!(response.status(), 200);
        let event_id = header(&response, "x-tollgate-event-id");
        let text = response.text().await.unwrap();
        assert!(!text.contains("reasoning_tokens"), "{text}");
        let event = gw.event(&event_id).await;
        assert_eq!(
            (event.tokens.output, event.tokens.reasoning),
            (45, 0),
            "{body}"
        );
    }
}
