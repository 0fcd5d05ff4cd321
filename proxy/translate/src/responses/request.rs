//! Responses API request → Chat Completions request.

use crate::error::{TranslateError, TO_OPENAI};
use crate::util::{as_count, non_null, obj, str_field};
use serde_json::{Map, Value};

type Result<T> = std::result::Result<T, TranslateError>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TranslateError {
    TranslateError::invalid(field, reason)
}

fn unsupported(field: impl Into<String>, what: impl Into<String>) -> TranslateError {
    TranslateError::unsupported(field, what, TO_OPENAI)
}

/// Translates an OpenAI Responses API request (`POST /v1/responses`) into an
/// OpenAI Chat Completions request for `upstream_model`.
///
/// Every top-level field is either translated or refused with an error naming
/// it: a gateway that silently dropped `previous_response_id`, `store: true`
/// or a built-in tool would return an answer to a different question than the
/// one asked. Unknown fields are refused for the same reason.
///
/// * `instructions` becomes a leading system message; `input` (a string or a
///   list of items) becomes messages: message items keep their role
///   (`developer` becomes `system`), `function_call` items become the
///   `tool_calls` of an assistant message (merged with consecutive calls and a
///   directly preceding assistant message), `function_call_output` items
///   become `tool` messages;
/// * function `tools`, `tool_choice`, `parallel_tool_calls`, `temperature`,
///   `top_p`, `user` map directly; `max_output_tokens` becomes `max_tokens`;
///   `text.format` becomes `response_format`; `reasoning.effort` becomes
///   `reasoning_effort`; `safety_identifier` becomes `user` (the only end-user
///   id every chat upstream, and the Anthropic translation, understands);
/// * `stream: true` adds `stream_options.include_usage` so usage is reported.
pub fn responses_to_chat_request(request: &Value, upstream_model: &str) -> Result<Value> {
    let body = request
        .as_object()
        .ok_or_else(|| invalid("body", "must be a JSON object"))?;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    for (key, value) in body {
        if !value.is_null() {
            translate_field(key, value, request, &mut out)?;
        }
    }
    let mut messages = Vec::new();
    if let Some(instr) = non_null(request, "instructions") {
        let text = instr
            .as_str()
            .ok_or_else(|| invalid("instructions", "must be a string"))?;
        if !text.is_empty() {
            messages.push(obj([("role", "system".into()), ("content", text.into())]));
        }
    }
    match non_null(request, "input") {
        Some(Value::String(s)) => {
            messages.push(obj([
                ("role", "user".into()),
                ("content", s.as_str().into()),
            ]));
        }
        // Refused here, or the upstream would name its own `messages` field.
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(invalid("input", "must not be empty"))
        }
        Some(Value::Array(items)) => input_items_to_messages(items, &mut messages)?,
        _ => {
            return Err(invalid(
                "input",
                "must be a string or an array of input items",
            ))
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(Value::Object(out))
}

/// Translates (or refuses) one non-null top-level field into `out`.
fn translate_field(key: &str, v: &Value, req: &Value, out: &mut Map<String, Value>) -> Result<()> {
    match key {
        // Handled by the caller (they build `messages`), or replaced.
        "model" | "input" | "instructions" => {}
        "stream" => {
            let b = v
                .as_bool()
                .ok_or_else(|| invalid("stream", "must be a boolean"))?;
            out.insert("stream".into(), b.into());
            if b {
                out.insert(
                    "stream_options".into(),
                    obj([("include_usage", true.into())]),
                );
            }
        }
        "max_output_tokens" => {
            let n = as_count(v)
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(key, "must be a positive integer"))?;
            // `max_tokens`, not `max_completion_tokens`: chat-only providers
            // (Groq, DeepSeek, Ollama…) and the Anthropic translation read it.
            out.insert("max_tokens".into(), n.into());
        }
        "temperature" | "top_p" => {
            if !v.is_number() {
                return Err(invalid(key, "must be a number"));
            }
            out.insert(key.into(), v.clone());
        }
        "user" => {
            let s = v.as_str().ok_or_else(|| invalid(key, "must be a string"))?;
            out.insert("user".into(), s.into());
        }
        "safety_identifier" => {
            let s = v.as_str().ok_or_else(|| invalid(key, "must be a string"))?;
            match str_field(req, "user") {
                Some(u) if u != s => {
                    return Err(unsupported(
                        key,
                        "a safety_identifier different from `user` (both map to the chat `user`)",
                    ))
                }
                _ => {
                    out.insert("user".into(), s.into());
                }
            }
        }
        "tools" => insert_tools(v, req, out)?,
        // Validated and placed by `insert_tools`, which knows whether any
        // tools exist (chat upstreams reject them without tools).
        "tool_choice" | "parallel_tool_calls" if non_null(req, "tools").is_some() => {}
        "tool_choice" => {
            tool_choice_to_chat(v)?;
        }
        "parallel_tool_calls" => {
            v.as_bool()
                .ok_or_else(|| invalid(key, "must be a boolean"))?;
        }
        "text" => text_to_response_format(v, out)?,
        "reasoning" => reasoning_to_effort(v, out)?,
        _ => accept_or_refuse_noop(key, v)?,
    }
    Ok(())
}

/// Fields that have no chat equivalent: accepted only when their value means
/// "the default behaviour", refused otherwise.
fn accept_or_refuse_noop(key: &str, v: &Value) -> Result<()> {
    let ok = match key {
        "store" => match v {
            Value::Bool(b) => !b,
            _ => return Err(invalid(key, "must be a boolean")),
        },
        "background" => match v {
            Value::Bool(b) => !b,
            _ => return Err(invalid(key, "must be a boolean")),
        },
        "metadata" => match v {
            Value::Object(m) => m.is_empty(),
            _ => return Err(invalid(key, "must be an object")),
        },
        "include" => match v {
            Value::Array(a) => a.is_empty(),
            _ => return Err(invalid(key, "must be an array")),
        },
        "truncation" => v.as_str() == Some("disabled"),
        "service_tier" => matches!(v.as_str(), Some("auto" | "default")),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let what = match key {
        "store" => "storing the response (`store: true`; send `store: false`)",
        "background" => "background responses",
        "metadata" => "response metadata",
        "include" => "`include` of extra output data",
        "truncation" => "automatic truncation",
        "service_tier" => "a service tier other than auto/default",
        "previous_response_id" | "conversation" => {
            "server-side conversation state (send the full input instead)"
        }
        "prompt" => "stored prompt templates",
        "max_tool_calls" => "max_tool_calls",
        "top_logprobs" => "logprobs",
        "prompt_cache_key" | "prompt_cache_retention" => "prompt cache keys",
        "stream_options" => "Responses stream options",
        _ => "this field",
    };
    Err(unsupported(key, what))
}

fn insert_tools(v: &Value, req: &Value, out: &mut Map<String, Value>) -> Result<()> {
    let list = v
        .as_array()
        .ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut tools = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        tools.push(tool_to_chat(t, i)?);
    }
    let choice = match non_null(req, "tool_choice") {
        Some(tc) => Some(tool_choice_to_chat(tc)?),
        None => None,
    };
    let parallel = match non_null(req, "parallel_tool_calls") {
        Some(p) => Some(
            p.as_bool()
                .ok_or_else(|| invalid("parallel_tool_calls", "must be a boolean"))?,
        ),
        None => None,
    };
    // Without tools both are no-ops, and chat upstreams reject them.
    if tools.is_empty() {
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(tools));
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    if let Some(p) = parallel {
        out.insert("parallel_tool_calls".into(), p.into());
    }
    Ok(())
}

fn tool_to_chat(t: &Value, i: usize) -> Result<Value> {
    let path = format!("tools[{i}]");
    match str_field(t, "type") {
        Some("function") => {}
        Some(ty) => {
            return Err(unsupported(
                format!("{path}.type"),
                format!("tool type `{ty}`"),
            ))
        }
        None => return Err(invalid(format!("{path}.type"), "must be a string")),
    }
    let name = str_field(t, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(format!("{path}.name"), "must be a non-empty string"))?;
    let mut f = Map::new();
    f.insert("name".into(), name.into());
    if let Some(d) = non_null(t, "description") {
        let d = d
            .as_str()
            .ok_or_else(|| invalid(format!("{path}.description"), "must be a string"))?;
        f.insert("description".into(), d.into());
    }
    if let Some(p) = non_null(t, "parameters") {
        if !p.is_object() {
            return Err(invalid(
                format!("{path}.parameters"),
                "must be a JSON Schema object",
            ));
        }
        f.insert("parameters".into(), p.clone());
    }
    if let Some(s) = non_null(t, "strict") {
        let s = s
            .as_bool()
            .ok_or_else(|| invalid(format!("{path}.strict"), "must be a boolean"))?;
        f.insert("strict".into(), s.into());
    }
    Ok(obj([
        ("type", "function".into()),
        ("function", Value::Object(f)),
    ]))
}

fn tool_choice_to_chat(tc: &Value) -> Result<Value> {
    match tc {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(tc.clone()),
        Value::Object(_) if str_field(tc, "type") == Some("function") => {
            let name = str_field(tc, "name")
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid("tool_choice.name", "must be a non-empty string"))?;
            Ok(obj([
                ("type", "function".into()),
                ("function", obj([("name", name.into())])),
            ]))
        }
        Value::Object(_) => Err(unsupported(
            "tool_choice",
            format!(
                "tool choice type `{}`",
                str_field(tc, "type").unwrap_or("(none)")
            ),
        )),
        _ => Err(invalid(
            "tool_choice",
            "must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"name\":…}",
        )),
    }
}

/// `text.format` as `response_format`; `text.verbosity` has no chat
/// equivalent.
fn text_to_response_format(text: &Value, out: &mut Map<String, Value>) -> Result<()> {
    let m = text
        .as_object()
        .ok_or_else(|| invalid("text", "must be an object"))?;
    for (k, v) in m {
        match k.as_str() {
            "format" if !v.is_null() => {
                if let Some(rf) = text_format_to_chat(v)? {
                    out.insert("response_format".into(), rf);
                }
            }
            "format" | "verbosity" if v.is_null() => {}
            "verbosity" => return Err(unsupported("text.verbosity", "output verbosity")),
            other => return Err(unsupported(format!("text.{other}"), "this field")),
        }
    }
    Ok(())
}

fn text_format_to_chat(f: &Value) -> Result<Option<Value>> {
    match str_field(f, "type") {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(obj([("type", "json_object".into())]))),
        Some("json_schema") => {
            let name = str_field(f, "name")
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid("text.format.name", "must be a non-empty string"))?;
            let schema = f
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| invalid("text.format.schema", "must be a JSON Schema object"))?;
            let mut js = Map::new();
            js.insert("name".into(), name.into());
            js.insert("schema".into(), schema.clone());
            if let Some(s) = non_null(f, "strict") {
                let s = s
                    .as_bool()
                    .ok_or_else(|| invalid("text.format.strict", "must be a boolean"))?;
                js.insert("strict".into(), s.into());
            }
            if let Some(d) = non_null(f, "description") {
                let d = d
                    .as_str()
                    .ok_or_else(|| invalid("text.format.description", "must be a string"))?;
                js.insert("description".into(), d.into());
            }
            Ok(Some(obj([
                ("type", "json_schema".into()),
                ("json_schema", Value::Object(js)),
            ])))
        }
        Some(other) => Err(unsupported(
            "text.format.type",
            format!("text format `{other}`"),
        )),
        None => Err(invalid("text.format.type", "must be a string")),
    }
}

fn reasoning_to_effort(r: &Value, out: &mut Map<String, Value>) -> Result<()> {
    let m = r
        .as_object()
        .ok_or_else(|| invalid("reasoning", "must be an object"))?;
    for (k, v) in m {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "effort" => {
                let e = v
                    .as_str()
                    .ok_or_else(|| invalid("reasoning.effort", "must be a string"))?;
                out.insert("reasoning_effort".into(), e.into());
            }
            "summary" | "generate_summary" => {
                return Err(unsupported(format!("reasoning.{k}"), "reasoning summaries"))
            }
            other => return Err(unsupported(format!("reasoning.{other}"), "this field")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// input items

fn input_items_to_messages(items: &[Value], out: &mut Vec<Value>) -> Result<()> {
    for (i, item) in items.iter().enumerate() {
        let path = format!("input[{i}]");
        if !item.is_object() {
            return Err(invalid(path, "must be an object"));
        }
        match str_field(item, "type") {
            None if non_null(item, "type").is_some() => {
                return Err(invalid(format!("{path}.type"), "must be a string"))
            }
            None | Some("message") => out.push(message_item(item, &path)?),
            Some("function_call") => push_function_call(item, &path, out)?,
            Some("function_call_output") => out.push(function_call_output(item, &path)?),
            Some(ty) => {
                return Err(unsupported(
                    format!("{path}.type"),
                    format!("input item type `{ty}`"),
                ))
            }
        }
    }
    Ok(())
}

fn message_item(item: &Value, path: &str) -> Result<Value> {
    let role = match str_field(item, "role") {
        Some("developer" | "system") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some(other) => {
            return Err(invalid(
                format!("{path}.role"),
                format!("unknown role `{other}`"),
            ))
        }
        None => return Err(invalid(format!("{path}.role"), "must be a string")),
    };
    let cpath = format!("{path}.content");
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::from(s.as_str()),
        Some(Value::Array(parts)) => parts_to_chat(parts, &cpath, role)?,
        _ => {
            return Err(invalid(
                cpath,
                "must be a string or an array of content parts",
            ))
        }
    };
    Ok(obj([("role", role.into()), ("content", content)]))
}

/// Content parts of a message item. User messages keep a part list (images
/// need it); system and assistant messages become plain text, which every
/// chat upstream accepts for those roles.
fn parts_to_chat(parts: &[Value], cpath: &str, role: &str) -> Result<Value> {
    let mut out = Vec::with_capacity(parts.len());
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{cpath}[{j}]");
        let ty = str_field(p, "type").unwrap_or("");
        let key = match ty {
            "input_text" | "output_text" => "text",
            "refusal" if role == "assistant" => "refusal",
            "input_image" if role == "user" => {
                out.push(image_part(p, &pp)?);
                continue;
            }
            "" => return Err(invalid(format!("{pp}.type"), "must be a string")),
            _ => {
                return Err(unsupported(
                    format!("{pp}.type"),
                    format!("content part type `{ty}` in a {role} message"),
                ))
            }
        };
        let t =
            str_field(p, key).ok_or_else(|| invalid(format!("{pp}.{key}"), "must be a string"))?;
        if role == "user" {
            out.push(obj([("type", "text".into()), ("text", t.into())]));
        } else {
            if !text.is_empty() && role == "system" {
                text.push('\n');
            }
            text.push_str(t);
        }
    }
    Ok(if role == "user" {
        Value::Array(out)
    } else {
        text.into()
    })
}

fn image_part(p: &Value, pp: &str) -> Result<Value> {
    if non_null(p, "file_id").is_some() {
        return Err(unsupported(
            format!("{pp}.file_id"),
            "uploaded file references",
        ));
    }
    let url = str_field(p, "image_url")
        .ok_or_else(|| invalid(format!("{pp}.image_url"), "must be a string"))?;
    let mut image = Map::new();
    image.insert("url".into(), url.into());
    if let Some(d) = non_null(p, "detail") {
        let d = d
            .as_str()
            .ok_or_else(|| invalid(format!("{pp}.detail"), "must be a string"))?;
        image.insert("detail".into(), d.into());
    }
    Ok(obj([
        ("type", "image_url".into()),
        ("image_url", Value::Object(image)),
    ]))
}

/// Appends a `function_call` item as a tool call of the preceding assistant
/// message when there is one (consecutive calls, or an assistant message
/// directly before them), else as a new assistant message.
fn push_function_call(item: &Value, path: &str, out: &mut Vec<Value>) -> Result<()> {
    let call_id = str_field(item, "call_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{path}.call_id"), "must be a non-empty string"))?;
    let name = str_field(item, "name")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{path}.name"), "must be a non-empty string"))?;
    let args = match item.get("arguments") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => "",
        Some(_) => return Err(invalid(format!("{path}.arguments"), "must be a string")),
    };
    let call = obj([
        ("id", call_id.into()),
        ("type", "function".into()),
        (
            "function",
            obj([("name", name.into()), ("arguments", args.into())]),
        ),
    ]);
    if let Some(Value::Object(last)) = out.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some("assistant") {
            if let Some(Value::Array(calls)) = last.get_mut("tool_calls") {
                calls.push(call);
                return Ok(());
            }
            // An empty assistant text becomes null, as chat does for pure
            // tool-call turns.
            if last.get("content").and_then(Value::as_str) == Some("") {
                last.insert("content".into(), Value::Null);
            }
            last.insert("tool_calls".into(), Value::Array(vec![call]));
            return Ok(());
        }
    }
    out.push(obj([
        ("role", "assistant".into()),
        ("content", Value::Null),
        ("tool_calls", Value::Array(vec![call])),
    ]));
    Ok(())
}

fn function_call_output(item: &Value, path: &str) -> Result<Value> {
    let call_id = str_field(item, "call_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{path}.call_id"), "must be a non-empty string"))?;
    let opath = format!("{path}.output");
    let content = match item.get("output") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match str_field(p, "type") {
                    Some("input_text" | "output_text") => {
                        texts.push(str_field(p, "text").ok_or_else(|| {
                            invalid(format!("{opath}[{j}].text"), "must be a string")
                        })?)
                    }
                    Some(ty) => {
                        return Err(unsupported(
                            format!("{opath}[{j}].type"),
                            format!("function output part type `{ty}`"),
                        ))
                    }
                    None => return Err(invalid(format!("{opath}[{j}].type"), "must be a string")),
                }
            }
            texts.join("\n")
        }
        _ => {
            return Err(invalid(
                opath,
                "must be a string or an array of input_text parts",
            ))
        }
    };
    Ok(obj([
        ("role", "tool".into()),
        ("tool_call_id", call_id.into()),
        ("content", content.into()),
    ]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn field_of(body: &Value) -> String {
        responses_to_chat_request(body, "up")
            .map(|v| panic!("expected an error for {body}, got {v}"))
            .unwrap_or_else(|e| e.field().to_owned())
    }

    fn with(extra: Value) -> Value {
        let mut b = json!({"model": "gpt-x", "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    #[test]
    fn every_field_translated() {
        let body = json!({
            "model": "gpt-x",
            "instructions": "Be terse.",
            "input": [
                {"role": "developer", "content": "Use metric."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}
                ]},
                {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                 "content": [{"type": "output_text", "text": "A cat.", "annotations": []}]}
            ],
            "stream": true,
            "max_output_tokens": 300,
            "temperature": 0.2,
            "top_p": 0.9,
            "parallel_tool_calls": false,
            "user": "u1",
            "tools": [{"type": "function", "name": "f", "description": "F",
                "parameters": {"type": "object", "properties": {}}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "out", "strict": true,
                "description": "D", "schema": {"type": "object"}}, "verbosity": null},
            "reasoning": {"effort": "low", "summary": null},
            "store": false, "metadata": {}, "truncation": "disabled",
            "service_tier": "auto", "include": [], "background": false,
            "previous_response_id": null
        });
        let chat = responses_to_chat_request(&body, "up").unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "up",
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "system", "content": "Use metric."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
                    ]},
                    {"role": "assistant", "content": "A cat."}
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 300,
                "temperature": 0.2,
                "top_p": 0.9,
                "user": "u1",
                "tools": [{"type": "function", "function": {"name": "f", "description": "F",
                    "parameters": {"type": "object", "properties": {}}, "strict": true}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "parallel_tool_calls": false,
                "response_format": {"type": "json_schema", "json_schema": {"name": "out",
                    "strict": true, "description": "D", "schema": {"type": "object"}}},
                "reasoning_effort": "low"
            })
        );
    }

    #[test]
    fn scalars_and_formats() {
        let c = responses_to_chat_request(&with(json!({})), "up").unwrap();
        assert_eq!(
            c,
            json!({"model": "up", "messages": [{"role": "user", "content": "hi"}]})
        );
        let c = responses_to_chat_request(&with(json!({"stream": false})), "up").unwrap();
        assert_eq!(c["stream"], json!(false));
        assert_eq!(c.get("stream_options"), None);
        let c =
            responses_to_chat_request(&with(json!({"text": {"format": {"type": "text"}}})), "up")
                .unwrap();
        assert_eq!(c.get("response_format"), None);
        let c = responses_to_chat_request(
            &with(json!({"text": {"format": {"type": "json_object"}}})),
            "up",
        )
        .unwrap();
        assert_eq!(c["response_format"], json!({"type": "json_object"}));
        let c = responses_to_chat_request(&with(json!({"safety_identifier": "h1"})), "up").unwrap();
        assert_eq!(c["user"], json!("h1"));
        let c = responses_to_chat_request(
            &with(json!({"safety_identifier": "h1", "user": "h1", "instructions": ""})),
            "up",
        )
        .unwrap();
        assert_eq!(c["user"], json!("h1"));
        assert_eq!(c["messages"], json!([{"role": "user", "content": "hi"}]));
        for tc in ["auto", "none", "required"] {
            let c = responses_to_chat_request(
                &with(json!({"tools": [{"type": "function", "name": "f"}], "tool_choice": tc})),
                "up",
            )
            .unwrap();
            assert_eq!(c["tool_choice"], json!(tc));
            assert_eq!(
                c["tools"],
                json!([{"type": "function", "function": {"name": "f"}}])
            );
        }
        // Without tools, tool_choice / parallel_tool_calls are no-ops that
        // chat upstreams would reject.
        let c = responses_to_chat_request(
            &with(json!({"tools": [], "tool_choice": "auto", "parallel_tool_calls": true})),
            "up",
        )
        .unwrap();
        assert_eq!(
            c,
            json!({"model": "up", "messages": [{"role": "user", "content": "hi"}]})
        );
        let c = responses_to_chat_request(&with(json!({"tool_choice": "none"})), "up").unwrap();
        assert_eq!(c.get("tool_choice"), None);
    }

    #[test]
    fn function_tool_round_trip() {
        let body = json!({"input": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking."},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "weather",
             "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
            {"type": "function_call", "call_id": "call_2", "name": "weather",
             "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2",
             "output": [{"type": "input_text", "text": "24C"}, {"type": "input_text", "text": "cloudy"}]},
            {"type": "function_call", "call_id": "call_3", "name": "time", "arguments": ""},
            {"type": "function_call_output", "call_id": "call_3", "output": ""}
        ]});
        let c = responses_to_chat_request(&body, "up").unwrap();
        assert_eq!(
            c["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "24C\ncloudy"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_3", "type": "function", "function": {"name": "time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_3", "content": ""}
            ])
        );
        // An empty preceding assistant text becomes null content.
        let body = json!({"input": [
            {"role": "assistant", "content": [{"type": "refusal", "refusal": ""}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
        ]});
        let c = responses_to_chat_request(&body, "up").unwrap();
        assert_eq!(
            c["messages"],
            json!([{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])
        );
    }

    #[test]
    fn assistant_and_system_parts_become_text() {
        let body = json!({"input": [
            {"role": "system", "content": [{"type": "input_text", "text": "A"},
                {"type": "input_text", "text": "B"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "x"},
                {"type": "refusal", "refusal": "no"}]}
        ]});
        let c = responses_to_chat_request(&body, "up").unwrap();
        assert_eq!(
            c["messages"],
            json!([{"role": "system", "content": "A\nB"}, {"role": "assistant", "content": "xno"}])
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                json!({"previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"store": true}), "store"),
            (json!({"store": "no"}), "store"),
            (json!({"background": true}), "background"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"prompt": {"id": "p"}}), "prompt"),
            (json!({"max_tool_calls": 3}), "max_tool_calls"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"prompt_cache_key": "k"}), "prompt_cache_key"),
            (
                json!({"stream_options": {"include_obfuscation": false}}),
                "stream_options",
            ),
            (json!({"metadata": {"a": "b"}}), "metadata"),
            (json!({"truncation": "auto"}), "truncation"),
            (json!({"service_tier": "flex"}), "service_tier"),
            (
                json!({"include": ["reasoning.encrypted_content"]}),
                "include",
            ),
            (json!({"wibble": 1}), "wibble"),
            (json!({"text": {"verbosity": "low"}}), "text.verbosity"),
            (
                json!({"text": {"format": {"type": "grammar"}}}),
                "text.format.type",
            ),
            (
                json!({"text": {"format": {"type": "json_schema", "name": "n"}}}),
                "text.format.schema",
            ),
            (json!({"text": {"other": 1}}), "text.other"),
            (
                json!({"reasoning": {"summary": "auto"}}),
                "reasoning.summary",
            ),
            (json!({"reasoning": {"effort": 3}}), "reasoning.effort"),
            (json!({"max_output_tokens": 0}), "max_output_tokens"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"stream": "yes"}), "stream"),
            (json!({"user": 5}), "user"),
            (
                json!({"safety_identifier": "a", "user": "b"}),
                "safety_identifier",
            ),
            (json!({"instructions": ["x"]}), "instructions"),
            (
                json!({"tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "g"},
                {"type": "web_search"}]}),
                "tools[2].type",
            ),
            (
                json!({"tools": [{"type": "mcp", "server_label": "x"}]}),
                "tools[0].type",
            ),
            (
                json!({"tools": [{"type": "custom", "name": "x"}]}),
                "tools[0].type",
            ),
            (json!({"tools": [{"name": "x"}]}), "tools[0].type"),
            (json!({"tools": [{"type": "function"}]}), "tools[0].name"),
            (
                json!({"tools": [{"type": "function", "name": "f", "parameters": 1}]}),
                "tools[0].parameters",
            ),
            (json!({"tools": {}}), "tools"),
            (
                json!({"tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "file_search"}}),
                "tool_choice",
            ),
            (json!({"tool_choice": "sometimes"}), "tool_choice"),
            (
                json!({"tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "function"}}),
                "tool_choice.name",
            ),
            (json!({"parallel_tool_calls": "x"}), "parallel_tool_calls"),
            (json!({"input": null}), "input"),
            (json!({"input": 3}), "input"),
            (json!({"input": []}), "input"),
        ];
        for (extra, expected) in cases {
            let body = with(extra);
            assert_eq!(field_of(&body), expected, "body: {body}");
        }
        assert_eq!(field_of(&json!([])), "body");
    }

    #[test]
    fn input_item_refusals_name_the_item() {
        let cases = [
            (json!({"type": "reasoning", "summary": []}), "input[1].type"),
            (
                json!({"type": "item_reference", "id": "x"}),
                "input[1].type",
            ),
            (json!({"type": "web_search_call"}), "input[1].type"),
            (json!({"type": "mcp_call"}), "input[1].type"),
            (
                json!({"type": 5, "role": "user", "content": "x"}),
                "input[1].type",
            ),
            (json!("text"), "input[1]"),
            (json!({"role": "tool", "content": "x"}), "input[1].role"),
            (json!({"content": "x"}), "input[1].role"),
            (json!({"role": "user", "content": 5}), "input[1].content"),
            (
                json!({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}),
                "input[1].content[0].type",
            ),
            (
                json!({"role": "user", "content": [{"type": "input_audio"}]}),
                "input[1].content[0].type",
            ),
            (
                json!({"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}),
                "input[1].content[0].file_id",
            ),
            (
                json!({"role": "user", "content": [{"type": "input_image"}]}),
                "input[1].content[0].image_url",
            ),
            (
                json!({"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}),
                "input[1].content[0].type",
            ),
            (
                json!({"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}),
                "input[1].content[0].type",
            ),
            (
                json!({"role": "user", "content": [{"type": "input_text"}]}),
                "input[1].content[0].text",
            ),
            (
                json!({"role": "user", "content": [{}]}),
                "input[1].content[0].type",
            ),
            (
                json!({"type": "function_call", "name": "f"}),
                "input[1].call_id",
            ),
            (
                json!({"type": "function_call", "call_id": "c"}),
                "input[1].name",
            ),
            (
                json!({"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}),
                "input[1].arguments",
            ),
            (
                json!({"type": "function_call_output", "output": "x"}),
                "input[1].call_id",
            ),
            (
                json!({"type": "function_call_output", "call_id": "c"}),
                "input[1].output",
            ),
            (
                json!({"type": "function_call_output", "call_id": "c",
                "output": [{"type": "input_image", "image_url": "u"}]}),
                "input[1].output[0].type",
            ),
        ];
        for (item, expected) in cases {
            let body = json!({"input": [{"role": "user", "content": "x"}, item]});
            assert_eq!(field_of(&body), expected, "body: {body}");
        }
    }

    #[test]
    fn refusal_messages_name_the_chat_api() {
        let e = responses_to_chat_request(&with(json!({"previous_response_id": "r"})), "up")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("previous_response_id: server-side conversation state"),
            "{e}"
        );
        assert_eq!(
            e.to_openai_error()["error"]["param"],
            json!("previous_response_id")
        );
        assert_eq!(
            e.to_openai_error()["error"]["type"],
            json!("invalid_request_error")
        );
    }
}
