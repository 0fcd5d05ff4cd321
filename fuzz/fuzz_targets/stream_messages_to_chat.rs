//! `AnthropicToOpenAiStream` (Anthropic upstream, OpenAI client) fed the
//! input read as an Anthropic SSE transcript (so seeds are readable
//! transcripts), with and without `include_usage`. Invariants: every chunk
//! serializes and has the chunk shape, one finish reason at most, the usage
//! chunk only when asked for and last, nothing after an error; `finish()`
//! ends the translation (a second `finish()` and later events yield
//! nothing). `AnthropicStreamUsage` and the event text extractor run on the
//! same events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tollgate_fuzz::{anthropic_events, check_openai_chunks, serialize};
use tollgate_translate::{
    anthropic_event_text, anthropic_usage_json, openai_usage_json, AnthropicStreamUsage,
    AnthropicToOpenAiStream,
};

fuzz_target!(|data: &[u8]| {
    let events = anthropic_events(data);
    let mut usage = AnthropicStreamUsage::new();
    let mut text = String::new();
    for (name, value) in &events {
        usage.observe(name, value);
        anthropic_event_text(name, value, &mut text);
    }
    if let Some(c) = usage.counts() {
        serialize(&openai_usage_json(&c));
        serialize(&anthropic_usage_json(&c));
    }
    for include_usage in [false, true] {
        let mut t = AnthropicToOpenAiStream::new("gpt-4o", include_usage);
        let mut chunks = Vec::new();
        for (name, value) in &events {
            chunks.extend(t.push(name, value));
            let _ = t.usage();
        }
        chunks.extend(t.finish());
        check_openai_chunks(&chunks, "gpt-4o", include_usage);
        assert!(t.finish().is_empty(), "second finish() emitted chunks");
        let late = t.push("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "late"}}));
        assert!(late.is_empty(), "event after finish() emitted chunks");
    }
});
