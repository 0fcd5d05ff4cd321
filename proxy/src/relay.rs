//! The streaming relay: forwards an upstream SSE stream to the client event
//! by event as it arrives, while metering usage; what each event becomes
//! (passed on, or translated) is the client API's `RelayEvents`. Dropping
//! the relay (client gone) drops the upstream connection, which cancels the
//! upstream call, and still emits the event.

use crate::api::StreamStart;
use crate::meter::{cost_json, RequestMeter};
use crate::upstream::{describe, UpstreamStream};
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde_json::Value;
use std::pin::Pin;
use std::task::{Context, Poll};
use tollgate_core::{Escaped, TokenCounts};
use tollgate_translate::sse::{SseDecoder, SseEvent};

/// Largest single upstream stream event held while it arrives: an upstream
/// that never ends an event ends its stream instead of growing the buffer.
const MAX_STREAM_EVENT: usize = 8 << 20;

/// One client API's handling of one upstream API's stream events.
pub trait RelayEvents: Send + Unpin + 'static {
    /// Read one upstream event, metering it and writing what the client gets.
    fn event(&mut self, event: SseEvent, relay: &mut RelayState);
    /// The upstream completed its stream: write the client's closing events.
    fn finish(&mut self, relay: &mut RelayState);
    /// The client API's error event, for a stream that broke off.
    fn error_event(&self) -> Bytes;
    /// Input counts reported before the stream broke off (Anthropic reports
    /// input at the start and output at the end).
    fn partial_input(&self) -> Option<TokenCounts> {
        None
    }
}

/// What event handlers read and write: the client's pending bytes, the
/// meter, and how the upstream ended.
pub struct RelayState {
    pub out: BytesMut,
    pub meter: RequestMeter,
    /// The upstream sent its closing event (`[DONE]`/finish_reason, or
    /// `message_stop`/stop_reason); without it the stream was truncated.
    pub completed: bool,
    /// The upstream reported an error inside the stream.
    pub upstream_error: bool,
}

impl RelayState {
    /// Put the request's cost next to the usage it is computed from.
    pub fn add_cost(&self, carrier: &mut Value) {
        if let (Some(cost), Some(usage)) = (
            self.meter.reported_cost(),
            carrier.get_mut("usage").and_then(Value::as_object_mut),
        ) {
            usage.insert("tollgate_cost".into(), cost_json(&cost));
        }
    }
}

pub struct Relay<E: RelayEvents> {
    first: Option<Bytes>,
    upstream: UpstreamStream,
    decoder: SseDecoder,
    events: E,
    state: RelayState,
    done: bool,
}

impl<E: RelayEvents> Relay<E> {
    pub fn new(events: E, first: Bytes, upstream: UpstreamStream, meter: RequestMeter) -> Self {
        Relay {
            first: Some(first),
            upstream,
            decoder: SseDecoder::new(),
            events,
            state: RelayState {
                out: BytesMut::new(),
                meter,
                completed: false,
                upstream_error: false,
            },
            done: false,
        }
    }

    fn process_chunk(&mut self, chunk: &[u8]) {
        for event in self.decoder.push(chunk) {
            self.events.event(event, &mut self.state);
        }
        if self.decoder.buffered() > MAX_STREAM_EVENT && !self.done {
            self.done = true;
            self.fail("an upstream stream event grew past the size limit");
        }
    }

    /// Upstream closed the connection: close the client's stream the way the
    /// upstream ended it — complete, with an error it reported, or truncated.
    fn end(&mut self) {
        if let Some(event) = self.decoder.finish() {
            self.events.event(event, &mut self.state);
        }
        if self.state.upstream_error {
            // The error event has been relayed in the client's shape already.
            self.use_partial_input();
            self.state
                .meter
                .finish(502, Some("upstream_stream_error"), false);
            return;
        }
        if !self.state.completed {
            self.fail("the upstream stream ended before its final event");
            return;
        }
        self.events.finish(&mut self.state);
        if self.state.meter.reported.is_none() {
            self.use_partial_input();
        }
        self.state.meter.finish(200, None, false);
    }

    /// The upstream broke mid-stream: tell the client in its API's error shape.
    fn fail(&mut self, why: &str) {
        // The reason may quote what the upstream sent: escaped.
        tracing::warn!(error = %Escaped(why), "upstream stream failed mid-way");
        let bytes = self.events.error_event();
        self.state.out.extend_from_slice(&bytes);
        self.use_partial_input();
        self.state
            .meter
            .finish(502, Some("upstream_stream_error"), false);
    }

    /// Keep the input counts reported when the end never came.
    fn use_partial_input(&mut self) {
        if self.state.meter.reported.is_none() {
            self.state.meter.partial_input = self.events.partial_input();
        }
    }
}

impl<E: RelayEvents> Stream for Relay<E> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if !this.state.out.is_empty() {
                this.state.meter.first_byte_sent();
                return Poll::Ready(Some(Ok(this.state.out.split().freeze())));
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

impl<E: RelayEvents> Drop for Relay<E> {
    fn drop(&mut self) {
        // Client went away before the end: bill what was streamed.
        self.use_partial_input();
        self.state
            .meter
            .finish(200, Some("client_disconnected"), true);
    }
}

/// The client's response body: `events` applied to the upstream stream.
pub fn body<E: RelayEvents>(events: E, stream: StreamStart, meter: RequestMeter) -> Body {
    Body::from_stream(Relay::new(events, stream.first, stream.rest, meter))
}
