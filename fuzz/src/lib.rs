//! Helpers shared by the fuzz targets in `fuzz_targets/`: turning the raw
//! input into what a target feeds the translators (JSON, SSE events), and the
//! invariants several targets check on what comes out. A failed check panics,
//! which libFuzzer reports as a crash with the input that caused it.

use serde_json::Value;
use tollgate_translate::{SseDecoder, SseEvent};

/// The input as one JSON value; `None` when it is not JSON (the target then
/// has nothing to translate).
pub fn json(data: &[u8]) -> Option<Value> {
    serde_json::from_slice(data).ok()
}

/// The input decoded as an SSE stream fed in one chunk, including the
/// trailing event a stream cut off without its blank line leaves.
pub fn sse_events(data: &[u8]) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::new();
    let mut events = decoder.push(data);
    events.extend(decoder.finish());
    events
}

/// The input read as an Anthropic event stream the way the proxy reads one:
/// SSE events whose data is JSON, named by the `event:` field or else by the
/// data's `type`. Events whose data is not JSON are skipped.
pub fn anthropic_events(data: &[u8]) -> Vec<(String, Value)> {
    sse_events(data)
        .into_iter()
        .filter_map(|e| {
            let value: Value = serde_json::from_str(&e.data).ok()?;
            let name = e
                .event
                .or_else(|| value.get("type").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            Some((name, value))
        })
        .collect()
}

/// FNV-1a of the input: a deterministic source of "arbitrary" choices (split
/// points, status codes) that keeps the seeds plain JSON or SSE text.
pub fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Serializes `v` (what the proxy does with every translated value).
pub fn serialize(v: &Value) -> String {
    match serde_json::to_string(v) {
        Ok(s) => s,
        Err(e) => panic!("translated value does not serialize: {e}"),
    }
}

/// Anthropic's tool-use id alphabet: `^[a-zA-Z0-9_-]+$`.
pub fn is_anthropic_tool_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a translated Anthropic event stream against the Messages streaming
/// grammar an Anthropic SDK relies on: `message_start` first (or an `error`),
/// content blocks opened, fed and closed in index order one at a time, one
/// `message_delta` after the last block, `message_stop` last, nothing after
/// `message_stop` or `error`; `data.type` equals the event name; tool-use ids
/// in Anthropic's alphabet. `ended` says the stream was finished, so a
/// started message must be stopped.
pub fn check_anthropic_stream(events: &[(&str, Value)], ended: bool) {
    let mut started = false;
    let mut stopped = false;
    let mut delta_sent = false;
    let mut open: Option<u64> = None;
    let mut next_index = 0u64;
    for (i, (name, data)) in events.iter().enumerate() {
        serialize(data);
        assert!(!stopped, "event {i} `{name}` after message_stop/error");
        assert_eq!(
            data.get("type").and_then(Value::as_str),
            Some(*name),
            "event {i}: data.type differs from the event name"
        );
        let index = data.get("index").and_then(Value::as_u64);
        match *name {
            "error" => stopped = true,
            "message_start" => {
                assert!(!started, "second message_start at event {i}");
                started = true;
                let message = &data["message"];
                assert_eq!(message["role"], "assistant");
                assert_eq!(message["content"], Value::Array(Vec::new()));
            }
            "content_block_start" => {
                assert!(started, "content_block_start before message_start");
                assert!(!delta_sent, "content_block_start after message_delta");
                assert_eq!(open, None, "content_block_start while a block is open");
                assert_eq!(index, Some(next_index), "content block index out of order");
                open = index;
                next_index += 1;
                let block = &data["content_block"];
                if block["type"] == "tool_use" {
                    let id = block["id"].as_str().unwrap_or("");
                    assert!(is_anthropic_tool_id(id), "tool_use id {id:?}");
                }
            }
            "content_block_delta" => {
                assert!(open.is_some() && open == index, "delta outside its block");
            }
            "content_block_stop" => {
                assert!(open.is_some() && open == index, "stop of a block not open");
                open = None;
            }
            "message_delta" => {
                assert!(
                    started && open.is_none() && !delta_sent,
                    "misplaced message_delta"
                );
                assert!(data["delta"]["stop_reason"].is_string(), "no stop_reason");
                delta_sent = true;
            }
            "message_stop" => {
                assert!(delta_sent, "message_stop without message_delta");
                stopped = true;
            }
            other => panic!("unexpected event name `{other}`"),
        }
    }
    if ended && started {
        assert!(stopped, "finished stream left the message open");
    }
}

/// Checks translated OpenAI `chat.completion.chunk`s: each is a chunk of
/// `model` with a `choices` array or a lone final `{"error":…}`; at most one
/// chunk carries a `finish_reason`; the usage chunk (`choices: []` and a
/// `usage` object) comes only with `include_usage`, at most once and last.
pub fn check_openai_chunks(chunks: &[Value], model: &str, include_usage: bool) {
    let mut finishes = 0;
    let mut ended = false;
    for (i, c) in chunks.iter().enumerate() {
        serialize(c);
        assert!(!ended, "chunk {i} after the error or usage chunk");
        assert!(c.is_object(), "chunk {i} is not an object");
        if c.get("error").is_some() {
            assert!(
                c["error"].is_object(),
                "error chunk without an error object"
            );
            ended = true;
            continue;
        }
        assert_eq!(c["object"], "chat.completion.chunk", "chunk {i}");
        assert_eq!(c["model"], model, "chunk {i}");
        let choices = c["choices"].as_array();
        assert!(choices.is_some(), "chunk {i} without choices");
        for choice in choices.into_iter().flatten() {
            if !choice["finish_reason"].is_null() {
                finishes += 1;
            }
        }
        if !include_usage {
            assert!(c.get("usage").is_none(), "usage without include_usage");
        } else if c["usage"].is_object() {
            assert_eq!(
                c["choices"],
                Value::Array(Vec::new()),
                "usage chunk with choices"
            );
            ended = true;
        }
    }
    assert!(finishes <= 1, "{finishes} chunks with a finish_reason");
}

/// A Responses event stream as the SDK's helpers need it: `type` = event
/// name; `sequence_number` from 0 without gaps; `response.created` first;
/// one terminal event, last; a finished response's output items equal the
/// `output_item.done` events at their `output_index`. Text extraction runs
/// on every event.
pub fn check_responses_stream(events: &[(&str, Value)]) {
    const TERMINAL: [&str; 3] = [
        "response.completed",
        "response.incomplete",
        "response.failed",
    ];
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
        tollgate_translate::responses_event_text(data, &mut text);
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
