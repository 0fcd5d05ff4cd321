//! `OpenAiToAnthropicStream` (OpenAI upstream, Anthropic client) fed the
//! input read as an OpenAI SSE transcript the way the proxy reads one (`data:
//! [DONE]` calls `finish()`, data that is not JSON is skipped, the stream end
//! calls `finish()`). Invariant: the output follows the Anthropic streaming
//! grammar (`tollgate_fuzz::check_anthropic_stream`) and `finish()` ends the
//! translation. `openai_chunk_usage`, `is_usage_only_chunk` and the chunk
//! text extractor run on the same chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tollgate_fuzz::{check_anthropic_stream, sse_events};
use tollgate_translate::{
    is_usage_only_chunk, openai_chunk_text, openai_chunk_usage, OpenAiToAnthropicStream,
};

fuzz_target!(|data: &[u8]| {
    let mut t = OpenAiToAnthropicStream::new("claude-sonnet-4-5");
    let mut out = Vec::new();
    let mut text = String::new();
    for event in sse_events(data) {
        let data = event.data.trim();
        if data == "[DONE]" {
            out.extend(t.finish());
            continue;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let _ = openai_chunk_usage(&chunk);
        let _ = is_usage_only_chunk(&chunk);
        openai_chunk_text(&chunk, &mut text);
        out.extend(t.push(&chunk));
        let _ = t.usage();
    }
    out.extend(t.finish());
    check_anthropic_stream(&out, true);
    assert!(t.finish().is_empty(), "second finish() emitted events");
    let late = t.push(&json!({"id": "x", "choices": [{"index": 0, "delta": {"content": "late"}}]}));
    assert!(late.is_empty(), "chunk after finish() emitted events");
});
