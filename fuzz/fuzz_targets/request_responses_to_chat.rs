//! `responses_to_chat_request` (a Responses client, a chat-only or Anthropic
//! provider) on arbitrary JSON. When it translates: a chat request object
//! with the upstream model and a `messages` array of known roles, which the
//! chat → messages translation then takes or refuses without panicking (the
//! gateway's path to Anthropic). The request text extractor runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_fuzz::json;
use tollgate_translate::{
    openai_to_anthropic_request, responses_request_text, responses_to_chat_request,
};

fuzz_target!(|data: &[u8]| {
    let Some(request) = json(data) else {
        return;
    };
    let _ = responses_request_text(&request);
    let Ok(chat) = responses_to_chat_request(&request, "upstream-model") else {
        return;
    };
    assert_eq!(chat["model"], "upstream-model", "{chat}");
    let messages = chat["messages"].as_array().expect("a messages array");
    for message in messages {
        let role = message["role"].as_str().unwrap_or_default();
        assert!(
            matches!(role, "system" | "user" | "assistant" | "tool"),
            "role {role:?} in {chat}"
        );
        if role == "tool" {
            assert!(message["tool_call_id"].is_string(), "{chat}");
        }
    }
    assert!(
        chat.get("input").is_none() && chat.get("instructions").is_none(),
        "{chat}"
    );
    let _: Option<Value> = openai_to_anthropic_request(&chat, "claude", 1024).ok();
});
