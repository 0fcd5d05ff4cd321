//! `POST /v1/responses`: passed through to providers that serve the
//! Responses API, translated to chat completions and to messages for the
//! others (streamed and not), metered exactly, refused in OpenAI's error
//! shape naming the field, with failover and no input text in any event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate_core::pricing::cost_for;
use tollgate_core::CredentialSource;
use tollgate_eventlog::EventLog;
use tollgate_mock_upstream::Rule;
use tollgate_proxy::config::ProviderSettings;

const PATH: &str = "/v1/responses";
const GROQ_KEY: &str = "gsk-operator-groq";
const CHAT_ONLY: &str = "llama-3.1-8b-instant";
/// The mock's default reply: 5 words, 5 output tokens.
const REPLY: &str = "Hello from the mock upstream.";

fn respond(model: &str, input: Value) -> Value {
    json!({"model": model, "input": input})
}

fn streamed(model: &str, input: Value) -> Value {
    json!({"model": model, "input": input, "stream": true})
}

/// The mock config plus Groq (a chat-only OpenAI-API provider) on the mock.
async fn start_all() -> TestGateway {
    let mock = tollgate_mock_upstream::MockUpstream::start()
        .await
        .expect("mock upstream");
    let mut config = mock_config(&mock);
    config.providers.insert(
        "groq".into(),
        ProviderSettings {
            base_url: Some(mock.base_url()),
            api_keys: vec![GROQ_KEY.into()],
        },
    );
    start_on(mock, config).await
}

/// Status, then the OpenAI-shaped error.
async fn refusal(response: reqwest::Response, status: u16) -> Value {
    openai_refusal(response, status).await
}

/// The `output_text` of a Responses object, as the SDK computes it.
fn output_text(response: &Value) -> String {
    let mut text = String::new();
    for item in response["output"].as_array().into_iter().flatten() {
        for part in item["content"].as_array().into_iter().flatten() {
            if part["type"] == "output_text" {
                text.push_str(part["text"].as_str().unwrap_or_default());
            }
        }
    }
    text
}

/// Events of a Responses stream: (name, data), checking each data's `type`
/// is its name and `sequence_number` counts from 0.
fn stream_events(body: &str) -> Vec<(String, Value)> {
    let events: Vec<(String, Value)> = sse_events(body)
        .into_iter()
        .map(|(name, data)| {
            let data: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
            (name.unwrap_or_default(), data)
        })
        .collect();
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "{body}");
        assert_eq!(data["sequence_number"], i, "{body}");
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

const TEXT_SEQUENCE_HEAD: [&str; 5] = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
];
const TEXT_SEQUENCE_TAIL: [&str; 5] = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
    "",
];

/// A text stream: the sequence the SDK's stream helpers require, and the
/// final response's text equal to the deltas'.
fn check_text_stream(body: &str) -> Value {
    let events = stream_events(body);
    let names = names(&events);
    assert_eq!(names[..5], TEXT_SEQUENCE_HEAD, "{body}");
    let tail = &names[names.len() - 4..];
    assert_eq!(tail, &TEXT_SEQUENCE_TAIL[..4], "{body}");
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(deltas, REPLY);
    let completed = events.last().unwrap().1["response"].clone();
    assert_eq!(completed["status"], "completed");
    assert_eq!(output_text(&completed), REPLY);
    completed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_provider_gets_the_body_unchanged() {
    let gw = start().await;
    let mut request = respond("gpt-4o-mini", json!("one two three"));
    request["previous_response_id"] = json!("resp_earlier");
    request["store"] = json!(true);
    request["tools"] = json!([{"type": "function", "name": "f", "parameters": {}}]);
    let raw = serde_json::to_vec(&request).unwrap();
    let response = TestGateway::client()
        .post(gw.url(PATH))
        .bearer_auth(&gw.token)
        .header("content-type", "application/json")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    let event_id = header(&response, "x-tollgate-event-id");
    let total = header(&response, "x-tollgate-cost-total");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(output_text(&body), REPLY);

    let sent = gw.mock.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(sent.api_key.as_deref(), Some(OPENAI_KEY));
    assert_eq!(sent.raw_body, raw, "the body passes through byte for byte");

    let event = gw.event(&event_id).await;
    assert_eq!(event.status, 200);
    assert_eq!(event.endpoint, Some(tollgate_core::Endpoint::Responses));
    assert_eq!(event.client_api, tollgate_core::ApiSurface::Openai);
    assert!(!event.tokens_estimated);
    assert_eq!((event.tokens.input, event.tokens.output), (3, 5));
    let cost = cost_for(
        &event.tokens,
        &event.prices,
        Some(CredentialSource::Operator),
        None,
    );
    assert_eq!(total, cost.total().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_stream_passes_through_with_its_usage_and_cost() {
    let gw = start().await;
    gw.mock
        .add_rule(Rule::any().cached_tokens(2).reasoning_tokens(4));
    let response = gw
        .post_json(PATH, &streamed("gpt-4o-mini", json!("one two three")))
        .await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let body = response.text().await.unwrap();
    let completed = check_text_stream(&body);
    let usage = &completed["usage"];
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 4);
    assert!(usage["tollgate_cost"]["total"].is_string(), "{usage}");

    let event = gw.event(&event_id).await;
    assert!(event.streamed);
    assert!(!event.tokens_estimated);
    assert_eq!(event.tokens.input, 3);
    assert_eq!(event.tokens.cached_input, 2);
    assert_eq!((event.tokens.output, event.tokens.reasoning), (9, 4));
    let cost = cost_for(
        &event.tokens,
        &event.prices,
        Some(CredentialSource::Operator),
        None,
    );
    assert_eq!(usage["tollgate_cost"]["total"], cost.total().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_only_and_anthropic_providers_get_it_translated() {
    let gw = start_all().await;
    for (model, path) in [
        (CHAT_ONLY, "/v1/chat/completions"),
        ("claude-haiku-4-5", "/v1/messages"),
    ] {
        let mut request = respond(model, json!("one two three"));
        request["instructions"] = json!("be brief");
        request["max_output_tokens"] = json!(50);
        let response = gw.post_json(PATH, &request).await;
        let event_id = header(&response, "x-tollgate-event-id");
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["object"], "response", "{body}");
        assert_eq!(body["status"], "completed", "{body}");
        assert_eq!(output_text(&body), REPLY);
        assert_eq!(body["usage"]["input_tokens"], 5, "{body}");
        assert_eq!(body["usage"]["output_tokens"], 5, "{body}");

        let sent = gw.mock.requests().pop().unwrap();
        assert_eq!(sent.path, path);
        assert!(sent.body.get("input").is_none(), "{}", sent.body);
        let event = gw.event(&event_id).await;
        assert_eq!(event.endpoint, Some(tollgate_core::Endpoint::Responses));
        assert_eq!((event.tokens.input, event.tokens.output), (5, 5), "{model}");
        assert!(!event.tokens_estimated);

        let response = gw
            .post_json(PATH, &streamed(model, json!("one two three")))
            .await;
        assert_eq!(response.status(), 200);
        let event_id = header(&response, "x-tollgate-event-id");
        let body = response.text().await.unwrap();
        let completed = check_text_stream(&body);
        assert_eq!(completed["usage"]["input_tokens"], 3, "{model}: {body}");
        let event = gw.event(&event_id).await;
        assert!(event.streamed);
        assert_eq!((event.tokens.input, event.tokens.output), (3, 5), "{model}");
        assert!(!event.tokens_estimated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_tool_round_trip_is_translated_both_ways() {
    let gw = start_all().await;
    for model in [CHAT_ONLY, "claude-haiku-4-5", "gpt-4o-mini"] {
        gw.mock.clear_rules();
        gw.mock.add_rule(
            Rule::any()
                .once()
                .tool_call("get_weather", json!({"city": "Paris"})),
        );
        let tools = json!([{
            "type": "function", "name": "get_weather", "description": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }]);
        let mut request = respond(model, json!("weather in Paris?"));
        request["tools"] = tools.clone();
        let (status, _, body) = json_of(gw.post_json(PATH, &request).await).await;
        assert_eq!(status, 200, "{model}: {body}");
        let call = body["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["type"] == "function_call")
            .unwrap_or_else(|| panic!("{model}: no function call in {body}"))
            .clone();
        assert_eq!(call["name"], "get_weather");
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Paris"}));

        // The client sends the call and its output back.
        let mut follow_up = respond(
            model,
            json!([
                {"role": "user", "content": "weather in Paris?"},
                {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": call["arguments"]},
                {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
            ]),
        );
        follow_up["tools"] = tools;
        let (status, _, body) = json_of(gw.post_json(PATH, &follow_up).await).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(output_text(&body), REPLY);
        let sent = gw.mock.requests().pop().unwrap().body;
        let sent_text = sent.to_string();
        assert!(sent_text.contains("sunny"), "{model}: {sent_text}");
        match model {
            CHAT_ONLY => {
                let messages = sent["messages"].as_array().unwrap();
                assert_eq!(messages[1]["tool_calls"][0]["id"], call["call_id"]);
                assert_eq!(messages[2]["role"], "tool");
            }
            "claude-haiku-4-5" => {
                let messages = sent["messages"].as_array().unwrap();
                assert_eq!(messages[1]["content"][0]["type"], "tool_use");
                assert_eq!(messages[2]["content"][0]["type"], "tool_result");
            }
            _ => assert_eq!(sent["input"][2]["output"], "sunny"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_stream_translates_to_function_call_events() {
    let gw = start_all().await;
    for model in [CHAT_ONLY, "claude-haiku-4-5", "gpt-4o-mini"] {
        gw.mock.clear_rules();
        gw.mock
            .add_rule(Rule::any().tool_call("get_weather", json!({"city": "Paris"})));
        let mut request = streamed(model, json!("weather?"));
        request["tools"] = json!([{"type": "function", "name": "get_weather", "parameters": {}}]);
        let response = gw.post_json(PATH, &request).await;
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        let events = stream_events(&body);
        let names = names(&events);
        assert_eq!(names[2], "response.output_item.added", "{model}: {body}");
        assert!(
            names.contains(&"response.function_call_arguments.delta"),
            "{body}"
        );
        let done = events
            .iter()
            .find(|(n, _)| n == "response.function_call_arguments.done")
            .unwrap_or_else(|| panic!("{model}: {body}"));
        let arguments: Value = serde_json::from_str(done.1["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Paris"}));
        assert_eq!(*names.last().unwrap(), "response.completed", "{body}");
        let output = &events.last().unwrap().1["response"]["output"];
        let call = output
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "function_call")
            .unwrap();
        assert_eq!(call["arguments"], done.1["arguments"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untranslatable_fields_are_refused_naming_them() {
    let gw = start_all().await;
    for (field, value) in [
        ("previous_response_id", json!("resp_1")),
        ("background", json!(true)),
        ("store", json!(true)),
        ("conversation", json!("conv_1")),
    ] {
        for model in [CHAT_ONLY, "claude-haiku-4-5"] {
            let mut request = respond(model, json!("hi"));
            request[field] = value.clone();
            let error = refusal(gw.post_json(PATH, &request).await, 400).await;
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(field), "{model} {field}: {message}");
        }
    }
    // Translated to chat completions, but not on to messages.
    for (field, value) in [
        ("text", json!({"format": {"type": "json_object"}})),
        ("reasoning", json!({"effort": "low"})),
    ] {
        let mut request = respond("claude-haiku-4-5", json!("hi"));
        request[field] = value.clone();
        let error = refusal(gw.post_json(PATH, &request).await, 400).await;
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(field) && message.contains("Anthropic"),
            "{message}"
        );
        request["model"] = json!(CHAT_ONLY);
        let response = gw.post_json(PATH, &request).await;
        assert_eq!(response.status(), 200, "{field}");
        let sent = gw.mock.requests().pop().unwrap();
        let chat_field = if field == "text" {
            "response_format"
        } else {
            "reasoning_effort"
        };
        assert!(sent.body.get(chat_field).is_some(), "{}", sent.body);
    }
    // A built-in tool: untranslatable, and unpriced on the operator's key.
    gw.mock.clear_requests();
    for model in [CHAT_ONLY, "claude-haiku-4-5", "gpt-4o-mini"] {
        let mut request = respond(model, json!("hi"));
        request["tools"] = json!([{"type": "web_search"}]);
        let error = refusal(gw.post_json(PATH, &request).await, 400).await;
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("tools[0].type"), "{model}: {message}");
    }
    // `background` on the operator's credentials, to a Responses provider.
    let mut request = respond("gpt-4o-mini", json!("hi"));
    request["background"] = json!(true);
    let error = refusal(gw.post_json(PATH, &request).await, 400).await;
    assert_eq!(error["param"], "background");
    assert!(
        gw.mock.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_own_key_may_use_built_in_tools() {
    let gw = start().await;
    let token = byok_token(&gw, "openai", "sk-caller-own").await;
    let mut request = respond("gpt-4o-mini", json!("hi"));
    request["tools"] = json!([{"type": "web_search"}]);
    let response = TestGateway::client()
        .post(gw.url(PATH))
        .bearer_auth(&token)
        .json(&request)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let sent = gw.mock.requests().pop().unwrap();
    assert_eq!(sent.api_key.as_deref(), Some("sk-caller-own"));
    assert_eq!(sent.body["tools"][0]["type"], "web_search");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_fallback_models_fail_over_streaming_included() {
    let gw = start_with(|c| set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2])).await;
    gw.mock
        .add_rule(Rule::for_key(OPENAI_KEY).times(2).fail(429));
    let response = gw
        .post_json(PATH, &respond("gpt-4o-mini", json!("a b")))
        .await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    assert_eq!(response.status(), 200);
    let response = gw
        .post_json(PATH, &streamed("gpt-4o-mini", json!("a b")))
        .await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    check_text_stream(&response.text().await.unwrap());

    // Every OpenAI attempt fails: the fallback is an Anthropic model,
    // reached with the Responses request translated.
    gw.mock.clear_rules();
    gw.mock.add_rule(Rule::for_model("gpt-4o-mini").fail(500));
    for stream in [false, true] {
        let mut request = respond("gpt-4o-mini", json!("a b c"));
        request["models"] = json!(["claude-haiku-4-5"]);
        request["stream"] = json!(stream);
        let response = gw.post_json(PATH, &request).await;
        assert_eq!(header(&response, "x-tollgate-model"), "claude-haiku-4-5");
        let event_id = header(&response, "x-tollgate-event-id");
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        if stream {
            check_text_stream(&body);
        } else {
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(output_text(&body), REPLY);
        }
        let event = gw.event(&event_id).await;
        assert_eq!(event.attempts, 3);
        assert_eq!(event.model_served.as_deref(), Some("claude-haiku-4-5"));
        let last = gw.mock.requests().pop().unwrap();
        assert_eq!(last.path, "/v1/messages");
        assert!(last.body.get("models").is_none());
    }

    // Every candidate failing: 502 in OpenAI's shape.
    let error = refusal(
        gw.post_json(PATH, &respond("gpt-4o-mini", json!("x")))
            .await,
        502,
    )
    .await;
    assert_eq!(error["code"], "upstream_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_in_openais_shape() {
    let gw = start_with(tight_limits).await;
    // 401: no key, a wrong key.
    let response = TestGateway::client()
        .post(gw.url(PATH))
        .json(&respond("gpt-4o-mini", json!("x")))
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(response, 401).await["code"], "invalid_api_key");
    let response = TestGateway::client()
        .post(gw.url(PATH))
        .bearer_auth("tg-not-a-key")
        .json(&respond("gpt-4o-mini", json!("x")))
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(response, 401).await["code"], "invalid_api_key");
    // 400: a bad body names its field.
    let error = refusal(
        gw.post_json(PATH, &json!({"model": "gpt-4o-mini"})).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "input");
    // 404: an unknown model.
    let error = refusal(
        gw.post_json(PATH, &respond("no-such-model", json!("x")))
            .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "model_not_found");
    // 400: an embedding model.
    let error = refusal(
        gw.post_json(PATH, &respond("text-embedding-3-small", json!("x")))
            .await,
        400,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("embedding"),
        "{error}"
    );
    // 413, 429, 403 and 504.
    check_openai_limits(&gw, PATH, respond, "gpt-4o-mini", "gpt-4o").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_balance_is_refused_with_402() {
    let gw = start_with(|c| c.billing.enforce = true).await;
    let error = refusal(
        gw.post_json(PATH, &respond("gpt-4o-mini", json!("x")))
            .await,
        402,
    )
    .await;
    assert_eq!(error["code"], "insufficient_credits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_edge_cap_get_503() {
    let gw = start_with(|c| c.server.max_requests = 1).await;
    check_openai_edge_cap(&gw, PATH, respond, "gpt-4o", "gpt-4o-mini").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_text_never_reaches_the_event_store() {
    let gw = start_all().await;
    for model in [CHAT_ONLY, "claude-haiku-4-5", "gpt-4o-mini"] {
        for stream in [false, true] {
            let mut request = respond(
                model,
                json!([{"role": "user", "content": [{"type": "input_text", "text": "RESPCANARY words"}]}]),
            );
            request["instructions"] = json!("INSTRCANARY");
            request["stream"] = json!(stream);
            let response = gw.post_json(PATH, &request).await;
            assert_eq!(response.status(), 200, "{model}");
            let _ = response.text().await.unwrap();
        }
    }
    let events = gw.wait_for_events(6).await;
    assert_eq!(events.len(), 6);
    let records = gw
        .events
        .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100_000)
        .await
        .unwrap();
    assert_eq!(records.len(), 6);
    for record in &records {
        let payload = String::from_utf8_lossy(&record.payload);
        assert!(!payload.contains("RESPCANARY"), "input stored: {payload}");
        assert!(
            !payload.contains("INSTRCANARY"),
            "instructions stored: {payload}"
        );
        assert!(!payload.contains("Hello from"), "output stored: {payload}");
    }
}

/// A Responses answer reporting `searches` web-search calls.
fn answer_with_searches(searches: usize) -> Value {
    let mut output: Vec<Value> = (0..searches)
        .map(|i| json!({"type": "web_search_call", "id": format!("ws_{i}"), "status": "completed"}))
        .collect();
    output.push(json!({
        "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": "found it", "annotations": []}],
    }));
    json!({
        "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
        "model": "gpt-4o-mini", "output": output,
        "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 200, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1200},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priced_built_in_tool_calls_are_billed_per_call() {
    let gw = start_with(|c| {
        c.builtin_tool_prices.insert(
            "web_search".into(),
            tollgate_proxy::config::ExactUsd(usd("0.01")),
        );
    })
    .await;
    gw.mock
        .add_rule(Rule::any().fail_with(200, answer_with_searches(2)));
    let mut request = respond("gpt-4o-mini", json!("search for it"));
    request["tools"] = json!([{"type": "web_search_preview"}, {"type": "function", "name": "f"}]);
    let response = gw.post_json(PATH, &request).await;
    let event_id = header(&response, "x-tollgate-event-id");
    let total = header(&response, "x-tollgate-cost-total");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let event = gw.event(&event_id).await;
    assert_eq!(
        event.tool_calls,
        vec![tollgate_core::ToolCallCharge {
            tool: "web_search".into(),
            calls: 2,
            price: usd("0.01"),
        }]
    );
    // gpt-4o-mini: $0.15 in, $0.60 out per million; fee $0.05 per million.
    let tokens_cost = usd("0.00015") + usd("0.00012");
    let fee = usd("0.00006");
    let cost = tollgate_core::pricing::cost_of(&event);
    assert_eq!(cost.upstream, tokens_cost + usd("0.02"));
    assert_eq!(cost.fee, fee);
    assert_eq!(total, cost.total().to_string());

    // A built-in tool the operator did not price is still refused.
    let mut request = respond("gpt-4o-mini", json!("x"));
    request["tools"] = json!([{"type": "web_search"}, {"type": "file_search"}]);
    let error = refusal(gw.post_json(PATH, &request).await, 400).await;
    assert!(
        error["message"].as_str().unwrap().contains("tools[1].type"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priced_built_in_tool_calls_in_a_stream_are_billed_per_call() {
    let gw = start_with(|c| {
        c.builtin_tool_prices.insert(
            "web_search".into(),
            tollgate_proxy::config::ExactUsd(usd("0.01")),
        );
    })
    .await;
    let completed = answer_with_searches(3);
    let mut created = completed.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let events = [
        (
            "response.created",
            json!({"type": "response.created", "sequence_number": 0, "response": created}),
        ),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": 1,
            "item_id": "msg_1", "output_index": 3, "content_index": 0, "delta": "found it"}),
        ),
        (
            "response.completed",
            json!({"type": "response.completed", "sequence_number": 2, "response": completed}),
        ),
    ];
    let body: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    gw.mock.add_rule(Rule::any().events(body));
    let mut request = streamed("gpt-4o-mini", json!("search for it"));
    request["tools"] = json!([{"type": "web_search"}]);
    let response = gw.post_json(PATH, &request).await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let text = response.text().await.unwrap();
    let last = stream_events(&text).pop().unwrap().1;
    let event = gw.event(&event_id).await;
    assert_eq!(event.tool_calls.len(), 1);
    assert_eq!(
        (event.tool_calls[0].calls, event.tool_calls[0].price),
        (3, usd("0.01"))
    );
    let cost = tollgate_core::pricing::cost_of(&event);
    assert_eq!(cost.upstream, usd("0.00015") + usd("0.00012") + usd("0.03"));
    // The closing event shows the same cost, tool calls included.
    assert_eq!(
        last["response"]["usage"]["tollgate_cost"]["total"],
        cost.total().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_by_max_tokens_is_incomplete_streamed_and_not() {
    let gw = start_all().await;
    let usage = json!({"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6});
    let completion = json!({
        "id": "chatcmpl-cut", "object": "chat.completion", "created": 1, "model": CHAT_ONLY,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from"},
            "finish_reason": "length"}],
        "usage": usage,
    });
    gw.mock
        .add_rule(Rule::any().once().fail_with(200, completion));
    let mut request = respond(CHAT_ONLY, json!("one two three four"));
    request["max_output_tokens"] = json!(2);
    let (status, _, body) = json_of(gw.post_json(PATH, &request).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "incomplete", "{body}");
    assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(output_text(&body), "Hello from");
    assert_eq!(gw.mock.requests().pop().unwrap().body["max_tokens"], 2);

    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-cut", "object": "chat.completion.chunk", "created": 1,
            "model": CHAT_ONLY, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let chunks = [
        chunk(
            json!({"role": "assistant", "content": "Hello "}),
            Value::Null,
        ),
        chunk(json!({"content": "from"}), Value::Null),
        chunk(json!({}), json!("length")),
        json!({"id": "chatcmpl-cut", "object": "chat.completion.chunk", "created": 1,
            "model": CHAT_ONLY, "choices": [], "usage": usage}),
    ];
    let mut sse: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    sse.push_str("data: [DONE]\n\n");
    gw.mock.add_rule(Rule::any().once().events(sse));
    request["stream"] = json!(true);
    let response = gw.post_json(PATH, &request).await;
    assert_eq!(response.status(), 200);
    let event_id = header(&response, "x-tollgate-event-id");
    let events = stream_events(&response.text().await.unwrap());
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(output_text(&last["response"]), "Hello from");
    let event = gw.event(&event_id).await;
    assert_eq!((event.tokens.input, event.tokens.output), (4, 2));
    assert!(!event.tokens_estimated);
}
