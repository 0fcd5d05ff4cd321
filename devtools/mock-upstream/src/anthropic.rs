//! Anthropic messages rendering (borrowed serde structs: no intermediate `Value`).

use serde::Serialize;
use serde_json::Value;

use crate::plan::{Content, ReplyPlan, Usage};
use crate::server::{Ctx, Frames};
use crate::sse::EventWriter;

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [Block<'a>],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<AnUsage>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
}

#[derive(Serialize)]
struct AnUsage {
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_creation: CacheCreation,
}

#[derive(Serialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

impl AnUsage {
    fn new(u: &Usage, output: u64) -> Self {
        AnUsage {
            input_tokens: u.input,
            output_tokens: output,
            cache_read_input_tokens: u.cache_read,
            cache_creation_input_tokens: u.cache_write_5m + u.cache_write_1h,
            cache_creation: CacheCreation {
                ephemeral_5m_input_tokens: u.cache_write_5m,
                ephemeral_1h_input_tokens: u.cache_write_1h,
            },
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: MessageOut<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<OutputUsage>,
    },
    MessageStop,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::Ping => "ping",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct MessageDeltaBody {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

fn stop_reason(content: &Content) -> &'static str {
    match content {
        Content::Text(_) => "end_turn",
        Content::Tool(_) => "tool_use",
    }
}

/// Non-streaming `message` body.
pub(crate) fn message(ctx: &Ctx<'_>, plan: &ReplyPlan) -> serde_json::Result<Vec<u8>> {
    let id = format!("msg_mock_{}", ctx.n);
    let tool_id = format!("toolu_mock_{}", ctx.n);
    let block = match &plan.content {
        Content::Text(t) => Block::Text { text: &t.text },
        Content::Tool(t) => Block::ToolUse {
            id: &tool_id,
            name: &t.name,
            input: &t.input,
        },
    };
    let body = MessageOut {
        id: &id,
        kind: "message",
        role: "assistant",
        model: ctx.model,
        content: &[block],
        stop_reason: Some(stop_reason(&plan.content)),
        stop_sequence: None,
        usage: (!plan.omit_usage).then(|| AnUsage::new(&plan.usage, plan.usage.output)),
    };
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, &body)?;
    Ok(out)
}

fn emit(w: &mut EventWriter, event: &Event<'_>) -> serde_json::Result<()> {
    w.event(Some(event.name()), event)
}

/// Streaming events: message_start, content_block_start, ping, deltas,
/// content_block_stop, message_delta, message_stop.
pub(crate) fn stream(ctx: &Ctx<'_>, plan: &ReplyPlan) -> serde_json::Result<Frames> {
    let id = format!("msg_mock_{}", ctx.n);
    let tool_id = format!("toolu_mock_{}", ctx.n);
    let empty_input = Value::Object(serde_json::Map::new());
    let mut w = EventWriter::new();

    // Anthropic reports a provisional output count of 1 at the start; with
    // omit_usage/zero_usage the start carries zeros instead.
    let start_usage = if plan.omit_usage || plan.zero_usage {
        AnUsage::new(&Usage::default(), 0)
    } else {
        AnUsage::new(&plan.usage, 1)
    };
    emit(
        &mut w,
        &Event::MessageStart {
            message: MessageOut {
                id: &id,
                kind: "message",
                role: "assistant",
                model: ctx.model,
                content: &[],
                stop_reason: None,
                stop_sequence: None,
                usage: Some(start_usage),
            },
        },
    )?;
    let block = match &plan.content {
        Content::Text(_) => Block::Text { text: "" },
        Content::Tool(t) => Block::ToolUse {
            id: &tool_id,
            name: &t.name,
            input: &empty_input,
        },
    };
    emit(
        &mut w,
        &Event::ContentBlockStart {
            index: 0,
            content_block: block,
        },
    )?;
    emit(&mut w, &Event::Ping)?;
    let content_start = w.len();
    let content_len;
    match &plan.content {
        Content::Text(t) => {
            content_len = t.chunks.len();
            for r in &t.chunks {
                let text = t.text.get(r.clone()).unwrap_or("");
                emit(
                    &mut w,
                    &Event::ContentBlockDelta {
                        index: 0,
                        delta: BlockDelta::TextDelta { text },
                    },
                )?;
            }
        }
        Content::Tool(t) => {
            content_len = t.fragments.len();
            for r in &t.fragments {
                let partial_json = t.arguments.get(r.clone()).unwrap_or("");
                emit(
                    &mut w,
                    &Event::ContentBlockDelta {
                        index: 0,
                        delta: BlockDelta::InputJsonDelta { partial_json },
                    },
                )?;
            }
        }
    }
    emit(&mut w, &Event::ContentBlockStop { index: 0 })?;
    emit(
        &mut w,
        &Event::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: stop_reason(&plan.content),
                stop_sequence: None,
            },
            usage: (!plan.omit_usage).then_some(OutputUsage {
                output_tokens: plan.usage.output,
            }),
        },
    )?;
    emit(&mut w, &Event::MessageStop)?;
    Ok(Frames {
        frames: w.finish(),
        content_start,
        content_len,
    })
}
