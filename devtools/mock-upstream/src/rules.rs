//! Scriptable behaviour: rules matched against each API request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::Content;

/// A tool call the mock answers with instead of text.
///
/// Serialized as `{"name": "...", "arguments": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Function / tool name.
    pub name: String,
    /// Arguments; should be a JSON object (sent as `input` on Anthropic and as the
    /// compact JSON string `arguments` on OpenAI).
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl ToolCall {
    /// A tool call with the given name and arguments object.
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        Self {
            name: name.into(),
            arguments,
        }
    }
}

/// What the mock does with a request matched by a [`Rule`].
///
/// JSON form (for `POST /__mock/rules`) is internally tagged by `type` in snake_case,
/// durations are integer milliseconds in fields suffixed `_ms`, e.g.
/// `{"type":"fail","status":429}`, `{"type":"delay","before_headers_ms":500}`,
/// `{"type":"reply","text":"hi","chunk_delay_ms":10}`, `{"type":"garbage"}`,
/// `{"type":"cut_stream","after_chunks":2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Answer with `status` and `body`; when `body` is `None`, the error shape of the
    /// API that was called, with an error type derived from the status.
    /// An out-of-range status becomes 500.
    Fail {
        /// HTTP status code.
        status: u16,
        /// Exact JSON body to send instead of the default error shape.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Value>,
    },
    /// Wait before sending the response headers, then answer with the default reply
    /// (later rules are not consulted).
    Delay {
        /// How long to wait before the headers.
        #[serde(
            rename = "before_headers_ms",
            alias = "before_headers",
            with = "millis"
        )]
        before_headers: Duration,
    },
    /// Answer successfully, with overrides.
    Reply {
        /// Reply text; `None` = the server's default reply.
        #[serde(default)]
        text: Option<String>,
        /// Answer with this tool call instead of text (takes precedence over `text`).
        #[serde(default)]
        tool_call: Option<ToolCall>,
        /// Leave usage out (see crate docs for the exact effect per API).
        #[serde(default)]
        omit_usage: bool,
        /// Cache-read tokens to report (OpenAI `cached_tokens`, Anthropic
        /// `cache_read_input_tokens`).
        #[serde(default)]
        cached_tokens: u64,
        /// Anthropic 5-minute cache-write tokens.
        #[serde(default)]
        cache_write_5m: u64,
        /// Anthropic 1-hour cache-write tokens.
        #[serde(default)]
        cache_write_1h: u64,
        /// Reasoning tokens to report: added to the completion count, and
        /// reported by OpenAI answers and streams as
        /// `completion_tokens_details.reasoning_tokens` (Anthropic has no
        /// such field: they are only in `output_tokens`).
        #[serde(default)]
        reasoning_tokens: u64,
        /// Report 0 for every usage number.
        #[serde(default)]
        zero_usage: bool,
        /// Delay between stream chunks; `None` = the server's default.
        #[serde(
            default,
            rename = "chunk_delay_ms",
            alias = "chunk_delay",
            with = "opt_millis",
            skip_serializing_if = "Option::is_none"
        )]
        chunk_delay: Option<Duration>,
    },
    /// 200 with a body that is not JSON; for streams, a single malformed SSE data line.
    Garbage,
    /// 200 `text/event-stream` with exactly this body (for a stream shape
    /// the renderers do not make), whatever the request asked for.
    Events {
        /// The SSE text sent as is.
        body: String,
    },
    /// Streaming: close the connection abruptly after `after_chunks` content chunks.
    /// Non-streaming: send 200 headers and part of the body, then close abruptly.
    CutStream {
        /// Number of content chunks (words / argument fragments) sent before the cut.
        after_chunks: usize,
    },
}

impl Default for Action {
    /// A plain successful reply with the server defaults.
    fn default() -> Self {
        Action::reply()
    }
}

impl Action {
    /// A plain successful reply with the server defaults.
    pub fn reply() -> Self {
        Action::Reply {
            text: None,
            tool_call: None,
            omit_usage: false,
            cached_tokens: 0,
            cache_write_5m: 0,
            cache_write_1h: 0,
            reasoning_tokens: 0,
            zero_usage: false,
            chunk_delay: None,
        }
    }

    /// A successful reply with the given text.
    pub fn reply_text(text: impl Into<String>) -> Self {
        let mut action = Action::reply();
        if let Action::Reply { text: t, .. } = &mut action {
            *t = Some(text.into());
        }
        action
    }

    /// A successful reply consisting of one tool call.
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        let mut action = Action::reply();
        if let Action::Reply { tool_call, .. } = &mut action {
            *tool_call = Some(ToolCall::new(name, arguments));
        }
        action
    }

    /// A failure with the API's default error body.
    pub fn fail(status: u16) -> Self {
        Action::Fail { status, body: None }
    }

    /// A failure with an exact body.
    pub fn fail_with(status: u16, body: Value) -> Self {
        Action::Fail {
            status,
            body: Some(body),
        }
    }

    /// Wait before headers, then answer normally.
    pub fn delay(before_headers: Duration) -> Self {
        Action::Delay { before_headers }
    }
}

/// A matcher plus an [`Action`]. Rules are evaluated in insertion order; the first
/// rule whose `api_key` and `model` match (a `None` matcher matches anything) and
/// whose `times` budget is not used up wins, and consumes one use.
///
/// Build with [`Rule::any`], [`Rule::for_key`] or [`Rule::for_model`], then chain
/// `.key()`, `.model()`, `.times()` and an action setter, e.g.
/// `Rule::for_model("m").times(1).fail(500)`.
///
/// JSON form: `{"api_key": "k"?, "model": "m"?, "times": 1?, "action": {...}?}`
/// (a missing action is a plain reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Match only requests with this API key (`Authorization: Bearer` or `x-api-key`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Match only requests whose body `model` equals this.
    #[serde(default)]
    pub model: Option<String>,
    /// `None` = forever; `Some(n)` = only the first `n` matching requests.
    #[serde(default)]
    pub times: Option<usize>,
    /// What to do.
    #[serde(default)]
    pub action: Action,
}

impl Rule {
    /// Matches every request; action is a plain reply until set.
    pub fn any() -> Self {
        Rule {
            api_key: None,
            model: None,
            times: None,
            action: Action::reply(),
        }
    }

    /// Matches requests carrying this API key.
    pub fn for_key(key: impl Into<String>) -> Self {
        Rule::any().key(key)
    }

    /// Matches requests for this model.
    pub fn for_model(model: impl Into<String>) -> Self {
        Rule::any().model(model)
    }

    /// Additionally require this API key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Additionally require this model.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Apply to the first `n` matching requests only.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// Same as `.times(1)`.
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// Set the action.
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// Fail with `status` and the API's default error body.
    pub fn fail(self, status: u16) -> Self {
        self.action(Action::fail(status))
    }

    /// Fail with `status` and an exact JSON body.
    pub fn fail_with(self, status: u16, body: Value) -> Self {
        self.action(Action::fail_with(status, body))
    }

    /// Wait before headers, then answer with the default reply.
    pub fn delay(self, before_headers: Duration) -> Self {
        self.action(Action::delay(before_headers))
    }

    /// Answer with a non-JSON body / malformed SSE line.
    pub fn garbage(self) -> Self {
        self.action(Action::Garbage)
    }

    /// Answer with exactly this SSE text as a 200 event stream.
    pub fn events(self, body: impl Into<String>) -> Self {
        self.action(Action::Events { body: body.into() })
    }

    /// Cut the stream after `after_chunks` content chunks.
    pub fn cut_stream(self, after_chunks: usize) -> Self {
        self.action(Action::CutStream { after_chunks })
    }

    /// Reply with this text (turns the action into a reply if it is not one).
    pub fn reply_text(mut self, text: impl Into<String>) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.text = Some(text.into());
        }
        self
    }

    /// Reply with a tool call (turns the action into a reply if it is not one).
    pub fn tool_call(mut self, name: impl Into<String>, arguments: Value) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.tool_call = Some(ToolCall::new(name, arguments));
        }
        self
    }

    /// Leave usage out of the reply.
    pub fn omit_usage(mut self) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.omit_usage = true;
        }
        self
    }

    /// Report every usage number as 0.
    pub fn zero_usage(mut self) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.zero_usage = true;
        }
        self
    }

    /// Report `n` cache-read tokens.
    pub fn cached_tokens(mut self, n: u64) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.cached_tokens = n;
        }
        self
    }

    /// Report Anthropic cache-write tokens (5-minute and 1-hour TTL).
    pub fn cache_write(mut self, five_min: u64, one_hour: u64) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.cache_write_5m = five_min;
            *r.cache_write_1h = one_hour;
        }
        self
    }

    /// Report `n` reasoning tokens (a part of the completion count).
    pub fn reasoning_tokens(mut self, n: u64) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.reasoning_tokens = n;
        }
        self
    }

    /// Delay between stream chunks for this rule.
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        if let Some(r) = self.reply_mut() {
            *r.chunk_delay = Some(delay);
        }
        self
    }

    /// Mutable view of the reply fields, converting the action into a reply first.
    fn reply_mut(&mut self) -> Option<ReplyMut<'_>> {
        if !matches!(self.action, Action::Reply { .. }) {
            self.action = Action::reply();
        }
        match &mut self.action {
            Action::Reply {
                text,
                tool_call,
                omit_usage,
                cached_tokens,
                cache_write_5m,
                cache_write_1h,
                reasoning_tokens,
                zero_usage,
                chunk_delay,
            } => Some(ReplyMut {
                text,
                tool_call,
                omit_usage,
                cached_tokens,
                cache_write_5m,
                cache_write_1h,
                reasoning_tokens,
                zero_usage,
                chunk_delay,
            }),
            _ => None,
        }
    }
}

struct ReplyMut<'a> {
    text: &'a mut Option<String>,
    tool_call: &'a mut Option<ToolCall>,
    omit_usage: &'a mut bool,
    cached_tokens: &'a mut u64,
    cache_write_5m: &'a mut u64,
    cache_write_1h: &'a mut u64,
    reasoning_tokens: &'a mut u64,
    zero_usage: &'a mut bool,
    chunk_delay: &'a mut Option<Duration>,
}

/// A rule as installed: its use counter and the reply content precomputed once.
pub(crate) struct RuleSlot {
    pub(crate) rule: Rule,
    used: AtomicUsize,
    /// Prepared reply content when the action is a reply with text or a tool call.
    pub(crate) content: Option<Content>,
}

impl RuleSlot {
    pub(crate) fn new(rule: Rule) -> Self {
        let content = match &rule.action {
            Action::Reply {
                tool_call: Some(tc),
                ..
            } => Some(Content::tool(tc)),
            Action::Reply {
                text: Some(text), ..
            } => Some(Content::text(text)),
            _ => None,
        };
        RuleSlot {
            rule,
            used: AtomicUsize::new(0),
            content,
        }
    }

    /// Whether the matchers accept the request (ignores the `times` budget).
    pub(crate) fn matches(&self, key: Option<&str>, model: Option<&str>) -> bool {
        let key_ok = self.rule.api_key.as_deref().is_none_or(|k| Some(k) == key);
        let model_ok = self.rule.model.as_deref().is_none_or(|m| Some(m) == model);
        key_ok && model_ok
    }

    /// Take one use from the budget; false when it is used up.
    pub(crate) fn try_consume(&self) -> bool {
        match self.rule.times {
            None => true,
            Some(n) => self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    (u < n).then_some(u + 1)
                })
                .is_ok(),
        }
    }
}

/// Serde for `Duration` as integer milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Serde for `Option<Duration>` as integer milliseconds or null.
mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(Duration::from_millis))
    }
}
