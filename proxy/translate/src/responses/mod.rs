//! Translation between the OpenAI Responses API (`POST /v1/responses`) and
//! OpenAI Chat Completions.
//!
//! The gateway reaches Anthropic by composition (Responses → Chat → Messages
//! and back), so only Responses ⇄ Chat lives here: [`responses_to_chat_request`]
//! for requests, [`chat_to_responses_response`] for non-streamed answers and
//! [`ChatToResponsesStream`] for streams. Error bodies need no translation:
//! the Responses API uses the Chat Completions error shape
//! (`{"error":{"message","type","param","code"}}`).

mod request;
mod response;
mod stream;

pub use request::responses_to_chat_request;
pub use response::chat_to_responses_response;
pub use stream::ChatToResponsesStream;

use crate::util::{obj, sanitize_tool_id, str_field};
use serde_json::{Map, Value};

/// The id stem shared by the response and its items, derived from the chat
/// completion id so that logs on both sides can be correlated.
pub(crate) fn id_base(chat_id: Option<&str>) -> String {
    let id = chat_id.unwrap_or("");
    let stem = id
        .strip_prefix("chatcmpl-")
        .or_else(|| id.strip_prefix("msg_"))
        .unwrap_or(id);
    let stem = sanitize_tool_id(stem);
    if stem.is_empty() {
        "tollgate".to_owned()
    } else {
        stem
    }
}

/// Response `status` and `incomplete_details.reason` for a chat
/// `finish_reason`.
pub(crate) fn status_for_finish(finish: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

pub(crate) fn output_text_part(text: &str) -> Value {
    obj([
        ("type", "output_text".into()),
        ("annotations", Value::Array(Vec::new())),
        ("logprobs", Value::Array(Vec::new())),
        ("text", text.into()),
    ])
}

pub(crate) fn refusal_part(text: &str) -> Value {
    obj([("type", "refusal".into()), ("refusal", text.into())])
}

pub(crate) fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    obj([
        ("id", id.into()),
        ("type", "message".into()),
        ("status", status.into()),
        ("content", Value::Array(content)),
        ("role", "assistant".into()),
    ])
}

pub(crate) fn function_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    obj([
        ("id", id.into()),
        ("type", "function_call".into()),
        ("status", status.into()),
        ("arguments", arguments.into()),
        ("call_id", call_id.into()),
        ("name", name.into()),
    ])
}

/// How a response ended (or that it has not yet).
pub(crate) struct Outcome {
    pub status: &'static str,
    pub incomplete_reason: Option<&'static str>,
    pub output: Vec<Value>,
    /// `null` while in progress.
    pub usage: Value,
    /// `null` unless failed.
    pub error: Value,
}

/// A full Responses `response` object. Request parameters are echoed the way
/// OpenAI does (with its defaults when the client did not send them), since
/// SDKs require `tools`, `tool_choice` and `parallel_tool_calls`.
pub(crate) fn response_object(
    request: &Value,
    model: &str,
    id: &str,
    created: u64,
    outcome: Outcome,
) -> Value {
    let echo = |key: &str, ok: fn(&Value) -> bool, default: Value| {
        request
            .get(key)
            .filter(|v| ok(v))
            .cloned()
            .unwrap_or(default)
    };
    let mut text = echo("text", Value::is_object, obj([]));
    if let Value::Object(m) = &mut text {
        if m.get("format").is_none_or(Value::is_null) {
            m.insert("format".into(), obj([("type", "text".into())]));
        }
    }
    let effort = request
        .get("reasoning")
        .and_then(|r| str_field(r, "effort"))
        .map_or(Value::Null, Value::from);
    let incomplete = outcome
        .incomplete_reason
        .map_or(Value::Null, |r| obj([("reason", r.into())]));
    let mut m = Map::new();
    for (k, v) in [
        ("id", Value::from(id)),
        ("object", "response".into()),
        ("created_at", created.into()),
        ("status", outcome.status.into()),
        ("background", false.into()),
        ("error", outcome.error),
        ("incomplete_details", incomplete),
        (
            "instructions",
            echo("instructions", Value::is_string, Value::Null),
        ),
        (
            "max_output_tokens",
            echo("max_output_tokens", Value::is_u64, Value::Null),
        ),
        ("max_tool_calls", Value::Null),
        ("model", model.into()),
        ("output", Value::Array(outcome.output)),
        (
            "parallel_tool_calls",
            echo("parallel_tool_calls", Value::is_boolean, true.into()),
        ),
        ("previous_response_id", Value::Null),
        (
            "reasoning",
            obj([("effort", effort), ("summary", Value::Null)]),
        ),
        ("store", false.into()),
        (
            "temperature",
            echo("temperature", Value::is_number, 1.0.into()),
        ),
        ("text", text),
        (
            "tool_choice",
            echo(
                "tool_choice",
                |v| v.is_string() || v.is_object(),
                "auto".into(),
            ),
        ),
        (
            "tools",
            echo("tools", Value::is_array, Value::Array(Vec::new())),
        ),
        ("top_p", echo("top_p", Value::is_number, 1.0.into())),
        ("truncation", "disabled".into()),
        ("usage", outcome.usage),
        ("user", echo("user", Value::is_string, Value::Null)),
        ("metadata", echo("metadata", Value::is_object, obj([]))),
    ] {
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

/// The request parameters [`response_object`] echoes, without the (possibly
/// large) `input`, for a stream translator to keep.
pub(crate) fn echoed_fields(request: &Value) -> Value {
    let mut m = Map::new();
    for key in ECHOED {
        if let Some(v) = request.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    Value::Object(m)
}

/// The request members a translated answer reads (`model` and the echoed
/// parameters), read from the request's bytes without building its
/// `input`: members are scanned as raw text and only these are parsed.
/// `Value::Null` when the bytes are not a JSON object.
pub fn responses_echo_request(raw: &[u8]) -> Value {
    let Ok(members) = serde_json::from_slice::<
        std::collections::HashMap<std::borrow::Cow<'_, str>, &serde_json::value::RawValue>,
    >(raw) else {
        return Value::Null;
    };
    let mut m = Map::new();
    for (key, value) in members {
        if key == "model" || ECHOED.contains(&key.as_ref()) {
            if let Ok(value) = serde_json::from_str(value.get()) {
                m.insert(key.into_owned(), value);
            }
        }
    }
    Value::Object(m)
}

const ECHOED: [&str; 11] = [
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "text",
    "tool_choice",
    "tools",
    "user",
    "metadata",
    "reasoning",
];

/// The model name to report: the one the client asked for, else `fallback`.
pub(crate) fn client_model<'a>(request: &'a Value, fallback: &'a str) -> &'a str {
    str_field(request, "model").unwrap_or(fallback)
}

#[cfg(test)]
mod echo_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_echo_reads_the_same_members_as_the_full_request() {
        let request = json!({
            "model": "m", "input": [{"role": "user", "content": "long prompt"}],
            "instructions": "be brief", "tools": [{"type": "function", "name": "f"}],
            "temperature": 0.5, "metadata": {"a": "b"}, "stream": true,
        });
        let echo = responses_echo_request(&serde_json::to_vec(&request).unwrap());
        assert!(echo.get("input").is_none() && echo.get("stream").is_none());
        assert_eq!(echo["model"], "m");
        assert_eq!(echoed_fields(&echo), echoed_fields(&request));
        assert_eq!(responses_echo_request(b"[1]"), Value::Null);
        assert_eq!(responses_echo_request(b"{nope"), Value::Null);
    }
}
