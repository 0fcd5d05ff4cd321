//! Chat Completions chunk stream → Responses API event stream.

use super::{
    echoed_fields, function_call_item, id_base, message_item, output_text_part, refusal_part,
    response_object, status_for_finish, Outcome,
};
use crate::usage::{openai_chunk_usage, responses_usage_json};
use crate::util::{as_count, count_field, non_null, now_secs, obj, str_field};
use serde_json::{Map, Value};
use std::collections::HashMap;
use tollgate_core::TokenCounts;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartKind {
    Text,
    Refusal,
}

#[derive(Debug)]
enum ItemBody {
    /// Content parts of an assistant message, in order.
    Message(Vec<(PartKind, String)>),
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

#[derive(Debug)]
struct Item {
    id: String,
    body: ItemBody,
    /// `in_progress` while open, then `completed` or `incomplete`.
    status: &'static str,
}

impl Item {
    fn is_open(&self) -> bool {
        self.status == "in_progress"
    }

    /// The item as it appears in `output` (and in `output_item.done`).
    fn to_json(&self) -> Value {
        match &self.body {
            ItemBody::Message(parts) => message_item(
                &self.id,
                self.status,
                parts.iter().map(|(k, t)| part_json(*k, t)).collect(),
            ),
            ItemBody::Call {
                call_id,
                name,
                arguments,
            } => function_call_item(&self.id, call_id, name, arguments, self.status),
        }
    }
}

fn part_json(kind: PartKind, text: &str) -> Value {
    match kind {
        PartKind::Text => output_text_part(text),
        PartKind::Refusal => refusal_part(text),
    }
}

/// Turns OpenAI `chat.completion.chunk` objects into Responses API stream
/// events `(event name, data)`; `data.type` equals the event name and
/// `data.sequence_number` counts from 0.
///
/// The first chunk yields `response.created` and `response.in_progress`.
/// Text opens a `message` item (`response.output_item.added`,
/// `response.content_part.added`, then `response.output_text.delta`s; a chat
/// `refusal` becomes a `refusal` part with `response.refusal.delta`s); each
/// tool call opens a `function_call` item fed with
/// `response.function_call_arguments.delta`s. A message is closed (`….done`
/// events, then `response.output_item.done`) when another item starts;
/// function calls stay open until the end, because chat tool-call fragments
/// may interleave by index. At the end — a usage chunk after the finish
/// reason, or [`finish`](Self::finish) — every open item is closed in output
/// order and `response.completed` (or `response.incomplete` for
/// `length`/`content_filter`) carries the full response, whose `output` is
/// exactly what the events built. A chunk with an `error` member yields
/// `response.failed` and ends the translation. Reasoning deltas are dropped.
#[derive(Debug)]
pub struct ChatToResponsesStream {
    /// Only the echoed request parameters, not its input.
    request: Value,
    model: String,
    base: String,
    created: u64,
    seq: u64,
    started: bool,
    done: bool,
    /// Output items in output-index order.
    items: Vec<Item>,
    /// Output index of the open message item.
    open_message: Option<usize>,
    /// Chat tool-call key (its `index`) → output index.
    calls: HashMap<u64, usize>,
    last_call: Option<u64>,
    /// Keys for tool calls that arrive without an `index`.
    next_synthetic_key: u64,
    finish_reason: Option<String>,
    usage: Option<TokenCounts>,
}

type Events = Vec<(&'static str, Value)>;

impl ChatToResponsesStream {
    /// A translator answering `request` (the client's Responses request,
    /// whose parameters are echoed) for a client that asked for
    /// `client_model`.
    pub fn new(client_model: &str, request: &Value) -> Self {
        Self {
            request: echoed_fields(request),
            model: client_model.to_owned(),
            base: id_base(None),
            created: 0,
            seq: 0,
            started: false,
            done: false,
            items: Vec::new(),
            open_message: None,
            calls: HashMap::new(),
            last_call: None,
            next_synthetic_key: u64::MAX,
            finish_reason: None,
            usage: None,
        }
    }

    /// Usage reported by the upstream so far.
    pub fn usage(&self) -> Option<TokenCounts> {
        self.usage
    }

    /// Translates one chunk (the parsed `data:` of a chat SSE event, not
    /// `[DONE]`). Chunks after the response ended are ignored.
    pub fn push(&mut self, chunk: &Value) -> Events {
        let mut out = Vec::new();
        if self.done || !chunk.is_object() {
            return out;
        }
        let chunk_usage = openai_chunk_usage(chunk);
        if chunk_usage.is_some() {
            self.usage = chunk_usage;
        }
        self.ensure_started(chunk, &mut out);
        if let Some(err) = non_null(chunk, "error") {
            self.fail(err, &mut out);
            return out;
        }
        let choice = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("index").and_then(as_count).unwrap_or(0) == 0)
            });
        if let Some(choice) = choice {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(t) = str_field(delta, "content").filter(|t| !t.is_empty()) {
                self.text(PartKind::Text, t, &mut out);
            }
            if let Some(t) = str_field(delta, "refusal").filter(|t| !t.is_empty()) {
                self.text(PartKind::Refusal, t, &mut out);
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_fragment(call, &mut out);
            }
            if let Some(f) = str_field(choice, "finish_reason") {
                self.finish_reason = Some(f.to_owned());
            }
        }
        // The usage chunk follows the finish reason; nothing comes after it.
        if self.finish_reason.is_some() && chunk_usage.is_some() {
            self.close(&mut out);
        }
        out
    }

    /// Call on `[DONE]` or end of stream: closes open items and emits
    /// `response.completed` / `response.incomplete` if not done yet (usage
    /// zeros if none was reported). Returns nothing if no chunk was seen.
    pub fn finish(&mut self) -> Events {
        let mut out = Vec::new();
        if !self.done && self.started {
            self.close(&mut out);
        }
        self.done = true;
        out
    }

    fn emit(&mut self, out: &mut Events, name: &'static str, data: Value) {
        let mut m = match data {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        m.insert("type".into(), name.into());
        m.insert("sequence_number".into(), self.seq.into());
        self.seq += 1;
        out.push((name, Value::Object(m)));
    }

    fn response(&self, outcome: Outcome) -> Value {
        response_object(
            &self.request,
            &self.model,
            &format!("resp_{}", self.base),
            self.created,
            outcome,
        )
    }

    fn ensure_started(&mut self, chunk: &Value, out: &mut Events) {
        if self.started {
            return;
        }
        self.started = true;
        self.base = id_base(str_field(chunk, "id"));
        self.created = count_field(chunk, "created").unwrap_or_else(now_secs);
        for name in ["response.created", "response.in_progress"] {
            let response = self.response(Outcome {
                status: "in_progress",
                incomplete_reason: None,
                output: Vec::new(),
                usage: Value::Null,
                error: Value::Null,
            });
            self.emit(out, name, obj([("response", response)]));
        }
    }

    /// Appends text of `kind` to the open message (starting one, and a new
    /// content part when the kind changes).
    fn text(&mut self, kind: PartKind, text: &str, out: &mut Events) {
        let index = match self.open_message {
            Some(i) => i,
            None => self.start_message(out),
        };
        let Some(item) = self.items.get_mut(index) else {
            return;
        };
        let ItemBody::Message(parts) = &mut item.body else {
            return;
        };
        let item_id = item.id.clone();
        let same_kind = parts.last().is_some_and(|(k, _)| *k == kind);
        if same_kind {
            if let Some((_, t)) = parts.last_mut() {
                t.push_str(text);
            }
        } else {
            parts.push((kind, text.to_owned()));
        }
        let content_index = parts.len().saturating_sub(1);
        if !same_kind {
            if content_index > 0 {
                self.close_part(index, content_index - 1, out);
            }
            self.emit(
                out,
                "response.content_part.added",
                obj([
                    ("item_id", item_id.as_str().into()),
                    ("output_index", index.into()),
                    ("content_index", content_index.into()),
                    ("part", part_json(kind, "")),
                ]),
            );
        }
        let (name, extra) = match kind {
            PartKind::Text => ("response.output_text.delta", true),
            PartKind::Refusal => ("response.refusal.delta", false),
        };
        let mut data = obj([
            ("item_id", item_id.into()),
            ("output_index", index.into()),
            ("content_index", content_index.into()),
            ("delta", text.into()),
        ]);
        if let (true, Value::Object(m)) = (extra, &mut data) {
            m.insert("logprobs".into(), Value::Array(Vec::new()));
        }
        self.emit(out, name, data);
    }

    fn start_message(&mut self, out: &mut Events) -> usize {
        let index = self.items.len();
        let item = Item {
            id: format!("msg_{}_{index}", self.base),
            body: ItemBody::Message(Vec::new()),
            status: "in_progress",
        };
        let json = item.to_json();
        self.items.push(item);
        self.open_message = Some(index);
        self.emit(
            out,
            "response.output_item.added",
            obj([("output_index", index.into()), ("item", json)]),
        );
        index
    }

    /// `response.output_text.done` / `response.refusal.done` and
    /// `response.content_part.done` for one part of a message.
    fn close_part(&mut self, index: usize, content_index: usize, out: &mut Events) {
        let Some(item) = self.items.get(index) else {
            return;
        };
        let ItemBody::Message(parts) = &item.body else {
            return;
        };
        let Some((kind, text)) = parts.get(content_index) else {
            return;
        };
        let item_id = item.id.clone();
        let part = part_json(*kind, text);
        let (name, key) = match kind {
            PartKind::Text => ("response.output_text.done", "text"),
            PartKind::Refusal => ("response.refusal.done", "refusal"),
        };
        let mut data = obj([
            ("item_id", item_id.as_str().into()),
            ("output_index", index.into()),
            ("content_index", content_index.into()),
            (key, text.as_str().into()),
        ]);
        if let (PartKind::Text, Value::Object(m)) = (kind, &mut data) {
            m.insert("logprobs".into(), Value::Array(Vec::new()));
        }
        self.emit(out, name, data);
        self.emit(
            out,
            "response.content_part.done",
            obj([
                ("item_id", item_id.into()),
                ("output_index", index.into()),
                ("content_index", content_index.into()),
                ("part", part),
            ]),
        );
    }

    fn tool_fragment(&mut self, call: &Value, out: &mut Events) {
        if !call.is_object() {
            return;
        }
        let id = str_field(call, "id").filter(|s| !s.is_empty());
        let key = match (call.get("index").and_then(as_count), id) {
            (Some(i), _) => i,
            // Without an index, a new id means a new call; otherwise the
            // fragment continues the last call.
            (None, Some(id)) => match self.call_key_by_id(id) {
                Some(k) => k,
                None => {
                    self.next_synthetic_key = self.next_synthetic_key.saturating_sub(1);
                    self.next_synthetic_key
                }
            },
            (None, None) => self.last_call.unwrap_or(0),
        };
        self.last_call = Some(key);
        let f = call.get("function").unwrap_or(&Value::Null);
        let name = str_field(f, "name").unwrap_or("");
        let index = match self.calls.get(&key) {
            Some(i) => *i,
            None => self.start_call(key, id, name, out),
        };
        let args = match f.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            // Some providers send already-decoded arguments.
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        let Some(item) = self.items.get_mut(index).filter(|i| i.is_open()) else {
            return;
        };
        let ItemBody::Call {
            name: item_name,
            arguments,
            ..
        } = &mut item.body
        else {
            return;
        };
        // A name that only arrives after the first fragment still makes it
        // into the done events.
        if item_name.is_empty() && !name.is_empty() {
            name.clone_into(item_name);
        }
        if args.is_empty() {
            return;
        }
        arguments.push_str(&args);
        let item_id = item.id.clone();
        self.emit(
            out,
            "response.function_call_arguments.delta",
            obj([
                ("item_id", item_id.into()),
                ("output_index", index.into()),
                ("delta", args.into()),
            ]),
        );
    }

    fn call_key_by_id(&self, id: &str) -> Option<u64> {
        self.calls.iter().find_map(|(k, i)| {
            self.items.get(*i).and_then(|item| match &item.body {
                ItemBody::Call { call_id, .. } if call_id == id => Some(*k),
                _ => None,
            })
        })
    }

    fn start_call(&mut self, key: u64, id: Option<&str>, name: &str, out: &mut Events) -> usize {
        // A new item closes the open message (function calls stay open).
        if let Some(m) = self.open_message.take() {
            self.close_item(m, "completed", out);
        }
        let index = self.items.len();
        let item = Item {
            id: format!("fc_{}_{index}", self.base),
            body: ItemBody::Call {
                call_id: id.map_or_else(|| format!("call_{}_{index}", self.base), str::to_owned),
                name: name.to_owned(),
                arguments: String::new(),
            },
            status: "in_progress",
        };
        let json = item.to_json();
        self.items.push(item);
        self.calls.insert(key, index);
        self.emit(
            out,
            "response.output_item.added",
            obj([("output_index", index.into()), ("item", json)]),
        );
        index
    }

    /// Emits the done events of an open item and marks it `status`.
    fn close_item(&mut self, index: usize, status: &'static str, out: &mut Events) {
        let Some(item) = self.items.get(index).filter(|i| i.is_open()) else {
            return;
        };
        let (last_part, args_done) = match &item.body {
            ItemBody::Message(parts) => (parts.len().checked_sub(1), None),
            ItemBody::Call {
                name, arguments, ..
            } => (
                None,
                Some(obj([
                    ("item_id", item.id.as_str().into()),
                    ("output_index", index.into()),
                    ("name", name.as_str().into()),
                    ("arguments", arguments.as_str().into()),
                ])),
            ),
        };
        if let Some(last) = last_part {
            self.close_part(index, last, out);
        }
        if let Some(data) = args_done {
            self.emit(out, "response.function_call_arguments.done", data);
        }
        let Some(item) = self.items.get_mut(index) else {
            return;
        };
        item.status = status;
        let json = item.to_json();
        self.emit(
            out,
            "response.output_item.done",
            obj([("output_index", index.into()), ("item", json)]),
        );
    }

    fn close(&mut self, out: &mut Events) {
        let (status, reason) = status_for_finish(self.finish_reason.as_deref());
        let item_status = if reason.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        self.open_message = None;
        for index in 0..self.items.len() {
            self.close_item(index, item_status, out);
        }
        let counts = self.usage.unwrap_or_default();
        let response = self.response(Outcome {
            status,
            incomplete_reason: reason,
            output: self.items.iter().map(Item::to_json).collect(),
            usage: responses_usage_json(&counts),
            error: Value::Null,
        });
        let name = if reason.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, name, obj([("response", response)]));
        self.done = true;
    }

    /// An upstream error mid-stream: `response.failed` with what was built so
    /// far (open items marked incomplete, without their done events).
    fn fail(&mut self, err: &Value, out: &mut Events) {
        for item in &mut self.items {
            if item.is_open() {
                item.status = "incomplete";
            }
        }
        let message = match err {
            Value::String(s) => s.as_str(),
            _ => str_field(err, "message").unwrap_or("upstream error"),
        };
        let is_rate_limit = [str_field(err, "type"), str_field(err, "code")]
            .iter()
            .flatten()
            .any(|s| s.contains("rate_limit"));
        let code = if is_rate_limit {
            "rate_limit_exceeded"
        } else {
            "server_error"
        };
        let usage = self.usage.map_or(Value::Null, |c| responses_usage_json(&c));
        let response = self.response(Outcome {
            status: "failed",
            incomplete_reason: None,
            output: self.items.iter().map(Item::to_json).collect(),
            usage,
            error: obj([("code", code.into()), ("message", message.into())]),
        });
        self.emit(out, "response.failed", obj([("response", response)]));
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 42,
            "model": "up", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": null})
    }

    fn usage_chunk() -> Value {
        json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 42,
            "model": "up", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9,
            "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 10},
            "completion_tokens_details": {"reasoning_tokens": 4}}})
    }

    fn run(chunks: &[Value], finish: bool) -> Events {
        let mut s = ChatToResponsesStream::new(
            "gpt-alias",
            &json!({"model": "gpt-alias",
            "input": "a long input that is not kept", "tools": [], "temperature": 0.3}),
        );
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        if finish {
            out.extend(s.finish());
        }
        out
    }

    /// Rebuilds the output the way the SDK stream helper does, checking the
    /// invariants along the way; returns (final response, built items).
    fn replay(events: &Events) -> (Value, Vec<Value>) {
        let mut items: Vec<Value> = Vec::new();
        let mut last = Value::Null;
        assert_eq!(events.first().map(|e| e.0), Some("response.created"));
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], json!(name));
            assert_eq!(data["sequence_number"], json!(i));
            let oi = data["output_index"].as_u64().unwrap_or(u64::MAX) as usize;
            let ci = data["content_index"].as_u64().unwrap_or(0) as usize;
            if name.starts_with("response.output_text")
                || name.starts_with("response.refusal")
                || name.starts_with("response.function_call_arguments")
                || name.starts_with("response.content_part")
            {
                assert_eq!(data["item_id"], items[oi]["id"], "{name}");
            }
            match *name {
                "response.output_item.added" => {
                    assert_eq!(oi, items.len());
                    assert_eq!(data["item"]["status"], json!("in_progress"));
                    items.push(data["item"].clone());
                }
                "response.content_part.added" => {
                    let content = items[oi]["content"].as_array_mut().unwrap();
                    assert_eq!(ci, content.len());
                    content.push(data["part"].clone());
                }
                "response.output_text.delta" => {
                    assert_eq!(data["logprobs"], json!([]));
                    let t = &mut items[oi]["content"][ci]["text"];
                    *t = json!(format!(
                        "{}{}",
                        t.as_str().unwrap(),
                        data["delta"].as_str().unwrap()
                    ));
                }
                "response.refusal.delta" => {
                    let t = &mut items[oi]["content"][ci]["refusal"];
                    *t = json!(format!(
                        "{}{}",
                        t.as_str().unwrap(),
                        data["delta"].as_str().unwrap()
                    ));
                }
                "response.function_call_arguments.delta" => {
                    let t = &mut items[oi]["arguments"];
                    *t = json!(format!(
                        "{}{}",
                        t.as_str().unwrap(),
                        data["delta"].as_str().unwrap()
                    ));
                }
                "response.output_text.done" => {
                    assert_eq!(data["text"], items[oi]["content"][ci]["text"]);
                }
                "response.refusal.done" => {
                    assert_eq!(data["refusal"], items[oi]["content"][ci]["refusal"]);
                }
                "response.content_part.done" => {
                    assert_eq!(data["part"], items[oi]["content"][ci]);
                }
                "response.function_call_arguments.done" => {
                    assert_eq!(data["arguments"], items[oi]["arguments"]);
                    items[oi]["name"] = data["name"].clone();
                }
                "response.output_item.done" => {
                    let mut expected = items[oi].clone();
                    expected["status"] = data["item"]["status"].clone();
                    assert_eq!(data["item"], expected);
                    assert_ne!(data["item"]["status"], json!("in_progress"));
                    items[oi] = data["item"].clone();
                }
                "response.created" | "response.in_progress" => {
                    assert_eq!(data["response"]["status"], json!("in_progress"));
                    assert_eq!(data["response"]["output"], json!([]));
                }
                "response.completed" | "response.incomplete" | "response.failed" => {
                    assert_eq!(i + 1, events.len(), "a terminal event is last");
                    last = data["response"].clone();
                }
                other => panic!("unexpected event {other}"),
            }
        }
        (last, items)
    }

    fn names(events: &Events) -> Vec<&'static str> {
        events.iter().map(|e| e.0).collect()
    }

    #[test]
    fn text_stream_exact() {
        let events = run(
            &[
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Hel"}), Value::Null),
                chunk(json!({"content": "lo"}), Value::Null),
                chunk(json!({}), json!("stop")),
                usage_chunk(),
            ],
            false,
        );
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let data: Vec<&Value> = events.iter().map(|e| &e.1).collect();
        assert_eq!(data[0]["response"]["id"], json!("resp_7"));
        assert_eq!(data[0]["response"]["model"], json!("gpt-alias"));
        assert_eq!(data[0]["response"]["created_at"], json!(42));
        assert_eq!(data[0]["response"]["usage"], Value::Null);
        assert_eq!(data[0]["response"]["temperature"], json!(0.3));
        assert_eq!(
            *data[2],
            json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                "item": {"id": "msg_7_0", "type": "message", "status": "in_progress",
                    "content": [], "role": "assistant"}})
        );
        assert_eq!(
            *data[3],
            json!({"type": "response.content_part.added", "sequence_number": 3,
                "item_id": "msg_7_0", "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
        );
        assert_eq!(
            *data[4],
            json!({"type": "response.output_text.delta", "sequence_number": 4,
                "item_id": "msg_7_0", "output_index": 0, "content_index": 0,
                "delta": "Hel", "logprobs": []})
        );
        assert_eq!(
            *data[6],
            json!({"type": "response.output_text.done", "sequence_number": 6,
                "item_id": "msg_7_0", "output_index": 0, "content_index": 0,
                "text": "Hello", "logprobs": []})
        );
        let (last, items) = replay(&events);
        assert_eq!(last["status"], json!("completed"));
        assert_eq!(last["output"], json!(items));
        assert_eq!(
            last["output"][0]["content"],
            json!([{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}])
        );
        assert_eq!(
            last["usage"],
            json!({"input_tokens": 30, "input_tokens_details": {"cached_tokens": 10},
                "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 4},
                "total_tokens": 39})
        );
    }

    #[test]
    fn interleaved_tool_calls() {
        let events = run(
            &[
                chunk(json!({"role": "assistant", "content": "Hi"}), Value::Null),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                        "function": {"name": "fa", "arguments": ""}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [
                        {"index": 1, "id": "call_b", "type": "function",
                            "function": {"name": "fb", "arguments": "{\"b\":"}},
                        {"index": 0, "function": {"arguments": "{\"a\":"}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 1, "function": {"arguments": "2}"}}]}),
                    Value::Null,
                ),
                chunk(json!({}), json!("tool_calls")),
            ],
            true,
        );
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let (last, items) = replay(&events);
        assert_eq!(last["output"], json!(items));
        assert_eq!(
            last["output"],
            json!([
                {"id": "msg_7_0", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}]},
                {"id": "fc_7_1", "type": "function_call", "status": "completed",
                 "call_id": "call_a", "name": "fa", "arguments": "{\"a\":1}"},
                {"id": "fc_7_2", "type": "function_call", "status": "completed",
                 "call_id": "call_b", "name": "fb", "arguments": "{\"b\":2}"}
            ])
        );
        assert_eq!(
            events[10].1,
            json!({"type": "response.function_call_arguments.delta", "sequence_number": 10,
                "item_id": "fc_7_2", "output_index": 2, "delta": "{\"b\":"})
        );
        assert_eq!(
            events[14].1,
            json!({"type": "response.function_call_arguments.done", "sequence_number": 14,
                "item_id": "fc_7_1", "output_index": 1, "name": "fa", "arguments": "{\"a\":1}"})
        );
        // No usage chunk: zeros.
        assert_eq!(last["usage"]["total_tokens"], json!(0));
    }

    #[test]
    fn length_is_incomplete() {
        let events = run(
            &[
                chunk(json!({"content": "abc"}), Value::Null),
                chunk(json!({}), json!("length")),
                usage_chunk(),
            ],
            true,
        );
        let (last, items) = replay(&events);
        assert_eq!(events.last().unwrap().0, "response.incomplete");
        assert_eq!(last["status"], json!("incomplete"));
        assert_eq!(
            last["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(last["output"], json!(items));
        assert_eq!(items[0]["status"], json!("incomplete"));
        assert_eq!(last["usage"]["output_tokens"], json!(9));
    }

    #[test]
    fn text_after_tool_and_refusal_parts() {
        let events = run(
            &[
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "c1",
                    "function": {"name": "f", "arguments": "{}"}}]}),
                    Value::Null,
                ),
                chunk(json!({"content": "ok"}), Value::Null),
                chunk(json!({"refusal": "but no"}), Value::Null),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": " "}}]}),
                    Value::Null,
                ),
                chunk(json!({}), json!("content_filter")),
            ],
            true,
        );
        let (last, items) = replay(&events);
        assert_eq!(last["output"], json!(items));
        assert_eq!(
            last["incomplete_details"],
            json!({"reason": "content_filter"})
        );
        assert_eq!(items[0]["arguments"], json!("{} "));
        assert_eq!(
            items[1]["content"],
            json!([{"type": "output_text", "text": "ok", "annotations": [], "logprobs": []},
                {"type": "refusal", "refusal": "but no"}])
        );
    }

    #[test]
    fn calls_without_index_and_late_names() {
        let events = run(
            &[
                chunk(
                    json!({"tool_calls": [{"id": "x1", "function": {"arguments": "{"}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"function": {"name": "late", "arguments": "}"}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"id": "x2", "function": {"name": "g", "arguments": {"k": 1}}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"id": "x1", "function": {"arguments": " "}}]}),
                    Value::Null,
                ),
                chunk(json!({"tool_calls": [null, 5]}), Value::Null),
            ],
            true,
        );
        let (last, items) = replay(&events);
        assert_eq!(last["output"], json!(items));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["call_id"], json!("x1"));
        assert_eq!(items[0]["name"], json!("late"));
        assert_eq!(items[0]["arguments"], json!("{} "));
        assert_eq!(items[1]["arguments"], json!("{\"k\":1}"));
    }

    #[test]
    fn error_chunk_fails() {
        let events = run(
            &[
                chunk(json!({"content": "par"}), Value::Null),
                json!({"error": {"message": "slow down", "type": "rate_limit_error"}}),
                chunk(json!({"content": "ignored"}), Value::Null),
            ],
            true,
        );
        let (last, items) = replay(&events);
        assert_eq!(events.last().unwrap().0, "response.failed");
        assert_eq!(last["status"], json!("failed"));
        assert_eq!(
            last["error"],
            json!({"code": "rate_limit_exceeded", "message": "slow down"})
        );
        let mut expected = items[0].clone();
        expected["status"] = json!("incomplete");
        assert_eq!(last["output"], json!([expected]));
        // An error as the very first chunk still starts the response.
        let events = run(&[json!({"error": "boom"})], true);
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.failed"
            ]
        );
        assert_eq!(
            events[2].1["response"]["error"],
            json!({"code": "server_error", "message": "boom"})
        );
    }

    #[test]
    fn ends_without_finish_reason_or_chunks() {
        assert!(run(&[], true).is_empty());
        assert!(run(&[json!("x"), json!(null)], true).is_empty());
        let events = run(&[chunk(json!({"content": "a"}), Value::Null)], true);
        assert_eq!(events.last().unwrap().0, "response.completed");
        let (last, items) = replay(&events);
        assert_eq!(last["output"], json!(items));
        // Empty response: created, in_progress, completed with no output.
        let events = run(&[chunk(json!({}), json!("stop")), usage_chunk()], true);
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.completed"
            ]
        );
        // After the end nothing more is emitted.
        let mut s = ChatToResponsesStream::new("m", &json!({}));
        s.push(&chunk(json!({}), json!("stop")));
        assert_eq!(s.push(&usage_chunk()).len(), 1);
        assert!(s
            .push(&chunk(json!({"content": "late"}), Value::Null))
            .is_empty());
        assert!(s.finish().is_empty());
        assert_eq!(s.usage().map(|u| u.output), Some(9));
    }
}
