//! Cross-API requests: an OpenAI-format request for a Claude model and an
//! Anthropic-format request for an OpenAI model, streamed and not, with tools.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate_mock_upstream::{Rule, DEFAULT_REPLY};

fn weather_args() -> Value {
    json!({"city": "Paris", "unit": "celsius", "days": 3, "detail": {"hourly": true}})
}

fn openai_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }])
}

fn anthropic_tools() -> Value {
    json!([{
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }])
}

// ---------------------------------------------------------------------------
// OpenAI client -> Anthropic upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_request_for_a_claude_model_reaches_upstream_as_anthropic_messages() {
    let gw = start().await;
    let request = json!({
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the weather in Paris"},
        ],
        "max_tokens": 300,
        "temperature": 0.5,
        "stop": ["END", "STOP"],
        "tools": openai_tools(),
        "models": ["gpt-4o-mini"],
    });
    let response = gw.post_openai(request).await;
    let (status, headers, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-provider"], "anthropic");
    assert_eq!(headers["x-tollgate-model"], "claude-sonnet-4-5");

    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    let upstream = &requests[0];
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.api_key.as_deref(), Some(ANTHROPIC_KEY));
    assert_eq!(upstream.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert!(upstream.header("anthropic-version").is_some());
    let sent = &upstream.body;
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "You are terse.");
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "What is the weather in Paris"}]),
        "system message moved out of messages: {sent}"
    );
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["stop_sequences"], json!(["END", "STOP"]));
    assert!(sent.get("stop").is_none());
    assert!(sent.get("models").is_none(), "{sent}");
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["description"], "Weather for a city");
    assert_eq!(
        sent["tools"][0]["input_schema"],
        openai_tools()[0]["function"]["parameters"]
    );

    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "You are terse." (3) + the user's 6 words.
    assert_eq!(body["usage"]["prompt_tokens"], 9);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 14);

    let event = gw.only_event().await;
    assert_eq!(event.client_api.as_str(), "openai");
    assert_eq!(event.provider.as_deref(), Some("anthropic"));
    assert_eq!(event.tokens.input, 9);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_is_set_for_anthropic_when_the_openai_request_has_none() {
    let gw = start().await;
    let response = gw
        .post_openai(chat("claude-haiku-4-5", "hello there"))
        .await;
    assert_eq!(response.status(), 200);
    let sent = gw.mock.requests()[0].body.clone();
    let max_tokens = sent["max_tokens"].as_u64().expect("max_tokens set");
    // The catalog's output limit for the model.
    let catalog = tollgate_core::Catalog::builtin().unwrap();
    let limit = catalog.model("claude-haiku-4-5").unwrap().max_output_tokens;
    assert_eq!(max_tokens, u64::from(limit));
    assert!(sent.get("system").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_tool_use_becomes_an_openai_tool_call() {
    let gw = start().await;
    gw.mock
        .add_rule(Rule::any().tool_call("get_weather", weather_args()));
    let mut request = chat("claude-sonnet-4-5", "weather in Paris");
    request["tools"] = openai_tools();
    let (status, _, body) = json_of(gw.post_openai(request).await).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, weather_args());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_for_a_claude_model_is_translated_chunk_by_chunk() {
    let gw = start().await;
    let mut request = chat_stream("claude-sonnet-4-5", "say hello now");
    request["stream_options"] = json!({"include_usage": true});
    let response = gw.post_openai(request).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let body = response.text().await.unwrap();

    let sent = &gw.mock.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["stream"], true);
    assert!(sent.body.get("stream_options").is_none());

    assert_eq!(sse_events(&body).last().unwrap().1, "[DONE]", "{body}");
    let chunks = openai_chunks(&body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(openai_stream_text(&body), DEFAULT_REPLY);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "claude-sonnet-4-5");
    }
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 3);
    assert_eq!(usage["completion_tokens"], 5);

    let event = gw.only_event().await;
    assert!(event.streamed);
    assert_eq!(event.tokens.input, 3);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_for_a_claude_model_without_include_usage_has_no_usage_chunk() {
    let gw = start().await;
    let response = gw
        .post_openai(chat_stream("claude-sonnet-4-5", "say hello now"))
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    for chunk in openai_chunks(&body) {
        assert!(chunk["usage"].is_null(), "unrequested usage: {chunk}");
    }
    assert_eq!(openai_stream_text(&body), DEFAULT_REPLY);
    // Usage is still metered.
    let event = gw.only_event().await;
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_claude_tool_call_reassembles_to_the_upstream_arguments() {
    let gw = start().await;
    gw.mock
        .add_rule(Rule::any().tool_call("get_weather", weather_args()));
    let mut request = chat_stream("claude-sonnet-4-5", "weather in Paris");
    request["tools"] = openai_tools();
    let response = gw.post_openai(request).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(sse_events(&body).last().unwrap().1, "[DONE]");

    let chunks = openai_chunks(&body);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(
        calls.len() > 2,
        "arguments arrive in several fragments: {body}"
    );
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    for call in &calls {
        assert_eq!(call["index"], 0);
    }
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        arguments,
        serde_json::to_string(&weather_args()).unwrap(),
        "fragments concatenate to the exact arguments"
    );
    let parsed: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(parsed, weather_args());
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
}

// ---------------------------------------------------------------------------
// Anthropic client -> OpenAI upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_request_for_an_openai_model_reaches_upstream_as_chat_completions() {
    let gw = start().await;
    let request = json!({
        "model": "gpt-4o",
        "max_tokens": 200,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "What is the weather in Paris"}],
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "tools": anthropic_tools(),
        "models": ["claude-haiku-4-5"],
    });
    let response = gw.post_anthropic(request).await;
    let (status, headers, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-provider"], "openai");
    assert_eq!(headers["x-tollgate-model"], "gpt-4o");

    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    let upstream = &requests[0];
    assert_eq!(upstream.path, "/v1/chat/completions");
    assert_eq!(upstream.api_key.as_deref(), Some(OPENAI_KEY));
    assert!(upstream.header("anthropic-version").is_none());
    let sent = &upstream.body;
    assert_eq!(sent["model"], "gpt-4o");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the weather in Paris"},
        ]),
        "{sent}"
    );
    assert_eq!(sent["max_tokens"], 200);
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["temperature"], 0.3);
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        sent["tools"][0]["function"]["parameters"],
        anthropic_tools()[0]["input_schema"]
    );
    assert!(sent.get("system").is_none());
    assert!(sent.get("models").is_none(), "{sent}");

    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["content"][0]["text"], DEFAULT_REPLY);
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 9);
    assert_eq!(body["usage"]["output_tokens"], 5);

    let event = gw.only_event().await;
    assert_eq!(event.client_api.as_str(), "anthropic");
    assert_eq!(event.provider.as_deref(), Some("openai"));
    assert_eq!(event.tokens.input, 9);
    assert_eq!(event.tokens.output, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_tool_call_becomes_an_anthropic_tool_use_block() {
    let gw = start().await;
    gw.mock
        .add_rule(Rule::any().tool_call("get_weather", weather_args()));
    let mut request = messages("gpt-4o", "weather in Paris");
    request["tools"] = anthropic_tools();
    let (status, _, body) = json_of(gw.post_anthropic(request).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stop_reason"], "tool_use");
    let block = body["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use block: {body}"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], weather_args());
    assert!(block["id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_stream_for_an_openai_model_is_translated_with_usage_in_message_delta() {
    let gw = start().await;
    let response = gw
        .post_anthropic(messages_stream("gpt-4o", "say hello now"))
        .await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let body = response.text().await.unwrap();

    let sent = &gw.mock.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);

    let events = anthropic_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{body}");
    assert_eq!(names.last(), Some(&"message_stop"), "{body}");
    assert_eq!(names[1], "content_block_start");
    assert_eq!(names[names.len() - 3], "content_block_stop");
    assert_eq!(names[names.len() - 2], "message_delta");
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    assert_eq!(events[0].1["message"]["model"], "gpt-4o");
    assert_eq!(anthropic_stream_text(&body), DEFAULT_REPLY);
    let delta = &events[names.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(delta["usage"]["input_tokens"], 3);
    assert_eq!(names.iter().filter(|n| **n == "message_stop").count(), 1);

    let event = gw.only_event().await;
    assert!(event.streamed);
    assert_eq!(event.tokens.input, 3);
    assert_eq!(event.tokens.output, 5);
    assert!(!event.tokens_estimated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_openai_tool_call_reassembles_from_input_json_deltas() {
    let gw = start().await;
    gw.mock
        .add_rule(Rule::any().tool_call("get_weather", weather_args()));
    let mut request = messages_stream("gpt-4o", "weather in Paris");
    request["tools"] = anthropic_tools();
    let response = gw.post_anthropic(request).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let events = anthropic_events(&body);

    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use block: {body}"));
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let index = start.1["index"].clone();
    let fragments: Vec<&str> = events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| {
            assert_eq!(d["index"], index);
            d["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(fragments.len() > 2, "several fragments: {body}");
    let parsed: Value = serde_json::from_str(&fragments.concat()).unwrap();
    assert_eq!(parsed, weather_args());

    let delta = events
        .iter()
        .find(|(n, _)| n == "message_delta")
        .unwrap_or_else(|| panic!("no message_delta: {body}"));
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    let fragments_count = serde_json::to_string(&weather_args())
        .unwrap()
        .len()
        .div_ceil(8);
    assert_eq!(delta.1["usage"]["output_tokens"], fragments_count);
    assert_eq!(events.last().unwrap().0, "message_stop");
}

// ---------------------------------------------------------------------------
// Errors across APIs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_rejection_is_returned_in_the_clients_error_shape() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().fail(400));

    // Anthropic upstream, OpenAI client.
    let (status, _, body) = json_of(gw.post_openai(chat("claude-haiku-4-5", "hi")).await).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("injected 400")));
    assert!(body["error"]["type"].is_string());
    assert!(body.get("type").is_none(), "OpenAI shape: {body}");

    // OpenAI upstream, Anthropic client (streamed: the error precedes the stream).
    for request in [
        messages("gpt-4o-mini", "hi"),
        messages_stream("gpt-4o-mini", "hi"),
    ] {
        let (status, _, body) = json_of(gw.post_anthropic(request).await).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("injected 400")));
    }
    assert_eq!(gw.mock.requests().len(), 3, "never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translated_stream_cut_mid_way_ends_with_an_error_in_the_clients_shape() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().cut_stream(2));

    let response = gw
        .post_openai(chat_stream("claude-haiku-4-5", "hi there"))
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(!body.contains("[DONE]"), "{body}");
    let chunks = openai_chunks(&body);
    assert!(
        chunks.last().unwrap()["error"]["message"].is_string(),
        "{body}"
    );
    assert_eq!(openai_stream_text(&body), "Hello from ");

    let response = gw
        .post_anthropic(messages_stream("gpt-4o-mini", "hi there"))
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let events = anthropic_events(&body);
    assert_eq!(events.last().unwrap().0, "error", "{body}");
    assert!(!events.iter().any(|(n, _)| n == "message_stop"));
    assert_eq!(anthropic_stream_text(&body), "Hello from ");

    assert_eq!(gw.mock.requests().len(), 2);
    let events = gw.wait_for_events(2).await;
    assert_eq!(events.len(), 2);
    for event in events {
        assert_eq!(event.status, 502);
        assert_eq!(event.error_kind.as_deref(), Some("upstream_stream_error"));
        assert!(event.tokens.output > 0, "what was streamed is billed");
    }
}
