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
use tollgate_fuzz::sse_events;
use tollgate_translate::{responses_event_text, ChatToResponsesStream};

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
    check(&out);
});

fn check(events: &[(&str, Value)]) {
    let mut text = String::new();
    let mut done_items = Vec::new();
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], *name, "event {i}");
        assert_eq!(data["sequence_number"], i, "event {i}: {name}");
        assert_eq!(i == 0, *name == "response.created", "event {i}: {name}");
        let last = i + 1 == events.len();
        assert_eq!(TERMINAL.contains(name), last, "event {i}: {name}");
        if *name == "response.output_item.done" {
            done_items.push((data["output_index"].as_u64(), data["item"].clone()));
        }
        responses_event_text(data, &mut text);
    }
    if let Some((name, data)) = events.last() {
        if *name != "response.failed" {
            let output = data["response"]["output"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // Items close in any order (a tool call stays open while text
            // follows it): each done event matches the item at its index.
            assert_eq!(output.len(), done_items.len(), "{name}");
            for (index, done) in &done_items {
                let item = index
                    .and_then(|i| output.get(i as usize))
                    .expect("a valid output_index");
                assert_eq!(item["id"], done["id"]);
                assert_eq!(item["type"], done["type"]);
            }
        }
    }
}
