//! `openai_to_anthropic_request` on JSON inputs. When it succeeds the result
//! is a valid Anthropic Messages request as far as the translation promises:
//! an object for the upstream model with a positive `max_tokens`, a
//! `temperature` in [0, 1], non-empty alternating user/assistant turns with
//! `tool_result` blocks first in a user turn, and tool ids in Anthropic's
//! alphabet. The text extractors and the reverse translation must not panic
//! on either side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_fuzz::{hash, is_anthropic_tool_id, json, serialize};
use tollgate_translate::{
    anthropic_request_text, anthropic_to_openai_request, openai_request_text,
    openai_to_anthropic_request,
};

const MODEL: &str = "claude-sonnet-4-5";

fn check(out: &Value) {
    serialize(out);
    assert!(out.is_object(), "not an object");
    assert_eq!(out["model"], MODEL);
    assert!(
        out["max_tokens"].as_u64().is_some_and(|n| n > 0),
        "max_tokens {}",
        out["max_tokens"]
    );
    if let Some(t) = out.get("temperature") {
        assert!(
            t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)),
            "temperature {t}"
        );
    }
    if let Some(s) = out.get("system") {
        assert!(s.is_string(), "system {s}");
    }
    let messages = out["messages"].as_array();
    assert!(
        messages.is_some_and(|m| !m.is_empty()),
        "messages {}",
        out["messages"]
    );
    let mut last_role = None;
    for m in messages.into_iter().flatten() {
        let role = m["role"].as_str();
        assert!(
            matches!(role, Some("user" | "assistant")),
            "role {}",
            m["role"]
        );
        assert_ne!(role, last_role, "two consecutive {role:?} turns");
        last_role = role;
        let blocks = match &m["content"] {
            Value::String(_) => continue,
            Value::Array(blocks) => blocks,
            other => panic!("content {other}"),
        };
        assert!(!blocks.is_empty(), "empty content array");
        let mut results_done = false;
        for b in blocks {
            match b["type"].as_str() {
                Some("tool_result") => {
                    assert_eq!(role, Some("user"), "tool_result in an assistant turn");
                    assert!(!results_done, "tool_result after other content");
                    let id = b["tool_use_id"].as_str().unwrap_or("");
                    assert!(is_anthropic_tool_id(id), "tool_use_id {id:?}");
                }
                Some("tool_use") => {
                    results_done = true;
                    let id = b["id"].as_str().unwrap_or("");
                    assert!(is_anthropic_tool_id(id), "tool_use id {id:?}");
                    assert!(b["input"].is_object(), "tool_use input {}", b["input"]);
                }
                _ => results_done = true,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(body) = json(data) else { return };
    let _ = openai_request_text(&body);
    let default_max_tokens = [0, 1, 4096, u32::MAX][(hash(data) % 4) as usize];
    let Ok(out) = openai_to_anthropic_request(&body, MODEL, default_max_tokens) else {
        return;
    };
    check(&out);
    let _ = anthropic_request_text(&out);
    if let Ok(back) = anthropic_to_openai_request(&out, "gpt-4o") {
        serialize(&back);
    }
});
