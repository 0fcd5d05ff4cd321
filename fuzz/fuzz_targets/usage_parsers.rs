//! Every usage parser and text extractor on JSON inputs (a usage object, or
//! anything holding one under `usage` / `message.usage`). Invariants: the
//! normalized classes add up to what the provider reported (OpenAI
//! `input + cached_input = prompt_tokens`, Responses likewise with
//! `input_tokens`), reasoning never exceeds output, usage written back as
//! JSON parses to the same counts (OpenAI, Anthropic with cache writes folded
//! into `cache_creation_input_tokens`, Anthropic counts shown to an OpenAI
//! client), and `AnthropicStreamUsage` fed the object in `message_start` and
//! `message_delta` agrees with `anthropic_usage`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tollgate_core::TokenCounts;
use tollgate_fuzz::json;
use tollgate_translate::{
    anthropic_event_text, anthropic_request_text, anthropic_response_text, anthropic_usage,
    anthropic_usage_json, is_usage_only_chunk, openai_chunk_text, openai_chunk_usage,
    openai_request_text, openai_response_text, openai_responses_usage, openai_usage,
    openai_usage_json, AnthropicStreamUsage,
};

/// `obj[key]` as a count the way the parsers read one.
fn count(obj: &Value, key: &str) -> Option<u64> {
    let n = obj.get(key)?.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn check_usage(u: &Value) {
    if let Some(c) = openai_usage(u) {
        assert!(c.reasoning <= c.output, "{c:?}");
        assert_eq!((c.cache_write_5m, c.cache_write_1h), (0, 0));
        assert_eq!(
            c.input + c.cached_input,
            count(u, "prompt_tokens").unwrap_or(0),
            "{c:?}"
        );
        assert_eq!(
            openai_usage(&openai_usage_json(&c)),
            Some(c),
            "OpenAI usage round trip"
        );
    }
    if let Some(c) = openai_responses_usage(u) {
        assert!(c.reasoning <= c.output, "{c:?}");
        assert_eq!(
            c.input + c.cached_input,
            count(u, "input_tokens").unwrap_or(0),
            "{c:?}"
        );
        assert_eq!(
            openai_usage(&openai_usage_json(&c)),
            Some(c),
            "Responses usage as OpenAI"
        );
    }
    let anthropic = anthropic_usage(u);
    if let Some(c) = anthropic {
        assert_eq!(c.reasoning, 0);
        let folded = TokenCounts {
            cache_write_5m: c.cache_write_5m.saturating_add(c.cache_write_1h),
            cache_write_1h: 0,
            ..c
        };
        assert_eq!(
            anthropic_usage(&anthropic_usage_json(&c)),
            Some(folded),
            "Anthropic usage round trip"
        );
        let prompt = c
            .input
            .checked_add(c.cached_input)
            .and_then(|p| p.checked_add(c.cache_write_5m))
            .and_then(|p| p.checked_add(c.cache_write_1h));
        if let Some(prompt) = prompt {
            let seen = openai_usage(&openai_usage_json(&c));
            let expected = TokenCounts {
                input: prompt - c.cached_input,
                cache_write_5m: 0,
                cache_write_1h: 0,
                ..c
            };
            assert_eq!(
                seen,
                Some(expected),
                "Anthropic usage shown to an OpenAI client"
            );
        }
    }
    let mut acc = AnthropicStreamUsage::new();
    acc.observe(
        "message_start",
        &json!({"type": "message_start", "message": {"usage": u}}),
    );
    acc.observe("", &json!({"type": "message_delta", "usage": u}));
    let expected = if u.is_object() { anthropic } else { None };
    assert_eq!(
        acc.counts(),
        expected,
        "stream accumulator vs anthropic_usage"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some(v) = json(data) else { return };
    for u in [
        &v,
        &v["usage"],
        &v["message"]["usage"],
        &v["response"]["usage"],
    ] {
        check_usage(u);
    }
    let _ = openai_chunk_usage(&v);
    let _ = is_usage_only_chunk(&v);
    let _ = openai_request_text(&v);
    let _ = anthropic_request_text(&v);
    let _ = openai_response_text(&v);
    let _ = anthropic_response_text(&v);
    let mut text = String::new();
    openai_chunk_text(&v, &mut text);
    let name = v["type"].as_str().unwrap_or("");
    for event in [name, "", "content_block_start", "content_block_delta"] {
        anthropic_event_text(event, &v, &mut text);
    }
});
