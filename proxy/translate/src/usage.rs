//! Normalization of provider-reported token usage into [`TokenCounts`], and
//! text extraction for local token estimation when no usage is reported.

use crate::util::{count_field, non_null, obj, str_field};
use serde_json::Value;
use tollgate_core::TokenCounts;

/// Usage from an OpenAI `usage` object.
///
/// `cached_input` is `prompt_tokens_details.cached_tokens` and `input` is the
/// remainder of `prompt_tokens` (OpenAI counts cached tokens inside
/// `prompt_tokens`). `reasoning` is
/// `completion_tokens_details.reasoning_tokens`, a part of `output` (capped
/// at it). `None` when `usage` is not an object or has neither
/// `prompt_tokens` nor `completion_tokens`.
pub fn openai_usage(usage: &Value) -> Option<TokenCounts> {
    if !usage.is_object() {
        return None;
    }
    let prompt = count_field(usage, "prompt_tokens");
    let completion = count_field(usage, "completion_tokens");
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let prompt = prompt.unwrap_or(0);
    let cached = usage
        .get("prompt_tokens_details")
        .and_then(|d| count_field(d, "cached_tokens"))
        .unwrap_or(0)
        // A cached count above the prompt total is nonsense; cap it so the
        // sum of classes still equals what the provider billed as prompt.
        .min(prompt);
    let output = completion.unwrap_or(0);
    Some(TokenCounts {
        input: prompt - cached,
        cached_input: cached,
        cache_write_5m: 0,
        cache_write_1h: 0,
        output,
        reasoning: detail(usage, "completion_tokens_details", "reasoning_tokens").min(output),
    })
}

/// `usage[details][field]`, 0 when any level is missing.
fn detail(usage: &Value, details: &str, field: &str) -> u64 {
    usage
        .get(details)
        .and_then(|d| count_field(d, field))
        .unwrap_or(0)
}

/// Usage from an OpenAI Responses API `usage` object: `input_tokens`
/// (cache reads inside, `input_tokens_details.cached_tokens`) and
/// `output_tokens` (reasoning inside, `output_tokens_details.reasoning_tokens`).
/// `None` when `usage` is not an object or has neither `input_tokens` nor
/// `output_tokens`.
pub fn openai_responses_usage(usage: &Value) -> Option<TokenCounts> {
    if !usage.is_object() {
        return None;
    }
    let input = count_field(usage, "input_tokens");
    let output = count_field(usage, "output_tokens");
    if input.is_none() && output.is_none() {
        return None;
    }
    let input = input.unwrap_or(0);
    let output = output.unwrap_or(0);
    let cached = detail(usage, "input_tokens_details", "cached_tokens").min(input);
    Some(TokenCounts {
        input: input - cached,
        cached_input: cached,
        cache_write_5m: 0,
        cache_write_1h: 0,
        output,
        reasoning: detail(usage, "output_tokens_details", "reasoning_tokens").min(output),
    })
}

/// Usage from an Anthropic `usage` object.
///
/// Cache writes come from `cache_creation.ephemeral_5m_input_tokens` /
/// `ephemeral_1h_input_tokens` when that breakdown exists; any part of
/// `cache_creation_input_tokens` not covered by the breakdown (or all of it,
/// without a breakdown) counts as a 5-minute write. `None` when `usage` is
/// not an object or reports none of the known counters.
pub fn anthropic_usage(usage: &Value) -> Option<TokenCounts> {
    if !usage.is_object() {
        return None;
    }
    let mut acc = AnthropicStreamUsage::default();
    acc.merge(usage);
    acc.counts()
}

/// Accumulates usage over an Anthropic stream.
///
/// `message_start` reports input and cache counts (and usually
/// `output_tokens: 1`); `message_delta` reports cumulative `output_tokens`
/// and sometimes the input/cache counts again. Counts are cumulative, so each
/// field keeps the largest value seen: a later event can raise a count but a
/// placeholder `0` can never erase one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnthropicStreamUsage {
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    cache_5m: Option<u64>,
    cache_1h: Option<u64>,
    output: Option<u64>,
}

fn max_opt(slot: &mut Option<u64>, v: Option<u64>) {
    if let Some(v) = v {
        *slot = Some(slot.map_or(v, |old| old.max(v)));
    }
}

impl AnthropicStreamUsage {
    /// An accumulator with nothing reported yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one stream event. `event_type` is the SSE event name; when it is
    /// empty the `type` field of `data` is used. Events other than
    /// `message_start` and `message_delta` are ignored.
    pub fn observe(&mut self, event_type: &str, data: &Value) {
        let ty = if event_type.is_empty() {
            str_field(data, "type").unwrap_or("")
        } else {
            event_type
        };
        let usage = match ty {
            "message_start" => data.get("message").and_then(|m| m.get("usage")),
            "message_delta" => data.get("usage"),
            _ => None,
        };
        if let Some(u) = usage.filter(|u| u.is_object()) {
            self.merge(u);
        }
    }

    fn merge(&mut self, u: &Value) {
        max_opt(&mut self.input, count_field(u, "input_tokens"));
        max_opt(
            &mut self.cache_read,
            count_field(u, "cache_read_input_tokens"),
        );
        max_opt(
            &mut self.cache_creation,
            count_field(u, "cache_creation_input_tokens"),
        );
        max_opt(&mut self.output, count_field(u, "output_tokens"));
        if let Some(cc) = u.get("cache_creation").filter(|c| c.is_object()) {
            let five = count_field(cc, "ephemeral_5m_input_tokens");
            let hour = count_field(cc, "ephemeral_1h_input_tokens");
            if five.is_some() || hour.is_some() {
                // A breakdown exists: its missing half is a known zero.
                max_opt(&mut self.cache_5m, Some(five.unwrap_or(0)));
                max_opt(&mut self.cache_1h, Some(hour.unwrap_or(0)));
            }
        }
    }

    /// The normalized counts, or `None` if no event reported any usage.
    pub fn counts(&self) -> Option<TokenCounts> {
        let any = [
            self.input,
            self.cache_read,
            self.cache_creation,
            self.cache_5m,
            self.cache_1h,
            self.output,
        ]
        .iter()
        .any(Option::is_some);
        if !any {
            return None;
        }
        let five = self.cache_5m.unwrap_or(0);
        let hour = self.cache_1h.unwrap_or(0);
        let uncovered = self
            .cache_creation
            .unwrap_or(0)
            .saturating_sub(five.saturating_add(hour));
        Some(TokenCounts {
            input: self.input.unwrap_or(0),
            cached_input: self.cache_read.unwrap_or(0),
            cache_write_5m: five.saturating_add(uncovered),
            cache_write_1h: hour,
            output: self.output.unwrap_or(0),
            // Anthropic reports no reasoning count (thinking is in output).
            reasoning: 0,
        })
    }
}

/// Usage from an OpenAI stream chunk: `Some` only when the chunk carries a
/// non-null `usage` object (the final chunk when
/// `stream_options.include_usage` was requested).
pub fn openai_chunk_usage(chunk: &Value) -> Option<TokenCounts> {
    non_null(chunk, "usage").and_then(openai_usage)
}

/// True for the usage-only chunk OpenAI appends when `include_usage` is set
/// (non-null `usage`, `choices` empty or missing). A proxy that added
/// `include_usage` itself should drop this chunk for its client.
pub fn is_usage_only_chunk(chunk: &Value) -> bool {
    let has_usage = non_null(chunk, "usage").is_some_and(Value::is_object);
    let no_choices = match chunk.get("choices") {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    has_usage && no_choices
}

/// OpenAI `usage` object for `counts`: `prompt_tokens` includes every input
/// class, `prompt_tokens_details.cached_tokens` the cache reads, and
/// `completion_tokens_details.reasoning_tokens` the reasoning part of
/// output when there is one.
pub fn openai_usage_json(c: &TokenCounts) -> Value {
    let prompt = c
        .input
        .saturating_add(c.cached_input)
        .saturating_add(c.cache_write_5m)
        .saturating_add(c.cache_write_1h);
    let mut usage = obj([
        ("prompt_tokens", prompt.into()),
        ("completion_tokens", c.output.into()),
        ("total_tokens", prompt.saturating_add(c.output).into()),
        (
            "prompt_tokens_details",
            obj([("cached_tokens", c.cached_input.into())]),
        ),
    ]);
    if c.reasoning > 0 {
        if let Value::Object(map) = &mut usage {
            map.insert(
                "completion_tokens_details".into(),
                obj([("reasoning_tokens", c.reasoning.into())]),
            );
        }
    }
    usage
}

/// OpenAI Responses API `usage` object for `counts`: `input_tokens` includes
/// every input class (cache reads also in `input_tokens_details.cached_tokens`)
/// and `output_tokens` the reasoning part
/// (`output_tokens_details.reasoning_tokens`). Both details objects are
/// always present because the SDKs require them.
pub fn responses_usage_json(c: &TokenCounts) -> Value {
    let input = c
        .input
        .saturating_add(c.cached_input)
        .saturating_add(c.cache_write_5m)
        .saturating_add(c.cache_write_1h);
    obj([
        ("input_tokens", input.into()),
        (
            "input_tokens_details",
            obj([("cached_tokens", c.cached_input.into())]),
        ),
        ("output_tokens", c.output.into()),
        (
            "output_tokens_details",
            obj([("reasoning_tokens", c.reasoning.into())]),
        ),
        ("total_tokens", input.saturating_add(c.output).into()),
    ])
}

/// Usage carried by a Responses stream event: the `response.usage` of
/// `response.completed`, `response.incomplete` and `response.failed`
/// (the events that end a response); `None` for every other event.
pub fn responses_event_usage(event: &Value) -> Option<TokenCounts> {
    match str_field(event, "type") {
        Some("response.completed" | "response.incomplete" | "response.failed") => event
            .get("response")
            .and_then(|r| non_null(r, "usage"))
            .and_then(openai_responses_usage),
        _ => None,
    }
}

/// Anthropic `usage` object for `counts` (cache writes of both durations
/// summed into `cache_creation_input_tokens`).
pub fn anthropic_usage_json(c: &TokenCounts) -> Value {
    obj([
        ("input_tokens", c.input.into()),
        (
            "cache_creation_input_tokens",
            c.cache_write_5m.saturating_add(c.cache_write_1h).into(),
        ),
        ("cache_read_input_tokens", c.cached_input.into()),
        ("output_tokens", c.output.into()),
    ])
}

// ---------------------------------------------------------------------------
// Text extraction for estimation.

/// Appends `s` to `out`, newline-separated, skipping empty pieces.
fn piece(out: &mut String, s: &str) {
    if s.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(s);
}

/// Text of an OpenAI message `content` (string or array of parts).
fn openai_content_text(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(s)) => piece(out, s),
        Some(Value::Array(parts)) => {
            for p in parts {
                for key in ["text", "refusal"] {
                    if let Some(s) = str_field(p, key) {
                        piece(out, s);
                    }
                }
            }
        }
        _ => {}
    }
}

fn openai_tool_calls_text(calls: Option<&Value>, out: &mut String) {
    for call in calls.and_then(Value::as_array).into_iter().flatten() {
        let f = call.get("function").unwrap_or(&Value::Null);
        for key in ["name", "arguments"] {
            if let Some(s) = str_field(f, key) {
                piece(out, s);
            }
        }
    }
}

fn serialized_each(list: Option<&Value>, out: &mut String) {
    for t in list.and_then(Value::as_array).into_iter().flatten() {
        piece(out, &t.to_string());
    }
}

/// All prompt text of an OpenAI chat request: message contents, tool-call
/// names and arguments, and each tool definition serialized as JSON.
pub fn openai_request_text(body: &Value) -> String {
    let mut out = String::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        openai_content_text(m.get("content"), &mut out);
        openai_tool_calls_text(m.get("tool_calls"), &mut out);
    }
    serialized_each(body.get("tools"), &mut out);
    serialized_each(body.get("functions"), &mut out);
    out
}

/// Text of a Responses `content` / `output` value: a string, or the
/// `text` / `refusal` of each part.
fn responses_parts_text(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(s)) => piece(out, s),
        Some(Value::Array(parts)) => {
            for p in parts {
                for key in ["text", "refusal"] {
                    if let Some(s) = str_field(p, key) {
                        piece(out, s);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Text of Responses input or output items: message contents, function-call
/// names and arguments, function-call outputs, reasoning summaries.
fn responses_items_text(items: Option<&Value>, out: &mut String) {
    let Some(items) = items else {
        return;
    };
    if let Value::String(s) = items {
        piece(out, s);
        return;
    }
    for item in items.as_array().into_iter().flatten() {
        match str_field(item, "type") {
            None | Some("message") => responses_parts_text(item.get("content"), out),
            Some("function_call") => {
                for key in ["name", "arguments"] {
                    piece(out, str_field(item, key).unwrap_or(""));
                }
            }
            Some("function_call_output") => responses_parts_text(item.get("output"), out),
            Some("reasoning") => responses_parts_text(item.get("summary"), out),
            Some(_) => {}
        }
    }
}

/// All prompt text of an OpenAI Responses request: `instructions`, the text
/// of every input item (message contents, function-call names and
/// arguments, function-call outputs), and each tool definition serialized as
/// JSON.
pub fn responses_request_text(request: &Value) -> String {
    let mut out = String::new();
    if let Some(s) = str_field(request, "instructions") {
        piece(&mut out, s);
    }
    responses_items_text(request.get("input"), &mut out);
    serialized_each(request.get("tools"), &mut out);
    out
}

/// Generated text of a non-streamed Responses API response: `output_text`
/// parts, refusals, function-call names and arguments, reasoning summaries.
pub fn responses_response_text(response: &Value) -> String {
    let mut out = String::new();
    responses_items_text(response.get("output"), &mut out);
    out
}

/// Appends the generated text of one Responses stream event to `out`,
/// without separators: text, refusal, function-call argument and reasoning
/// deltas, and the name of a function call when its item is added.
pub fn responses_event_text(event: &Value, out: &mut String) {
    match str_field(event, "type") {
        Some(
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta",
        ) => out.push_str(str_field(event, "delta").unwrap_or("")),
        Some("response.output_item.added") => {
            let item = event.get("item").unwrap_or(&Value::Null);
            if str_field(item, "type") == Some("function_call") {
                out.push_str(str_field(item, "name").unwrap_or(""));
            }
        }
        _ => {}
    }
}

/// Text of Anthropic content (string or blocks), recursing into
/// `tool_result` content.
fn anthropic_content_text(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(s)) => piece(out, s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                match str_field(b, "type").unwrap_or("") {
                    "text" => piece(out, str_field(b, "text").unwrap_or("")),
                    "thinking" => piece(out, str_field(b, "thinking").unwrap_or("")),
                    "tool_use" | "server_tool_use" => {
                        piece(out, str_field(b, "name").unwrap_or(""));
                        if let Some(input) = b.get("input") {
                            piece(out, &input.to_string());
                        }
                    }
                    "tool_result" => anthropic_content_text(b.get("content"), out),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// All prompt text of an Anthropic Messages request: system prompt, message
/// contents (including tool inputs and results), and each tool definition
/// serialized as JSON.
pub fn anthropic_request_text(body: &Value) -> String {
    let mut out = String::new();
    anthropic_content_text(body.get("system"), &mut out);
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        anthropic_content_text(m.get("content"), &mut out);
    }
    serialized_each(body.get("tools"), &mut out);
    out
}

/// Appends the generated text of one OpenAI stream chunk (content, refusal,
/// reasoning text, tool-call names and argument fragments) to `out`, without
/// separators so fragments concatenate exactly.
pub fn openai_chunk_text(chunk: &Value, out: &mut String) {
    for choice in chunk
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(delta) = choice.get("delta") else {
            continue;
        };
        for key in ["content", "refusal", "reasoning_content"] {
            if let Some(s) = str_field(delta, key) {
                out.push_str(s);
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = call.get("function").unwrap_or(&Value::Null);
            for key in ["name", "arguments"] {
                if let Some(s) = str_field(f, key) {
                    out.push_str(s);
                }
            }
        }
    }
}

/// Appends the generated text of one Anthropic stream event (text, thinking,
/// tool names and `input_json_delta` fragments) to `out`, without separators.
/// `event_type` falls back to `data.type` when empty.
pub fn anthropic_event_text(event_type: &str, data: &Value, out: &mut String) {
    let ty = if event_type.is_empty() {
        str_field(data, "type").unwrap_or("")
    } else {
        event_type
    };
    match ty {
        "content_block_start" => {
            let b = data.get("content_block").unwrap_or(&Value::Null);
            for key in ["name", "text", "thinking"] {
                if let Some(s) = str_field(b, key) {
                    out.push_str(s);
                }
            }
        }
        "content_block_delta" => {
            let d = data.get("delta").unwrap_or(&Value::Null);
            for key in ["text", "partial_json", "thinking"] {
                if let Some(s) = str_field(d, key) {
                    out.push_str(s);
                }
            }
        }
        _ => {}
    }
}

/// Generated text of a non-streamed OpenAI chat completion.
pub fn openai_response_text(completion: &Value) -> String {
    let mut out = String::new();
    for choice in completion
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(m) = choice.get("message") else {
            continue;
        };
        openai_content_text(m.get("content"), &mut out);
        for key in ["refusal", "reasoning_content"] {
            if let Some(s) = str_field(m, key) {
                piece(&mut out, s);
            }
        }
        openai_tool_calls_text(m.get("tool_calls"), &mut out);
    }
    out
}

/// Generated text of a non-streamed Anthropic message.
pub fn anthropic_response_text(msg: &Value) -> String {
    let mut out = String::new();
    anthropic_content_text(msg.get("content"), &mut out);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn tc(input: u64, cached: u64, w5: u64, w1: u64, output: u64) -> TokenCounts {
        TokenCounts {
            input,
            cached_input: cached,
            cache_write_5m: w5,
            cache_write_1h: w1,
            output,
            reasoning: 0,
        }
    }

    fn reasoned(counts: TokenCounts, reasoning: u64) -> TokenCounts {
        TokenCounts {
            reasoning,
            ..counts
        }
    }

    #[test]
    fn openai_reasoning_tokens_are_a_part_of_output() {
        let u = json!({"prompt_tokens": 20, "completion_tokens": 300, "total_tokens": 320,
            "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0}});
        assert_eq!(openai_usage(&u), Some(reasoned(tc(20, 0, 0, 0, 300), 256)));
        // Missing or null details: no reasoning; more than output: capped.
        let u = json!({"prompt_tokens": 1, "completion_tokens": 2,
            "completion_tokens_details": null});
        assert_eq!(openai_usage(&u), Some(tc(1, 0, 0, 0, 2)));
        let u = json!({"completion_tokens": 2,
            "completion_tokens_details": {"reasoning_tokens": 9}});
        assert_eq!(openai_usage(&u), Some(reasoned(tc(0, 0, 0, 0, 2), 2)));
        // The final chunk of a stream carries them the same way.
        let chunk = json!({"choices": [], "usage": {"prompt_tokens": 5,
            "completion_tokens": 40, "completion_tokens_details": {"reasoning_tokens": 32}}});
        assert_eq!(
            openai_chunk_usage(&chunk),
            Some(reasoned(tc(5, 0, 0, 0, 40), 32))
        );
        // And they survive a round trip through the OpenAI shape.
        let u = json!({"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58,
            "prompt_tokens_details": {"cached_tokens": 32},
            "completion_tokens_details": {"reasoning_tokens": 6}});
        assert_eq!(openai_usage_json(&openai_usage(&u).unwrap()), u);
        // Never in the Anthropic shape, which has no such field.
        let a = anthropic_usage_json(&openai_usage(&u).unwrap());
        assert_eq!(
            a,
            json!({"input_tokens": 18, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 32, "output_tokens": 8})
        );
    }

    #[test]
    fn openai_responses_usage_shape() {
        let u = json!({"input_tokens": 84, "input_tokens_details": {"cached_tokens": 64},
            "output_tokens": 1200, "output_tokens_details": {"reasoning_tokens": 1024},
            "total_tokens": 1284});
        assert_eq!(
            openai_responses_usage(&u),
            Some(reasoned(tc(20, 64, 0, 0, 1200), 1024))
        );
        assert_eq!(
            openai_responses_usage(&json!({"output_tokens": 3})),
            Some(tc(0, 0, 0, 0, 3))
        );
        assert_eq!(
            openai_responses_usage(&json!({"input_tokens": 2,
                "input_tokens_details": {"cached_tokens": 5},
                "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 4}})),
            Some(reasoned(tc(0, 2, 0, 0, 1), 1))
        );
        assert_eq!(openai_responses_usage(&json!({"total_tokens": 3})), None);
        assert_eq!(openai_responses_usage(&Value::Null), None);
        // A chat-shaped object is not a Responses usage.
        assert_eq!(
            openai_responses_usage(&json!({"prompt_tokens": 1, "completion_tokens": 1})),
            None
        );
    }

    #[test]
    fn responses_usage_json_round_trips() {
        let c = reasoned(tc(20, 64, 6, 4, 1200), 1024);
        let u = responses_usage_json(&c);
        assert_eq!(
            u,
            json!({"input_tokens": 94, "input_tokens_details": {"cached_tokens": 64},
                "output_tokens": 1200, "output_tokens_details": {"reasoning_tokens": 1024},
                "total_tokens": 1294})
        );
        // Cache writes fold into plain input (the Responses shape has no slot).
        assert_eq!(
            openai_responses_usage(&u),
            Some(reasoned(tc(30, 64, 0, 0, 1200), 1024))
        );
        let ev = json!({"type": "response.completed", "response": {"usage": u}});
        assert_eq!(responses_event_usage(&ev), openai_responses_usage(&u));
        let ev = json!({"type": "response.output_text.delta", "response": {"usage": u}});
        assert_eq!(responses_event_usage(&ev), None);
    }

    #[test]
    fn responses_texts() {
        let req = json!({"instructions": "I", "input": [
            {"role": "user", "content": "U"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "P"},
                {"type": "input_image", "image_url": "data:x"}]},
            {"type": "function_call", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "output": "O"},
            {"type": "function_call_output", "output": [{"type": "input_text", "text": "O2"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "R"}]},
            {"type": "item_reference", "id": "x"}
        ], "tools": [{"type": "function", "name": "t"}]});
        assert_eq!(
            responses_request_text(&req),
            format!("I\nU\nP\nf\n{{}}\nO\nO2\nR\n{}", req["tools"][0])
        );
        assert_eq!(
            responses_request_text(&json!({"input": "just this"})),
            "just this"
        );
        let resp = json!({"output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "A"},
                {"type": "refusal", "refusal": "N"}]},
            {"type": "function_call", "name": "g", "arguments": "{\"x\":1}"}
        ]});
        assert_eq!(responses_response_text(&resp), "A\nN\ng\n{\"x\":1}");
        let mut out = String::new();
        for e in [
            json!({"type": "response.refusal.delta", "delta": "r"}),
            json!({"type": "response.reasoning_summary_text.delta", "delta": "s"}),
            json!({"type": "response.output_item.added", "item": {"type": "message", "name": "no"}}),
            json!({"type": "response.output_text.delta", "delta": 5}),
        ] {
            responses_event_text(&e, &mut out);
        }
        assert_eq!(out, "rs");
    }

    #[test]
    fn anthropic_reports_no_reasoning() {
        let u = json!({"input_tokens": 3, "output_tokens": 900,
            "completion_tokens_details": {"reasoning_tokens": 800}});
        assert_eq!(anthropic_usage(&u).unwrap().reasoning, 0);
    }

    #[test]
    fn openai_with_cached_tokens() {
        let u = json!({"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}});
        assert_eq!(openai_usage(&u), Some(tc(86, 1920, 0, 0, 300)));
    }

    #[test]
    fn openai_edge_cases() {
        assert_eq!(openai_usage(&Value::Null), None);
        assert_eq!(openai_usage(&json!("x")), None);
        assert_eq!(openai_usage(&json!({})), None);
        assert_eq!(openai_usage(&json!({"total_tokens": 5})), None);
        assert_eq!(
            openai_usage(&json!({"prompt_tokens": 10})),
            Some(tc(10, 0, 0, 0, 0))
        );
        assert_eq!(
            openai_usage(&json!({"completion_tokens": 4, "prompt_tokens_details": null})),
            Some(tc(0, 0, 0, 0, 4))
        );
        // Cached larger than prompt is capped (saturating).
        assert_eq!(
            openai_usage(&json!({"prompt_tokens": 5, "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 9}})),
            Some(tc(0, 5, 0, 0, 1))
        );
    }

    #[test]
    fn anthropic_basic_and_5m_fallback() {
        let u = json!({"input_tokens": 12, "cache_read_input_tokens": 3000,
            "cache_creation_input_tokens": 500, "output_tokens": 77});
        assert_eq!(anthropic_usage(&u), Some(tc(12, 3000, 500, 0, 77)));
    }

    #[test]
    fn anthropic_cache_creation_breakdown() {
        let u = json!({"input_tokens": 10, "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 1500,
            "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
            "output_tokens": 20});
        assert_eq!(anthropic_usage(&u), Some(tc(10, 0, 500, 1000, 20)));
        // Breakdown with only the 1h part: the 5m part is zero.
        let u = json!({"input_tokens": 1, "cache_creation_input_tokens": 800,
            "cache_creation": {"ephemeral_1h_input_tokens": 800}, "output_tokens": 2});
        assert_eq!(anthropic_usage(&u), Some(tc(1, 0, 0, 800, 2)));
        // Breakdown without the total.
        let u = json!({"cache_creation": {"ephemeral_5m_input_tokens": 7,
            "ephemeral_1h_input_tokens": 3}});
        assert_eq!(anthropic_usage(&u), Some(tc(0, 0, 7, 3, 0)));
        // An empty breakdown object falls back to the total as 5m.
        let u = json!({"cache_creation_input_tokens": 40, "cache_creation": {}});
        assert_eq!(anthropic_usage(&u), Some(tc(0, 0, 40, 0, 0)));
    }

    #[test]
    fn anthropic_none_cases() {
        assert_eq!(anthropic_usage(&Value::Null), None);
        assert_eq!(anthropic_usage(&json!([1])), None);
        assert_eq!(anthropic_usage(&json!({"service_tier": "standard"})), None);
    }

    #[test]
    fn anthropic_stream_accumulates() {
        let mut acc = AnthropicStreamUsage::new();
        assert_eq!(acc.counts(), None);
        acc.observe("ping", &json!({"type": "ping"}));
        assert_eq!(acc.counts(), None);
        acc.observe(
            "message_start",
            &json!({"type":"message_start","message":{"id":"msg_1","usage":{
                "input_tokens": 25, "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 300,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
                "output_tokens": 1}}}),
        );
        assert_eq!(acc.counts(), Some(tc(25, 1000, 100, 200, 1)));
        acc.observe(
            "message_delta",
            &json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},
                "usage":{"output_tokens": 15}}),
        );
        acc.observe(
            "",
            &json!({"type":"message_delta","usage":{"output_tokens": 42,
                "input_tokens": 0, "cache_read_input_tokens": 1000}}),
        );
        assert_eq!(acc.counts(), Some(tc(25, 1000, 100, 200, 42)));
        // Malformed events are ignored.
        acc.observe("message_delta", &json!({"usage": "x"}));
        acc.observe("message_start", &json!(null));
        assert_eq!(acc.counts(), Some(tc(25, 1000, 100, 200, 42)));
    }

    #[test]
    fn anthropic_stream_input_only_in_delta() {
        let mut acc = AnthropicStreamUsage::new();
        acc.observe(
            "message_delta",
            &json!({"usage":{"input_tokens": 9, "output_tokens": 3}}),
        );
        assert_eq!(acc.counts(), Some(tc(9, 0, 0, 0, 3)));
    }

    #[test]
    fn openai_chunks() {
        let final_chunk = json!({"id":"c","object":"chat.completion.chunk","choices":[],
            "usage":{"prompt_tokens": 100, "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 64}}});
        assert_eq!(openai_chunk_usage(&final_chunk), Some(tc(36, 64, 0, 0, 7)));
        assert!(is_usage_only_chunk(&final_chunk));
        let no_choices = json!({"usage":{"prompt_tokens": 1, "completion_tokens": 1}});
        assert!(is_usage_only_chunk(&no_choices));
        let normal = json!({"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null});
        assert_eq!(openai_chunk_usage(&normal), None);
        assert!(!is_usage_only_chunk(&normal));
        let both = json!({"choices":[{"index":0,"delta":{}}],
            "usage":{"prompt_tokens": 1, "completion_tokens": 1}});
        assert!(!is_usage_only_chunk(&both));
        assert!(!is_usage_only_chunk(&json!({"choices": []})));
        assert!(!is_usage_only_chunk(&json!(null)));
    }

    #[test]
    fn usage_json_shapes() {
        let c = tc(10, 20, 30, 40, 5);
        assert_eq!(
            openai_usage_json(&c),
            json!({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                "prompt_tokens_details": {"cached_tokens": 20}})
        );
        assert_eq!(
            anthropic_usage_json(&c),
            json!({"input_tokens": 10, "cache_creation_input_tokens": 70,
                "cache_read_input_tokens": 20, "output_tokens": 5})
        );
        // openai -> counts -> openai is the identity on the reported fields.
        let u = json!({"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58,
            "prompt_tokens_details": {"cached_tokens": 32}});
        assert_eq!(openai_usage_json(&openai_usage(&u).unwrap()), u);
    }

    #[test]
    fn request_texts() {
        let body = json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}]
        });
        // Tool definitions are serialized with serde_json's own key order.
        assert_eq!(
            openai_request_text(&body),
            format!(
                "Be brief.\nWeather?\nget_weather\n{{\"city\":\"Paris\"}}\nsunny\n{}",
                body["tools"][0]
            )
        );
        let body = json!({
            "system": [{"type": "text", "text": "Sys"}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Let me check"},
                    {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                    "content": [{"type": "text", "text": "res"}]}]}
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}]
        });
        assert_eq!(
            anthropic_request_text(&body),
            format!(
                "Sys\nHi\nLet me check\nf\n{{\"a\":1}}\nres\n{}",
                body["tools"][0]
            )
        );
        assert_eq!(openai_request_text(&json!(7)), "");
        assert_eq!(anthropic_request_text(&json!({"messages": "x"})), "");
    }

    #[test]
    fn stream_texts() {
        let mut out = String::new();
        openai_chunk_text(
            &json!({"choices":[{"delta":{"role":"assistant","content":"Hel"}}]}),
            &mut out,
        );
        openai_chunk_text(&json!({"choices":[{"delta":{"content":"lo"}}]}), &mut out);
        openai_chunk_text(
            &json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c",
            "function":{"name":"f","arguments":""}}]}}]}),
            &mut out,
        );
        openai_chunk_text(
            &json!({"choices":[{"delta":{"tool_calls":[{"index":0,
            "function":{"arguments":"{\"a\":"}}]}}]}),
            &mut out,
        );
        openai_chunk_text(&json!({"choices":[], "usage": {}}), &mut out);
        assert_eq!(out, "Hellof{\"a\":");

        let mut out = String::new();
        anthropic_event_text(
            "content_block_start",
            &json!({"content_block":{"type":"text","text":""}}),
            &mut out,
        );
        anthropic_event_text(
            "content_block_delta",
            &json!({"delta":{"type":"text_delta","text":"Hi"}}),
            &mut out,
        );
        anthropic_event_text(
            "",
            &json!({"type":"content_block_start","content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}),
            &mut out,
        );
        anthropic_event_text(
            "content_block_delta",
            &json!({"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}),
            &mut out,
        );
        anthropic_event_text("message_delta", &json!({"usage":{}}), &mut out);
        assert_eq!(out, "Hif{\"a\":1}");
    }

    #[test]
    fn response_texts() {
        let c = json!({"choices":[{"message":{"content":"Answer","tool_calls":[
            {"function":{"name":"f","arguments":"{}"}}]}}]});
        assert_eq!(openai_response_text(&c), "Answer\nf\n{}");
        let m = json!({"content":[{"type":"text","text":"A"},
            {"type":"tool_use","name":"f","input":{"x":true}}]});
        assert_eq!(anthropic_response_text(&m), "A\nf\n{\"x\":true}");
        assert_eq!(anthropic_response_text(&Value::Null), "");
    }
}
