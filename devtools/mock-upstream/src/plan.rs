//! Reply content prepared ahead of time, and the deterministic token accounting.

use std::ops::Range;
use std::sync::Arc;

use serde_json::Value;

use crate::rules::ToolCall;

/// Characters per streamed tool-argument fragment.
pub(crate) const FRAGMENT_CHARS: usize = 8;

/// Reply text split into stream chunks (one per word, with its trailing whitespace).
pub(crate) struct TextPlan {
    pub(crate) text: String,
    pub(crate) chunks: Vec<Range<usize>>,
    pub(crate) words: u64,
}

/// A tool call with its compact JSON arguments split into fragments.
pub(crate) struct ToolPlan {
    pub(crate) name: String,
    pub(crate) input: Value,
    pub(crate) arguments: String,
    pub(crate) fragments: Vec<Range<usize>>,
}

/// What a successful reply contains; shared so the hot path only bumps a refcount.
#[derive(Clone)]
pub(crate) enum Content {
    Text(Arc<TextPlan>),
    Tool(Arc<ToolPlan>),
}

impl Content {
    pub(crate) fn text(text: &str) -> Self {
        Content::Text(Arc::new(TextPlan {
            text: text.to_owned(),
            chunks: word_chunks(text),
            words: count_words(text),
        }))
    }

    pub(crate) fn tool(tc: &ToolCall) -> Self {
        // Compact serialization of a Value cannot fail; fall back to "{}" regardless.
        let arguments = serde_json::to_string(&tc.arguments).unwrap_or_else(|_| "{}".to_owned());
        let fragments = char_fragments(&arguments, FRAGMENT_CHARS);
        Content::Tool(Arc::new(ToolPlan {
            name: tc.name.clone(),
            input: tc.arguments.clone(),
            arguments,
            fragments,
        }))
    }

    /// Completion tokens: words of the text, or number of argument fragments.
    pub(crate) fn completion_tokens(&self) -> u64 {
        match self {
            Content::Text(t) => t.words,
            Content::Tool(t) => t.fragments.len() as u64,
        }
    }
}

/// Number of whitespace-separated words.
pub(crate) fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Splits so that every chunk is one word plus the whitespace after it; leading
/// whitespace stays with the first chunk, so the chunks concatenate to `text`.
pub(crate) fn word_chunks(text: &str) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut prev_ws = false;
    let mut seen_word = false;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if !ws && prev_ws && seen_word {
            chunks.push(start..i);
            start = i;
        }
        if !ws {
            seen_word = true;
        }
        prev_ws = ws;
    }
    if start < text.len() {
        chunks.push(start..text.len());
    }
    chunks
}

/// Splits into pieces of `n` characters (the last may be shorter).
pub(crate) fn char_fragments(s: &str, n: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (count, (i, _)) in s.char_indices().enumerate() {
        if count > 0 && count % n == 0 {
            out.push(start..i);
            start = i;
        }
    }
    if start < s.len() {
        out.push(start..s.len());
    }
    out
}

/// Words in a message `content`: a string, or the `text` of parts/blocks whose
/// `type` is `"text"`. Anything else (images, tool blocks) counts 0.
fn content_words(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => count_words(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(count_words)
            .sum(),
        _ => 0,
    }
}

fn messages_words(body: &Value) -> u64 {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|msgs| msgs.iter().map(|m| content_words(m.get("content"))).sum())
        .unwrap_or(0)
}

/// OpenAI prompt words: text content of every message (any role, so system and
/// developer messages included).
pub(crate) fn openai_prompt_words(body: &Value) -> u64 {
    messages_words(body)
}

/// Anthropic prompt words: `system` (string or text blocks) plus message text.
pub(crate) fn anthropic_prompt_words(body: &Value) -> u64 {
    content_words(body.get("system")) + messages_words(body)
}

/// Words in Responses `content` parts: `input_text` and `output_text` parts
/// (a string counts whole). Images, files and the rest count 0.
fn responses_content_words(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => count_words(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| {
                matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("input_text" | "output_text")
                )
            })
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(count_words)
            .sum(),
        _ => 0,
    }
}

/// OpenAI Responses prompt words: `instructions`, plus `input` — a string, or
/// items: messages (`content` a string or `input_text`/`output_text` parts)
/// and `function_call_output` items (`output` a string or `input_text` parts).
/// Other items (function calls, reasoning, references) count 0.
pub(crate) fn responses_prompt_words(body: &Value) -> u64 {
    let instructions = body
        .get("instructions")
        .and_then(Value::as_str)
        .map_or(0, count_words);
    let input = match body.get("input") {
        Some(Value::String(s)) => count_words(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.get("type").and_then(Value::as_str) {
                Some("function_call_output") => responses_content_words(item.get("output")),
                None | Some("message") => responses_content_words(item.get("content")),
                Some(_) => 0,
            })
            .sum(),
        _ => 0,
    };
    instructions + input
}

/// Usage numbers of one reply, after `zero_usage` was applied.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    /// Uncached prompt words.
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) cache_read: u64,
    pub(crate) cache_write_5m: u64,
    pub(crate) cache_write_1h: u64,
    /// The part of `output` spent reasoning (OpenAI reports it apart).
    pub(crate) reasoning: u64,
}

/// Everything needed to render a successful reply.
pub(crate) struct ReplyPlan {
    pub(crate) content: Content,
    pub(crate) usage: Usage,
    pub(crate) omit_usage: bool,
    /// `usage` is already all zeros; kept so streams also zero their provisional counts.
    pub(crate) zero_usage: bool,
    pub(crate) chunk_delay: std::time::Duration,
    /// Cut the stream after this many content chunks.
    pub(crate) cut_after: Option<usize>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn pieces<'a>(s: &'a str, r: &[Range<usize>]) -> Vec<&'a str> {
        r.iter().map(|r| &s[r.clone()]).collect()
    }

    #[test]
    fn word_chunks_concatenate() {
        for s in [
            "Hello from the mock upstream.",
            "  lead and  double\nnewline ",
            "one",
            "",
            "   ",
            "héllo wörld ünï",
        ] {
            let c = word_chunks(s);
            assert_eq!(pieces(s, &c).concat(), s);
            if count_words(s) > 0 {
                assert_eq!(c.len() as u64, count_words(s), "{s:?}");
            }
        }
        let s = "Hello from the mock upstream.";
        assert_eq!(
            pieces(s, &word_chunks(s)),
            vec!["Hello ", "from ", "the ", "mock ", "upstream."]
        );
    }

    #[test]
    fn fragments() {
        let s = r#"{"city":"Paris","unit":"c"}"#;
        let f = char_fragments(s, 8);
        assert_eq!(pieces(s, &f).concat(), s);
        assert_eq!(f.len(), s.len().div_ceil(8));
        let s = "ééééééééé";
        assert_eq!(pieces(s, &char_fragments(s, 8)), vec!["éééééééé", "é"]);
    }

    #[test]
    fn prompt_words() {
        let oa = serde_json::json!({"messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi there you"},{"type":"image_url","image_url":{"url":"x"}}]}
        ]});
        assert_eq!(openai_prompt_words(&oa), 5);
        let an = serde_json::json!({"system":[{"type":"text","text":"a b"}],"messages":[
            {"role":"user","content":"one two"},
            {"role":"assistant","content":[{"type":"text","text":"three"},{"type":"tool_use","id":"x","name":"n","input":{}}]}
        ]});
        assert_eq!(anthropic_prompt_words(&an), 5);
        let rs = serde_json::json!({"instructions": "be brief", "input": "hi there you"});
        assert_eq!(responses_prompt_words(&rs), 5);
        let rs = serde_json::json!({"instructions": null, "input": [
            {"role": "developer", "content": "be brief"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "one two"},
                {"type": "input_image", "image_url": "x"}
            ]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "three", "annotations": []}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"a\": \"x y\"}"},
            {"type": "function_call_output", "call_id": "c", "output": "four five six"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "not counted"}]}
        ]});
        assert_eq!(responses_prompt_words(&rs), 8);
    }
}
