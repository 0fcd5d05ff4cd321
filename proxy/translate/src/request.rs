//! Request translation between OpenAI Chat Completions and Anthropic Messages.
//!
//! Unknown top-level fields are dropped rather than forwarded: the upstream
//! would reject fields of the other API with a 400. The exceptions are the
//! Anthropic-native `top_k` and `thinking`, which an OpenAI-shaped request may
//! carry on purpose and which are forwarded to Anthropic unchanged.

use crate::error::{TranslateError, TO_ANTHROPIC, TO_OPENAI};
use crate::util::{as_count, non_null, obj, parse_data_url, sanitize_tool_id, str_field};
use serde_json::{Map, Value};

type Result<T> = std::result::Result<T, TranslateError>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TranslateError {
    TranslateError::invalid(field, reason)
}

/// Separator used when several system messages or system blocks are merged
/// into the single system prompt the other API allows.
const SYSTEM_JOIN: &str = "\n\n";

fn text_block(text: &str) -> Value {
    obj([("type", "text".into()), ("text", text.into())])
}

/// True for `{"type":"text","text":…}` with nothing else (no cache_control,
/// citations…), which is equivalent to plain string content.
fn is_plain_text_block(b: &Value) -> bool {
    b.as_object().is_some_and(|m| {
        m.len() == 2
            && m.get("type").and_then(Value::as_str) == Some("text")
            && m.contains_key("text")
    })
}

/// A number for a sampling parameter, clamped into `[lo, hi]`. Values in range
/// are passed through unchanged (same JSON number representation).
fn clamped_number(field: &str, v: &Value, lo: f64, hi: f64) -> Result<Value> {
    let f = v
        .as_f64()
        .ok_or_else(|| invalid(field, "must be a number"))?;
    if (lo..=hi).contains(&f) {
        Ok(v.clone())
    } else {
        Ok(Value::from(f.clamp(lo, hi)))
    }
}

fn number(field: &str, v: &Value) -> Result<Value> {
    if v.is_number() {
        Ok(v.clone())
    } else {
        Err(invalid(field, "must be a number"))
    }
}

fn positive_count(field: &str, v: &Value) -> Result<u64> {
    as_count(v)
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(field, "must be a positive integer"))
}

// ===========================================================================
// OpenAI -> Anthropic

/// Translates an OpenAI Chat Completions request body into an Anthropic
/// Messages request for `upstream_model`.
///
/// * system/developer messages (anywhere) become the top-level `system`
///   string, joined with a blank line;
/// * consecutive same-role messages are merged (Anthropic requires
///   alternation) and `tool` messages become `tool_result` blocks of a user
///   message, placed before any other content of that user turn as Anthropic
///   requires;
/// * tool-call ids are mapped to Anthropic's allowed alphabet (`[A-Za-z0-9_-]`,
///   others become `_`) consistently in `tool_use` and `tool_result`;
/// * `max_completion_tokens`, else `max_tokens`, else `default_max_tokens`
///   (at least 1) becomes `max_tokens`;
/// * `temperature` is clamped to Anthropic's `[0, 1]` (OpenAI allows up to 2);
/// * `response_format`, `logprobs`, `seed`, penalties, `stream_options` and
///   other OpenAI-only fields are dropped; `n > 1` and the legacy
///   `functions` interface are errors.
pub fn openai_to_anthropic_request(
    body: &Value,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<Value> {
    refuse_openai_only(body)?;

    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    let (system, messages) = openai_messages_to_anthropic(body.get("messages"))?;
    if !system.is_empty() {
        out.insert("system".into(), system.into());
    }
    out.insert("messages".into(), Value::Array(messages));

    let max_tokens = match non_null(body, "max_completion_tokens") {
        Some(v) => positive_count("max_completion_tokens", v)?,
        None => match non_null(body, "max_tokens") {
            Some(v) => positive_count("max_tokens", v)?,
            None => u64::from(default_max_tokens.max(1)),
        },
    };
    out.insert("max_tokens".into(), max_tokens.into());

    if let Some(stop) = non_null(body, "stop") {
        let seqs = openai_stop_to_anthropic(stop)?;
        if !seqs.is_empty() {
            out.insert("stop_sequences".into(), Value::Array(seqs));
        }
    }
    if let Some(t) = non_null(body, "temperature") {
        out.insert(
            "temperature".into(),
            clamped_number("temperature", t, 0.0, 1.0)?,
        );
    }
    if let Some(p) = non_null(body, "top_p") {
        out.insert("top_p".into(), clamped_number("top_p", p, 0.0, 1.0)?);
    }
    if let Some(s) = non_null(body, "stream") {
        let b = s
            .as_bool()
            .ok_or_else(|| invalid("stream", "must be a boolean"))?;
        out.insert("stream".into(), b.into());
    }

    insert_openai_tools(body, &mut out)?;

    if let Some(user) = str_field(body, "user") {
        out.insert("metadata".into(), obj([("user_id", user.into())]));
    }
    for key in ["top_k", "thinking"] {
        if let Some(v) = non_null(body, key) {
            out.insert(key.into(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

/// Refuses what Anthropic cannot do: a body that is not an object, the
/// deprecated `functions` interface, and more than one choice.
fn refuse_openai_only(body: &Value) -> Result<()> {
    if !body.is_object() {
        return Err(invalid("body", "must be a JSON object"));
    }
    for key in ["functions", "function_call"] {
        if non_null(body, key).is_some() {
            return Err(TranslateError::unsupported(
                key,
                "the deprecated `functions` interface (use `tools`)",
                TO_ANTHROPIC,
            ));
        }
    }
    if let Some(n) = non_null(body, "n") {
        match as_count(n) {
            Some(1) => {}
            Some(0) | None => return Err(invalid("n", "must be a positive integer")),
            Some(_) => {
                return Err(TranslateError::unsupported(
                    "n",
                    "more than one choice (n > 1)",
                    TO_ANTHROPIC,
                ))
            }
        }
    }
    Ok(())
}

/// OpenAI's `stop` (a string or an array of strings) as `stop_sequences`.
fn openai_stop_to_anthropic(stop: &Value) -> Result<Vec<Value>> {
    match stop {
        Value::String(s) => Ok(vec![Value::String(s.clone())]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(_) => Ok(v.clone()),
                _ => Err(invalid(format!("stop[{i}]"), "must be a string")),
            })
            .collect::<Result<Vec<_>>>(),
        _ => Err(invalid("stop", "must be a string or an array of strings")),
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls` as Anthropic's `tools`
/// and `tool_choice`.
fn insert_openai_tools(body: &Value, out: &mut Map<String, Value>) -> Result<()> {
    let tools = match non_null(body, "tools") {
        Some(t) => openai_tools_to_anthropic(t)?,
        None => Vec::new(),
    };
    // Anthropic rejects tool_choice without tools, so both go together.
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        let mut choice = match non_null(body, "tool_choice") {
            Some(tc) => Some(openai_tool_choice_to_anthropic(tc)?),
            None => None,
        };
        if non_null(body, "parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
            let c = choice.get_or_insert_with(|| obj([("type", "auto".into())]));
            let is_none = str_field(c, "type") == Some("none");
            if let (false, Some(m)) = (is_none, c.as_object_mut()) {
                m.insert("disable_parallel_tool_use".into(), true.into());
            }
        }
        if let Some(c) = choice {
            out.insert("tool_choice".into(), c);
        }
    }
    Ok(())
}

fn openai_tools_to_anthropic(tools: &Value) -> Result<Vec<Value>> {
    let list = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let ty = str_field(t, "type").unwrap_or("function");
        if ty != "function" {
            return Err(TranslateError::unsupported(
                format!("tools[{i}].type"),
                format!("tool type `{ty}`"),
                TO_ANTHROPIC,
            ));
        }
        let f = t
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| invalid(format!("tools[{i}].function"), "must be an object"))?;
        let name = str_field(f, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                invalid(
                    format!("tools[{i}].function.name"),
                    "must be a non-empty string",
                )
            })?;
        let mut tool = Map::new();
        tool.insert("name".into(), name.into());
        if let Some(d) = str_field(f, "description") {
            tool.insert("description".into(), d.into());
        }
        let schema = match non_null(f, "parameters") {
            Some(p) if p.is_object() => p.clone(),
            Some(_) => {
                return Err(invalid(
                    format!("tools[{i}].function.parameters"),
                    "must be a JSON Schema object",
                ))
            }
            // OpenAI allows omitting parameters; Anthropic requires a schema.
            None => obj([("type", "object".into()), ("properties", obj([]))]),
        };
        tool.insert("input_schema".into(), schema);
        out.push(Value::Object(tool));
    }
    Ok(out)
}

fn openai_tool_choice_to_anthropic(tc: &Value) -> Result<Value> {
    let ty = match tc {
        Value::String(s) => match s.as_str() {
            "auto" => "auto",
            "required" => "any",
            "none" => "none",
            _ => {
                return Err(invalid(
                    "tool_choice",
                    "must be \"auto\", \"required\", \"none\" or a function choice",
                ))
            }
        },
        Value::Object(_) => {
            let name = (str_field(tc, "type") == Some("function"))
                .then(|| tc.get("function").and_then(|f| str_field(f, "name")))
                .flatten()
                .ok_or_else(|| {
                    invalid(
                        "tool_choice",
                        "must be {\"type\":\"function\",\"function\":{\"name\":…}}",
                    )
                })?;
            return Ok(obj([("type", "tool".into()), ("name", name.into())]));
        }
        _ => return Err(invalid("tool_choice", "must be a string or an object")),
    };
    Ok(obj([("type", ty.into())]))
}

/// Converts OpenAI messages; returns (system prompt, Anthropic messages).
fn openai_messages_to_anthropic(messages: Option<&Value>) -> Result<(String, Vec<Value>)> {
    let list = messages
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "must be an array of messages"))?;
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        if !m.is_object() {
            return Err(invalid(path, "must be an object"));
        }
        let role = str_field(m, "role")
            .ok_or_else(|| invalid(format!("{path}.role"), "must be a string"))?;
        let content_path = format!("{path}.content");
        match role {
            "system" | "developer" => {
                let text = openai_system_text(m.get("content"), &content_path)?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => {
                let blocks = openai_parts_to_blocks(m.get("content"), &content_path, true)?;
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                let mut blocks = openai_parts_to_blocks(m.get("content"), &content_path, false)?;
                if let Some(calls) = non_null(m, "tool_calls") {
                    blocks.extend(openai_tool_calls_to_blocks(calls, &path)?);
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let block = openai_tool_message_to_block(m, &path)?;
                push_turn(&mut turns, "user", vec![block]);
            }
            "function" => {
                return Err(TranslateError::unsupported(
                    format!("{path}.role"),
                    "the deprecated `function` role (use `tool`)",
                    TO_ANTHROPIC,
                ))
            }
            other => {
                return Err(invalid(
                    format!("{path}.role"),
                    format!("unknown role `{other}`"),
                ))
            }
        }
    }
    if turns.is_empty() {
        return Err(invalid(
            "messages",
            "must contain at least one non-empty user or assistant message",
        ));
    }
    let messages = turns
        .into_iter()
        .map(|(role, blocks)| {
            let blocks = if role == "user" {
                // Anthropic requires tool_result blocks first in a user turn.
                let (mut results, rest): (Vec<_>, Vec<_>) = blocks
                    .into_iter()
                    .partition(|b| str_field(b, "type") == Some("tool_result"));
                results.extend(rest);
                results
            } else {
                blocks
            };
            let content = match blocks.as_slice() {
                [only] if is_plain_text_block(only) => {
                    only.get("text").cloned().unwrap_or_else(|| Value::from(""))
                }
                _ => Value::Array(blocks),
            };
            obj([("role", role.into()), ("content", content)])
        })
        .collect();
    Ok((system.join(SYSTEM_JOIN), messages))
}

/// Appends blocks to the last turn when it has the same role, else starts a
/// new turn. Messages that produced no blocks (e.g. empty content) vanish.
fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((r, existing)) if *r == role => existing.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// Text of a system/developer message; text parts are joined with `\n`.
fn openai_system_text(content: Option<&Value>, path: &str) -> Result<String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match (str_field(p, "type"), str_field(p, "text")) {
                    (Some("text"), Some(t)) => texts.push(t),
                    _ => {
                        return Err(invalid(
                            format!("{path}[{j}]"),
                            "system messages may only contain text parts",
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(invalid(
            path,
            "must be a string or an array of content parts",
        )),
    }
}

/// OpenAI content (string or parts) to Anthropic blocks. Empty text is
/// skipped because Anthropic rejects empty text blocks. `media` allows
/// images/files (user and tool messages only).
fn openai_parts_to_blocks(content: Option<&Value>, path: &str, media: bool) -> Result<Vec<Value>> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![text_block(s)]),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(invalid(
                path,
                "must be a string or an array of content parts",
            ))
        }
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{path}[{j}]");
        let ty = str_field(p, "type").unwrap_or("");
        let block = match ty {
            "text" | "refusal" => {
                let key = if ty == "text" { "text" } else { "refusal" };
                let text = str_field(p, key)
                    .ok_or_else(|| invalid(format!("{pp}.{key}"), "must be a string"))?;
                if text.is_empty() {
                    continue;
                }
                text_block(text)
            }
            "image_url" if media => openai_image_to_block(p, &pp)?,
            "file" if media => openai_file_to_block(p, &pp)?,
            _ => {
                let what = if ty.is_empty() {
                    "a content part without a type".to_owned()
                } else if media {
                    format!("content part type `{ty}`")
                } else {
                    format!("content part type `{ty}` in this message role")
                };
                return Err(TranslateError::unsupported(pp, what, TO_ANTHROPIC));
            }
        };
        // Prompt-caching hints some OpenAI-shaped clients attach to parts.
        let block = match (p.get("cache_control"), block) {
            (Some(cc), Value::Object(mut m)) => {
                m.insert("cache_control".into(), cc.clone());
                Value::Object(m)
            }
            (_, b) => b,
        };
        blocks.push(block);
    }
    Ok(blocks)
}

fn openai_image_to_block(p: &Value, pp: &str) -> Result<Value> {
    let url = match p.get("image_url") {
        Some(Value::String(u)) => Some(u.as_str()),
        Some(o) => str_field(o, "url"),
        None => None,
    }
    .ok_or_else(|| invalid(format!("{pp}.image_url.url"), "must be a string"))?;
    let source = if let Some((media_type, data)) = parse_data_url(url) {
        obj([
            ("type", "base64".into()),
            ("media_type", media_type.into()),
            ("data", data.into()),
        ])
    } else if starts_with_ignore_case(url, "https://") || starts_with_ignore_case(url, "http://") {
        obj([("type", "url".into()), ("url", url.into())])
    } else {
        return Err(invalid(
            format!("{pp}.image_url.url"),
            "must be an http(s) URL or a base64 data URL",
        ));
    };
    Ok(obj([("type", "image".into()), ("source", source)]))
}

fn openai_file_to_block(p: &Value, pp: &str) -> Result<Value> {
    let file = p.get("file").unwrap_or(&Value::Null);
    if non_null(file, "file_id").is_some() {
        return Err(TranslateError::unsupported(
            format!("{pp}.file.file_id"),
            "uploaded file references",
            TO_ANTHROPIC,
        ));
    }
    let (media_type, data) = str_field(file, "file_data")
        .and_then(parse_data_url)
        .filter(|(mt, _)| mt.eq_ignore_ascii_case("application/pdf"))
        .ok_or_else(|| {
            invalid(
                format!("{pp}.file.file_data"),
                "must be a base64 data URL of a PDF",
            )
        })?;
    Ok(obj([
        ("type", "document".into()),
        (
            "source",
            obj([
                ("type", "base64".into()),
                ("media_type", media_type.into()),
                ("data", data.into()),
            ]),
        ),
    ]))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn openai_tool_calls_to_blocks(calls: &Value, path: &str) -> Result<Vec<Value>> {
    let list = calls
        .as_array()
        .ok_or_else(|| invalid(format!("{path}.tool_calls"), "must be an array"))?;
    let mut blocks = Vec::with_capacity(list.len());
    for (k, call) in list.iter().enumerate() {
        let cp = format!("{path}.tool_calls[{k}]");
        let ty = str_field(call, "type").unwrap_or("function");
        if ty != "function" {
            return Err(TranslateError::unsupported(
                format!("{cp}.type"),
                format!("tool call type `{ty}`"),
                TO_ANTHROPIC,
            ));
        }
        let id = str_field(call, "id")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("{cp}.id"), "must be a non-empty string"))?;
        let f = call
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| invalid(format!("{cp}.function"), "must be an object"))?;
        let name = str_field(f, "name")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("{cp}.function.name"), "must be a non-empty string"))?;
        let input = parse_arguments(f.get("arguments"), &format!("{cp}.function.arguments"))?;
        blocks.push(obj([
            ("type", "tool_use".into()),
            ("id", sanitize_tool_id(id).into()),
            ("name", name.into()),
            ("input", input),
        ]));
    }
    Ok(blocks)
}

/// Tool-call `arguments` (a JSON string) to an Anthropic `input` object.
/// Empty or missing arguments mean `{}`; an already-decoded object is
/// accepted too.
fn parse_arguments(args: Option<&Value>, path: &str) -> Result<Value> {
    match args {
        None | Some(Value::Null) => Ok(obj([])),
        Some(Value::Object(_)) => Ok(args.cloned().unwrap_or_default()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(obj([])),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(invalid(path, "must encode a JSON object")),
            Err(e) => Err(invalid(path, format!("is not valid JSON ({e})"))),
        },
        Some(_) => Err(invalid(path, "must be a string containing a JSON object")),
    }
}

fn openai_tool_message_to_block(m: &Value, path: &str) -> Result<Value> {
    let id = str_field(m, "tool_call_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{path}.tool_call_id"), "must be a non-empty string"))?;
    let mut block = Map::new();
    block.insert("type".into(), "tool_result".into());
    block.insert("tool_use_id".into(), sanitize_tool_id(id).into());
    let content_path = format!("{path}.content");
    match m.get("content") {
        Some(Value::String(s)) if !s.is_empty() => {
            block.insert("content".into(), s.as_str().into());
        }
        Some(c @ Value::Array(_)) => {
            let blocks = openai_parts_to_blocks(Some(c), &content_path, true)?;
            if !blocks.is_empty() {
                block.insert("content".into(), Value::Array(blocks));
            }
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(invalid(
                content_path,
                "must be a string or an array of content parts",
            ))
        }
    }
    Ok(Value::Object(block))
}

// ===========================================================================
// Anthropic -> OpenAI

/// Translates an Anthropic Messages request body into an OpenAI Chat
/// Completions request for `upstream_model`.
///
/// * `system` becomes a leading system message (text blocks joined with a
///   blank line);
/// * `tool_result` blocks become `tool` messages emitted before the rest of
///   their user message (text results joined with `\n`; images inside a tool
///   result move to the following user message, since OpenAI tool messages
///   are text only); `is_error` has no OpenAI equivalent and is dropped;
/// * `tool_use` blocks become `tool_calls` with `input` serialized as the
///   `arguments` string; `thinking` blocks are dropped;
/// * `stream: true` adds `stream_options.include_usage` so usage is reported;
/// * `top_k`, `thinking`, server tools and other Anthropic-only features are
///   dropped or rejected (server tools are an error).
pub fn anthropic_to_openai_request(body: &Value, upstream_model: &str) -> Result<Value> {
    if !body.is_object() {
        return Err(invalid("body", "must be a JSON object"));
    }
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let mut messages = Vec::new();
    if let Some(sys) = non_null(body, "system") {
        let text = anthropic_system_text(sys)?;
        if !text.is_empty() {
            messages.push(obj([("role", "system".into()), ("content", text.into())]));
        }
    }
    anthropic_messages_to_openai(body.get("messages"), &mut messages)?;
    out.insert("messages".into(), Value::Array(messages));

    if let Some(v) = non_null(body, "max_tokens") {
        out.insert("max_tokens".into(), positive_count("max_tokens", v)?.into());
    }
    if let Some(stops) = non_null(body, "stop_sequences") {
        let list = stops
            .as_array()
            .ok_or_else(|| invalid("stop_sequences", "must be an array of strings"))?;
        for (i, s) in list.iter().enumerate() {
            if !s.is_string() {
                return Err(invalid(format!("stop_sequences[{i}]"), "must be a string"));
            }
        }
        if !list.is_empty() {
            out.insert("stop".into(), stops.clone());
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = non_null(body, key) {
            out.insert(key.into(), number(key, v)?);
        }
    }
    if let Some(s) = non_null(body, "stream") {
        let b = s
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

    let tools = match non_null(body, "tools") {
        Some(t) => anthropic_tools_to_openai(t)?,
        None => Vec::new(),
    };
    // OpenAI rejects tool_choice / parallel_tool_calls without tools.
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = non_null(body, "tool_choice") {
            let (choice, no_parallel) = anthropic_tool_choice_to_openai(tc)?;
            out.insert("tool_choice".into(), choice);
            if no_parallel {
                out.insert("parallel_tool_calls".into(), false.into());
            }
        }
    }

    if let Some(user) = body.get("metadata").and_then(|m| str_field(m, "user_id")) {
        out.insert("user".into(), user.into());
    }
    Ok(Value::Object(out))
}

fn anthropic_system_text(sys: &Value) -> Result<String> {
    match sys {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                match (str_field(b, "type"), str_field(b, "text")) {
                    (Some("text"), Some(t)) => texts.push(t),
                    _ => return Err(invalid(format!("system[{i}]"), "must be a text block")),
                }
            }
            Ok(texts.join(SYSTEM_JOIN))
        }
        _ => Err(invalid(
            "system",
            "must be a string or an array of text blocks",
        )),
    }
}

fn anthropic_messages_to_openai(messages: Option<&Value>, out: &mut Vec<Value>) -> Result<()> {
    let list = messages
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "must be an array of messages"))?;
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let role = match str_field(m, "role") {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(invalid(
                    format!("{path}.role"),
                    "must be \"user\" or \"assistant\"",
                ))
            }
        };
        match m.get("content") {
            Some(Value::String(s)) => {
                out.push(obj([("role", role.into()), ("content", s.as_str().into())]));
            }
            Some(Value::Array(blocks)) if role == "user" => {
                anthropic_user_blocks_to_openai(blocks, &path, out)?;
            }
            Some(Value::Array(blocks)) => {
                out.push(anthropic_assistant_blocks_to_openai(blocks, &path)?);
            }
            _ => {
                return Err(invalid(
                    format!("{path}.content"),
                    "must be a string or an array of content blocks",
                ))
            }
        }
    }
    Ok(())
}

fn unsupported_block(bp: &str, ty: &str) -> TranslateError {
    TranslateError::unsupported(
        format!("{bp}.type"),
        format!("content block type `{ty}`"),
        TO_OPENAI,
    )
}

fn anthropic_user_blocks_to_openai(
    blocks: &[Value],
    path: &str,
    out: &mut Vec<Value>,
) -> Result<()> {
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{path}.content[{j}]");
        match str_field(b, "type").unwrap_or("") {
            "text" => {
                let t = str_field(b, "text")
                    .ok_or_else(|| invalid(format!("{bp}.text"), "must be a string"))?;
                parts.push(text_block(t));
            }
            "image" => parts.push(anthropic_image_to_part(b, &bp)?),
            "document" => parts.push(anthropic_document_to_part(b, &bp)?),
            "tool_result" => {
                let id = str_field(b, "tool_use_id")
                    .ok_or_else(|| invalid(format!("{bp}.tool_use_id"), "must be a string"))?;
                let (text, images) = tool_result_content(b.get("content"), &bp)?;
                out.push(obj([
                    ("role", "tool".into()),
                    ("tool_call_id", id.into()),
                    ("content", text.into()),
                ]));
                parts.extend(images);
            }
            ty => return Err(unsupported_block(&bp, ty)),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [only] if is_plain_text_block(only) => only.get("text").cloned().unwrap_or_default(),
        _ => Value::Array(parts),
    };
    out.push(obj([("role", "user".into()), ("content", content)]));
    Ok(())
}

/// A tool result's text (text blocks joined with `\n`) and its images.
fn tool_result_content(content: Option<&Value>, bp: &str) -> Result<(String, Vec<Value>)> {
    match content {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for (k, b) in blocks.iter().enumerate() {
                let cp = format!("{bp}.content[{k}]");
                match str_field(b, "type").unwrap_or("") {
                    "text" => texts.push(
                        str_field(b, "text")
                            .ok_or_else(|| invalid(format!("{cp}.text"), "must be a string"))?,
                    ),
                    "image" => images.push(anthropic_image_to_part(b, &cp)?),
                    ty => return Err(unsupported_block(&cp, ty)),
                }
            }
            Ok((texts.join("\n"), images))
        }
        Some(_) => Err(invalid(
            format!("{bp}.content"),
            "must be a string or an array of content blocks",
        )),
    }
}

fn anthropic_image_to_part(b: &Value, bp: &str) -> Result<Value> {
    let source = b.get("source").unwrap_or(&Value::Null);
    let url = match str_field(source, "type") {
        Some("base64") => {
            let mt = str_field(source, "media_type")
                .ok_or_else(|| invalid(format!("{bp}.source.media_type"), "must be a string"))?;
            let data = str_field(source, "data")
                .ok_or_else(|| invalid(format!("{bp}.source.data"), "must be a string"))?;
            format!("data:{mt};base64,{data}")
        }
        Some("url") => str_field(source, "url")
            .ok_or_else(|| invalid(format!("{bp}.source.url"), "must be a string"))?
            .to_owned(),
        Some(other) => {
            return Err(TranslateError::unsupported(
                format!("{bp}.source.type"),
                format!("image source type `{other}`"),
                TO_OPENAI,
            ))
        }
        None => return Err(invalid(format!("{bp}.source"), "must be an image source")),
    };
    Ok(obj([
        ("type", "image_url".into()),
        ("image_url", obj([("url", url.into())])),
    ]))
}

fn anthropic_document_to_part(b: &Value, bp: &str) -> Result<Value> {
    let source = b.get("source").unwrap_or(&Value::Null);
    match (
        str_field(source, "type"),
        str_field(source, "media_type"),
        str_field(source, "data"),
    ) {
        (Some("base64"), Some(mt), Some(data)) if mt.eq_ignore_ascii_case("application/pdf") => {
            let filename = str_field(b, "title").unwrap_or("document.pdf");
            Ok(obj([
                ("type", "file".into()),
                (
                    "file",
                    obj([
                        ("filename", filename.into()),
                        ("file_data", format!("data:{mt};base64,{data}").into()),
                    ]),
                ),
            ]))
        }
        (Some("text"), _, Some(data)) => Ok(text_block(data)),
        _ => Err(TranslateError::unsupported(
            format!("{bp}.source"),
            "this document source (only base64 PDF and plain text are supported)",
            TO_OPENAI,
        )),
    }
}

fn anthropic_assistant_blocks_to_openai(blocks: &[Value], path: &str) -> Result<Value> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{path}.content[{j}]");
        match str_field(b, "type").unwrap_or("") {
            "text" => text.push_str(
                str_field(b, "text")
                    .ok_or_else(|| invalid(format!("{bp}.text"), "must be a string"))?,
            ),
            "tool_use" => {
                let id = str_field(b, "id")
                    .ok_or_else(|| invalid(format!("{bp}.id"), "must be a string"))?;
                let name = str_field(b, "name")
                    .ok_or_else(|| invalid(format!("{bp}.name"), "must be a string"))?;
                let args = match non_null(b, "input") {
                    Some(input) => input.to_string(),
                    None => "{}".to_owned(),
                };
                calls.push(obj([
                    ("id", id.into()),
                    ("type", "function".into()),
                    (
                        "function",
                        obj([("name", name.into()), ("arguments", args.into())]),
                    ),
                ]));
            }
            // Reasoning from earlier turns cannot be replayed to OpenAI.
            "thinking" | "redacted_thinking" => {}
            ty => return Err(unsupported_block(&bp, ty)),
        }
    }
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        text.into()
    };
    let mut msg = Map::new();
    msg.insert("role".into(), "assistant".into());
    msg.insert("content".into(), content);
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(msg))
}

fn anthropic_tools_to_openai(tools: &Value) -> Result<Vec<Value>> {
    let list = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if let Some(ty) = str_field(t, "type").filter(|ty| *ty != "custom") {
            return Err(TranslateError::unsupported(
                format!("tools[{i}].type"),
                format!("server tool `{ty}`"),
                TO_OPENAI,
            ));
        }
        let name = str_field(t, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(format!("tools[{i}].name"), "must be a non-empty string"))?;
        let mut f = Map::new();
        f.insert("name".into(), name.into());
        if let Some(d) = str_field(t, "description") {
            f.insert("description".into(), d.into());
        }
        let params = match non_null(t, "input_schema") {
            Some(s) if s.is_object() => s.clone(),
            Some(_) => {
                return Err(invalid(
                    format!("tools[{i}].input_schema"),
                    "must be a JSON Schema object",
                ))
            }
            None => obj([("type", "object".into()), ("properties", obj([]))]),
        };
        f.insert("parameters".into(), params);
        out.push(obj([
            ("type", "function".into()),
            ("function", Value::Object(f)),
        ]));
    }
    Ok(out)
}

/// Returns the OpenAI `tool_choice` and whether parallel tool use is disabled.
fn anthropic_tool_choice_to_openai(tc: &Value) -> Result<(Value, bool)> {
    let choice = match str_field(tc, "type") {
        Some("auto") => Value::from("auto"),
        Some("any") => Value::from("required"),
        Some("none") => Value::from("none"),
        Some("tool") => {
            let name = str_field(tc, "name")
                .ok_or_else(|| invalid("tool_choice.name", "must be a string"))?;
            obj([
                ("type", "function".into()),
                ("function", obj([("name", name.into())])),
            ])
        }
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "must be \"auto\", \"any\", \"tool\" or \"none\"",
            ))
        }
    };
    let no_parallel = tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true);
    Ok((choice, no_parallel))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn openai_body() -> Value {
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "24C cloudy"},
                {"role": "user", "content": "Thanks. Which is warmer?"},
                {"role": "assistant", "content": "Rome."}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": ["END", "STOP"],
            "temperature": 0.5,
            "top_p": 0.9,
            "max_tokens": 256,
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "user-42"
        })
    }

    #[test]
    fn openai_to_anthropic_exact() {
        let a = openai_to_anthropic_request(&openai_body(), "claude-x", 4096).unwrap();
        assert_eq!(
            a,
            json!({
                "model": "claude-x",
                "system": "You are terse.",
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "24C cloudy"},
                        {"type": "text", "text": "Thanks. Which is warmer?"}
                    ]},
                    {"role": "assistant", "content": "Rome."}
                ],
                "max_tokens": 256,
                "stop_sequences": ["END", "STOP"],
                "temperature": 0.5,
                "top_p": 0.9,
                "stream": true,
                "tools": [{"name": "get_weather", "description": "Current weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"]}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "user-42"}
            })
        );
    }

    #[test]
    fn openai_round_trip_is_identity() {
        let original = openai_body();
        let a = openai_to_anthropic_request(&original, "claude-x", 4096).unwrap();
        let back = anthropic_to_openai_request(&a, "gpt-4o").unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn anthropic_round_trip_is_identity() {
        let original = json!({
            "model": "claude-x",
            "system": "Be precise.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look it up."},
                    {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {"q": "cat", "n": 2}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "a cat"},
                    {"type": "text", "text": "ok?"}
                ]}
            ],
            "max_tokens": 1000,
            "stop_sequences": ["\n\nHuman:"],
            "temperature": 0.3,
            "top_p": 0.8,
            "tools": [{"name": "lookup", "description": "Search",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": true},
            "metadata": {"user_id": "u1"},
            "stream": false
        });
        let o = anthropic_to_openai_request(&original, "gpt-x").unwrap();
        assert_eq!(
            o["messages"],
            json!([
                {"role": "system", "content": "Be precise."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
                ]},
                {"role": "assistant", "content": "Let me look it up.", "tool_calls": [
                    {"id": "toolu_01", "type": "function",
                     "function": {"name": "lookup", "arguments": "{\"n\":2,\"q\":\"cat\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "a cat"},
                {"role": "user", "content": "ok?"}
            ])
            .as_array()
            .map(|msgs| {
                // Argument key order follows serde_json's map order.
                let mut msgs = msgs.clone();
                msgs[2]["tool_calls"][0]["function"]["arguments"] =
                    json!({"q": "cat", "n": 2}).to_string().into();
                Value::Array(msgs)
            })
            .unwrap()
        );
        assert_eq!(
            o["tool_choice"],
            json!({"type": "function", "function": {"name": "lookup"}})
        );
        assert_eq!(o["parallel_tool_calls"], json!(false));
        assert_eq!(o["user"], json!("u1"));
        assert_eq!(o["stop"], json!(["\n\nHuman:"]));
        assert_eq!(o.get("stream_options"), None);
        let back = openai_to_anthropic_request(&o, "claude-x", 1).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn stream_adds_include_usage() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "stream": true, "top_k": 3, "thinking": {"type": "enabled", "budget_tokens": 1024}});
        let o = anthropic_to_openai_request(&body, "m").unwrap();
        assert_eq!(
            o,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn openai_defaults_and_scalars() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}],
            "temperature": 1.5, "stop": "###", "n": 1, "seed": 7, "logprobs": true,
            "response_format": {"type": "json_object"}, "top_k": 5});
        let a = openai_to_anthropic_request(&body, "c", 1024).unwrap();
        assert_eq!(
            a,
            json!({"model": "c", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1024, "stop_sequences": ["###"], "temperature": 1.0, "top_k": 5})
        );
        let body = json!({"messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10, "max_completion_tokens": 20});
        let a = openai_to_anthropic_request(&body, "c", 1024).unwrap();
        assert_eq!(a["max_tokens"], json!(20));
        let a = openai_to_anthropic_request(
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": null}),
            "c",
            0,
        )
        .unwrap();
        assert_eq!(a["max_tokens"], json!(1));
    }

    #[test]
    fn system_developer_merge_and_alternation() {
        let body = json!({"messages": [
            {"role": "system", "content": "A"},
            {"role": "developer", "content": [{"type": "text", "text": "B1"}, {"type": "text", "text": "B2"}]},
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": ""},
            {"role": "system", "content": "C"},
            {"role": "assistant", "content": "reply"}
        ]});
        let a = openai_to_anthropic_request(&body, "c", 10).unwrap();
        assert_eq!(a["system"], json!("A\n\nB1\nB2\n\nC"));
        assert_eq!(
            a["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "one"},
                    {"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "assistant", "content": "reply"}
            ])
        );
    }

    #[test]
    fn images_files_and_ids() {
        let body = json!({"messages": [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "high"}},
                {"type": "image_url", "image_url": "http://example.com/x.png"},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
            ]},
            {"role": "assistant", "tool_calls": [{"id": "fc:1.2", "type": "function",
                "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "fc:1.2", "content": [{"type": "text", "text": "done"}]}
        ]});
        let a = openai_to_anthropic_request(&body, "c", 10).unwrap();
        assert_eq!(
            a["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                    {"type": "image", "source": {"type": "url", "url": "http://example.com/x.png"}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "fc_1_2", "name": "f", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "fc_1_2", "content": [{"type": "text", "text": "done"}]}
                ]}
            ])
        );
    }

    #[test]
    fn tool_choice_variants() {
        let base = json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]});
        let with = |extra: Value| {
            let mut b = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            openai_to_anthropic_request(&b, "c", 10).unwrap()
        };
        let a = with(json!({}));
        assert_eq!(
            a["tools"],
            json!([{"name": "f", "input_schema": {"type": "object", "properties": {}}}])
        );
        assert_eq!(a.get("tool_choice"), None);
        assert_eq!(
            with(json!({"tool_choice": "auto"}))["tool_choice"],
            json!({"type": "auto"})
        );
        assert_eq!(
            with(json!({"tool_choice": "none"}))["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            with(json!({"tool_choice": "none", "parallel_tool_calls": false}))["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            with(json!({"parallel_tool_calls": false}))["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            with(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}))
                ["tool_choice"],
            json!({"type": "tool", "name": "f"})
        );
        // No tools: tool_choice is dropped rather than sent invalid.
        let a = openai_to_anthropic_request(
            &json!({"messages": [{"role": "user", "content": "x"}], "tools": [], "tool_choice": "auto"}),
            "c",
            10,
        )
        .unwrap();
        assert_eq!(a.get("tools"), None);
        assert_eq!(a.get("tool_choice"), None);

        let anth = |tc: Value| {
            anthropic_to_openai_request(
                &json!({"messages": [], "tools": [{"name": "f"}], "tool_choice": tc}),
                "m",
            )
            .unwrap()
        };
        assert_eq!(anth(json!({"type": "auto"}))["tool_choice"], json!("auto"));
        assert_eq!(
            anth(json!({"type": "any"}))["tool_choice"],
            json!("required")
        );
        assert_eq!(anth(json!({"type": "none"}))["tool_choice"], json!("none"));
        assert_eq!(
            anth(json!({"type": "auto"}))["tools"],
            json!([{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object", "properties": {}}}}])
        );
    }

    fn err_field(r: Result<Value>) -> (String, String) {
        let e = r.unwrap_err();
        (e.field().to_owned(), e.to_string())
    }

    #[test]
    fn openai_errors_name_the_field() {
        let bad_args = json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{not json"}}]}
        ]});
        let (field, msg) = err_field(openai_to_anthropic_request(&bad_args, "c", 1));
        assert_eq!(field, "messages[1].tool_calls[0].function.arguments");
        assert!(
            msg.starts_with("messages[1].tool_calls[0].function.arguments: is not valid JSON"),
            "{msg}"
        );

        let cases = [
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n",
            ),
            (json!({"messages": "x"}), "messages"),
            (json!({}), "messages"),
            (json!([]), "body"),
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "system", "content": "only system"}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "function", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "data:image/png,raw"}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "image_url",
                "image_url": {"url": "https://x"}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c",
                "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": [1]}),
                "stop[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "functions": []}),
                "functions",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "custom", "custom": {"name": "g"}}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
        ];
        for (body, expected) in cases {
            let (field, _) = err_field(openai_to_anthropic_request(&body, "c", 1));
            assert_eq!(field, expected, "body: {body}");
        }
    }

    #[test]
    fn anthropic_to_openai_blocks() {
        let body = json!({
            "system": [{"type": "text", "text": "S1"}, {"type": "text", "text": "S2", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVB"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "shot", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "is_error": false, "content": [
                        {"type": "text", "text": "line1"}, {"type": "text", "text": "line2"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0l"}}
                    ]}
                ]},
                {"role": "assistant", "content": []}
            ]
        });
        let o = anthropic_to_openai_request(&body, "m").unwrap();
        assert_eq!(
            o["messages"],
            json!([
                {"role": "system", "content": "S1\n\nS2"},
                {"role": "user", "content": [{"type": "file", "file": {"filename": "r.pdf",
                    "file_data": "data:application/pdf;base64,JVB"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "shot", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "line1\nline2"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0l"}}]},
                {"role": "assistant", "content": ""}
            ])
        );
    }

    #[test]
    fn anthropic_errors_name_the_field() {
        let cases = [
            (json!("x"), "body"),
            (json!({}), "messages"),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 3}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image",
                "source": {"type": "file", "file_id": "f"}}]}]}),
                "messages[0].content[0].source.type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
                "messages[0].content[0].tool_use_id",
            ),
            (json!({"messages": [], "system": 1}), "system"),
            (json!({"messages": [], "max_tokens": -3}), "max_tokens"),
            (
                json!({"messages": [], "stop_sequences": "x"}),
                "stop_sequences",
            ),
            (
                json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [], "tools": [{"name": "f"}], "tool_choice": {"type": "maybe"}}),
                "tool_choice.type",
            ),
        ];
        for (body, expected) in cases {
            let (field, _) = err_field(anthropic_to_openai_request(&body, "m"));
            assert_eq!(field, expected, "body: {body}");
        }
    }

    #[test]
    fn total_on_odd_json() {
        let odd = [
            json!(null),
            json!(1),
            json!({"messages": [null, 1, "x", [], {}]}),
            json!({"messages": [{"role": "user", "content": [null, 1, {"type": null}]}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": "x"}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [null]}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "tools": {"a": 1}, "tool_choice": 5}),
        ];
        for body in &odd {
            assert!(openai_to_anthropic_request(body, "c", 1).is_err(), "{body}");
            assert!(anthropic_to_openai_request(body, "m").is_err(), "{body}");
        }
    }
}
