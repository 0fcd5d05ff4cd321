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
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
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
    let id = format!("chatcmpl-mock-{}", ctx.n);
    let call_id = format!("call_mock_{}", ctx.n);
    let with_usage = ctx.include_usage && !plan.omit_usage;
    let usage = OaUsage::new(&plan.usage);
    let mut w = EventWriter::new();
    let emit = |w: &mut EventWriter, delta: Delta<'_>, finish: Option<&'static str>| {
        let choice = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        }];
        w.event(
            None,
            &Chunk {
                id: &id,
                object: "chat.completion.chunk",
                created: CREATED,
                model: ctx.model,
                choices: &choice,
                usage: with_usage.then_some(None),
            },
        )
    };
    emit(
        &mut w,
        Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        },
        None,
    )?;
    let content_start;
    let content_len;
    match &plan.content {
        Content::Text(t) => {
            content_start = w.len();
            content_len = t.chunks.len();
            for r in &t.chunks {
                let piece = t.text.get(r.clone()).unwrap_or("");
                emit(
                    &mut w,
                    Delta {
                        content: Some(piece),
                        ..Delta::default()
                    },
                    None,
                )?;
            }
        }
        Content::Tool(t) => {
            emit(
                &mut w,
                Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: 0,
                        id: Some(&call_id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(&t.name),
                            arguments: "",
                        },
                    }]),
                    ..Delta::default()
                },
                None,
            )?;
            content_start = w.len();
            content_len = t.fragments.len();
            for r in &t.fragments {
                let piece = t.arguments.get(r.clone()).unwrap_or("");
                emit(
                    &mut w,
                    Delta {
                        tool_calls: Some([ToolCallDelta {
                            index: 0,
                            id: None,
                            kind: None,
                            function: FunctionDelta {
                                name: None,
                                arguments: piece,
                            },
                        }]),
                        ..Delta::default()
                    },
                    None,
                )?;
            }
        }
    }
    emit(&mut w, Delta::default(), Some(finish_reason(&plan.content)))?;
    if with_usage {
        w.event(
            None,
            &Chunk {
                id: &id,
                object: "chat.completion.chunk",
                created: CREATED,
                model: ctx.model,
                choices: &[],
                usage: Some(Some(&usage)),
            },
        )?;
    }
    w.raw(b"data: [DONE]\n\n");
    Ok(Frames {
        frames: w.finish(),
        content_start,
        content_len,
    })
}
