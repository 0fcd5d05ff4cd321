//! The Anthropic-compatible surface: `/v1/messages`, streamed and not, with
//! cache reads and writes metered as separate classes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use tollgate_core::{Catalog, CredentialSource};
use tollgate_mock_upstream::{Rule, DEFAULT_REPLY};

const PROMPT: &str = "Tell me something nice please"; // 5 words

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_message_returns_the_upstream_reply() {
    let gw = start().await;
    let response = gw
        .post_anthropic(messages("claude-sonnet-4-5", PROMPT))
        .await;
    let (status, headers, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["content"][0]["text"], DEFAULT_REPLY);
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 5);
    assert_eq!(body["usage"]["output_tokens"], 5);
    let get = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(get("x-tollgate-provider"), "anthropic");
    assert_eq!(get("x-tollgate-model"), "claude-sonnet-4-5");
    assert_eq!(get("x-tollgate-attempts"), "1");

    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/messages");
    assert_eq!(requests[0].api_key.as_deref(), Some(ANTHROPIC_KEY));
    assert_eq!(requests[0].header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(requests[0].body["max_tokens"], 256);

    let event = gw.only_event().await;
    assert_eq!(event.event_id.to_string(), get("x-tollgate-event-id"));
    assert_eq!(event.client_api.as_str(), "anthropic");
    assert_eq!(event.provider.as_deref(), Some("anthropic"));
    assert_eq!(event.model_served.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.tokens.input, 5);
    assert_eq!(event.tokens.output, 5);
    assert_eq!(event.tokens.cached_input, 0);
    assert!(!event.tokens_estimated);
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_1"));
    let prices = Catalog::builtin()
        .unwrap()
        .model("claude-sonnet-4-5")
        .unwrap()
        .prices;
    assert_eq!(event.prices, prices);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_message_passes_the_event_sequence_through() {
    let gw = start().await;
    let response = gw
        .post_anthropic(messages_stream("claude-sonnet-4-5", PROMPT))
        .await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&response, "x-tollgate-provider"), "anthropic");
    assert_eq!(header(&response, "x-tollgate-attempts"), "1");
    let event_id = header(&response, "x-tollgate-event-id");
    let body = response.text().await.unwrap();

    let events = anthropic_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 5]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected, "{body}");
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    assert_eq!(anthropic_stream_text(&body), DEFAULT_REPLY);
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 5);
    assert_eq!(events[9].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[9].1["usage"]["output_tokens"], 5);

    let event = gw.event(&event_id).await;
    assert!(event.streamed);
    assert_eq!(event.status, 200);
    assert_eq!(event.tokens.input, 5);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
    assert!(event.ttft_us.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_reads_and_writes_are_separate_classes_non_streamed() {
    let gw = start().await;
    gw.mock
        .add_rule(Rule::any().cached_tokens(7).cache_write(11, 13));
    let (status, _, body) = json_of(
        gw.post_anthropic(messages("claude-sonnet-4-5", PROMPT))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["cache_read_input_tokens"], 7);
    assert_eq!(body["usage"]["cache_creation_input_tokens"], 24);

    let event = gw.only_event().await;
    assert_eq!(event.tokens.input, 5);
    assert_eq!(event.tokens.cached_input, 7);
    assert_eq!(event.tokens.cache_write_5m, 11);
    assert_eq!(event.tokens.cache_write_1h, 13);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_reads_and_writes_are_separate_classes_streamed() {
    let gw = start().await;
    gw.mock
        .add_rule(Rule::any().cached_tokens(7).cache_write(11, 13));
    let response = gw
        .post_anthropic(messages_stream("claude-sonnet-4-5", PROMPT))
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(anthropic_stream_text(&body), DEFAULT_REPLY);

    let event = gw.only_event().await;
    assert!(event.streamed);
    assert_eq!(event.tokens.input, 5);
    assert_eq!(event.tokens.cached_input, 7);
    assert_eq!(event.tokens.cache_write_5m, 11);
    assert_eq!(event.tokens.cache_write_1h, 13);
    assert_eq!(
        event.tokens.output, 5,
        "final output count, not the provisional 1"
    );
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_version_and_beta_headers_are_forwarded() {
    let gw = start().await;
    let response = TestGateway::client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.token)
        .header("anthropic-version", "2023-01-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&messages("claude-haiku-4-5", PROMPT))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("anthropic-version"), Some("2023-01-01"));
    assert_eq!(
        requests[0].header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    // The client's access key never goes upstream.
    for (name, value) in &requests[0].headers {
        assert!(!value.contains(&gw.token), "access key leaked in {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_anthropic_version_is_sent_when_the_client_sends_none() {
    let gw = start().await;
    // Bearer auth and no anthropic-version header: the gateway supplies one.
    let response = gw
        .post_json("/v1/messages", &messages("claude-haiku-4-5", PROMPT))
        .await;
    assert_eq!(response.status(), 200);
    let requests = gw.mock.requests();
    assert_eq!(requests[0].header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_fields_pass_through_unchanged_except_model() {
    let gw = start().await;
    let request = json!({
        "model": "claude-haiku-4-5-20251001",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": PROMPT}],
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "models": ["claude-sonnet-4-5"],
    });
    let response = gw.post_anthropic(request.clone()).await;
    assert_eq!(response.status(), 200);
    let upstream = gw.mock.requests()[0].body.clone();
    let mut expected = request;
    expected["model"] = json!("claude-haiku-4-5");
    // The gateway's own `models` field is not forwarded.
    expected.as_object_mut().unwrap().remove("models");
    assert_eq!(upstream, expected);
}
