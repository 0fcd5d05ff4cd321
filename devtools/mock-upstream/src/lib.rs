//! A scriptable fake upstream that speaks the OpenAI chat-completions and Responses
//! APIs and the Anthropic messages API on one HTTP/1.1 server, for gateway tests and
//! benchmarks. With the `tls` feature, [`MockUpstream::start_tls`] serves the
//! same API over HTTPS with HTTP/2 or HTTP/1.1 by ALPN.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tollgate_mock_upstream::{MockUpstream, Rule};
//! let mock = MockUpstream::start().await?;
//! mock.add_rule(Rule::for_key("bad-key").fail(401));
//! mock.add_rule(Rule::for_model("flaky").times(1).fail(500));
//! let base = mock.base_url(); // http://127.0.0.1:PORT/v1
//! # let _ = base; Ok(()) }
//! ```
//!
//! # Endpoints
//! * `POST /v1/chat/completions` (OpenAI), `POST /v1/messages` (Anthropic; requires an
//!   `anthropic-version` header and `max_tokens`, else 400 `invalid_request_error`),
//!   `POST /v1/responses` (OpenAI Responses: `input` a string or items, optional
//!   `instructions`; `previous_response_id` and `store` are accepted and recorded,
//!   nothing is stored),
//!   `POST /v1/embeddings` (OpenAI: `input` a string, strings, token ids or token-id
//!   arrays; `encoding_format` `float` or `base64`; `dimensions`, default 8),
//!   `GET /v1/models`.
//! * `POST /v1/messages/count_tokens` (Anthropic; requires `anthropic-version` and a
//!   `messages` array): `{"input_tokens": words}`, counted as `/v1/messages` counts its
//!   input (see Token accounting). Rules apply: `fail`, `delay` and `garbage` as on the
//!   other endpoints, `zero_usage` counts 0; other reply overrides are ignored.
//! * Control: `POST /__mock/rules` (a JSON [`Rule`]), `GET`/`DELETE /__mock/rules`,
//!   `GET`/`DELETE /__mock/requests`, `GET /__mock/stats`
//!   (`{"requests": N, "cancelled_streams": n}`).
//!
//! # Rules
//! Checked in insertion order for valid API requests (a 400 for a malformed request
//! does not use up a rule); the first rule whose `api_key`/`model` match and whose
//! `times` budget is left wins. No match = the default reply. See [`Action`] for
//! the behaviours; `Delay` answers with the default reply after the delay. Requests
//! are recorded before the action runs (so also while a delay is pending).
//!
//! # Ids and headers
//! Every API request (every endpoint, including invalid requests) takes the next number
//! `N` (1, 2, ...) from one counter. Ids: `chatcmpl-mock-N`, `call_mock_N`,
//! `msg_mock_N`, `toolu_mock_N`, `resp_mock_N`, `fc_mock_N`. Response header
//! `x-request-id: req_mock_N` (OpenAI, Responses) or `request-id: req_mock_N`
//! (Anthropic), on errors too; Responses errors have OpenAI's error shape.
//! `created` (Responses: `created_at`) is always `1700000000`. The response
//! `model` echoes the request's `model` (`""` when absent).
//!
//! # Token accounting
//! * `words` = whitespace-separated words (`split_whitespace`) in the text of all
//!   messages (string `content`, or `text` of parts/blocks with `"type":"text"`; other
//!   blocks such as images, tool_use and tool_result count 0), plus Anthropic
//!   `system` (string or text blocks). OpenAI system/developer messages are messages.
//!   Responses: `instructions` plus `input` — a string, or items: messages
//!   (`content` a string or `input_text`/`output_text` parts) and
//!   `function_call_output` items (`output` a string or `input_text` parts); other
//!   items and parts (images, function calls, reasoning) count 0.
//! * `completion` = words of the reply text, or for a tool call the number of
//!   8-character fragments of the compact JSON arguments string.
//! * OpenAI: `prompt_tokens = words + cached_tokens`, `completion_tokens =
//!   completion`, `total_tokens` = their sum, `prompt_tokens_details.cached_tokens =
//!   cached_tokens` (cache writes are not reported); with a rule's
//!   `reasoning_tokens` (> 0), `completion_tokens = completion + reasoning_tokens`
//!   and `completion_tokens_details.reasoning_tokens = reasoning_tokens`, in
//!   answers and in the stream's usage chunk.
//! * Responses: `input_tokens = words + cached_tokens`,
//!   `input_tokens_details.cached_tokens = cached_tokens`, `output_tokens =
//!   completion + reasoning_tokens`, `output_tokens_details.reasoning_tokens =
//!   reasoning_tokens` (always present, 0 without the option), `total_tokens` =
//!   their sum.
//! * Anthropic: `input_tokens = words`, `output_tokens = completion` (plus any
//!   `reasoning_tokens`, which Anthropic reports no other way),
//!   `cache_read_input_tokens = cached_tokens`, `cache_creation_input_tokens =
//!   cache_write_5m + cache_write_1h`, `cache_creation.ephemeral_5m_input_tokens` /
//!   `ephemeral_1h_input_tokens` as given. Streaming: `message_start` carries the
//!   input and cache numbers with `output_tokens: 1`; `message_delta.usage` is
//!   `{"output_tokens": completion}`.
//! * Embeddings: `prompt_tokens = total_tokens` = words of each string input plus
//!   the count of each token-id input; `embedding[j]` of input `i` is
//!   `((i + its tokens + j) % 16) / 16 - 0.5` (base64: those f32s, little-endian).
//!   Rules apply as for chat: `omit_usage`, `zero_usage`, `fail`, `delay`,
//!   `garbage`; `cut_stream` sends half the body and aborts.
//! * `zero_usage`: every number is 0 (including Anthropic's provisional
//!   `output_tokens` in `message_start`); usage objects are still present.
//! * `omit_usage`: OpenAI omits `usage` (non-stream) and never sends the usage chunk;
//!   Responses omits `usage` (non-stream) and sends `"usage": null` in
//!   `response.completed`;
//!   Anthropic omits `usage` (non-stream), and when streaming sends `message_start`
//!   with every usage number 0 and `message_delta` without `usage`.
//!
//! # Streaming
//! OpenAI (`"stream": true`): `data:` chunks — `{role:"assistant",content:""}`; (tool
//! call: one chunk with `tool_calls[{index:0,id,type:"function",function:{name,
//! arguments:""}}]`); one chunk per word (the word plus the whitespace after it, so
//! the deltas concatenate to the reply) or per argument fragment; an empty delta
//! with `finish_reason` (`stop` / `tool_calls`); if `stream_options.include_usage`
//! is true and usage is not omitted, a chunk with `choices: []` and `usage` (every
//! earlier chunk then has `"usage": null`, as OpenAI does); `data: [DONE]`.
//! Anthropic: `message_start`, `content_block_start`, `ping`, one
//! `content_block_delta` per word / fragment, `content_block_stop`, `message_delta`,
//! `message_stop`.
//! Responses (`"stream": true`): `event: TYPE` / `data: JSON` events, each with
//! `type` and `sequence_number` (0, 1, ...): `response.created` and
//! `response.in_progress` (the Response with `status: "in_progress"`, empty `output`,
//! `usage: null`); for text `response.output_item.added` (message, no content),
//! `response.content_part.added` (empty `output_text`), one
//! `response.output_text.delta` per word, `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done`; for a tool call
//! `response.output_item.added` (`function_call`, `arguments: ""`), one
//! `response.function_call_arguments.delta` per fragment,
//! `response.function_call_arguments.done`, `response.output_item.done`; then
//! `response.completed` with the whole Response and its usage (there is no
//! `include_usage` option; no `[DONE]`). The deltas are the content chunks a
//! `cut_stream` counts; garbage is `event: response.created` with non-JSON data.
//! Non-streamed, the Response object: `output` one `message` (`output_text` part
//! with `annotations: []`) or one `function_call` (`call_id: call_mock_N`), status
//! `completed`, plus the request's settings echoed (`instructions`, `tools`,
//! `tool_choice`, `parallel_tool_calls`, `temperature`, `top_p`,
//! `max_output_tokens`, `previous_response_id`, `store`, `text`, `metadata`;
//! OpenAI's defaults when absent), `error` and `incomplete_details` `null`.
//!
//! Each event is a separate body frame; the chunk delay is slept
//! between frames. A stream dropped by the client before its end increments
//! [`MockUpstream::cancelled_streams`] (a cut or a shutdown does not).

#![warn(missing_docs)]

mod anthropic;
mod embeddings;
mod openai;
mod plan;
mod responses;
mod rules;
mod server;
mod sse;
#[cfg(feature = "tls")]
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use rules::{Action, Rule, ToolCall};

use plan::Content;
use rules::RuleSlot;

/// The reply text used when no rule overrides it.
pub const DEFAULT_REPLY: &str = "Hello from the mock upstream.";

/// Server settings for [`MockUpstream::start_with`].
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Keep a copy of every API request (turn off for benchmarks: no lock then).
    pub record: bool,
    /// Address to listen on; default `127.0.0.1:0` (a free port).
    pub bind: SocketAddr,
    /// Default reply text; default [`DEFAULT_REPLY`].
    pub reply: String,
    /// Default delay between stream frames; default zero.
    pub chunk_delay: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            record: true,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            reply: DEFAULT_REPLY.to_owned(),
            chunk_delay: Duration::ZERO,
        }
    }
}

/// One API request as received (`POST /v1/chat/completions`, `/v1/responses`,
/// `/v1/messages`, `/v1/messages/count_tokens` or `/v1/embeddings`;
/// models and control requests are not recorded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Request path, e.g. `/v1/messages`.
    pub path: String,
    /// The query string, if any (e.g. `beta=true`).
    #[serde(default)]
    pub query: Option<String>,
    /// From `Authorization: Bearer X` (preferred) or `x-api-key: X`.
    pub api_key: Option<String>,
    /// All headers, names lowercase, in received order.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body; a non-JSON body is kept as a JSON string of its text.
    pub body: serde_json::Value,
    /// The body's bytes exactly as received (not part of the JSON form).
    #[serde(skip)]
    pub raw_body: Vec<u8>,
    /// The HTTP version it came in, e.g. `HTTP/1.1` or `HTTP/2.0`.
    #[serde(default)]
    pub version: String,
}

impl RecordedRequest {
    /// First value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// State shared by the handlers.
pub(crate) struct Inner {
    pub(crate) record: bool,
    pub(crate) default_content: Content,
    pub(crate) chunk_delay: Duration,
    /// Source of the per-request number `N`.
    pub(crate) counter: AtomicU64,
    pub(crate) cancelled: AtomicUsize,
    /// Connections accepted so far.
    pub(crate) connections: AtomicUsize,
    /// Checked by streams on every frame (cheaper than polling the watch).
    pub(crate) shutdown: AtomicBool,
    pub(crate) shutdown_rx: watch::Receiver<bool>,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) rules: RwLock<Vec<Arc<RuleSlot>>>,
    /// Lets the hot path skip the rules lock entirely when there are none.
    has_rules: AtomicBool,
}

impl Inner {
    /// First matching rule with budget left, consuming one use of it.
    pub(crate) fn pick_rule(
        &self,
        key: Option<&str>,
        model: Option<&str>,
    ) -> Option<Arc<RuleSlot>> {
        if !self.has_rules.load(Ordering::Acquire) {
            return None;
        }
        self.rules
            .read()
            .iter()
            .find(|r| r.matches(key, model) && r.try_consume())
            .cloned()
    }

    pub(crate) fn add_rule(&self, rule: Rule) -> usize {
        let mut rules = self.rules.write();
        rules.push(Arc::new(RuleSlot::new(rule)));
        self.has_rules.store(true, Ordering::Release);
        rules.len()
    }

    pub(crate) fn clear_rules(&self) {
        let mut rules = self.rules.write();
        rules.clear();
        self.has_rules.store(false, Ordering::Release);
    }
}

/// A running mock server. Dropping it stops accepting connections, closes idle
/// keep-alive connections, aborts running streams and cuts short pending delays.
pub struct MockUpstream {
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    inner: Arc<Inner>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts on `127.0.0.1` with a free port, recording on, default reply.
    pub async fn start() -> std::io::Result<MockUpstream> {
        Self::start_with(MockOptions::default()).await
    }

    /// Starts with the given options. Must be called inside a Tokio runtime; the
    /// server runs as a spawned task until the returned value is dropped.
    pub async fn start_with(options: MockOptions) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(options.bind).await?;
        let addr = listener.local_addr()?;
        let (inner, shutdown_tx) = Self::state(&options);
        let counted = inner.clone();
        // Small SSE frames and small responses must not wait for Nagle.
        let listener = listener.tap_io(move |tcp| {
            let _ = tcp.set_nodelay(true);
            counted.connections.fetch_add(1, Ordering::Relaxed);
        });
        let app = server::router(inner.clone());
        let mut signal = inner.shutdown_rx.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                // Err means the sender is gone, which is a shutdown too.
                let _ = signal.wait_for(|down| *down).await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(MockUpstream {
            addr,
            scheme: "http",
            inner,
            shutdown_tx,
        })
    }

    /// Starts serving HTTPS with the given certificate chain and key, offering
    /// h2 and http/1.1 by ALPN (hyper-util's auto server); `base_url` is then
    /// `https://127.0.0.1:PORT/v1`.
    #[cfg(feature = "tls")]
    pub async fn start_tls(
        options: MockOptions,
        cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> std::io::Result<MockUpstream> {
        let acceptor = tls::acceptor(cert_chain, key)?;
        let listener = TcpListener::bind(options.bind).await?;
        let addr = listener.local_addr()?;
        let (inner, shutdown_tx) = Self::state(&options);
        let app = server::router(inner.clone());
        tokio::spawn(tls::serve(listener, acceptor, app, inner.clone()));
        Ok(MockUpstream {
            addr,
            scheme: "https",
            inner,
            shutdown_tx,
        })
    }

    fn state(options: &MockOptions) -> (Arc<Inner>, watch::Sender<bool>) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            record: options.record,
            default_content: Content::text(&options.reply),
            chunk_delay: options.chunk_delay,
            counter: AtomicU64::new(0),
            cancelled: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            shutdown_rx,
            requests: Mutex::new(Vec::new()),
            rules: RwLock::new(Vec::new()),
            has_rules: AtomicBool::new(false),
        });
        (inner, shutdown_tx)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1` (`https` when serving TLS), the base URL for both APIs.
    pub fn base_url(&self) -> String {
        format!("{}://{}/v1", self.scheme, self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Recorded API requests in arrival order (empty when recording is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests.lock().clone()
    }

    /// Forgets recorded requests.
    pub fn clear_requests(&self) {
        self.inner.requests.lock().clear();
    }

    /// Appends a rule; rules are evaluated in insertion order, first match wins.
    pub fn add_rule(&self, rule: Rule) {
        self.inner.add_rule(rule);
    }

    /// Removes all rules.
    pub fn clear_rules(&self) {
        self.inner.clear_rules();
    }

    /// Streams whose client went away before the end.
    pub fn cancelled_streams(&self) -> usize {
        self.inner.cancelled.load(Ordering::Relaxed)
    }

    /// Number of API requests received so far (the last `N` handed out).
    pub fn request_count(&self) -> u64 {
        self.inner.counter.load(Ordering::Relaxed)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
    }
}

#[cfg(test)]
mod tests;
