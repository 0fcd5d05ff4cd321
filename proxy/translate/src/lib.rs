//! Translation between the OpenAI Chat Completions API and the Anthropic
//! Messages API, and between the OpenAI Responses API and Chat Completions
//! (so Responses reaches Anthropic by composition), plus the pieces a proxy needs around it: an incremental SSE
//! decoder, usage normalization into [`TokenCounts`](tollgate_core::TokenCounts),
//! and text extraction for local token estimation.
//!
//! Everything operates on [`serde_json::Value`] so that fields this crate does
//! not know about never make a request fail to parse, and every function is
//! total: arbitrary JSON yields either a value or a [`TranslateError`], never a
//! panic.

#![warn(missing_docs)]

pub mod error;
pub mod request;
pub mod response;
pub mod responses;
pub mod sse;
pub mod stream;
pub mod usage;
mod util;

pub use error::TranslateError;
pub use request::{anthropic_to_openai_request, openai_to_anthropic_request};
pub use response::{
    anthropic_error_to_openai, anthropic_stop_to_openai_finish, anthropic_to_openai_response,
    openai_error_to_anthropic, openai_finish_to_anthropic_stop, openai_to_anthropic_response,
};
pub use responses::{
    chat_to_responses_response, responses_echo_request, responses_to_chat_request,
    ChatToResponsesStream,
};
pub use sse::{encode_event, SseDecoder, SseEvent};
pub use stream::{AnthropicToOpenAiStream, OpenAiToAnthropicStream};
pub use usage::{
    anthropic_event_text, anthropic_request_text, anthropic_response_text, anthropic_usage,
    anthropic_usage_json, is_usage_only_chunk, openai_chunk_text, openai_chunk_usage,
    openai_request_text, openai_response_text, openai_responses_usage, openai_usage,
    openai_usage_json, responses_event_text, responses_event_usage, responses_request_text,
    responses_response_text, responses_usage_json, AnthropicStreamUsage,
};

#[cfg(test)]
mod totality {
    //! Every public function on a zoo of malformed inputs: no panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::{json, Value};

    fn zoo() -> Vec<Value> {
        let leaves = vec![
            json!(null),
            json!(true),
            json!(-1),
            json!(1.5e300),
            json!(""),
            json!("x"),
            json!([]),
            json!({}),
            json!([null]),
        ];
        let keys = [
            "messages",
            "content",
            "role",
            "tool_calls",
            "function",
            "arguments",
            "system",
            "tools",
            "tool_choice",
            "usage",
            "choices",
            "delta",
            "index",
            "type",
            "message",
            "content_block",
            "error",
            "stop",
            "max_tokens",
            "source",
            "image_url",
            "input",
            "prompt_tokens",
            "completion_tokens_details",
            "output_tokens_details",
            "reasoning_tokens",
            "cache_creation",
            "stream",
            "metadata",
            "id",
            "name",
            "text",
            "instructions",
            "output",
            "call_id",
            "output_text",
            "response",
            "finish_reason",
            "refusal",
            "format",
            "reasoning",
            "parts",
            "summary",
            "detail",
            "created",
            "model",
            "tool_call_id",
        ];
        let mut out = leaves.clone();
        for k in keys {
            for v in &leaves {
                out.push(json!({ k: v }));
                out.push(json!({ "messages": [{ "role": "user", k: v }] }));
                out.push(json!({ "messages": [{ "role": "assistant", "content": [{ "type": "tool_use", k: v }] }] }));
                out.push(
                    json!({ "choices": [{ "index": 0, "delta": { k: v }, "message": { k: v } }] }),
                );
                out.push(json!({ "choices": [{ "delta": { "tool_calls": [{ k: v }] } }] }));
                out.push(json!({ "message": { "usage": { k: v } }, "content_block": { k: v }, "delta": { k: v } }));
                out.push(json!({ "input": [{ k: v }], "tools": [{ "type": "function", k: v }], "text": { k: v }, "reasoning": { k: v } }));
                out.push(json!({ "input": [{ "type": "message", "role": "user", "content": [{ "type": "input_image", k: v }] }] }));
                out.push(json!({ "input": [{ "type": "function_call", "call_id": "c", "name": "f", k: v }, { "type": "function_call_output", "call_id": "c", "output": [{ "type": "input_text", k: v }] }] }));
                out.push(json!({ "type": "response.completed", "response": { "usage": { k: v }, "output": [{ "type": "message", k: v }] }, "item": { k: v }, "delta": v }));
                out.push(json!({ "choices": [{ "index": 0, "finish_reason": v, "delta": { "refusal": v, "content": "x" } }], "usage": { k: v } }));
            }
        }
        out
    }

    #[test]
    fn nothing_panics() {
        let events = [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "error",
            "ping",
            "",
        ];
        for v in zoo() {
            let _ = openai_to_anthropic_request(&v, "m", 1);
            let _ = anthropic_to_openai_request(&v, "m");
            let _ = anthropic_to_openai_response(&v, "m");
            let _ = openai_to_anthropic_response(&v, "m");
            let _ = openai_error_to_anthropic(500, &v);
            let _ = anthropic_error_to_openai(0, &v);
            let _ = openai_usage(&v);
            let _ = openai_responses_usage(&v);
            let _ = anthropic_usage(&v);
            let _ = openai_chunk_usage(&v);
            let _ = is_usage_only_chunk(&v);
            let _ = openai_request_text(&v);
            let _ = anthropic_request_text(&v);
            let _ = openai_response_text(&v);
            let _ = anthropic_response_text(&v);
            let _ = responses_to_chat_request(&v, "m");
            let _ = chat_to_responses_response(&v, &v);
            let _ = responses_request_text(&v);
            let _ = responses_response_text(&v);
            let _ = responses_event_usage(&v);
            let mut s = String::new();
            responses_event_text(&v, &mut s);
            openai_chunk_text(&v, &mut s);
            let mut a2o = AnthropicToOpenAiStream::new("m", true);
            let mut o2a = OpenAiToAnthropicStream::new("m");
            let mut c2r = ChatToResponsesStream::new("m", &v);
            let mut acc = AnthropicStreamUsage::new();
            for e in events {
                anthropic_event_text(e, &v, &mut s);
                acc.observe(e, &v);
                let _ = a2o.push(e, &v);
                let _ = o2a.push(&v);
                let _ = c2r.push(&v);
            }
            let _ = c2r.finish();
            let _ = a2o.finish();
            let _ = o2a.finish();
            let _ = acc.counts();
        }
        let mut d = SseDecoder::new();
        for chunk in [
            &b"\r"[..],
            b"\n\r\r\n",
            b":",
            b"data",
            b"\xff\xfe",
            b"\n\n",
            b"event",
        ] {
            let _ = d.push(chunk);
        }
        let _ = d.finish();
    }
}
