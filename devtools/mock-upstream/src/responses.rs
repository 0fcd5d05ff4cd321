//! OpenAI Responses rendering (`POST /v1/responses`; borrowed serde structs,
//! the request's echoed settings the only `Value`s).

use serde::Serialize;
use serde_json::{json, Value};

use crate::plan::{Content, ReplyPlan, Usage};
use crate::server::{Ctx, Frames, CREATED};
use crate::sse::EventWriter;

/// The request settings a Response object repeats, copied out of the request
/// before it is recorded (absent or `null`: OpenAI's defaults).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Echo {
    instructions: Value,
    max_output_tokens: Value,
    parallel_tool_calls: Value,
    previous_response_id: Value,
    store: Value,
    temperature: Value,
    text: Value,
    tool_choice: Value,
    tools: Value,
    top_p: Value,
    metadata: Value,
}

impl Echo {
    pub(crate) fn read(body: &Value) -> Echo {
        let get = |key: &str, default: fn() -> Value| {
            body.get(key)
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or_else(default)
        };
        Echo {
            instructions: get("instructions", || Value::Null),
            max_output_tokens: get("max_output_tokens", || Value::Null),
            parallel_tool_calls: get("parallel_tool_calls", || Value::Bool(true)),
            previous_response_id: get("previous_response_id", || Value::Null),
            store: get("store", || Value::Bool(true)),
            temperature: get("temperature", || json!(1.0)),
            text: get("text", || json!({"format": {"type": "text"}})),
            tool_choice: get("tool_choice", || json!("auto")),
            tools: get("tools", || json!([])),
            top_p: get("top_p", || json!(1.0)),
            metadata: get("metadata", || json!({})),
        }
    }
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<()>,
    incomplete_details: Option<()>,
    instructions: &'a Value,
    max_output_tokens: &'a Value,
    model: &'a str,
    output: &'a [Item<'a>],
    parallel_tool_calls: &'a Value,
    previous_response_id: &'a Value,
    store: &'a Value,
    temperature: &'a Value,
    text: &'a Value,
    tool_choice: &'a Value,
    tools: &'a Value,
    top_p: &'a Value,
    metadata: &'a Value,
    /// Absent (non-streamed `omit_usage`), `null` (in progress, or streamed
    /// `omit_usage`) or the numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<RsUsage>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Item<'a> {
    Message {
        id: &'a str,
        status: &'static str,
        role: &'static str,
        content: &'a [Part<'a>],
    },
    FunctionCall {
        id: &'a str,
        call_id: &'a str,
        name: &'a str,
        arguments: &'a str,
        status: &'static str,
    },
}

/// An `output_text` content part.
#[derive(Serialize)]
struct Part<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: [(); 0],
}

impl<'a> Part<'a> {
    fn text(text: &'a str) -> Self {
        Part {
            kind: "output_text",
            text,
            annotations: [],
        }
    }
}

#[derive(Serialize)]
struct RsUsage {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct OutputDetails {
    reasoning_tokens: u64,
}

impl RsUsage {
    /// Like chat completions: cached tokens are part of `input_tokens`,
    /// reasoning tokens part of `output_tokens`.
    fn new(u: &Usage) -> Self {
        let input = u.input + u.cache_read;
        RsUsage {
            input_tokens: input,
            input_tokens_details: InputDetails {
                cached_tokens: u.cache_read,
            },
            output_tokens: u.output,
            output_tokens_details: OutputDetails {
                reasoning_tokens: u.reasoning,
            },
            total_tokens: input + u.output,
        }
    }
}

/// Stream events; each carries its `sequence_number` (0, 1, ...).
#[derive(Serialize)]
#[serde(tag = "type")]
enum Event<'a> {
    #[serde(rename = "response.created")]
    Created {
        response: &'a ResponseOut<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.in_progress")]
    InProgress {
        response: &'a ResponseOut<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        output_index: u32,
        item: &'a Item<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        part: &'a Part<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        delta: &'a str,
        logprobs: [(); 0],
        sequence_number: u64,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        text: &'a str,
        logprobs: [(); 0],
        sequence_number: u64,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        part: &'a Part<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        item_id: &'a str,
        output_index: u32,
        delta: &'a str,
        sequence_number: u64,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        item_id: &'a str,
        output_index: u32,
        arguments: &'a str,
        sequence_number: u64,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        output_index: u32,
        item: &'a Item<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.completed")]
    Completed {
        response: &'a ResponseOut<'a>,
        sequence_number: u64,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "response.created",
            Event::InProgress { .. } => "response.in_progress",
            Event::OutputItemAdded { .. } => "response.output_item.added",
            Event::ContentPartAdded { .. } => "response.content_part.added",
            Event::OutputTextDelta { .. } => "response.output_text.delta",
            Event::OutputTextDone { .. } => "response.output_text.done",
            Event::ContentPartDone { .. } => "response.content_part.done",
            Event::FunctionCallArgumentsDelta { .. } => "response.function_call_arguments.delta",
            Event::FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            Event::OutputItemDone { .. } => "response.output_item.done",
            Event::Completed { .. } => "response.completed",
        }
    }
}

/// The ids of request `N`.
struct Ids {
    response: String,
    message: String,
    function_call: String,
    call: String,
}

impl Ids {
    fn new(n: u64) -> Self {
        Ids {
            response: format!("resp_mock_{n}"),
            message: format!("msg_mock_{n}"),
            function_call: format!("fc_mock_{n}"),
            call: format!("call_mock_{n}"),
        }
    }
}

/// What every Response object of one request shares.
struct Shape<'a> {
    ids: Ids,
    model: &'a str,
    echo: &'a Echo,
}

impl<'a> Shape<'a> {
    fn response<'s>(
        &'s self,
        status: &'static str,
        output: &'s [Item<'s>],
        usage: Option<Option<RsUsage>>,
    ) -> ResponseOut<'s> {
        let e = self.echo;
        ResponseOut {
            id: &self.ids.response,
            object: "response",
            created_at: CREATED,
            status,
            error: None,
            incomplete_details: None,
            instructions: &e.instructions,
            max_output_tokens: &e.max_output_tokens,
            model: self.model,
            output,
            parallel_tool_calls: &e.parallel_tool_calls,
            previous_response_id: &e.previous_response_id,
            store: &e.store,
            temperature: &e.temperature,
            text: &e.text,
            tool_choice: &e.tool_choice,
            tools: &e.tools,
            top_p: &e.top_p,
            metadata: &e.metadata,
            usage,
        }
    }

    /// The output item for `content`: as first announced (`done` false:
    /// no content yet, `in_progress`) or finished (`parts` its content).
    fn item<'s>(&'s self, content: &'s Content, parts: &'s [Part<'s>], done: bool) -> Item<'s> {
        let status = if done { "completed" } else { "in_progress" };
        match content {
            Content::Text(_) => Item::Message {
                id: &self.ids.message,
                status,
                role: "assistant",
                content: if done { parts } else { &[] },
            },
            Content::Tool(t) => Item::FunctionCall {
                id: &self.ids.function_call,
                call_id: &self.ids.call,
                name: &t.name,
                arguments: if done { &t.arguments } else { "" },
                status,
            },
        }
    }
}

fn with_shape<T>(ctx: &Ctx<'_>, f: impl FnOnce(&Shape<'_>) -> T) -> T {
    let default;
    let echo = match ctx.echo {
        Some(echo) => echo,
        None => {
            default = Echo::read(&Value::Null);
            &default
        }
    };
    f(&Shape {
        ids: Ids::new(ctx.n),
        model: ctx.model,
        echo,
    })
}

fn reply_text(content: &Content) -> &str {
    match content {
        Content::Text(t) => &t.text,
        Content::Tool(_) => "",
    }
}

/// Non-streamed Response object.
pub(crate) fn response(ctx: &Ctx<'_>, plan: &ReplyPlan) -> serde_json::Result<Vec<u8>> {
    with_shape(ctx, |shape| {
        let parts = [Part::text(reply_text(&plan.content))];
        let item = shape.item(&plan.content, &parts, true);
        let usage = (!plan.omit_usage).then(|| Some(RsUsage::new(&plan.usage)));
        let body = shape.response("completed", std::slice::from_ref(&item), usage);
        let mut out = Vec::with_capacity(1024);
        serde_json::to_writer(&mut out, &body)?;
        Ok(out)
    })
}

/// Writes events with consecutive sequence numbers.
struct Seq {
    w: EventWriter,
    next: u64,
}

impl Seq {
    fn emit<'a>(&mut self, make: impl FnOnce(u64) -> Event<'a>) -> serde_json::Result<()> {
        let event = make(self.next);
        self.next += 1;
        self.w.event(Some(event.name()), &event)
    }
}

/// Streamed events: created, in_progress, the output item's events (the
/// deltas are the content frames), completed with usage. No `[DONE]`.
pub(crate) fn stream(ctx: &Ctx<'_>, plan: &ReplyPlan) -> serde_json::Result<Frames> {
    with_shape(ctx, |shape| {
        let mut s = Seq {
            w: EventWriter::new(),
            next: 0,
        };
        let started = shape.response("in_progress", &[], Some(None));
        s.emit(|sequence_number| Event::Created {
            response: &started,
            sequence_number,
        })?;
        s.emit(|sequence_number| Event::InProgress {
            response: &started,
            sequence_number,
        })?;
        let added = shape.item(&plan.content, &[], false);
        s.emit(|sequence_number| Event::OutputItemAdded {
            output_index: 0,
            item: &added,
            sequence_number,
        })?;
        let parts = [Part::text(reply_text(&plan.content))];
        let (content_start, content_len) = match &plan.content {
            Content::Text(t) => text_events(&mut s, &shape.ids.message, t)?,
            Content::Tool(t) => {
                let item_id = shape.ids.function_call.as_str();
                let start = s.w.len();
                for r in &t.fragments {
                    let delta = t.arguments.get(r.clone()).unwrap_or("");
                    s.emit(|sequence_number| Event::FunctionCallArgumentsDelta {
                        item_id,
                        output_index: 0,
                        delta,
                        sequence_number,
                    })?;
                }
                s.emit(|sequence_number| Event::FunctionCallArgumentsDone {
                    item_id,
                    output_index: 0,
                    arguments: &t.arguments,
                    sequence_number,
                })?;
                (start, t.fragments.len())
            }
        };
        let done = shape.item(&plan.content, &parts, true);
        s.emit(|sequence_number| Event::OutputItemDone {
            output_index: 0,
            item: &done,
            sequence_number,
        })?;
        // Responses streams always report usage at the end (no include_usage).
        let usage = Some((!plan.omit_usage).then(|| RsUsage::new(&plan.usage)));
        let completed = shape.response("completed", std::slice::from_ref(&done), usage);
        s.emit(|sequence_number| Event::Completed {
            response: &completed,
            sequence_number,
        })?;
        Ok(Frames {
            frames: s.w.finish(),
            content_start,
            content_len,
        })
    })
}

/// content_part.added, one output_text.delta per word chunk, output_text.done,
/// content_part.done; returns where the deltas sit and how many there are.
fn text_events(
    s: &mut Seq,
    item_id: &str,
    t: &crate::plan::TextPlan,
) -> serde_json::Result<(usize, usize)> {
    let empty = Part::text("");
    s.emit(|sequence_number| Event::ContentPartAdded {
        item_id,
        output_index: 0,
        content_index: 0,
        part: &empty,
        sequence_number,
    })?;
    let start = s.w.len();
    for r in &t.chunks {
        let delta = t.text.get(r.clone()).unwrap_or("");
        s.emit(|sequence_number| Event::OutputTextDelta {
            item_id,
            output_index: 0,
            content_index: 0,
            delta,
            logprobs: [],
            sequence_number,
        })?;
    }
    s.emit(|sequence_number| Event::OutputTextDone {
        item_id,
        output_index: 0,
        content_index: 0,
        text: &t.text,
        logprobs: [],
        sequence_number,
    })?;
    let full = Part::text(&t.text);
    s.emit(|sequence_number| Event::ContentPartDone {
        item_id,
        output_index: 0,
        content_index: 0,
        part: &full,
        sequence_number,
    })?;
    Ok((start, t.chunks.len()))
}
