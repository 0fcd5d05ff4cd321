//! The gateway's path from an Anthropic stream to a Responses client:
//! `AnthropicToOpenAiStream` (usage asked for) then `ChatToResponsesStream`,
//! fed the input read as an Anthropic SSE transcript. Invariants as for
//! `stream_chat_to_responses` (`tollgate_fuzz::check_responses_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tollgate_fuzz::{anthropic_events, check_responses_stream};
use tollgate_translate::{AnthropicToOpenAiStream, ChatToResponsesStream};

fuzz_target!(|data: &[u8]| {
    let request = json!({"model": "m", "input": "x", "stream": true});
    let mut to_chat = AnthropicToOpenAiStream::new("m", true);
    let mut to_responses = ChatToResponsesStream::new("m", &request);
    let mut out = Vec::new();
    for (name, event) in anthropic_events(data) {
        for chunk in to_chat.push(&name, &event) {
            out.extend(to_responses.push(&chunk));
        }
    }
    for chunk in to_chat.finish() {
        out.extend(to_responses.push(&chunk));
    }
    out.extend(to_responses.finish());
    check_responses_stream(&out);
});
