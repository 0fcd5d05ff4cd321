//! OpenAI chat-completions rendering (borrowed serde structs: no intermediate `Value`).

use serde::Serialize;

use crate::plan::{Content, ReplyPlan, Usage};
use crate::server::{Ctx, Frames, CREATED};
use crate::sse::EventWriter;

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OaUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct OaUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    /// Present when the rule reports reasoning tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl OaUsage {
    /// OpenAI counts cached tokens inside `prompt_tokens`; cache writes do not exist there.
    fn new(u: &Usage) -> Self {
        let prompt = u.input + u.cache_read;
        OaUsage {
            prompt_tokens: prompt,
            completion_tokens: u.output,
            total_tokens: prompt + u.output,
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cache_read,
            },
            completion_tokens_details: (u.reasoning > 0).then_some(CompletionDetails {
                reasoning_tokens: u.reasoning,
            }),
        }
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    /// Absent unless usage was requested; then `null` on every chunk but the last,
    /// like OpenAI.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a OaUsage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

fn finish_reason(content: &Content) -> &'static str {
    match content {
        Content::Text(_) => "stop",
        Content::Tool(_) => "tool_calls",
    }
}

/// Non-streaming `chat.completion` body.
pub(crate) fn completion(ctx: &Ctx<'_>, plan: &ReplyPlan) -> serde_json::Result<Vec<u8>> {
    let id = format!("chatcmpl-mock-{}", ctx.n);
    let call_id = format!("call_mock_{}", ctx.n);
    let message = match &plan.content {
        Content::Text(t) => Message {
            role: "assistant",
            content: Some(&t.text),
            tool_calls: None,
        },
        Content::Tool(t) => Message {
            role: "assistant",
            content: None,
            tool_calls: Some([ToolCallOut {
                id: &call_id,
                kind: "function",
                function: FunctionOut {
                    name: &t.name,
                    arguments: &t.arguments,
                },
            }]),
        },
    };
    let body = Completion {
        id: &id,
        object: "chat.completion",
        created: CREATED,
        model: ctx.model,
        choices: [Choice {
            index: 0,
            message,
            logprobs: None,
            finish_reason: finish_reason(&plan.content),
        }],
        usage: (!plan.omit_usage).then(|| OaUsage::new(&plan.usage)),
    };
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, &body)?;
    Ok(out)
}

/// Streaming chunks: role, content pieces, finish, optional usage, `[DONE]`.
pub(crate) fn stream(ctx: &Ctx<'_>, plan: &ReplyPlan) -> serde_json::Result<Frames> {
    let chunks = ChunkWriter {
        id: format!("chatcmpl-mock-{}", ctx.n),
        model: ctx.model,
        with_usage: ctx.include_usage && !plan.omit_usage,
    };
    let mut w = EventWriter::new();
    chunks.emit(
        &mut w,
        Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        },
        None,
    )?;
    let call_id = format!("call_mock_{}", ctx.n);
    let (content_start, content_len) = match &plan.content {
        Content::Text(t) => {
            let start = w.len();
            for r in &t.chunks {
                let piece = t.text.get(r.clone()).unwrap_or("");
                let delta = Delta {
                    content: Some(piece),
                    ..Delta::default()
                };
                chunks.emit(&mut w, delta, None)?;
            }
            (start, t.chunks.len())
        }
        Content::Tool(t) => {
            chunks.emit(&mut w, tool_delta(Some(&call_id), Some(&t.name), ""), None)?;
            let start = w.len();
            for r in &t.fragments {
                let piece = t.arguments.get(r.clone()).unwrap_or("");
                chunks.emit(&mut w, tool_delta(None, None, piece), None)?;
            }
            (start, t.fragments.len())
        }
    };
    chunks.emit(&mut w, Delta::default(), Some(finish_reason(&plan.content)))?;
    if chunks.with_usage {
        let usage = OaUsage::new(&plan.usage);
        w.event(None, &chunks.chunk(&[], Some(Some(&usage))))?;
    }
    w.raw(b"data: [DONE]\n\n");
    Ok(Frames {
        frames: w.finish(),
        content_start,
        content_len,
    })
}

/// What every chunk of one streamed completion shares.
struct ChunkWriter<'a> {
    id: String,
    model: &'a str,
    with_usage: bool,
}

impl<'a> ChunkWriter<'a> {
    fn chunk<'c>(
        &'c self,
        choices: &'c [ChunkChoice<'c>],
        usage: Option<Option<&'c OaUsage>>,
    ) -> Chunk<'c> {
        Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: CREATED,
            model: self.model,
            choices,
            usage,
        }
    }

    fn emit(
        &self,
        w: &mut EventWriter,
        delta: Delta<'_>,
        finish: Option<&'static str>,
    ) -> serde_json::Result<()> {
        let choice = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        }];
        // Clients that asked for usage see `"usage": null` on every content chunk.
        w.event(None, &self.chunk(&choice, self.with_usage.then_some(None)))
    }
}

fn tool_delta<'a>(id: Option<&'a str>, name: Option<&'a str>, arguments: &'a str) -> Delta<'a> {
    Delta {
        tool_calls: Some([ToolCallDelta {
            index: 0,
            id,
            kind: id.map(|_| "function"),
            function: FunctionDelta { name, arguments },
        }]),
        ..Delta::default()
    }
}
