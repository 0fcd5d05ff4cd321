//! Non-streamed response and error-body translation, both directions, on
//! JSON inputs: `anthropic_to_openai_response`, `openai_to_anthropic_response`,
//! `openai_error_to_anthropic`, `anthropic_error_to_openai` and the stop
//! reason maps. Invariants: the shape of each result (a `chat.completion`
//! with one assistant choice and usage; an Anthropic `message` with a content
//! array, a stop reason and tool ids in Anthropic's alphabet; error bodies
//! with a non-empty message of bounded length).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_fuzz::{hash, is_anthropic_tool_id, json, serialize};
use tollgate_translate::{
    anthropic_error_to_openai, anthropic_response_text, anthropic_stop_to_openai_finish,
    anthropic_to_openai_response, openai_error_to_anthropic, openai_finish_to_anthropic_stop,
    openai_response_text, openai_to_anthropic_response, openai_usage,
};

/// Upstream messages are cut to 2000 bytes plus an ellipsis.
const MAX_MESSAGE: usize = 2000 + '…'.len_utf8();

fn check_openai_completion(out: &Value) {
    serialize(out);
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "gpt-4o");
    let choices = out["choices"].as_array().map(Vec::len);
    assert_eq!(choices, Some(1), "choices {}", out["choices"]);
    let choice = &out["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["finish_reason"].is_string());
    for call in choice["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(
            call["function"]["arguments"].is_string(),
            "tool call {call}"
        );
    }
    let usage = openai_usage(&out["usage"]);
    assert!(usage.is_some(), "usage {}", out["usage"]);
}

fn check_anthropic_message(out: &Value) {
    serialize(out);
    assert_eq!(out["type"], "message");
    assert_eq!(out["role"], "assistant");
    assert_eq!(out["model"], "claude-sonnet-4-5");
    assert!(out["stop_reason"].is_string());
    assert!(out["usage"]["input_tokens"].is_u64() && out["usage"]["output_tokens"].is_u64());
    let content = out["content"].as_array();
    assert!(content.is_some(), "content {}", out["content"]);
    for b in content.into_iter().flatten() {
        if b["type"] == "tool_use" {
            let id = b["id"].as_str().unwrap_or("");
            assert!(is_anthropic_tool_id(id), "tool_use id {id:?}");
            assert!(b["input"].is_object(), "tool_use input {}", b["input"]);
        }
    }
}

fn check_message(m: &Value) {
    let m = m.as_str().unwrap_or("");
    assert!(
        !m.trim().is_empty() && m.len() <= MAX_MESSAGE,
        "error message {m:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some(v) = json(data) else { return };

    let completion = anthropic_to_openai_response(&v, "gpt-4o");
    check_openai_completion(&completion);
    let message = openai_to_anthropic_response(&v, "claude-sonnet-4-5");
    check_anthropic_message(&message);
    // Back again: the translations of translations keep their shape.
    check_anthropic_message(&openai_to_anthropic_response(
        &completion,
        "claude-sonnet-4-5",
    ));
    check_openai_completion(&anthropic_to_openai_response(&message, "gpt-4o"));
    for x in [&v, &completion, &message] {
        let _ = openai_response_text(x);
        let _ = anthropic_response_text(x);
    }

    let h = hash(data);
    for status in [
        0,
        200,
        400,
        401,
        404,
        429,
        500,
        503,
        529,
        u16::MAX,
        h as u16,
    ] {
        let a = openai_error_to_anthropic(status, &v);
        serialize(&a);
        assert_eq!(a["type"], "error");
        assert!(a["error"]["type"].is_string());
        check_message(&a["error"]["message"]);
        let o = anthropic_error_to_openai(status, &v);
        serialize(&o);
        assert!(o["error"]["type"].is_string());
        check_message(&o["error"]["message"]);
    }

    for s in [&v["stop_reason"], &v["choices"][0]["finish_reason"], &v] {
        if let Some(s) = s.as_str() {
            let _ = anthropic_stop_to_openai_finish(s);
            let _ = openai_finish_to_anthropic_stop(s);
        }
    }
});
