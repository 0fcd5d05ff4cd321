//! Chat Completions response → Responses API response.

use super::{
    client_model, function_call_item, id_base, message_item, output_text_part, refusal_part,
    response_object, status_for_finish, Outcome,
};
use crate::usage::{openai_usage, responses_usage_json};
use crate::util::{as_count, count_field, now_secs, str_field};
use serde_json::Value;

/// Translates a non-streamed `chat.completion` (first choice) into a
/// Responses API `response` object answering `request`, the client's
/// original Responses request (its parameters are echoed, and its `model` is
/// reported).
///
/// Output: a `message` item with an `output_text` part (and a `refusal` part
/// for a chat refusal) when there is text, then one `function_call` item per
/// tool call. `finish_reason` `length` / `content_filter` make the response
/// `incomplete` with `incomplete_details.reason` `max_output_tokens` /
/// `content_filter`. Usage maps `prompt_tokens` → `input_tokens`,
/// `completion_tokens` → `output_tokens` with the cached and reasoning
/// details; zeros when the upstream reported none.
pub fn chat_to_responses_response(chat: &Value, request: &Value) -> Value {
    let choice = chat
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("index").and_then(as_count).unwrap_or(0) == 0)
        })
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let base = id_base(str_field(chat, "id"));
    let (status, reason) = status_for_finish(str_field(choice, "finish_reason"));
    let item_status = if reason.is_some() {
        "incomplete"
    } else {
        "completed"
    };

    let mut output = Vec::new();
    let mut content = Vec::new();
    let text = message_text(message.get("content"));
    if !text.is_empty() {
        content.push(output_text_part(&text));
    }
    if let Some(r) = str_field(message, "refusal").filter(|r| !r.is_empty()) {
        content.push(refusal_part(r));
    }
    if !content.is_empty() {
        output.push(message_item(&format!("msg_{base}_0"), item_status, content));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = output.len();
        let f = call.get("function").unwrap_or(&Value::Null);
        let args = match f.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            // Some providers send already-decoded arguments.
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        let call_id = str_field(call, "id")
            .filter(|s| !s.is_empty())
            .map_or_else(|| format!("call_{base}_{index}"), str::to_owned);
        output.push(function_call_item(
            &format!("fc_{base}_{index}"),
            &call_id,
            str_field(f, "name").unwrap_or(""),
            &args,
            item_status,
        ));
    }
    let counts = chat.get("usage").and_then(openai_usage).unwrap_or_default();
    let created = count_field(chat, "created").unwrap_or_else(now_secs);
    response_object(
        request,
        client_model(request, str_field(chat, "model").unwrap_or("")),
        &format!("resp_{base}"),
        created,
        Outcome {
            status,
            incomplete_reason: reason,
            output,
            usage: responses_usage_json(&counts),
            error: Value::Null,
        },
    )
}

/// Chat message `content`: a string, or text parts concatenated.
fn message_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| str_field(p, "text")).collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn completion(message: Value, finish: &str, usage: Value) -> Value {
        json!({"id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000,
            "model": "upstream-model",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage})
    }

    #[test]
    fn text_response_exact() {
        let chat = completion(
            json!({"role": "assistant", "content": "Hello!", "refusal": null}),
            "stop",
            json!({"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
                "prompt_tokens_details": {"cached_tokens": 16},
                "completion_tokens_details": {"reasoning_tokens": 2}}),
        );
        let request = json!({"model": "gpt-alias", "input": "hi", "instructions": "Be nice.",
            "temperature": 0.5, "max_output_tokens": 100, "metadata": {}});
        let r = chat_to_responses_response(&chat, &request);
        assert_eq!(
            r,
            json!({
                "id": "resp_abc", "object": "response", "created_at": 1700000000,
                "status": "completed", "background": false, "error": null,
                "incomplete_details": null, "instructions": "Be nice.",
                "max_output_tokens": 100, "max_tool_calls": null, "model": "gpt-alias",
                "output": [{"id": "msg_abc_0", "type": "message", "status": "completed",
                    "role": "assistant", "content": [{"type": "output_text", "text": "Hello!",
                        "annotations": [], "logprobs": []}]}],
                "parallel_tool_calls": true, "previous_response_id": null,
                "reasoning": {"effort": null, "summary": null}, "store": false,
                "temperature": 0.5, "text": {"format": {"type": "text"}},
                "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
                "usage": {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 16},
                    "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2},
                    "total_tokens": 25},
                "user": null, "metadata": {}
            })
        );
    }

    #[test]
    fn tool_calls_and_echoes() {
        let chat = completion(
            json!({"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":1}"}},
                {"type": "function", "function": {"name": "t", "arguments": {"z": true}}}
            ]}),
            "tool_calls",
            Value::Null,
        );
        let tools = json!([{"type": "function", "name": "w", "parameters": {"type": "object"}}]);
        let request = json!({"model": "m", "tools": tools, "tool_choice": "required",
            "parallel_tool_calls": false, "reasoning": {"effort": "high"},
            "text": {"format": {"type": "json_object"}}, "user": "u"});
        let r = chat_to_responses_response(&chat, &request);
        assert_eq!(
            r["output"],
            json!([
                {"id": "msg_abc_0", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}]},
                {"id": "fc_abc_1", "type": "function_call", "status": "completed",
                 "call_id": "call_1", "name": "w", "arguments": "{\"c\":1}"},
                {"id": "fc_abc_2", "type": "function_call", "status": "completed",
                 "call_id": "call_abc_2", "name": "t", "arguments": "{\"z\":true}"}
            ])
        );
        assert_eq!(r["status"], json!("completed"));
        assert_eq!(r["tools"], tools);
        assert_eq!(r["tool_choice"], json!("required"));
        assert_eq!(r["parallel_tool_calls"], json!(false));
        assert_eq!(r["reasoning"], json!({"effort": "high", "summary": null}));
        assert_eq!(r["text"], json!({"format": {"type": "json_object"}}));
        assert_eq!(r["user"], json!("u"));
        // No usage reported: zeros, still in the shape SDKs require.
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 0})
        );
    }

    #[test]
    fn length_and_content_filter_are_incomplete() {
        let chat = completion(json!({"content": "trunc"}), "length", Value::Null);
        let r = chat_to_responses_response(&chat, &json!({}));
        assert_eq!(r["status"], json!("incomplete"));
        assert_eq!(
            r["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(r["output"][0]["status"], json!("incomplete"));
        assert_eq!(r["model"], json!("upstream-model"));
        let chat = completion(
            json!({"content": null, "refusal": "I can't."}),
            "content_filter",
            Value::Null,
        );
        let r = chat_to_responses_response(&chat, &json!({"model": "m"}));
        assert_eq!(r["status"], json!("incomplete"));
        assert_eq!(r["incomplete_details"], json!({"reason": "content_filter"}));
        assert_eq!(
            r["output"][0]["content"],
            json!([{"type": "refusal", "refusal": "I can't."}])
        );
    }

    #[test]
    fn empty_and_odd_completions() {
        let r = chat_to_responses_response(&json!({}), &json!({}));
        assert_eq!(r["output"], json!([]));
        assert_eq!(r["status"], json!("completed"));
        assert_eq!(r["id"], json!("resp_tollgate"));
        let chat = json!({"id": "weird id/1", "choices": [{"index": 0,
            "message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]});
        let r = chat_to_responses_response(&chat, &json!({"tools": "x", "tool_choice": 3}));
        assert_eq!(r["id"], json!("resp_weird_id_1"));
        assert_eq!(r["output"][0]["content"][0]["text"], json!("ab"));
        assert_eq!(r["tools"], json!([]));
        assert_eq!(r["tool_choice"], json!("auto"));
    }
}
