//! Streaming translators. Both are stateful and work event by event without
//! buffering the response; the caller does the SSE framing (decode with
//! [`SseDecoder`](crate::SseDecoder), encode with
//! [`encode_event`](crate::encode_event)).

use crate::response::{
    anthropic_error_to_openai, anthropic_stop_to_openai_finish, openai_error_to_anthropic,
    openai_finish_to_anthropic_stop, status_for_anthropic_error_type,
};
use crate::usage::{openai_chunk_usage, openai_usage_json, AnthropicStreamUsage};
use crate::util::{as_count, non_null, now_secs, obj, sanitize_tool_id, str_field};
use serde_json::Value;
use std::collections::HashMap;
use tollgate_core::TokenCounts;

// ===========================================================================
// Anthropic upstream -> OpenAI client

/// Turns an Anthropic Messages event stream into OpenAI
/// `chat.completion.chunk` objects.
///
/// Output order: a role chunk (`delta: {role: assistant, content: ""}`), then
/// content / tool-call chunks, one chunk with `finish_reason` and an empty
/// delta, and — if `include_usage` — a final chunk with `choices: []` and
/// `usage`. The caller appends `data: [DONE]`. An upstream `error` event
/// yields a single `{"error":{...}}` object (OpenAI error shape) and ends the
/// translation. Thinking and other non-text, non-tool blocks are dropped.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    usage: AnthropicStreamUsage,
    role_sent: bool,
    /// Anthropic content-block index -> OpenAI tool-call index.
    tool_by_block: HashMap<u64, u64>,
    next_tool: u64,
    finish_sent: bool,
    done: bool,
}

impl AnthropicToOpenAiStream {
    /// A translator for a client that asked for `client_model`;
    /// `include_usage` mirrors the client's `stream_options.include_usage`.
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        Self {
            id: "chatcmpl-tollgate".to_owned(),
            created: now_secs(),
            model: client_model.to_owned(),
            include_usage,
            usage: AnthropicStreamUsage::new(),
            role_sent: false,
            tool_by_block: HashMap::new(),
            next_tool: 0,
            finish_sent: false,
            done: false,
        }
    }

    /// Usage accumulated so far (fed from the same events).
    pub fn usage(&self) -> Option<TokenCounts> {
        self.usage.counts()
    }

    /// Translates one Anthropic event (`event_type` is the SSE event name;
    /// when empty, `data.type` is used). Events after `message_stop` or
    /// `error` are ignored.
    pub fn push(&mut self, event_type: &str, data: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let ty = if event_type.is_empty() {
            str_field(data, "type").unwrap_or("")
        } else {
            event_type
        };
        self.usage.observe(ty, data);
        match ty {
            "message_start" => {
                if let Some(id) = data.get("message").and_then(|m| str_field(m, "id")) {
                    self.id = id.to_owned();
                }
                self.ensure_role(&mut out);
            }
            "content_block_start" => {
                self.ensure_role(&mut out);
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match str_field(block, "type") {
                    Some("tool_use") => {
                        let tool = self.next_tool;
                        self.next_tool += 1;
                        if let Some(idx) = data.get("index").and_then(as_count) {
                            self.tool_by_block.insert(idx, tool);
                        }
                        let call = obj([
                            ("index", tool.into()),
                            ("id", str_field(block, "id").unwrap_or("").into()),
                            ("type", "function".into()),
                            (
                                "function",
                                obj([
                                    ("name", str_field(block, "name").unwrap_or("").into()),
                                    ("arguments", "".into()),
                                ]),
                            ),
                        ]);
                        out.push(
                            self.chunk(
                                obj([("tool_calls", Value::Array(vec![call]))]),
                                Value::Null,
                            ),
                        );
                    }
                    Some("text") => self.text(str_field(block, "text").unwrap_or(""), &mut out),
                    _ => {}
                }
            }
            "content_block_delta" => {
                self.ensure_role(&mut out);
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match str_field(delta, "type") {
                    Some("text_delta") => {
                        self.text(str_field(delta, "text").unwrap_or(""), &mut out)
                    }
                    Some("input_json_delta") => {
                        let frag = str_field(delta, "partial_json").unwrap_or("");
                        let tool = data
                            .get("index")
                            .and_then(as_count)
                            .and_then(|i| self.tool_by_block.get(&i).copied());
                        if let (false, Some(tool)) = (frag.is_empty(), tool) {
                            let call = obj([
                                ("index", tool.into()),
                                ("function", obj([("arguments", frag.into())])),
                            ]);
                            out.push(self.chunk(
                                obj([("tool_calls", Value::Array(vec![call]))]),
                                Value::Null,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(stop) = data.get("delta").and_then(|d| str_field(d, "stop_reason")) {
                    self.send_finish(anthropic_stop_to_openai_finish(stop), &mut out);
                }
            }
            "message_stop" => self.end(&mut out),
            "error" => {
                let ty = data
                    .get("error")
                    .and_then(|e| str_field(e, "type"))
                    .unwrap_or("api_error");
                out.push(anthropic_error_to_openai(
                    status_for_anthropic_error_type(ty),
                    data,
                ));
                self.done = true;
            }
            _ => {} // ping, content_block_stop, future event types
        }
        out
    }

    /// Call when the upstream stream ended. If `message_stop` (or `error`)
    /// was seen this returns nothing; otherwise it emits whatever is missing
    /// — the finish chunk (`stop` unless a stop reason arrived) and, with
    /// `include_usage`, the usage chunk with the usage seen so far. Returns
    /// nothing if the upstream sent no event at all.
    pub fn finish(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.done && self.role_sent {
            self.end(&mut out);
        }
        self.done = true;
        out
    }

    fn end(&mut self, out: &mut Vec<Value>) {
        self.ensure_role(out);
        self.send_finish("stop", out);
        if self.include_usage {
            let counts = self.usage.counts().unwrap_or_default();
            out.push(obj([
                ("id", self.id.as_str().into()),
                ("object", "chat.completion.chunk".into()),
                ("created", self.created.into()),
                ("model", self.model.as_str().into()),
                ("choices", Value::Array(Vec::new())),
                ("usage", openai_usage_json(&counts)),
            ]));
        }
        self.done = true;
    }

    fn send_finish(&mut self, finish: &str, out: &mut Vec<Value>) {
        if !self.finish_sent {
            self.finish_sent = true;
            out.push(self.chunk(obj([]), finish.into()));
        }
    }

    fn ensure_role(&mut self, out: &mut Vec<Value>) {
        if !self.role_sent {
            self.role_sent = true;
            out.push(self.chunk(
                obj([("role", "assistant".into()), ("content", "".into())]),
                Value::Null,
            ));
        }
    }

    fn text(&self, text: &str, out: &mut Vec<Value>) {
        if !text.is_empty() {
            out.push(self.chunk(obj([("content", text.into())]), Value::Null));
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Value) -> Value {
        let mut c = serde_json::Map::new();
        c.insert("id".into(), self.id.as_str().into());
        c.insert("object".into(), "chat.completion.chunk".into());
        c.insert("created".into(), self.created.into());
        c.insert("model".into(), self.model.as_str().into());
        c.insert(
            "choices".into(),
            Value::Array(vec![obj([
                ("index", 0.into()),
                ("delta", delta),
                ("logprobs", Value::Null),
                ("finish_reason", finish_reason),
            ])]),
        );
        if self.include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when
            // include_usage is on.
            c.insert("usage".into(), Value::Null);
        }
        Value::Object(c)
    }
}

// ===========================================================================
// OpenAI upstream -> Anthropic client

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockKind {
    Text,
    /// Tool call with this OpenAI tool-call key.
    Tool(u64),
}

/// Turns OpenAI `chat.completion.chunk` objects into Anthropic Messages
/// events `(event name, data)`; `data.type` always equals the event name.
///
/// Emits `message_start` once (on the first chunk), then content blocks:
/// text deltas go to a `text` block, each tool call gets its own `tool_use`
/// block fed with `input_json_delta` fragments; switching kind or tool call
/// closes the open block. OpenAI sends `finish_reason` before the usage-only
/// chunk, so the closing `content_block_stop` / `message_delta` /
/// `message_stop` are held until a chunk carrying usage arrives after the
/// finish reason, or until [`finish`](Self::finish); they are emitted exactly
/// once. Argument fragments for a tool call whose block was already closed
/// (interleaved tool calls, which OpenAI does not produce) cannot be placed
/// and are dropped. A chunk with an `error` object yields an Anthropic
/// `error` event and ends the translation.
#[derive(Debug)]
pub struct OpenAiToAnthropicStream {
    model: String,
    started: bool,
    closed: bool,
    next_block: u64,
    open: Option<(BlockKind, u64)>,
    /// Tool-call keys that already got a block, and the call id of each.
    tool_ids: HashMap<u64, String>,
    /// Counter for tool calls that arrive without an `index`.
    next_synthetic_key: u64,
    finish_reason: Option<String>,
    saw_tool: bool,
    usage: Option<TokenCounts>,
}

impl OpenAiToAnthropicStream {
    /// A translator answering a client that asked for `client_model`.
    pub fn new(client_model: &str) -> Self {
        Self {
            model: client_model.to_owned(),
            started: false,
            closed: false,
            next_block: 0,
            open: None,
            tool_ids: HashMap::new(),
            next_synthetic_key: u64::MAX,
            finish_reason: None,
            saw_tool: false,
            usage: None,
        }
    }

    /// Usage reported by the upstream so far.
    pub fn usage(&self) -> Option<TokenCounts> {
        self.usage
    }

    /// Translates one chunk (the parsed `data:` of an OpenAI SSE event, not
    /// `[DONE]`). Chunks after the message was closed are ignored.
    pub fn push(&mut self, chunk: &Value) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let chunk_usage = openai_chunk_usage(chunk);
        if chunk_usage.is_some() {
            // Kept current even after closing, for the caller's accounting.
            self.usage = chunk_usage;
        }
        if self.closed || !chunk.is_object() {
            return out;
        }
        if let Some(err) = non_null(chunk, "error") {
            // Some providers put the HTTP status in `code`.
            let status = err
                .get("code")
                .and_then(as_count)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..=599).contains(c))
                .unwrap_or(500);
            out.push(("error", openai_error_to_anthropic(status, chunk)));
            self.closed = true;
            return out;
        }
        self.ensure_started(chunk, &mut out);

        let choice = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("index").and_then(as_count).unwrap_or(0) == 0)
            });
        if let Some(choice) = choice {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            for key in ["content", "refusal"] {
                if let Some(text) = str_field(delta, key).filter(|t| !t.is_empty()) {
                    self.text(text, &mut out);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    self.tool_fragment(call, &mut out);
                }
            }
            if let Some(f) = str_field(choice, "finish_reason") {
                self.finish_reason = Some(f.to_owned());
            }
        }
        if self.finish_reason.is_some() && chunk_usage.is_some() {
            self.close(&mut out);
        }
        out
    }

    /// Call on `[DONE]` or end of stream: emits the closing events if they
    /// were not emitted yet (stop reason `end_turn` if none arrived, usage
    /// zeros if none was reported). Returns nothing if no chunk was seen.
    pub fn finish(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if !self.closed && self.started {
            self.close(&mut out);
        }
        self.closed = true;
        out
    }

    fn ensure_started(&mut self, chunk: &Value, out: &mut Vec<(&'static str, Value)>) {
        if self.started {
            return;
        }
        self.started = true;
        let u = self.usage.unwrap_or_default();
        let message = obj([
            (
                "id",
                str_field(chunk, "id").unwrap_or("msg_tollgate").into(),
            ),
            ("type", "message".into()),
            ("role", "assistant".into()),
            ("model", self.model.as_str().into()),
            ("content", Value::Array(Vec::new())),
            ("stop_reason", Value::Null),
            ("stop_sequence", Value::Null),
            (
                "usage",
                obj([
                    ("input_tokens", u.input.into()),
                    ("cache_creation_input_tokens", 0.into()),
                    ("cache_read_input_tokens", u.cached_input.into()),
                    ("output_tokens", 0.into()),
                ]),
            ),
        ]);
        out.push((
            "message_start",
            obj([("type", "message_start".into()), ("message", message)]),
        ));
    }

    fn text(&mut self, text: &str, out: &mut Vec<(&'static str, Value)>) {
        let index = match self.open {
            Some((BlockKind::Text, index)) => index,
            _ => self.start_block(
                BlockKind::Text,
                obj([("type", "text".into()), ("text", "".into())]),
                out,
            ),
        };
        out.push(block_delta(
            index,
            obj([("type", "text_delta".into()), ("text", text.into())]),
        ));
    }

    fn tool_fragment(&mut self, call: &Value, out: &mut Vec<(&'static str, Value)>) {
        if !call.is_object() {
            return; // not a tool call; must not open an empty tool_use block
        }
        let id = str_field(call, "id").filter(|s| !s.is_empty());
        let open_tool = match self.open {
            Some((BlockKind::Tool(k), _)) => Some(k),
            _ => None,
        };
        let key = match (call.get("index").and_then(as_count), id) {
            (Some(i), _) => i,
            // Without an index, a new id means a new call; otherwise the
            // fragment continues the open call.
            (None, Some(id)) => match self
                .tool_ids
                .iter()
                .find(|(_, v)| **v == sanitize_tool_id(id))
            {
                Some((k, _)) => *k,
                None => {
                    self.next_synthetic_key = self.next_synthetic_key.saturating_sub(1);
                    self.next_synthetic_key
                }
            },
            (None, None) => open_tool.unwrap_or(0),
        };
        let f = call.get("function").unwrap_or(&Value::Null);
        let index = match self.open {
            Some((BlockKind::Tool(k), index)) if k == key => index,
            _ if self.tool_ids.contains_key(&key) => return, // its block is closed
            _ => {
                let tool_id = id
                    .map(sanitize_tool_id)
                    .unwrap_or_else(|| format!("toolu_{}", self.next_block));
                self.tool_ids.insert(key, tool_id.clone());
                self.saw_tool = true;
                self.start_block(
                    BlockKind::Tool(key),
                    obj([
                        ("type", "tool_use".into()),
                        ("id", tool_id.into()),
                        ("name", str_field(f, "name").unwrap_or("").into()),
                        ("input", obj([])),
                    ]),
                    out,
                )
            }
        };
        let args = match f.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            // Some providers send already-decoded arguments.
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        if !args.is_empty() {
            out.push(block_delta(
                index,
                obj([
                    ("type", "input_json_delta".into()),
                    ("partial_json", args.into()),
                ]),
            ));
        }
    }

    /// Closes the open block and starts a new one; returns its index.
    fn start_block(
        &mut self,
        kind: BlockKind,
        block: Value,
        out: &mut Vec<(&'static str, Value)>,
    ) -> u64 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((kind, index));
        out.push((
            "content_block_start",
            obj([
                ("type", "content_block_start".into()),
                ("index", index.into()),
                ("content_block", block),
            ]),
        ));
        index
    }

    fn close_block(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if let Some((_, index)) = self.open.take() {
            out.push((
                "content_block_stop",
                obj([
                    ("type", "content_block_stop".into()),
                    ("index", index.into()),
                ]),
            ));
        }
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        self.close_block(out);
        let finish = self.finish_reason.as_deref();
        // Some providers report `stop` after tool calls; Anthropic clients
        // run tools on `tool_use`.
        let stop = match finish {
            Some("stop") | None if self.saw_tool => "tool_use",
            Some(f) => openai_finish_to_anthropic_stop(f),
            None => "end_turn",
        };
        let u = self.usage.unwrap_or_default();
        out.push((
            "message_delta",
            obj([
                ("type", "message_delta".into()),
                (
                    "delta",
                    obj([("stop_reason", stop.into()), ("stop_sequence", Value::Null)]),
                ),
                (
                    "usage",
                    obj([
                        ("input_tokens", u.input.into()),
                        ("cache_creation_input_tokens", 0.into()),
                        ("cache_read_input_tokens", u.cached_input.into()),
                        ("output_tokens", u.output.into()),
                    ]),
                ),
            ]),
        ));
        out.push(("message_stop", obj([("type", "message_stop".into())])));
        self.closed = true;
    }
}

fn block_delta(index: u64, delta: Value) -> (&'static str, Value) {
    (
        "content_block_delta",
        obj([
            ("type", "content_block_delta".into()),
            ("index", index.into()),
            ("delta", delta),
        ]),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    /// A realistic Anthropic stream: text, then two tool calls whose inputs
    /// arrive in fragments.
    fn anthropic_events() -> Vec<(&'static str, Value)> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null,
                "usage": {"input_tokens": 50, "cache_read_input_tokens": 1000,
                    "cache_creation_input_tokens": 20, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Let me "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "check."}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{\"tz\":\"CET\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 2}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 33}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]
    }

    fn run_a2o(
        include_usage: bool,
        events: &[(&'static str, Value)],
    ) -> (AnthropicToOpenAiStream, Vec<Value>) {
        let mut s = AnthropicToOpenAiStream::new("gpt-alias", include_usage);
        s.created = 7; // deterministic chunks
        let mut out = Vec::new();
        for (name, data) in events {
            out.extend(s.push(name, data));
        }
        (s, out)
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-alias",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }

    #[test]
    fn anthropic_to_openai_exact_chunks() {
        let (mut s, out) = run_a2o(false, &anthropic_events());
        assert_eq!(
            out,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Let me "}), Value::Null),
                chunk(json!({"content": "check."}), Value::Null),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Pa"}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "ris\"}"}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 1, "id": "toolu_b", "type": "function",
                    "function": {"name": "get_time", "arguments": ""}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\":\"CET\"}"}}]}),
                    Value::Null
                ),
                chunk(json!({}), json!("tool_calls")),
            ]
        );
        assert_eq!(s.finish(), Vec::<Value>::new());
        assert_eq!(
            s.usage(),
            Some(TokenCounts {
                input: 50,
                cached_input: 1000,
                cache_write_5m: 20,
                cache_write_1h: 0,
                output: 33,
                reasoning: 0,
            })
        );
    }

    #[test]
    fn anthropic_to_openai_usage_chunk() {
        let (mut s, out) = run_a2o(true, &anthropic_events());
        assert_eq!(out.len(), 10);
        // Every regular chunk carries `usage: null`, like OpenAI.
        assert!(out[..9]
            .iter()
            .all(|c| c["usage"] == Value::Null && c.get("usage").is_some()));
        assert_eq!(
            out[9],
            json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-alias",
                "choices": [], "usage": {"prompt_tokens": 1070, "completion_tokens": 33,
                    "total_tokens": 1103, "prompt_tokens_details": {"cached_tokens": 1000}}})
        );
        assert!(crate::usage::is_usage_only_chunk(&out[9]));
        assert!(s.finish().is_empty());
        assert!(s.push("message_stop", &json!({})).is_empty());
    }

    /// Concatenates streamed tool-call fragments per OpenAI tool index.
    fn reassemble_openai(chunks: &[Value]) -> (String, Vec<(String, String, String)>) {
        let mut text = String::new();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for c in chunks {
            let Some(delta) = c["choices"].get(0).map(|ch| &ch["delta"]) else {
                continue;
            };
            text.push_str(delta["content"].as_str().unwrap_or(""));
            for tc in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                if let Some(id) = tc["id"].as_str() {
                    calls[i].0 = id.to_owned();
                }
                if let Some(n) = tc["function"]["name"].as_str() {
                    calls[i].1 = n.to_owned();
                }
                calls[i]
                    .2
                    .push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        (text, calls)
    }

    #[test]
    fn anthropic_fragments_reassemble() {
        let (_, out) = run_a2o(false, &anthropic_events());
        let (text, calls) = reassemble_openai(&out);
        assert_eq!(text, "Let me check.");
        assert_eq!(
            calls,
            vec![
                (
                    "toolu_a".into(),
                    "get_weather".into(),
                    "{\"city\": \"Paris\"}".into()
                ),
                (
                    "toolu_b".into(),
                    "get_time".into(),
                    "{\"tz\":\"CET\"}".into()
                ),
            ]
        );
    }

    #[test]
    fn anthropic_truncated_stream_finish() {
        let events = anthropic_events();
        // Cut before message_delta: finish() supplies the finish and usage chunks.
        let (mut s, out) = run_a2o(true, &events[..14]);
        assert_eq!(out.len(), 8);
        let tail = s.finish();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0]["choices"][0]["finish_reason"], json!("stop"));
        assert_eq!(tail[1]["usage"]["completion_tokens"], json!(1));
        assert!(s.finish().is_empty());

        // Cut after message_delta: the finish chunk is not repeated.
        let (mut s, out) = run_a2o(true, &events[..15]);
        assert_eq!(
            out.last().unwrap()["choices"][0]["finish_reason"],
            json!("tool_calls")
        );
        let tail = s.finish();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0]["choices"], json!([]));
        assert_eq!(tail[0]["usage"]["completion_tokens"], json!(33));

        // Nothing received: nothing to finish.
        let mut s = AnthropicToOpenAiStream::new("m", true);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn anthropic_error_event() {
        let mut events = anthropic_events()[..4].to_vec();
        events.push(("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
        let (mut s, out) = run_a2o(true, &events);
        assert_eq!(
            out.last().unwrap(),
            &json!({"error": {"message": "Overloaded", "type": "server_error", "param": null,
                "code": "overloaded_error"}})
        );
        assert!(s.finish().is_empty());
        assert!(s.push("content_block_delta", &events[3].1).is_empty());
    }

    #[test]
    fn anthropic_event_type_from_data_and_garbage() {
        let mut s = AnthropicToOpenAiStream::new("m", false);
        s.created = 0;
        let out = s.push(
            "",
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "x"}}),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1]["choices"][0]["delta"], json!({"content": "x"}));
        for junk in [
            json!(null),
            json!([1]),
            json!({"delta": 5}),
            json!({"index": "a"}),
        ] {
            for name in [
                "content_block_start",
                "content_block_delta",
                "message_delta",
                "bogus",
            ] {
                assert!(s.push(name, &junk).is_empty(), "{name} {junk}");
            }
        }
        // input_json_delta for a block that is not a tool is dropped.
        assert!(s
            .push(
                "content_block_delta",
                &json!({"index": 9,
                "delta": {"type": "input_json_delta", "partial_json": "{}"}})
            )
            .is_empty());
    }

    // -----------------------------------------------------------------------

    fn openai_chunks() -> Vec<Value> {
        let c = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                "usage": null})
        };
        vec![
            c(json!({"role": "assistant", "content": ""}), Value::Null),
            c(json!({"content": "Hi"}), Value::Null),
            c(json!({"content": " there"}), Value::Null),
            c(
                json!({"tool_calls": [{"index": 0, "id": "call_A", "type": "function",
                "function": {"name": "f", "arguments": ""}}]}),
                Value::Null,
            ),
            c(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
                Value::Null,
            ),
            c(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": " [1, 2]}"}}]}),
                Value::Null,
            ),
            c(
                json!({"tool_calls": [{"index": 1, "id": "call_B", "type": "function",
                "function": {"name": "g", "arguments": "{\"b\""}}]}),
                Value::Null,
            ),
            c(
                json!({"tool_calls": [{"index": 1, "function": {"arguments": ":true}"}}]}),
                Value::Null,
            ),
            c(json!({}), json!("tool_calls")),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                "choices": [], "usage": {"prompt_tokens": 300, "completion_tokens": 25,
                    "total_tokens": 325, "prompt_tokens_details": {"cached_tokens": 256}}}),
        ]
    }

    fn run_o2a(chunks: &[Value]) -> (OpenAiToAnthropicStream, Vec<(&'static str, Value)>) {
        let mut s = OpenAiToAnthropicStream::new("claude-alias");
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        (s, out)
    }

    fn delta(index: u64, d: Value) -> (&'static str, Value) {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": d}),
        )
    }

    #[test]
    fn openai_to_anthropic_exact_events() {
        let (mut s, out) = run_o2a(&openai_chunks());
        let expected: Vec<(&str, Value)> = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "chatcmpl-1",
                "type": "message", "role": "assistant", "model": "claude-alias", "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0, "output_tokens": 0}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            delta(0, json!({"type": "text_delta", "text": "Hi"})),
            delta(0, json!({"type": "text_delta", "text": " there"})),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "call_A", "name": "f", "input": {}}}),
            ),
            delta(
                1,
                json!({"type": "input_json_delta", "partial_json": "{\"a\":"}),
            ),
            delta(
                1,
                json!({"type": "input_json_delta", "partial_json": " [1, 2]}"}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "call_B", "name": "g", "input": {}}}),
            ),
            delta(
                2,
                json!({"type": "input_json_delta", "partial_json": "{\"b\""}),
            ),
            delta(
                2,
                json!({"type": "input_json_delta", "partial_json": ":true}"}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 2}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 44, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 256, "output_tokens": 25}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        assert_eq!(out, expected);
        for (name, data) in &out {
            assert_eq!(data["type"], json!(name));
        }
        assert!(s.finish().is_empty());
        assert_eq!(s.usage().map(|u| u.output), Some(25));
    }

    #[test]
    fn openai_reasoning_count_is_kept_for_the_event_not_put_in_the_anthropic_body() {
        let mut chunks = openai_chunks();
        let last = chunks.len() - 1;
        chunks[last]["usage"]["completion_tokens_details"] = json!({"reasoning_tokens": 20});
        let (s, out) = run_o2a(&chunks);
        let counts = s.usage().unwrap();
        assert_eq!((counts.output, counts.reasoning), (25, 20));
        let (_, delta) = out.iter().find(|(n, _)| *n == "message_delta").unwrap();
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 44, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 256, "output_tokens": 25})
        );
        assert!(!serde_json::to_string(&out).unwrap().contains("reasoning"));
    }

    #[test]
    fn closing_waits_for_usage_chunk() {
        let chunks = openai_chunks();
        let (mut s, out) = run_o2a(&chunks[..9]);
        // finish_reason seen, usage not yet: the block is still open.
        assert_eq!(out.last().unwrap().0, "content_block_delta");
        let tail = s.push(&chunks[9]);
        let names: Vec<_> = tail.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert!(s.finish().is_empty());
        assert!(s.push(&chunks[9]).is_empty());
    }

    #[test]
    fn closing_on_finish_without_usage() {
        let chunks = openai_chunks();
        let (mut s, _) = run_o2a(&chunks[..9]);
        let tail = s.finish();
        let names: Vec<_> = tail.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert_eq!(
            tail[1].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0, "output_tokens": 0}})
        );
        assert!(s.finish().is_empty());
        // A late usage chunk emits nothing but still updates the usage.
        assert!(s.push(&chunks[9]).is_empty());
        assert_eq!(
            s.usage().map(|u| (u.input, u.cached_input, u.output)),
            Some((44, 256, 25))
        );

        // No chunk at all: nothing to close.
        let mut s = OpenAiToAnthropicStream::new("m");
        assert!(s.finish().is_empty());
    }

    #[test]
    fn text_only_stream_stop_reason() {
        let chunks = vec![
            json!({"id": "x", "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]}),
            json!({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 9}}),
        ];
        let (_, out) = run_o2a(&chunks);
        let names: Vec<_> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(out[4].1["delta"]["stop_reason"], json!("max_tokens"));
        assert_eq!(out[4].1["usage"]["input_tokens"], json!(5));
        assert_eq!(out[4].1["usage"]["output_tokens"], json!(9));
    }

    #[test]
    fn whole_tool_calls_in_one_chunk_and_missing_index() {
        // Gemini-style: complete calls in one chunk, finish "stop".
        let chunks = vec![
            json!({"id": "g", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"id": "a:1", "function": {"name": "f", "arguments": "{\"x\":1}"}},
            {"id": "b", "function": {"name": "g", "arguments": {"y": 2}}},
            {"id": "b", "function": {"arguments": ""}}
        ]}, "finish_reason": "stop"}]}),
        ];
        let (mut s, out) = run_o2a(&chunks);
        let tail = s.finish();
        let all: Vec<_> = out.into_iter().chain(tail).collect();
        let blocks: Vec<_> = all
            .iter()
            .filter(|(n, _)| *n == "content_block_start")
            .map(|(_, d)| d["content_block"].clone())
            .collect();
        assert_eq!(
            blocks,
            vec![
                json!({"type": "tool_use", "id": "a_1", "name": "f", "input": {}}),
                json!({"type": "tool_use", "id": "b", "name": "g", "input": {}}),
            ]
        );
        let msg_delta = all.iter().find(|(n, _)| *n == "message_delta").unwrap();
        assert_eq!(msg_delta.1["delta"]["stop_reason"], json!("tool_use"));
        assert_eq!(all.iter().filter(|(n, _)| *n == "message_stop").count(), 1);
    }

    #[test]
    fn interleaved_fragment_for_closed_call_is_dropped() {
        let c = |tc: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": [tc]}}]});
        let (_, out) = run_o2a(&[
            c(json!({"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}})),
            c(json!({"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}})),
            c(json!({"index": 0, "function": {"arguments": "}"}})),
        ]);
        let deltas: Vec<_> = out
            .iter()
            .filter(|(n, _)| *n == "content_block_delta")
            .map(|(_, d)| (d["index"].clone(), d["delta"]["partial_json"].clone()))
            .collect();
        assert_eq!(
            deltas,
            vec![(json!(0), json!("{")), (json!(1), json!("{}"))]
        );
    }

    #[test]
    fn openai_error_chunk() {
        let (mut s, out) = run_o2a(&[
            openai_chunks()[1].clone(),
            json!({"error": {"message": "Rate limited", "code": 429}}),
        ]);
        assert_eq!(
            out.last().unwrap(),
            &(
                "error",
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}})
            )
        );
        assert!(s.finish().is_empty());
        let (_, out) = run_o2a(&[json!({"error": {"message": "boom", "code": "server_error"}})]);
        assert_eq!(
            out,
            vec![(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": "boom"}})
            )]
        );
    }

    #[test]
    fn openai_garbage_chunks() {
        let mut s = OpenAiToAnthropicStream::new("m");
        assert!(s.push(&json!(null)).is_empty());
        assert!(s.push(&json!("[DONE]")).is_empty());
        // An object without choices still starts the message.
        let out = s.push(&json!({"choices": "x"}));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "message_start");
        assert!(s
            .push(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [null, 5]}}]}))
            .is_empty());
        assert!(s
            .push(&json!({"choices": [{"index": 3, "delta": {"content": "other choice"}}]}))
            .is_empty());
        let tail = s.finish();
        assert_eq!(tail.last().unwrap().0, "message_stop");
    }

    /// OpenAI chunks -> Anthropic events -> OpenAI chunks keeps the text and
    /// every tool call's id, name and exact argument string.
    #[test]
    fn double_translation_reassembles() {
        let (mut o2a, events) = run_o2a(&openai_chunks());
        assert!(o2a.finish().is_empty());
        let mut a2o = AnthropicToOpenAiStream::new("gpt-4o", true);
        let mut back = Vec::new();
        for (name, data) in &events {
            back.extend(a2o.push(name, data));
        }
        assert!(a2o.finish().is_empty());
        let (orig_text, orig_calls) = reassemble_openai(&openai_chunks());
        let (text, calls) = reassemble_openai(&back);
        assert_eq!(text, orig_text);
        assert_eq!(calls, orig_calls);
        assert_eq!(calls[0].2, "{\"a\": [1, 2]}");
        let finish: Vec<_> = back
            .iter()
            .filter_map(|c| {
                c["choices"]
                    .get(0)
                    .and_then(|ch| ch["finish_reason"].as_str())
            })
            .collect();
        assert_eq!(finish, ["tool_calls"]);
        assert_eq!(
            back.last().unwrap()["usage"],
            json!({"prompt_tokens": 300, "completion_tokens": 25, "total_tokens": 325,
                "prompt_tokens_details": {"cached_tokens": 256}})
        );
    }

    /// Anthropic events -> OpenAI chunks -> Anthropic events keeps text and
    /// tool inputs.
    #[test]
    fn reverse_double_translation_reassembles() {
        let (mut a2o, chunks) = run_a2o(true, &anthropic_events());
        assert!(a2o.finish().is_empty());
        let (mut o2a, events) = run_o2a(&chunks);
        assert!(o2a.finish().is_empty());
        let mut text = String::new();
        let mut inputs: Vec<(String, String, String)> = Vec::new();
        for (name, d) in &events {
            match *name {
                "content_block_start" if d["content_block"]["type"] == "tool_use" => inputs.push((
                    d["content_block"]["id"].as_str().unwrap().into(),
                    d["content_block"]["name"].as_str().unwrap().into(),
                    String::new(),
                )),
                "content_block_delta" => {
                    text.push_str(d["delta"]["text"].as_str().unwrap_or(""));
                    if let Some(p) = d["delta"]["partial_json"].as_str() {
                        inputs.last_mut().unwrap().2.push_str(p);
                    }
                }
                _ => {}
            }
        }
        assert_eq!(text, "Let me check.");
        assert_eq!(
            inputs,
            vec![
                (
                    "toolu_a".into(),
                    "get_weather".into(),
                    "{\"city\": \"Paris\"}".into()
                ),
                (
                    "toolu_b".into(),
                    "get_time".into(),
                    "{\"tz\":\"CET\"}".into()
                ),
            ]
        );
        let md = events.iter().find(|(n, _)| *n == "message_delta").unwrap();
        assert_eq!(
            md.1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 70, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1000, "output_tokens": 33}})
        );
        assert_eq!(
            events.iter().filter(|(n, _)| *n == "message_stop").count(),
            1
        );
    }
}
