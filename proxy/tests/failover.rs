//! Key and model failover: what fails over (429, 5xx, connect errors,
//! timeouts), what does not (4xx, a stream that already started), and the
//! errors when everything fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tollgate_core::{Catalog, CredentialSource};
use tollgate_mock_upstream::{Rule, DEFAULT_REPLY};

const PROMPT: &str = "hello there gateway";

async fn two_openai_keys() -> TestGateway {
    start_with(|c| set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_key_fails_over_to_the_next_key() {
    let gw = two_openai_keys().await;
    gw.mock.add_rule(Rule::for_key(OPENAI_KEY).fail(429));
    let response = gw.post_openai(chat("gpt-4o-mini", PROMPT)).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    assert_eq!(header(&response, "x-tollgate-provider"), "openai");
    assert_eq!(header(&response, "x-tollgate-model"), "gpt-4o-mini");
    let event_id = header(&response, "x-tollgate-event-id");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);

    let requests = gw.mock.requests();
    let keys: Vec<_> = requests.iter().map(|r| r.api_key.as_deref()).collect();
    assert_eq!(keys, [Some(OPENAI_KEY), Some(OPENAI_KEY_2)]);

    let event = gw.event(&event_id).await;
    assert_eq!(event.attempts, 2);
    assert_eq!(event.status, 200);
    assert_eq!(event.error_kind, None);
    assert_eq!(event.provider.as_deref(), Some("openai"));
    assert_eq!(event.model_served.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    // The request id is the answering attempt's (the mock numbers requests).
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_2"));
    assert_eq!(event.tokens.output, 5);

    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_sum(&metrics, "tollgate_proxy_failovers_total", &[]),
        1.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_proxy_upstream_attempts_total",
            &[("provider", "openai"), ("outcome", "rate_limited")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_fails_over_to_the_next_key() {
    for status in [500, 502, 503, 529] {
        let gw = two_openai_keys().await;
        gw.mock.add_rule(Rule::for_key(OPENAI_KEY).fail(status));
        let response = gw.post_openai(chat("gpt-4o-mini", PROMPT)).await;
        assert_eq!(response.status(), 200, "after a {status}");
        assert_eq!(header(&response, "x-tollgate-attempts"), "2");
        let event = gw.only_event().await;
        assert_eq!(event.attempts, 2);
        assert_eq!(event.status, 200);
        assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_2"));
        assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY), 1);
        assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY_2), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_fails_over_to_the_fallback_model() {
    let gw = start_with(|c| {
        c.providers.get_mut("openai").unwrap().base_url = Some(closed_port_url());
        set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2]);
    })
    .await;
    let mut request = chat("gpt-4o-mini", PROMPT);
    request["models"] = json!(["anthropic:claude-haiku-4-5"]);
    let response = gw.post_openai(request).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "3");
    assert_eq!(header(&response, "x-tollgate-provider"), "anthropic");
    assert_eq!(header(&response, "x-tollgate-model"), "claude-haiku-4-5");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);

    // Only the anthropic attempt reached the (listening) mock.
    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/messages");

    let event = gw.only_event().await;
    assert_eq!(event.attempts, 3);
    assert_eq!(event.provider.as_deref(), Some("anthropic"));
    assert_eq!(event.model_served.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(event.status, 200);
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_proxy_upstream_attempts_total",
            &[("provider", "openai"), ("outcome", "connect_error")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_timeout_fails_over_to_the_next_key() {
    let gw = start_with(|c| {
        set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2]);
        c.routing.attempt_timeout_ms = 1_000;
        c.routing.total_timeout_ms = 20_000;
    })
    .await;
    gw.mock
        .add_rule(Rule::for_key(OPENAI_KEY).delay(Duration::from_secs(60)));
    let response = gw.post_openai(chat("gpt-4o-mini", PROMPT)).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY), 1);
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY_2), 1);
    let event = gw.only_event().await;
    assert_eq!(event.attempts, 2);
    assert_eq!(event.status, 200);
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_proxy_upstream_attempts_total",
            &[("provider", "openai"), ("outcome", "timeout")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_model_and_key_are_never_retried() {
    let gw = two_openai_keys().await;
    gw.mock.add_rule(Rule::any().fail(500));
    let mut request = chat("gpt-4o-mini", PROMPT);
    // The same model three ways: bare, prefixed, alias.
    request["models"] = json!([
        "gpt-4o-mini",
        "openai:gpt-4o-mini",
        "gpt-4o-mini-2024-07-18"
    ]);
    let response = gw.post_openai(request).await;
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    assert_eq!(gw.mock.requests().len(), 2);
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY), 1);
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY_2), 1);
    let event = gw.only_event().await;
    assert_eq!(event.attempts, 2);
    assert_eq!(event.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_models_are_tried_in_order_after_every_key_of_the_first_model() {
    let gw = two_openai_keys().await;
    gw.mock.add_rule(Rule::for_model("gpt-4o-mini").fail(429));
    let mut request = chat("gpt-4o-mini", PROMPT);
    request["models"] = json!(["anthropic:claude-haiku-4-5", "gpt-4o"]);
    let response = gw.post_openai(request).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "3");
    assert_eq!(header(&response, "x-tollgate-provider"), "anthropic");
    assert_eq!(header(&response, "x-tollgate-model"), "claude-haiku-4-5");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    // The client still gets its own API's shape.
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);

    let tried: Vec<(String, Option<String>, String)> = gw
        .mock
        .requests()
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.api_key.clone(),
                r.body["model"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("/v1/chat/completions", OPENAI_KEY, "gpt-4o-mini"),
        ("/v1/chat/completions", OPENAI_KEY_2, "gpt-4o-mini"),
        ("/v1/messages", ANTHROPIC_KEY, "claude-haiku-4-5"),
    ]
    .map(|(p, k, m)| (p.to_owned(), Some(k.to_owned()), m.to_owned()));
    assert_eq!(tried, expected);

    let event = gw.only_event().await;
    assert_eq!(event.attempts, 3);
    assert_eq!(event.model_requested, "gpt-4o-mini");
    assert_eq!(event.provider.as_deref(), Some("anthropic"));
    assert_eq!(event.model_served.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_3"));
    let haiku = Catalog::builtin()
        .unwrap()
        .model("claude-haiku-4-5")
        .unwrap()
        .prices;
    assert_eq!(event.prices, haiku, "prices of the model that answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_continue_down_the_list_until_one_answers() {
    let gw = start().await;
    gw.mock.add_rule(Rule::for_model("gpt-4o-mini").fail(503));
    gw.mock
        .add_rule(Rule::for_model("claude-haiku-4-5").fail(529));
    let mut request = messages("gpt-4o-mini", PROMPT);
    request["models"] = json!(["claude-haiku-4-5", "gpt-4o"]);
    let response = gw.post_anthropic(request).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "3");
    assert_eq!(header(&response, "x-tollgate-model"), "gpt-4o");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    let models: Vec<String> = gw
        .mock
        .requests()
        .iter()
        .map(|r| r.body["model"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(models, ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]);
    let event = gw.only_event().await;
    assert_eq!(event.model_served.as_deref(), Some("gpt-4o"));
    assert_eq!(event.attempts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_bad_request_is_returned_as_is_and_not_retried() {
    let gw = two_openai_keys().await;
    let upstream_error = json!({"error": {
        "message": "messages[0].content: something the upstream dislikes",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "custom_upstream_code",
    }});
    gw.mock
        .add_rule(Rule::any().fail_with(400, upstream_error.clone()));
    let mut request = chat("gpt-4o-mini", PROMPT);
    request["models"] = json!(["anthropic:claude-haiku-4-5"]);
    let response = gw.post_openai(request).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "1");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(body, upstream_error);
    assert_eq!(gw.mock.requests().len(), 1, "a 400 is never retried");

    let event = gw.only_event().await;
    assert_eq!(event.status, 400);
    assert_eq!(event.attempts, 1);
    assert_eq!(event.error_kind.as_deref(), Some("upstream_rejected"));
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_request_errors_are_not_retried_on_the_anthropic_api() {
    let gw = start_with(|c| set_keys(c, "anthropic", &[ANTHROPIC_KEY, ANTHROPIC_KEY_2])).await;
    let upstream_error = json!({"type": "error", "error": {
        "type": "invalid_request_error", "message": "messages: bad shape"}});
    gw.mock
        .add_rule(Rule::any().fail_with(422, upstream_error.clone()));
    let (status, _, body) = json_of(
        gw.post_anthropic(messages("claude-haiku-4-5", PROMPT))
            .await,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body, upstream_error);
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_credential_fails_over_to_the_next_key() {
    let gw = two_openai_keys().await;
    gw.mock.add_rule(Rule::for_key(OPENAI_KEY).fail(401));
    let (status, headers, body) = json_of(gw.post_openai(chat("gpt-4o-mini", PROMPT)).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-attempts"], "2");
    let keys: Vec<_> = gw
        .mock
        .requests()
        .iter()
        .map(|r| r.api_key.clone().unwrap_or_default())
        .collect();
    assert_eq!(keys, vec![OPENAI_KEY.to_string(), OPENAI_KEY_2.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_everywhere_give_502_without_the_upstream_body() {
    let gw = two_openai_keys().await;
    let upstream_error = json!({"error": {"message": "Incorrect API key provided: sk-op****-1",
        "type": "invalid_request_error", "code": "invalid_api_key"}});
    gw.mock.add_rule(Rule::any().fail_with(401, upstream_error));
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", PROMPT)).await).await;
    assert_eq!(status, 502);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("refused the credential"), "{message}");
    assert!(
        !body.to_string().contains("sk-op"),
        "upstream text leaked: {body}"
    );
    assert_eq!(gw.mock.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_across_attempts_gives_504_in_the_clients_error_shape() {
    let gw = start_with(|c| {
        set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2]);
        c.routing.total_timeout_ms = 700;
        c.routing.attempt_timeout_ms = 5_000;
    })
    .await;
    gw.mock.add_rule(Rule::any().delay(Duration::from_secs(60)));

    let (status, headers, body) = json_of(gw.post_openai(chat("gpt-4o-mini", PROMPT)).await).await;
    assert_eq!(status, 504, "{body}");
    assert!(headers.contains_key("x-tollgate-event-id"));
    let error = &body["error"];
    assert_eq!(error["type"], "api_error");
    assert_eq!(error["code"], "upstream_timeout");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error.get("param").is_some());

    let mut request = messages("gpt-4o-mini", PROMPT);
    request["models"] = json!(["claude-haiku-4-5"]);
    let (status, _, body) = json_of(gw.post_anthropic(request).await).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "timeout_error");
    assert!(body["error"]["message"].is_string());

    let events = gw.wait_for_events(2).await;
    assert_eq!(events.len(), 2);
    for event in events {
        assert_eq!(event.status, 504);
        assert_eq!(event.error_kind.as_deref(), Some("upstream_timeout"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_candidates_failing_with_5xx_give_502_in_the_clients_error_shape() {
    let gw = two_openai_keys().await;
    gw.mock.add_rule(Rule::any().fail(500));

    let mut request = chat("gpt-4o-mini", PROMPT);
    request["models"] = json!(["anthropic:claude-haiku-4-5"]);
    let response = gw.post_openai(request).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "3");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(body["error"]["code"], "upstream_failed");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"].get("param").is_some());

    let (status, _, body) = json_of(
        gw.post_anthropic(messages("claude-haiku-4-5", PROMPT))
            .await,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "api_error");
    assert!(body["error"]["message"].is_string());

    let mut events = gw.wait_for_events(2).await;
    assert_eq!(events.len(), 2);
    events.sort_by_key(|e| e.attempts);
    assert_eq!(events[0].attempts, 1);
    assert_eq!(events[1].attempts, 3);
    for event in events {
        assert_eq!(event.status, 502);
        assert_eq!(event.error_kind.as_deref(), Some("upstream_failed"));
        assert_eq!(event.tokens.total(), 0);
        assert!(!event.tokens_estimated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_request_fails_over_before_the_first_byte() {
    let gw = two_openai_keys().await;
    gw.mock.add_rule(Rule::for_key(OPENAI_KEY).fail(503));
    let response = gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let body = response.text().await.unwrap();
    assert_eq!(openai_stream_text(&body), DEFAULT_REPLY);
    assert_eq!(sse_events(&body).last().unwrap().1, "[DONE]");
    assert!(!body.contains("\"error\""), "{body}");
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY), 1);
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY_2), 1);
    let event = gw.only_event().await;
    assert_eq!(event.attempts, 2);
    assert_eq!(event.status, 200);
    assert!(event.streamed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_request_fails_over_to_a_fallback_model_before_the_first_byte() {
    let gw = start().await;
    gw.mock.add_rule(Rule::for_model("gpt-4o-mini").fail(429));
    let mut request = messages_stream("gpt-4o-mini", PROMPT);
    request["models"] = json!(["claude-haiku-4-5"]);
    let response = gw.post_anthropic(request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    assert_eq!(header(&response, "x-tollgate-provider"), "anthropic");
    let body = response.text().await.unwrap();
    assert_eq!(anthropic_stream_text(&body), DEFAULT_REPLY);
    assert_eq!(anthropic_events(&body).last().unwrap().0, "message_stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_bytes_were_sent_is_not_retried() {
    let gw = two_openai_keys().await;
    // Only the first key cuts: a retry would be visible as a second request.
    gw.mock.add_rule(Rule::for_key(OPENAI_KEY).cut_stream(2));
    let response = gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-attempts"), "1");
    let event_id = header(&response, "x-tollgate-event-id");
    let body = response.text().await.unwrap();

    assert_eq!(
        gw.mock.requests().len(),
        1,
        "a started stream is never retried"
    );
    let events = sse_events(&body);
    let (_, last) = events.last().unwrap();
    let error: serde_json::Value = serde_json::from_str(last).unwrap();
    assert!(error["error"]["message"].is_string(), "{body}");
    assert_eq!(error["error"]["type"], "api_error");
    assert!(!body.contains("[DONE]"), "{body}");
    // What was streamed before the cut reached the client.
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Hello from ");

    let event = gw.event(&event_id).await;
    assert_eq!(event.attempts, 1);
    assert_eq!(event.status, 502);
    assert_eq!(event.error_kind.as_deref(), Some("upstream_stream_error"));
    assert!(event.streamed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_anthropic_stream_ends_with_an_error_event() {
    let gw = start_with(|c| set_keys(c, "anthropic", &[ANTHROPIC_KEY, ANTHROPIC_KEY_2])).await;
    gw.mock.add_rule(Rule::for_key(ANTHROPIC_KEY).cut_stream(1));
    let response = gw
        .post_anthropic(messages_stream("claude-haiku-4-5", PROMPT))
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(gw.mock.requests().len(), 1);
    let events = anthropic_events(&body);
    assert_eq!(events[0].0, "message_start");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{body}");
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "api_error");
    assert!(!events.iter().any(|(n, _)| n == "message_stop"));
    let event = gw.only_event().await;
    assert_eq!(event.status, 502);
    assert_eq!(event.error_kind.as_deref(), Some("upstream_stream_error"));
    // Anthropic reported the input at the start; the output is estimated.
    assert_eq!(event.tokens.input, 3);
    assert!(event.tokens.output > 0);
    assert!(event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_body_cut_mid_way_fails_over() {
    let gw = two_openai_keys().await;
    gw.mock.add_rule(Rule::for_key(OPENAI_KEY).cut_stream(0));
    let response = gw.post_openai(chat("gpt-4o-mini", PROMPT)).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(body["id"], "chatcmpl-mock-2");
    let event = gw.only_event().await;
    assert_eq!(event.attempts, 2);
    assert_eq!(event.upstream_request_id.as_deref(), Some("req_mock_2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_listed_twice_is_still_tried_only_once_per_model() {
    let gw = start_with(|c| set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2, OPENAI_KEY])).await;
    gw.mock.add_rule(Rule::any().fail(503));
    let response = gw.post_openai(chat("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY), 1);
    assert_eq!(requests_with_key(&gw.mock, OPENAI_KEY_2), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_closes_before_its_final_event_ends_with_an_error_in_every_shape() {
    let gw = start().await;
    // The mock's garbage stream sends one unparseable event, then closes
    // cleanly without `[DONE]` / `message_stop`.
    gw.mock.add_rule(Rule::any().garbage());
    let cases = [
        (
            gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await,
            "openai",
        ),
        (
            gw.post_openai(chat_stream("claude-haiku-4-5", PROMPT))
                .await,
            "openai",
        ),
        (
            gw.post_anthropic(messages_stream("claude-haiku-4-5", PROMPT))
                .await,
            "anthropic",
        ),
        (
            gw.post_anthropic(messages_stream("gpt-4o", PROMPT)).await,
            "anthropic",
        ),
    ];
    for (response, shape) in cases {
        let event_id = header(&response, "x-tollgate-event-id");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("this is not json"),
            "garbage forwarded: {body}"
        );
        assert!(
            !body.contains("[DONE]") && !body.contains("message_stop"),
            "{body}"
        );
        let events = sse_events(&body);
        let (name, last) = events.last().unwrap();
        let error: serde_json::Value = serde_json::from_str(last).unwrap();
        match shape {
            "openai" => assert_eq!(error["error"]["type"], "api_error", "{body}"),
            _ => {
                assert_eq!(name.as_deref(), Some("error"), "{body}");
                assert_eq!(error["type"], "error", "{body}");
            }
        }
        let event = gw.event(&event_id).await;
        assert_eq!(event.status, 502);
        assert_eq!(event.error_kind.as_deref(), Some("upstream_stream_error"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_event_that_never_ends_is_cut_off_not_buffered() {
    // A raw upstream: a valid stream head and first event, then one `data:`
    // line that goes on until the gateway hangs up (up to 1 GiB).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    // How much of the line the upstream got to write before the gateway hung up.
    let upstream = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 16 * 1024];
        let _ = socket.read(&mut request).await;
        let first = r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {first}\n\ndata: "
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let filler = vec![b'x'; 64 * 1024];
        let mut written = 0usize;
        for _ in 0..16_384 {
            if socket.write_all(&filler).await.is_err() {
                break;
            }
            written += filler.len();
        }
        written
    });
    let gw = start_with(|c| {
        c.providers.get_mut("openai").unwrap().base_url = Some(base_url);
    })
    .await;
    let response = gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let body = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the stream ends")
        .unwrap();
    let events = sse_events(&body);
    let (_, last) = events.last().unwrap();
    let error: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        error["error"]["code"], "upstream_stream_error",
        "{body:.300}"
    );
    assert!(
        body.len() < 64 * 1024,
        "the oversized event was not relayed"
    );
    let written = tokio::time::timeout(Duration::from_secs(60), upstream)
        .await
        .expect("the upstream stops writing")
        .unwrap();
    assert!(
        written < 64 << 20,
        "the gateway read {written} bytes of one event before giving up"
    );
    let event = gw.event(&event_id).await;
    assert_eq!(event.status, 502);
    assert_eq!(event.error_kind.as_deref(), Some("upstream_stream_error"));
}
