//! The streaming relay: forwards an upstream SSE stream to the client event
//! by event as it arrives, translating between APIs when needed, while
//! metering usage. Dropping the relay (client gone) drops the upstream
//! connection, which cancels the upstream call, and still emits the event.

use crate::meter::{cost_json, RequestMeter};
use crate::upstream::{describe, UpstreamStream};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use tollgate_core::{ApiSurface, Escaped};
use tollgate_translate::sse::{encode_event, SseDecoder, SseEvent};
use tollgate_translate::stream::{AnthropicToOpenAiStream, OpenAiToAnthropicStream};
use tollgate_translate::usage::{self as tr_usage, AnthropicStreamUsage};

/// Largest single upstream stream event held while it arrives: an upstream
/// that never ends an event ends its stream instead of growing the buffer.
const MAX_STREAM_EVENT: usize = 8 << 20;

/// What the relay reads from an OpenAI stream chunk, borrowed from it.
#[derive(serde::Deserialize)]
struct ChunkProbe<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceProbe<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    /// Present at all (even `null`) marks an error chunk.
    #[serde(borrow, default, deserialize_with = "crate::dispatch::present")]
    error: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    delta: Option<DeltaProbe<'a>>,
}

#[derive(serde::Deserialize)]
struct DeltaProbe<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallProbe<'a>>>,
}

#[derive(serde::Deserialize)]
struct ToolCallProbe<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionProbe<'a>>,
}

#[derive(serde::Deserialize)]
struct FunctionProbe<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

enum Mode {
    /// OpenAI → OpenAI: forward events unchanged, except the usage-only
    /// chunk the gateway asked for when the client did not.
    OpenAiPassthrough {
        client_wants_usage: bool,
    },
    AnthropicPassthrough,
    AnthropicToOpenAi(Box<AnthropicToOpenAiStream>),
    OpenAiToAnthropic(Box<OpenAiToAnthropicStream>),
}

pub struct Relay {
    client_api: ApiSurface,
    upstream_api: ApiSurface,
    first: Option<Bytes>,
    upstream: UpstreamStream,
    decoder: SseDecoder,
    mode: Mode,
    anthropic_usage: AnthropicStreamUsage,
    out: BytesMut,
    meter: RequestMeter,
    done: bool,
    /// The upstream sent its closing event (`[DONE]`/finish_reason, or
    /// `message_stop`/stop_reason); without it the stream was truncated.
    completed: bool,
    /// The upstream reported an error inside the stream.
    upstream_error: bool,
}

impl Relay {
    pub fn new(
        client_api: ApiSurface,
        upstream_api: ApiSurface,
        include_usage: bool,
        first: Bytes,
        upstream: UpstreamStream,
        meter: RequestMeter,
    ) -> Relay {
        let client_model = meter.model_requested.clone();
        let mode = match (client_api, upstream_api) {
            (ApiSurface::Openai, ApiSurface::Openai) => Mode::OpenAiPassthrough {
                client_wants_usage: include_usage,
            },
            (ApiSurface::Anthropic, ApiSurface::Anthropic) => Mode::AnthropicPassthrough,
            (ApiSurface::Openai, ApiSurface::Anthropic) => Mode::AnthropicToOpenAi(Box::new(
                AnthropicToOpenAiStream::new(&client_model, include_usage),
            )),
            (ApiSurface::Anthropic, ApiSurface::Openai) => {
                Mode::OpenAiToAnthropic(Box::new(OpenAiToAnthropicStream::new(&client_model)))
            }
        };
        Relay {
            client_api,
            upstream_api,
            first: Some(first),
            upstream,
            decoder: SseDecoder::new(),
            mode,
            anthropic_usage: AnthropicStreamUsage::default(),
            out: BytesMut::new(),
            meter,
            done: false,
            completed: false,
            upstream_error: false,
        }
    }

    fn process_chunk(&mut self, chunk: &[u8]) {
        for event in self.decoder.push(chunk) {
            self.process_event(event);
        }
        if self.decoder.buffered() > MAX_STREAM_EVENT && !self.done {
            self.done = true;
            self.fail("an upstream stream event grew past the size limit");
        }
    }

    fn process_event(&mut self, event: SseEvent) {
        match self.upstream_api {
            ApiSurface::Openai => self.process_openai_event(event),
            ApiSurface::Anthropic => self.process_anthropic_event(event),
        }
    }

    fn process_openai_event(&mut self, event: SseEvent) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.completed = true;
            match &mut self.mode {
                Mode::OpenAiToAnthropic(translator) => {
                    let events = translator.finish();
                    self.write_anthropic(events);
                }
                _ => self.out.extend_from_slice(&event.raw),
            }
            return;
        }
        if let Mode::OpenAiPassthrough { client_wants_usage } = self.mode {
            if self.openai_passthrough_fast(&event, client_wants_usage) {
                return;
            }
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            // Garbage is never forwarded: it would break the client's parser.
            tracing::warn!("skipping an upstream stream event that is not JSON");
            return;
        };
        if chunk.get("error").is_some() {
            self.upstream_error = true;
        }
        let finished = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| {
                choices
                    .iter()
                    .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
            });
        if finished {
            self.completed = true;
        }
        if let Some(usage) = tr_usage::openai_chunk_usage(&chunk) {
            self.meter.reported = Some(usage);
        }
        let mut text = String::new();
        tr_usage::openai_chunk_text(&chunk, &mut text);
        self.meter.output_text.push_str(&text);
        match &mut self.mode {
            Mode::OpenAiPassthrough { client_wants_usage } => {
                let has_usage = chunk.get("usage").is_some_and(Value::is_object);
                if *client_wants_usage && has_usage {
                    let mut chunk = chunk;
                    self.add_cost(&mut chunk);
                    self.out
                        .extend_from_slice(&encode_event(None, &chunk.to_string()));
                } else if *client_wants_usage || !tr_usage::is_usage_only_chunk(&chunk) {
                    self.out.extend_from_slice(&event.raw);
                }
            }
            Mode::OpenAiToAnthropic(translator) => {
                let events = translator.push(&chunk);
                self.write_anthropic(events);
            }
            _ => {}
        }
    }

    /// OpenAI → OpenAI, the usual stream: read the chunk's few fields the
    /// relay needs without building it as a JSON value. False when the chunk
    /// has an unexpected shape (the general path then handles it).
    fn openai_passthrough_fast(&mut self, event: &SseEvent, client_wants_usage: bool) -> bool {
        let Ok(chunk) = serde_json::from_str::<ChunkProbe>(event.data.trim()) else {
            return false;
        };
        if chunk.error.is_some() {
            self.upstream_error = true;
        }
        let choices = chunk.choices.as_deref().unwrap_or_default();
        if choices.iter().any(|c| c.finish_reason.is_some()) {
            self.completed = true;
        }
        let usage = chunk
            .usage
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
        if let Some(counts) = usage.as_ref().and_then(tr_usage::openai_usage) {
            self.meter.reported = Some(counts);
        }
        for delta in choices.iter().filter_map(|c| c.delta.as_ref()) {
            let text = &mut self.meter.output_text;
            for part in [&delta.content, &delta.refusal, &delta.reasoning_content]
                .into_iter()
                .flatten()
            {
                text.push_str(part);
            }
            for function in delta
                .tool_calls
                .iter()
                .flatten()
                .filter_map(|call| call.function.as_ref())
            {
                for part in [&function.name, &function.arguments].into_iter().flatten() {
                    text.push_str(part);
                }
            }
        }
        let has_usage = usage.as_ref().is_some_and(Value::is_object);
        if client_wants_usage && has_usage {
            // Once per stream: the usage chunk gets the request's cost.
            let Ok(mut full) = serde_json::from_str::<Value>(event.data.trim()) else {
                return false;
            };
            self.add_cost(&mut full);
            self.out
                .extend_from_slice(&encode_event(None, &full.to_string()));
        } else if client_wants_usage || !(has_usage && choices.is_empty()) {
            self.out.extend_from_slice(&event.raw);
        }
        true
    }

    fn process_anthropic_event(&mut self, event: SseEvent) {
        let parsed = serde_json::from_str::<Value>(&event.data).ok();
        let event_type = event
            .event
            .clone()
            .or_else(|| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get("type"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let Some(data) = &parsed else {
            tracing::warn!("skipping an upstream stream event that is not JSON");
            return;
        };
        match event_type.as_str() {
            "message_stop" => self.completed = true,
            "error" => self.upstream_error = true,
            _ => {}
        }
        {
            self.anthropic_usage.observe(&event_type, data);
            let mut text = String::new();
            tr_usage::anthropic_event_text(&event_type, data, &mut text);
            self.meter.output_text.push_str(&text);
            if event_type == "message_delta" && data.get("usage").is_some() {
                // message_delta carries the final cumulative counts.
                self.meter.reported = self.anthropic_usage.counts();
            }
        }
        match &mut self.mode {
            Mode::AnthropicPassthrough
                if event_type == "message_delta" && data.get("usage").is_some() =>
            {
                let mut data = data.clone();
                self.add_cost(&mut data);
                self.out
                    .extend_from_slice(&encode_event(Some("message_delta"), &data.to_string()));
            }
            Mode::AnthropicPassthrough => self.out.extend_from_slice(&event.raw),
            Mode::AnthropicToOpenAi(translator) => {
                let chunks = translator.push(&event_type, data);
                self.write_openai(chunks);
            }
            _ => {}
        }
    }

    /// Put the request's cost next to the usage it is computed from.
    fn add_cost(&self, carrier: &mut Value) {
        if let (Some(cost), Some(usage)) = (
            self.meter.reported_cost(),
            carrier.get_mut("usage").and_then(Value::as_object_mut),
        ) {
            usage.insert("tollgate_cost".into(), cost_json(&cost));
        }
    }

    fn write_openai(&mut self, chunks: Vec<Value>) {
        for mut chunk in chunks {
            if chunk.get("usage").is_some_and(Value::is_object) {
                self.add_cost(&mut chunk);
            }
            let data = chunk.to_string();
            self.out.extend_from_slice(&encode_event(None, &data));
        }
    }

    fn write_anthropic(&mut self, events: Vec<(&'static str, Value)>) {
        for (name, mut data) in events {
            if name == "message_delta" {
                self.add_cost(&mut data);
            }
            self.out
                .extend_from_slice(&encode_event(Some(name), &data.to_string()));
        }
    }

    /// Upstream closed the connection: close the client's stream the way the
    /// upstream ended it — complete, with an error it reported, or truncated.
    fn end(&mut self) {
        if let Some(event) = self.decoder.finish() {
            self.process_event(event);
        }
        if self.upstream_error {
            // The error event has been relayed in the client's shape already.
            self.use_partial_anthropic_usage();
            self.meter.finish(502, Some("upstream_stream_error"), false);
            return;
        }
        if !self.completed {
            self.fail("the upstream stream ended before its final event");
            return;
        }
        match &mut self.mode {
            Mode::AnthropicToOpenAi(translator) => {
                let chunks = translator.finish();
                self.write_openai(chunks);
                self.out.extend_from_slice(&encode_event(None, "[DONE]"));
            }
            Mode::OpenAiToAnthropic(translator) => {
                let events = translator.finish();
                self.write_anthropic(events);
            }
            _ => {}
        }
        if self.meter.reported.is_none() {
            self.use_partial_anthropic_usage();
        }
        self.meter.finish(200, None, false);
    }

    /// The upstream broke mid-stream: tell the client in its API's error shape.
    fn fail(&mut self, why: &str) {
        // The reason may quote what the upstream sent: escaped.
        tracing::warn!(error = %Escaped(why), "upstream stream failed mid-way");
        let message = "the upstream stream ended with an error";
        let bytes = match self.client_api {
            ApiSurface::Openai => encode_event(
                None,
                &json!({"error": {"message": message, "type": "api_error", "param": null, "code": "upstream_stream_error"}}).to_string(),
            ),
            ApiSurface::Anthropic => encode_event(
                Some("error"),
                &json!({"type": "error", "error": {"type": "api_error", "message": message}}).to_string(),
            ),
        };
        self.out.extend_from_slice(&bytes);
        self.use_partial_anthropic_usage();
        self.meter.finish(502, Some("upstream_stream_error"), false);
    }

    /// Anthropic reports input counts at the start and output at the end:
    /// keep the input counts when the end never came.
    fn use_partial_anthropic_usage(&mut self) {
        if self.meter.reported.is_none() {
            self.meter.partial_input = self.anthropic_usage.counts();
        }
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                this.meter.first_byte_sent();
                return Poll::Ready(Some(Ok(this.out.split().freeze())));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(first) = this.first.take() {
                this.process_chunk(&first);
                continue;
            }
            match Pin::new(&mut this.upstream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => this.process_chunk(&chunk),
                Poll::Ready(Some(Err(err))) => {
                    this.done = true;
                    this.fail(&describe(&err));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.end();
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Client went away before the end: bill what was streamed.
        self.use_partial_anthropic_usage();
        self.meter.finish(200, Some("client_disconnected"), true);
    }
}
