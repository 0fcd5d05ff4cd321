//! `anthropic_to_openai_request` on JSON inputs. When it succeeds the result
//! is an object for the upstream model whose messages have OpenAI roles, a
//! system message only first, a `tool_call_id` on every tool message and
//! string `arguments` on every tool call, and `stream_options.include_usage`
//! when streaming. The text extractors and the reverse translation must not
//! panic on either side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_fuzz::{json, serialize};
use tollgate_translate::{
    anthropic_request_text, anthropic_to_openai_request, openai_request_text,
    openai_to_anthropic_request,
};

const MODEL: &str = "gpt-4o";

fn check(out: &Value) {
    serialize(out);
    assert!(out.is_object(), "not an object");
    assert_eq!(out["model"], MODEL);
    if let Some(n) = out.get("max_tokens") {
        assert!(n.as_u64().is_some_and(|n| n > 0), "max_tokens {n}");
    }
    if out["stream"] == true {
        assert_eq!(out["stream_options"]["include_usage"], true);
    }
    let messages = out["messages"].as_array();
    assert!(messages.is_some(), "messages {}", out["messages"]);
    for (i, m) in messages.into_iter().flatten().enumerate() {
        match m["role"].as_str() {
            Some("system") => assert_eq!(i, 0, "system message not first"),
            Some("user") => {}
            Some("tool") => assert!(m["tool_call_id"].is_string(), "tool message {m}"),
            Some("assistant") => {
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    assert!(
                        call["function"]["arguments"].is_string(),
                        "tool call {call}"
                    );
                }
            }
            _ => panic!("role {}", m["role"]),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(body) = json(data) else { return };
    let _ = anthropic_request_text(&body);
    let Ok(out) = anthropic_to_openai_request(&body, MODEL) else {
        return;
    };
    check(&out);
    let _ = openai_request_text(&out);
    if let Ok(back) = openai_to_anthropic_request(&out, "claude-sonnet-4-5", 1024) {
        serialize(&back);
    }
});
