//! Non-streamed response and error-body translation.

use crate::usage::{anthropic_usage, openai_usage, openai_usage_json};
use crate::util::{non_null, now_secs, obj, sanitize_tool_id, str_field};
use serde_json::{Map, Value};

/// Anthropic `stop_reason` to OpenAI `finish_reason`. Unknown reasons (and
/// `pause_turn`, which has no equivalent) map to `stop`.
pub fn anthropic_stop_to_openai_finish(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` to Anthropic `stop_reason`. Unknown reasons map to
/// `end_turn`.
pub fn openai_finish_to_anthropic_stop(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Translates a non-streamed Anthropic `message` into an OpenAI
/// `chat.completion` (with `created` = now).
///
/// Text blocks are concatenated into `content` (null when there is no text),
/// `tool_use` blocks become `tool_calls`, thinking blocks are dropped. Usage
/// maps as `prompt_tokens = input + cache reads + cache writes`,
/// `prompt_tokens_details.cached_tokens = cache reads`; all zeros if the
/// message reported none.
pub fn anthropic_to_openai_response(msg: &Value, client_model: &str) -> Value {
    anthropic_to_openai_response_at(msg, client_model, now_secs())
}

pub(crate) fn anthropic_to_openai_response_at(
    msg: &Value,
    client_model: &str,
    created: u64,
) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in msg
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match str_field(b, "type") {
            Some("text") => text.push_str(str_field(b, "text").unwrap_or("")),
            Some("tool_use") => {
                let args = non_null(b, "input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".to_owned());
                calls.push(obj([
                    ("id", str_field(b, "id").unwrap_or("").into()),
                    ("type", "function".into()),
                    (
                        "function",
                        obj([
                            ("name", str_field(b, "name").unwrap_or("").into()),
                            ("arguments", args.into()),
                        ]),
                    ),
                ]));
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let finish = anthropic_stop_to_openai_finish(str_field(msg, "stop_reason").unwrap_or(""));
    let counts = msg
        .get("usage")
        .and_then(anthropic_usage)
        .unwrap_or_default();
    obj([
        (
            "id",
            str_field(msg, "id").unwrap_or("chatcmpl-tollgate").into(),
        ),
        ("object", "chat.completion".into()),
        ("created", created.into()),
        ("model", client_model.into()),
        (
            "choices",
            Value::Array(vec![obj([
                ("index", 0.into()),
                ("message", Value::Object(message)),
                ("logprobs", Value::Null),
                ("finish_reason", finish.into()),
            ])]),
        ),
        ("usage", openai_usage_json(&counts)),
    ])
}

/// Decodes tool-call `arguments` for an Anthropic `input`. Empty arguments
/// become `{}`. Arguments that are not a JSON object are kept verbatim as
/// `{"_raw_arguments": "<string>"}` so the client (and the model, when the
/// tool call fails validation) can see what was actually generated instead
/// of a silently empty input.
pub(crate) fn arguments_to_input(args: Option<&Value>) -> Value {
    match args {
        Some(Value::Object(_)) => args.cloned().unwrap_or_default(),
        Some(Value::String(s)) if s.trim().is_empty() => obj([]),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => obj([("_raw_arguments", s.as_str().into())]),
        },
        _ => obj([]),
    }
}

/// Translates a non-streamed OpenAI `chat.completion` into an Anthropic
/// `message` (first choice only).
///
/// Text (and `refusal` text) becomes a text block, `tool_calls` become
/// `tool_use` blocks (see the `_raw_arguments` rule for undecodable
/// arguments). A `stop` finish with tool calls present is reported as
/// `tool_use`, because some OpenAI-compatible providers say `stop` there and
/// Anthropic clients key tool execution on it. Usage:
/// `input_tokens = prompt - cached`, `cache_read_input_tokens = cached`.
pub fn openai_to_anthropic_response(completion: &Value, client_model: &str) -> Value {
    let choice = completion
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    let mut text = String::new();
    match message.get("content") {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                text.push_str(str_field(p, "text").unwrap_or(""));
            }
        }
        _ => {}
    }
    if let Some(r) = str_field(message, "refusal") {
        text.push_str(r);
    }
    if !text.is_empty() {
        content.push(obj([("type", "text".into()), ("text", text.into())]));
    }
    let mut has_tools = false;
    for (i, call) in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        let id = str_field(call, "id")
            .filter(|s| !s.is_empty())
            .map(sanitize_tool_id)
            .unwrap_or_else(|| format!("toolu_{i}"));
        content.push(obj([
            ("type", "tool_use".into()),
            ("id", id.into()),
            ("name", str_field(f, "name").unwrap_or("").into()),
            ("input", arguments_to_input(f.get("arguments"))),
        ]));
        has_tools = true;
    }
    let finish = str_field(choice, "finish_reason");
    let stop = match finish {
        Some("stop") | None if has_tools => "tool_use",
        Some(f) => openai_finish_to_anthropic_stop(f),
        None => "end_turn",
    };
    let counts = completion
        .get("usage")
        .and_then(openai_usage)
        .unwrap_or_default();
    obj([
        (
            "id",
            str_field(completion, "id").unwrap_or("msg_tollgate").into(),
        ),
        ("type", "message".into()),
        ("role", "assistant".into()),
        ("model", client_model.into()),
        ("content", Value::Array(content)),
        ("stop_reason", stop.into()),
        ("stop_sequence", Value::Null),
        (
            "usage",
            obj([
                ("input_tokens", counts.input.into()),
                ("cache_creation_input_tokens", 0.into()),
                ("cache_read_input_tokens", counts.cached_input.into()),
                ("output_tokens", counts.output.into()),
            ]),
        ),
    ])
}

/// Longest error message copied from an upstream body (HTML error pages can
/// be huge).
const MAX_ERROR_MESSAGE: usize = 2000;

fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or(""))
}

/// The human-readable message of an error body of either API, or of a plain
/// string body.
fn error_message(body: &Value) -> Option<String> {
    let msg = match body {
        Value::String(s) => Some(s.as_str()),
        Value::Object(_) => match body.get("error") {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(e @ Value::Object(_)) => str_field(e, "message"),
            _ => None,
        }
        .or_else(|| str_field(body, "message"))
        .or_else(|| str_field(body, "detail")),
        _ => None,
    };
    msg.map(str::trim).filter(|m| !m.is_empty()).map(truncate)
}

fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        405..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The HTTP status Anthropic uses for an error `type` (for stream `error`
/// events, which carry no status).
pub(crate) fn status_for_anthropic_error_type(ty: &str) -> u16 {
    match ty {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// An OpenAI (or any) error body, received with HTTP `status`, as an
/// Anthropic error body: `{"type":"error","error":{"type","message"}}` with
/// the type chosen by status (400 invalid_request_error, 401
/// authentication_error, 403 permission_error, 404 not_found_error, 413
/// request_too_large, 429 rate_limit_error, 529 overloaded_error, other 5xx
/// api_error). `body` may be `Null` or a string for non-JSON bodies.
pub fn openai_error_to_anthropic(status: u16, body: &Value) -> Value {
    let message = error_message(body).unwrap_or_else(|| format!("upstream returned HTTP {status}"));
    obj([
        ("type", "error".into()),
        (
            "error",
            obj([
                ("type", anthropic_error_type(status).into()),
                ("message", message.into()),
            ]),
        ),
    ])
}

/// An Anthropic (or any) error body, received with HTTP `status`, as an
/// OpenAI error body `{"error":{"message","type","param":null,"code"}}`.
/// `type` is chosen by status; `code` carries the Anthropic error type
/// (e.g. `overloaded_error`) when there is one.
pub fn anthropic_error_to_openai(status: u16, body: &Value) -> Value {
    let message = error_message(body).unwrap_or_else(|| format!("upstream returned HTTP {status}"));
    let code = body
        .get("error")
        .and_then(|e| str_field(e, "type"))
        .map_or(Value::Null, Value::from);
    obj([(
        "error",
        obj([
            ("message", message.into()),
            ("type", openai_error_type(status).into()),
            ("param", Value::Null),
            ("code", code),
        ]),
    )])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    #[test]
    fn finish_reason_tables() {
        for (a, o) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
            ("whatever", "stop"),
        ] {
            assert_eq!(anthropic_stop_to_openai_finish(a), o, "{a}");
        }
        for (o, a) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("function_call", "tool_use"),
            ("content_filter", "refusal"),
            ("", "end_turn"),
        ] {
            assert_eq!(openai_finish_to_anthropic_stop(o), a, "{o}");
        }
    }

    fn anthropic_message() -> Value {
        json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "...", "signature": "s"},
                {"type": "text", "text": "Checking "},
                {"type": "text", "text": "now."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 200,
                "cache_creation_input_tokens": 30, "output_tokens": 40}
        })
    }

    #[test]
    fn anthropic_to_openai_exact() {
        let o = anthropic_to_openai_response_at(&anthropic_message(), "my-model", 1_700_000_000);
        assert_eq!(
            o,
            json!({
                "id": "msg_01", "object": "chat.completion", "created": 1_700_000_000u64,
                "model": "my-model",
                "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": "Checking now.", "refusal": null,
                    "tool_calls": [{"id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]
                }, "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 240, "completion_tokens": 40, "total_tokens": 280,
                    "prompt_tokens_details": {"cached_tokens": 200}}
            })
        );
        // The public wrapper only differs by the clock.
        let now = anthropic_to_openai_response(&anthropic_message(), "my-model");
        assert!(now["created"].as_u64().unwrap() > 1_700_000_000);
    }

    #[test]
    fn anthropic_to_openai_no_text_and_odd_input() {
        let o = anthropic_to_openai_response_at(
            &json!({"content": [], "stop_reason": "max_tokens"}),
            "m",
            0,
        );
        assert_eq!(o["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(o["choices"][0]["finish_reason"], json!("length"));
        assert_eq!(o["id"], json!("chatcmpl-tollgate"));
        assert_eq!(o["usage"]["total_tokens"], json!(0));
        let o = anthropic_to_openai_response_at(&json!("garbage"), "m", 0);
        assert_eq!(o["choices"][0]["finish_reason"], json!("stop"));
    }

    fn openai_completion() -> Value {
        json!({
            "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure.",
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{bad"}},
                    {"id": "call_c", "type": "function", "function": {"name": "h", "arguments": ""}}
                ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
                "prompt_tokens_details": {"cached_tokens": 768}}
        })
    }

    #[test]
    fn openai_to_anthropic_exact() {
        let a = openai_to_anthropic_response(&openai_completion(), "claude-alias");
        assert_eq!(
            a,
            json!({
                "id": "chatcmpl-9", "type": "message", "role": "assistant", "model": "claude-alias",
                "content": [
                    {"type": "text", "text": "Sure."},
                    {"type": "tool_use", "id": "call_a", "name": "f", "input": {"x": 1}},
                    {"type": "tool_use", "id": "call_b", "name": "g", "input": {"_raw_arguments": "{bad"}},
                    {"type": "tool_use", "id": "call_c", "name": "h", "input": {}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 232, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 768, "output_tokens": 50}
            })
        );
    }

    #[test]
    fn openai_to_anthropic_stop_reasons() {
        let mk = |finish: Value, tools: bool| {
            let mut msg = json!({"role": "assistant", "content": "x"});
            if tools {
                msg["tool_calls"] =
                    json!([{"id": "c", "function": {"name": "f", "arguments": "{}"}}]);
            }
            openai_to_anthropic_response(
                &json!({"choices": [{"message": msg, "finish_reason": finish}]}),
                "m",
            )["stop_reason"]
                .clone()
        };
        assert_eq!(mk(json!("stop"), false), json!("end_turn"));
        assert_eq!(mk(json!("stop"), true), json!("tool_use"));
        assert_eq!(mk(json!("length"), true), json!("max_tokens"));
        assert_eq!(mk(json!("content_filter"), false), json!("refusal"));
        assert_eq!(mk(Value::Null, false), json!("end_turn"));
        let a = openai_to_anthropic_response(&json!(null), "m");
        assert_eq!(a["content"], json!([]));
        assert_eq!(a["usage"]["input_tokens"], json!(0));
    }

    #[test]
    fn response_round_trip_keeps_content_and_billable_totals() {
        let o = anthropic_to_openai_response_at(&anthropic_message(), "m", 0);
        let back = openai_to_anthropic_response(&o, "claude-x");
        assert_eq!(
            back["content"],
            json!([
                {"type": "text", "text": "Checking now."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ])
        );
        assert_eq!(back["stop_reason"], json!("tool_use"));
        // Cache writes have no OpenAI field and come back as plain input.
        assert_eq!(
            back["usage"],
            json!({"input_tokens": 40, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 200, "output_tokens": 40})
        );
    }

    #[test]
    fn openai_errors_to_anthropic_by_status() {
        let body = json!({"error": {"message": "Bad key", "type": "invalid_request_error",
            "param": null, "code": "invalid_api_key"}});
        for (status, ty) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(
                openai_error_to_anthropic(status, &body),
                json!({"type": "error", "error": {"type": ty, "message": "Bad key"}}),
                "{status}"
            );
        }
    }

    #[test]
    fn odd_error_bodies() {
        assert_eq!(
            openai_error_to_anthropic(502, &Value::Null),
            json!({"type": "error", "error": {"type": "api_error",
                "message": "upstream returned HTTP 502"}})
        );
        assert_eq!(
            openai_error_to_anthropic(503, &json!("  <html>Service Unavailable</html>\n")),
            json!({"type": "error", "error": {"type": "api_error",
                "message": "<html>Service Unavailable</html>"}})
        );
        assert_eq!(
            openai_error_to_anthropic(400, &json!({"error": "plain string"}))["error"]["message"],
            json!("plain string")
        );
        assert_eq!(
            openai_error_to_anthropic(400, &json!({"detail": "fastapi style"}))["error"]["message"],
            json!("fastapi style")
        );
        assert_eq!(
            openai_error_to_anthropic(400, &json!([1, 2]))["error"]["message"],
            json!("upstream returned HTTP 400")
        );
        let long = "é".repeat(3000);
        let m = openai_error_to_anthropic(500, &Value::String(long))["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(m.chars().count(), 1001);
        assert!(m.ends_with('…'));
    }

    #[test]
    fn anthropic_errors_to_openai() {
        let body = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert_eq!(
            anthropic_error_to_openai(529, &body),
            json!({"error": {"message": "Overloaded", "type": "server_error",
                "param": null, "code": "overloaded_error"}})
        );
        let body =
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}});
        assert_eq!(
            anthropic_error_to_openai(429, &body),
            json!({"error": {"message": "Slow down", "type": "rate_limit_error",
                "param": null, "code": "rate_limit_error"}})
        );
        assert_eq!(
            anthropic_error_to_openai(401, &Value::Null),
            json!({"error": {"message": "upstream returned HTTP 401",
                "type": "authentication_error", "param": null, "code": null}})
        );
        assert_eq!(
            anthropic_error_to_openai(404, &json!("not here"))["error"]["type"],
            json!("invalid_request_error")
        );
    }
}
