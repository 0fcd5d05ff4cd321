//! The OpenAI-compatible surface: `/v1/chat/completions` (streamed and not)
//! and `/v1/models`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use tollgate_core::{Catalog, CredentialSource};
use tollgate_mock_upstream::{Rule, DEFAULT_REPLY};

const PROMPT: &str = "Say hello to the test"; // 5 words

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_completion_returns_the_upstream_reply_with_trace_headers() {
    let gw = start().await;
    let response = gw.post_openai(chat("gpt-4o-mini", PROMPT)).await;
    let (status, headers, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 5);

    let get = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(get("x-tollgate-provider"), "openai");
    assert_eq!(get("x-tollgate-model"), "gpt-4o-mini");
    assert_eq!(get("x-tollgate-attempts"), "1");
    let event_id = get("x-tollgate-event-id");
    assert!(!event_id.is_empty());

    let event = gw.only_event().await;
    assert_eq!(event.event_id.to_string(), event_id);
    assert_eq!(event.provider.as_deref(), Some("openai"));
    assert_eq!(event.model_requested, "gpt-4o-mini");
    assert_eq!(event.model_served.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.status, 200);
    assert!(!event.streamed);
    assert_eq!(event.tokens.input, 5);
    assert_eq!(event.tokens.cached_input, 0);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_prompt_tokens_are_split_from_uncached_input_in_the_usage_event() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().cached_tokens(3));
    let (status, _, body) = json_of(gw.post_openai(chat("gpt-4o-mini", PROMPT)).await).await;
    assert_eq!(status, 200, "{body}");
    // The client sees OpenAI's own accounting: cached tokens inside prompt_tokens.
    assert_eq!(body["usage"]["prompt_tokens"], 8);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 3);

    let event = gw.only_event().await;
    assert_eq!(event.tokens.input, 5, "input = prompt - cached");
    assert_eq!(event.tokens.cached_input, 3);
    assert_eq!(event.tokens.output, 5);
    assert_eq!(event.tokens.cache_write_5m + event.tokens.cache_write_1h, 0);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunks_pass_through_in_order_and_end_with_done() {
    let gw = start().await;
    let response = gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&response, "x-tollgate-provider"), "openai");
    assert_eq!(header(&response, "x-tollgate-model"), "gpt-4o-mini");
    assert_eq!(header(&response, "x-tollgate-attempts"), "1");
    let event_id = header(&response, "x-tollgate-event-id");
    let body = response.text().await.unwrap();

    let events = sse_events(&body);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"));
    let chunks = openai_chunks(&body);
    // role chunk, one chunk per word, finish chunk.
    assert_eq!(chunks.len(), 1 + 5 + 1, "{body}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let words: Vec<&str> = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(words, ["Hello ", "from ", "the ", "mock ", "upstream."]);
    assert_eq!(openai_stream_text(&body), DEFAULT_REPLY);
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }

    let event = gw.event(&event_id).await;
    assert!(event.streamed);
    assert_eq!(event.status, 200);
    assert_eq!(event.tokens.input, 5);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_asks_upstream_for_usage_but_hides_the_usage_chunk_from_a_client_that_did_not() {
    let gw = start().await;
    let response = gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();

    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].body["stream_options"]["include_usage"], true,
        "upstream must be asked for usage: {}",
        requests[0].body
    );
    for chunk in openai_chunks(&body) {
        let usage_only =
            chunk["usage"].is_object() && chunk["choices"].as_array().is_none_or(|c| c.is_empty());
        assert!(
            !usage_only,
            "usage-only chunk leaked to the client: {chunk}"
        );
    }
    assert_eq!(openai_stream_text(&body), DEFAULT_REPLY);
    // The gateway still metered the reported usage.
    let event = gw.only_event().await;
    assert_eq!(event.tokens.input, 5);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_chunk_is_forwarded_when_the_client_asked_for_it() {
    let gw = start().await;
    let mut request = chat_stream("gpt-4o-mini", PROMPT);
    request["stream_options"] = json!({"include_usage": true});
    let response = gw.post_openai(request).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let chunks = openai_chunks(&body);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{body}");
    assert_eq!(last["usage"]["prompt_tokens"], 5);
    assert_eq!(last["usage"]["completion_tokens"], 5);
    assert_eq!(sse_events(&body).last().unwrap().1, "[DONE]");
    assert_eq!(
        gw.mock.requests()[0].body["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_receives_the_operator_key_never_the_clients_access_key() {
    let gw = start().await;
    assert_eq!(
        gw.post_openai(chat("gpt-4o-mini", PROMPT)).await.status(),
        200
    );
    let streamed = gw.post_openai(chat_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(streamed.status(), 200);
    streamed.text().await.unwrap();
    // The Anthropic SDK's header style works too.
    let via_x_api_key = TestGateway::client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-api-key", &gw.token)
        .json(&chat("gpt-4o-mini", PROMPT))
        .send()
        .await
        .unwrap();
    assert_eq!(via_x_api_key.status(), 200);

    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.api_key.as_deref(), Some(OPENAI_KEY));
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&gw.token),
                "client access key forwarded upstream in header {name}"
            );
        }
        assert!(!request.body.to_string().contains(&gw.token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_field_is_not_forwarded_upstream() {
    let gw = start().await;
    let mut request = chat("gpt-4o-mini", PROMPT);
    request["models"] = json!(["anthropic:claude-haiku-4-5"]);
    request["temperature"] = json!(0.25);
    let (status, _, body) = json_of(gw.post_openai(request).await).await;
    assert_eq!(status, 200, "{body}");
    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    let upstream = &requests[0].body;
    assert!(upstream.get("models").is_none(), "{upstream}");
    assert_eq!(upstream["model"], "gpt-4o-mini");
    // Everything else is passed through untouched.
    assert_eq!(upstream["temperature"], 0.25);
    assert_eq!(
        upstream["messages"],
        json!([{"role": "user", "content": PROMPT}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_models_field_is_not_forwarded_and_stream_options_keep_their_other_members() {
    let gw = start().await;
    let mut request = chat("gpt-4o-mini", PROMPT);
    request["models"] = json!(null);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_obfuscation": false});
    request["metadata"] = json!({"note": "caf\u{e9} \"quoted\""});
    let response = gw.post_openai(request).await;
    assert_eq!(response.status(), 200);
    let _ = response.text().await.unwrap();
    let upstream = &gw.mock.requests()[0].body;
    assert!(upstream.get("models").is_none(), "{upstream}");
    assert_eq!(
        upstream["stream_options"],
        json!({"include_obfuscation": false, "include_usage": true})
    );
    assert_eq!(upstream["metadata"]["note"], "caf\u{e9} \"quoted\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_body_reaches_the_upstream_as_sent() {
    let gw = start().await;
    // Member order, spacing and escapes survive: nothing in it had to change.
    let raw = "{ \"temperature\": 0.5,\"model\":\"gpt-4o-mini\", \"messages\":[{\"role\":\"user\",\"content\":\"\\u00e9t\\u00e9\"}] }";
    let response = TestGateway::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.token)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let upstream = &gw.mock.requests()[0];
    assert_eq!(String::from_utf8_lossy(&upstream.raw_body), raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_is_served_by_its_catalog_model() {
    let gw = start().await;
    let response = gw.post_openai(chat("gpt-4o-mini-2024-07-18", PROMPT)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-model"), "gpt-4o-mini");
    assert_eq!(gw.mock.requests()[0].body["model"], "gpt-4o-mini");
    let event = gw.only_event().await;
    assert_eq!(event.model_requested, "gpt-4o-mini-2024-07-18");
    assert_eq!(event.model_served.as_deref(), Some("gpt-4o-mini"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_endpoint_lists_catalog_models_in_openai_shape() {
    let gw = start().await;
    let response = TestGateway::client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    let catalog = Catalog::builtin().unwrap();
    assert_eq!(data.len(), catalog.models().len());
    let find = |id: &str| data.iter().find(|m| m["id"] == id).cloned();
    let mini = find("gpt-4o-mini").expect("gpt-4o-mini listed");
    assert_eq!(mini["object"], "model");
    assert_eq!(mini["owned_by"], "openai");
    assert!(mini["created"].is_u64());
    let sonnet = find("claude-sonnet-4-5").expect("claude-sonnet-4-5 listed");
    assert_eq!(sonnet["owned_by"], "anthropic");
    for model in data {
        assert_eq!(model["object"], "model");
        assert!(model["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_endpoint_answers_in_anthropic_shape_when_anthropic_version_is_sent() {
    let gw = start().await;
    let response = TestGateway::client()
        .get(gw.url("/v1/models"))
        .header("x-api-key", &gw.token)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["has_more"], false);
    assert!(body.get("object").is_none());
    let data = body["data"].as_array().unwrap();
    assert!(!data.is_empty());
    let sonnet = data
        .iter()
        .find(|m| m["id"] == "claude-sonnet-4-5")
        .expect("claude-sonnet-4-5 listed");
    assert_eq!(sonnet["type"], "model");
    assert!(sonnet["display_name"].is_string());
    assert!(sonnet["created_at"].is_string());
    assert_eq!(body["first_id"], data[0]["id"]);
    assert_eq!(body["last_id"], data[data.len() - 1]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_endpoint_needs_a_valid_key() {
    let gw = start().await;
    let client = TestGateway::client();
    let missing = client.get(gw.url("/v1/models")).send().await.unwrap();
    let (status, _, body) = json_of(missing).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");

    let invalid = client
        .get(gw.url("/v1/models"))
        .bearer_auth("tgk_not_a_real_key")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 401);

    let anthropic = client
        .get(gw.url("/v1/models"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(anthropic).await;
    assert_eq!(status, 401);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_model_can_be_retrieved_in_either_shape() {
    let gw = start().await;
    let client = TestGateway::client();
    let found: serde_json::Value = client
        .get(gw.url("/v1/models/gpt-4o-mini"))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["id"], "gpt-4o-mini");
    assert_eq!(found["owned_by"], "openai");
    let qualified = client
        .get(gw.url("/v1/models/openai/gpt-oss-120b"))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(qualified.status(), 200);
    let anthropic: serde_json::Value = client
        .get(gw.url("/v1/models/claude-haiku-4-5"))
        .header("x-api-key", &gw.token)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic["type"], "model");
    let missing = client
        .get(gw.url("/v1/models/no-such-model"))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
}
