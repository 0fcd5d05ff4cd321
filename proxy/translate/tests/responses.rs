//! The Responses API translation end to end, and composed with the Anthropic
//! translation the gateway chains it with (Responses → Chat → Messages and
//! back).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use tollgate_translate::{
    anthropic_to_openai_response, chat_to_responses_response, openai_to_anthropic_request,
    responses_event_text, responses_event_usage, responses_request_text, responses_response_text,
    responses_to_chat_request, AnthropicToOpenAiStream, ChatToResponsesStream, SseDecoder,
};

/// Rebuilds the output from the events like the SDK stream helper
/// (`client.responses.stream(...)`) does, checking the invariants it relies
/// on; returns (terminal response, built items).
fn replay(events: &[(&'static str, Value)]) -> (Value, Vec<Value>) {
    let mut items: Vec<Value> = Vec::new();
    let mut terminal = Value::Null;
    assert_eq!(events.first().map(|e| e.0), Some("response.created"));
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], json!(name));
        assert_eq!(data["sequence_number"], json!(i));
        let oi = data["output_index"]
            .as_u64()
            .map_or(usize::MAX, |n| n as usize);
        let ci = data["content_index"].as_u64().unwrap_or(0) as usize;
        let append = |v: &mut Value, d: &Value| {
            *v = json!(format!("{}{}", v.as_str().unwrap(), d.as_str().unwrap()));
        };
        match *name {
            "response.output_item.added" => {
                assert_eq!(oi, items.len());
                items.push(data["item"].clone());
            }
            "response.content_part.added" => {
                items[oi]["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(data["part"].clone());
            }
            "response.output_text.delta" => {
                append(&mut items[oi]["content"][ci]["text"], &data["delta"]);
            }
            "response.function_call_arguments.delta" => {
                append(&mut items[oi]["arguments"], &data["delta"]);
            }
            "response.output_text.done" => {
                assert_eq!(data["text"], items[oi]["content"][ci]["text"]);
            }
            "response.function_call_arguments.done" => {
                assert_eq!(data["arguments"], items[oi]["arguments"]);
            }
            "response.content_part.done" => assert_eq!(data["part"], items[oi]["content"][ci]),
            "response.output_item.done" => {
                let mut expected = items[oi].clone();
                expected["status"] = data["item"]["status"].clone();
                assert_eq!(data["item"], expected);
                items[oi] = data["item"].clone();
            }
            "response.created" | "response.in_progress" => {}
            "response.completed" | "response.incomplete" | "response.failed" => {
                assert_eq!(i + 1, events.len());
                terminal = data["response"].clone();
            }
            other => panic!("unexpected event {other}"),
        }
    }
    (terminal, items)
}

const ANTHROPIC_SSE: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01abc\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":50,\"cache_read_input_tokens\":1000,\"cache_creation_input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\":\"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me \"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"check.\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Pa\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ris\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":33}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

#[test]
fn anthropic_stream_composes_into_responses_events() {
    let request = json!({"model": "gpt-alias", "input": "Weather in Paris?", "stream": true,
        "tools": [{"type": "function", "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]});
    let mut decoder = SseDecoder::new();
    let mut a2o = AnthropicToOpenAiStream::new("gpt-alias", true);
    let mut c2r = ChatToResponsesStream::new("gpt-alias", &request);
    let mut events = Vec::new();
    // Feed the bytes in awkward pieces, as the network would.
    for piece in ANTHROPIC_SSE.as_bytes().chunks(37) {
        for e in decoder.push(piece) {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            for chunk in a2o.push(e.event.as_deref().unwrap_or(""), &data) {
                events.extend(c2r.push(&chunk));
            }
        }
    }
    for chunk in a2o.finish() {
        events.extend(c2r.push(&chunk));
    }
    events.extend(c2r.finish());

    let (last, items) = replay(&events);
    assert_eq!(events.last().unwrap().0, "response.completed");
    assert_eq!(last["id"], json!("resp_01abc"));
    assert_eq!(last["model"], json!("gpt-alias"));
    assert_eq!(last["status"], json!("completed"));
    assert_eq!(last["output"], json!(items));
    assert_eq!(
        last["output"],
        json!([
            {"id": "msg_01abc_0", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}]},
            {"id": "fc_01abc_1", "type": "function_call", "status": "completed",
             "call_id": "toolu_a", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}
        ])
    );
    // Anthropic's usage: every input class in input_tokens, cache reads also
    // as cached_tokens.
    assert_eq!(
        last["usage"],
        json!({"input_tokens": 1070, "input_tokens_details": {"cached_tokens": 1000},
            "output_tokens": 33, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1103})
    );
    assert_eq!(last["tools"], request["tools"]);

    // The metering helpers read the same events.
    let mut text = String::new();
    for (_, e) in &events {
        responses_event_text(e, &mut text);
    }
    assert_eq!(text, "Let me check.get_weather{\"city\": \"Paris\"}");
    let usage = events
        .iter()
        .find_map(|(_, e)| responses_event_usage(e))
        .unwrap();
    assert_eq!(
        (usage.input, usage.cached_input, usage.output),
        (70, 1000, 33)
    );
}

#[test]
fn request_composes_into_anthropic() {
    let request = json!({
        "model": "gpt-alias",
        "instructions": "Be terse.",
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "toolu_a", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "toolu_a", "output": "18C"},
            {"role": "user", "content": [{"type": "input_text", "text": "Warm?"}]}
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": "required",
        "max_output_tokens": 200,
        "temperature": 0.4,
        "stream": true,
        "store": false
    });
    let chat = responses_to_chat_request(&request, "claude-x").unwrap();
    let anthropic = openai_to_anthropic_request(&chat, "claude-x", 1024).unwrap();
    assert_eq!(
        anthropic,
        json!({
            "model": "claude-x",
            "system": "Be terse.",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"},
                    {"type": "text", "text": "Warm?"}
                ]}
            ],
            "max_tokens": 200,
            "temperature": 0.4,
            "stream": true,
            "tools": [{"name": "get_weather", "description": "Weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any"}
        })
    );
    let text = responses_request_text(&request);
    for needle in [
        "Be terse.",
        "Weather in Paris?",
        "{\"city\":\"Paris\"}",
        "18C",
        "Warm?",
        "\"description\":\"Weather\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
}

#[test]
fn refusals_are_400_bodies_naming_the_field() {
    let e = responses_to_chat_request(
        &json!({"input": "x", "tools": [{"type": "web_search"}]}),
        "up",
    )
    .unwrap_err();
    assert_eq!(
        e.to_openai_error(),
        json!({"error": {"message": "tools[0].type: tool type `web_search` cannot be translated to the OpenAI Chat Completions API",
            "type": "invalid_request_error", "param": "tools[0].type", "code": null}})
    );
}

#[test]
fn anthropic_message_composes_into_a_response() {
    let message = json!({"id": "msg_01xyz", "type": "message", "role": "assistant",
        "content": [{"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "toolu_b", "name": "lookup", "input": {"q": "cat"}}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 100, "output_tokens": 7}});
    let chat = anthropic_to_openai_response(&message, "gpt-alias");
    let r = chat_to_responses_response(&chat, &json!({"model": "gpt-alias", "input": "x"}));
    assert_eq!(r["id"], json!("resp_01xyz"));
    assert_eq!(r["status"], json!("incomplete"));
    assert_eq!(
        r["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(r["output"][0]["content"][0]["text"], json!("Sure."));
    assert_eq!(r["output"][1]["call_id"], json!("toolu_b"));
    assert_eq!(r["output"][1]["arguments"], json!("{\"q\":\"cat\"}"));
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 112, "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 119})
    );
    assert_eq!(
        responses_response_text(&r),
        "Sure.\nlookup\n{\"q\":\"cat\"}"
    );
}

#[test]
fn native_responses_events_meter() {
    let mut text = String::new();
    for e in [
        json!({"type": "response.output_text.delta", "delta": "Hi"}),
        json!({"type": "response.output_item.added", "item": {"type": "function_call", "name": "f"}}),
        json!({"type": "response.function_call_arguments.delta", "delta": "{}"}),
        json!({"type": "response.output_text.done", "text": "Hi"}),
    ] {
        responses_event_text(&e, &mut text);
        assert_eq!(responses_event_usage(&e), None);
    }
    assert_eq!(text, "Hif{}");
    let done = json!({"type": "response.incomplete", "response": {"usage": {"input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 12}}});
    let u = responses_event_usage(&done).unwrap();
    assert_eq!(
        (u.input, u.cached_input, u.output, u.reasoning),
        (5, 4, 3, 2)
    );
    let failed = json!({"type": "response.failed", "response": {"usage": null}});
    assert_eq!(responses_event_usage(&failed), None);
}
