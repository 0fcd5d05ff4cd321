//! `ChatToResponsesStream` (a chat-only or, through chat chunks, an
//! Anthropic provider; a Responses client) fed the input read as an OpenAI
//! SSE transcript the way the proxy reads one. Invariants: `type` equals
//! the event name; `sequence_number` counts from 0 without gaps; the first
//! event is `response.created`; exactly one terminal event, last; a
//! completed response's output items match the `output_item.done` events
//! at their `output_index`;
//! nothing after `finish()`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tollgate_fuzz::{check_responses_stream, sse_events};
use tollgate_translate::ChatToResponsesStream;

const TERMINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

fuzz_target!(|data: &[u8]| {
    let request = json!({"model": "m", "input": "x", "stream": true});
    let mut t = ChatToResponsesStream::new("m", &request);
    let mut out = Vec::new();
    for event in sse_events(data) {
        let data = event.data.trim();
        if data == "[DONE]" {
            continue;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        out.extend(t.push(&chunk));
    }
    out.extend(t.finish());
    assert!(t.finish().is_empty(), "second finish() emitted events");
    let late = t.push(&json!({"choices": [{"index": 0, "delta": {"content": "late"}}]}));
    assert!(late.is_empty(), "chunk after finish() emitted events");
    check_responses_stream(&out);
});
