//! `chat_to_responses_response` on arbitrary JSON (as the upstream's chat
//! completion, and as the client's request it echoes). Invariant: a
//! Responses object whose status is known and whose `output` is an array
//! of message or function-call items. The Responses usage and text readers
//! (used on passed-through answers) run on the same input and on the result;
//! the input read as an Anthropic answer goes through chat to Responses too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tollgate_fuzz::json;
use tollgate_translate::{
    anthropic_to_openai_response, chat_to_responses_response, openai_responses_usage,
    responses_echo_request, responses_event_usage, responses_response_text,
};

fuzz_target!(|data: &[u8]| {
    // The gateway reads a Responses request's echoed members from its bytes.
    let echo = responses_echo_request(data);
    assert!(echo.is_null() || echo.get("input").is_none(), "{echo}");
    let Some(value) = json(data) else {
        return;
    };
    let request = json!({"model": "m", "instructions": "x", "tools": []});
    for (chat, req) in [(&value, &request), (&value, &value)] {
        let response = chat_to_responses_response(chat, req);
        assert_eq!(response["object"], "response", "{response}");
        let status = response["status"].as_str().unwrap_or_default();
        assert!(matches!(status, "completed" | "incomplete"), "{response}");
        for item in response["output"].as_array().expect("an output array") {
            let kind = item["type"].as_str().unwrap_or_default();
            assert!(matches!(kind, "message" | "function_call"), "{response}");
        }
        let _ = responses_response_text(&response);
        let _ = openai_responses_usage(&response["usage"]);
    }
    // An Anthropic answer reaches a Responses client through chat.
    let via_chat = chat_to_responses_response(&anthropic_to_openai_response(&value, "m"), &request);
    assert_eq!(via_chat["object"], "response", "{via_chat}");
    let _ = responses_response_text(&value);
    let _ = responses_event_usage(&value);
    let _ = openai_responses_usage(&value);
});
