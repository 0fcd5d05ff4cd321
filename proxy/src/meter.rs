//! Per-request metering: collects what the usage event needs while the
//! request runs, then emits exactly one event when it ends (success, failure
//! or client disconnect) and updates metrics.

use crate::api::ClientApi;
use crate::config::EndUserPolicy;
use crate::gateway::{Candidate, Credential, Gateway, ProviderRuntime};
use crate::tokenize::{estimate_tokens, TextWindow};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::control::RateLimits;
use tollgate_core::pricing::{cost_with_tool_calls, AppliedPlan, Cost};
use tollgate_core::{
    AccessKeyId, AccountId, CredentialSource, EventId, Prices, ProviderKeyId, TokenCounts,
    ToolCallCharge, UsageEnvelope, UsageEvent, Usd,
};
use tollgate_eventlog::topics;
use tollgate_eventlog::LogRecord;

pub struct RequestMeter {
    gateway: Arc<Gateway>,
    pub event_id: EventId,
    /// This request's number within the gateway instance (its credit
    /// reservation's id); the event's sequence is assigned at emission.
    pub request_seq: u64,
    /// Whether admission reserved credit for this request.
    pub reserved: bool,
    started: Instant,
    started_at: DateTime<Utc>,
    account_id: AccountId,
    access_key_id: AccessKeyId,
    client_api: &'static dyn ClientApi,
    pub streamed: bool,
    pub model_requested: String,
    provider: Option<String>,
    /// The provider of the attempt that answered (the last one made).
    upstream_provider: Option<Arc<ProviderRuntime>>,
    model_served: Option<String>,
    credential_source: Option<CredentialSource>,
    provider_key_id: Option<ProviderKeyId>,
    prices: Prices,
    /// The account's price plan (None: the default terms), copied into the
    /// event so it is billed on the terms in force when it was made.
    pub plan: Option<AppliedPlan>,
    pub upstream_request_id: Option<String>,
    upstream_latency: Option<Duration>,
    ttft: Option<Duration>,
    pub attempts: u32,
    /// Built-in tool calls the answer reported, at the operator's prices.
    pub tool_calls: Vec<ToolCallCharge>,
    /// Usage as reported by the upstream, if it reported any.
    pub reported: Option<TokenCounts>,
    /// Input-side counts reported before a stream broke off (Anthropic
    /// reports input at the start); output is then estimated.
    pub partial_input: Option<TokenCounts>,
    /// The client's request body, kept (in memory only) for a token
    /// estimate if the upstream never reports usage; parsed only then.
    request: Option<Bytes>,
    /// Generated text seen so far, for the same fallback: its first
    /// `OUTPUT_WINDOW_BYTES` and the length of the rest. Never stored.
    pub output_text: TextWindow,
    /// Counts estimated ahead of `finish`, off the runtime's workers.
    estimated: Option<TokenCounts>,
    /// The key's limits, charged with the tokens used when the request ends.
    pub rate_limits: RateLimits,
    /// What the request costs, once it ended (the ledger debits exactly this).
    pub cost: Option<Cost>,
    /// The declared end user as `[privacy] end_user` stores it (`set_end_user`).
    end_user: Option<String>,
    /// The request's tags over its configuration's defaults.
    pub tags: BTreeMap<String, String>,
    finished: bool,
}

impl RequestMeter {
    pub fn start(
        gateway: Arc<Gateway>,
        started: Instant,
        account_id: AccountId,
        access_key_id: AccessKeyId,
        client_api: &'static dyn ClientApi,
    ) -> Self {
        gateway.metrics.in_flight.inc();
        let request_seq = gateway
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestMeter {
            gateway,
            event_id: EventId::generate(),
            request_seq,
            reserved: false,
            started,
            started_at: Utc::now(),
            account_id,
            access_key_id,
            client_api,
            streamed: false,
            model_requested: String::new(),
            provider: None,
            upstream_provider: None,
            model_served: None,
            credential_source: None,
            provider_key_id: None,
            prices: Prices::default(),
            plan: None,
            upstream_request_id: None,
            upstream_latency: None,
            ttft: None,
            attempts: 0,
            tool_calls: Vec::new(),
            reported: None,
            partial_input: None,
            request: None,
            output_text: TextWindow::output(),
            estimated: None,
            rate_limits: RateLimits::default(),
            cost: None,
            end_user: None,
            tags: BTreeMap::new(),
            finished: false,
        }
    }

    /// The end user the client declared, stored as `[privacy] end_user`
    /// says: as declared, pseudonymized (`h:` + HMAC-SHA256 hex under a
    /// key derived from the master key) or not at all.
    pub fn set_end_user(&mut self, declared: Option<&str>) {
        self.end_user = declared.and_then(|user| match self.gateway.config.privacy.end_user {
            EndUserPolicy::Keep => Some(user.to_owned()),
            EndUserPolicy::Hash => Some(self.gateway.control.end_user_hasher().hash(user)),
            EndUserPolicy::Drop => None,
        });
    }

    pub fn set_request(&mut self, request: Bytes) {
        self.request = Some(request);
    }

    /// Record the attempt about to be made (the last one wins).
    pub fn attempt(&mut self, candidate: &Candidate, credential: &Credential) {
        self.attempts += 1;
        self.provider = Some(candidate.provider.spec.id.clone());
        self.upstream_provider = Some(candidate.provider.clone());
        self.model_served = Some(candidate.upstream_model.clone());
        self.credential_source = Some(credential.source);
        self.provider_key_id = credential.key_id.clone();
        self.prices = candidate.prices;
    }

    pub fn upstream_responded(&mut self) {
        self.upstream_latency = Some(self.started.elapsed());
    }

    pub fn first_byte_sent(&mut self) {
        if self.ttft.is_none() {
            let ttft = self.started.elapsed();
            self.ttft = Some(ttft);
            self.gateway
                .metrics
                .time_to_first_token
                .with_label_values(&[self.client_api.surface().as_str()])
                .observe(ttft.as_secs_f64());
        }
    }

    /// The cost of the usage reported so far (for the final usage chunk).
    pub fn reported_cost(&self) -> Option<Cost> {
        self.reported.map(|tokens| {
            cost_with_tool_calls(
                &tokens,
                &self.prices,
                &self.tool_calls,
                self.credential_source,
                self.plan.as_ref(),
            )
        })
    }

    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// The provider of the last attempt made (the one that answered).
    pub fn upstream_provider(&self) -> Option<&ProviderRuntime> {
        self.upstream_provider.as_deref()
    }

    /// The operator's prices per built-in tool call.
    pub fn builtin_tool_prices(
        &self,
    ) -> &std::collections::BTreeMap<String, crate::config::ExactUsd> {
        &self.gateway.config.builtin_tool_prices
    }

    /// The client's request body as it came.
    pub fn request_body(&self) -> Option<&Bytes> {
        self.request.as_ref()
    }

    pub fn model_served(&self) -> Option<&str> {
        self.model_served.as_deref()
    }

    /// Token counts to bill: reported usage when present and plausible;
    /// otherwise a local estimate when anything was generated or succeeded.
    fn tokens(&self, status: u16) -> (TokenCounts, bool) {
        if !self.needs_estimate(status) {
            // Usage reported (and plausible), or a failure that generated nothing.
            return (self.reported.unwrap_or_default(), false);
        }
        let counts = self.estimated.unwrap_or_else(|| {
            estimate_counts(
                self.estimate_model(),
                self.client_api,
                self.request.as_ref(),
                self.partial_input,
                &self.output_text,
            )
        });
        (counts, true)
    }

    fn estimate_model(&self) -> &str {
        self.model_served
            .as_deref()
            .unwrap_or(self.model_requested.as_str())
    }

    /// Count the tokens of a local estimate on an estimate thread (waiting
    /// asynchronously for one), if ending with `status` will need one;
    /// `finish` then uses them. For a non-streamed answer, whose cost
    /// headers need the count before the response goes out.
    pub async fn estimate_off_runtime(&mut self, status: u16) {
        if self.estimated.is_some() || !self.needs_estimate(status) {
            return;
        }
        // Copies (the body is shared, the output is at most its window):
        // if the request is dropped meanwhile, its meter still has them.
        let model = self.estimate_model().to_owned();
        let (api, request, partial) = (self.client_api, self.request.clone(), self.partial_input);
        let output = self.output_text.clone();
        self.estimated = crate::estimate::run(move || {
            estimate_counts(&model, api, request.as_ref(), partial, &output)
        })
        .await;
    }

    /// Whether ending now would need a local token estimate.
    pub fn needs_estimate(&self, status: u16) -> bool {
        let reported_ok = self
            .reported
            .is_some_and(|r| !r.is_zero() || self.output_text.is_empty());
        !reported_ok && ((200..300).contains(&status) || !self.output_text.is_empty())
    }

    /// Move everything needed to finish into a new meter; this one is done.
    fn detach(&mut self) -> RequestMeter {
        self.finished = true;
        RequestMeter {
            gateway: self.gateway.clone(),
            event_id: self.event_id,
            request_seq: self.request_seq,
            reserved: self.reserved,
            started: self.started,
            started_at: self.started_at,
            account_id: self.account_id.clone(),
            access_key_id: self.access_key_id.clone(),
            client_api: self.client_api,
            streamed: self.streamed,
            model_requested: std::mem::take(&mut self.model_requested),
            provider: self.provider.take(),
            upstream_provider: self.upstream_provider.take(),
            model_served: self.model_served.take(),
            credential_source: self.credential_source,
            provider_key_id: self.provider_key_id.take(),
            prices: self.prices,
            plan: self.plan.take(),
            upstream_request_id: self.upstream_request_id.take(),
            upstream_latency: self.upstream_latency,
            ttft: self.ttft,
            attempts: self.attempts,
            tool_calls: std::mem::take(&mut self.tool_calls),
            reported: self.reported,
            partial_input: self.partial_input,
            request: self.request.take(),
            output_text: std::mem::take(&mut self.output_text),
            estimated: self.estimated.take(),
            rate_limits: self.rate_limits,
            cost: None,
            end_user: self.end_user.take(),
            tags: std::mem::take(&mut self.tags),
            finished: false,
        }
    }

    /// Emit the request's one usage event. Idempotent: later calls do nothing.
    /// When that needs a token estimate not made yet, the meter moves to an
    /// estimate thread, which emits the event (nobody waits on it: a
    /// stream's end, a disconnect, an error).
    pub fn finish(&mut self, status: u16, error_kind: Option<&str>, client_disconnected: bool) {
        if self.finished {
            return;
        }
        if self.estimated.is_none() && self.needs_estimate(status) {
            crate::estimate::spawn_finish(DeferredFinish {
                meter: Some(self.detach()),
                status,
                error_kind: error_kind.map(str::to_owned),
                client_disconnected,
            });
            return;
        }
        self.finish_now(status, error_kind, client_disconnected);
    }

    fn finish_now(&mut self, status: u16, error_kind: Option<&str>, client_disconnected: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        let metrics = &self.gateway.metrics;
        metrics.in_flight.dec();
        let latency = self.started.elapsed();
        let (tokens, tokens_estimated) = self.tokens(status);
        self.cost = Some(cost_with_tool_calls(
            &tokens,
            &self.prices,
            &self.tool_calls,
            self.credential_source,
            self.plan.as_ref(),
        ));
        self.gateway
            .limiter
            .record_tokens(&self.access_key_id, self.rate_limits, tokens.total());

        let api = self.client_api.surface().as_str();
        let status_class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        metrics
            .requests
            .with_label_values(&[api, status_class])
            .inc();
        if let Some(kind) = error_kind {
            metrics.errors.with_label_values(&[kind]).inc();
        }
        metrics
            .request_duration
            .with_label_values(&[api, if self.streamed { "true" } else { "false" }])
            .observe(latency.as_secs_f64());
        for (class, n) in [
            ("input", tokens.input),
            ("cached_input", tokens.cached_input),
            ("cache_write_5m", tokens.cache_write_5m),
            ("cache_write_1h", tokens.cache_write_1h),
            ("output", tokens.output),
        ] {
            if n > 0 {
                metrics.tokens.with_label_values(&[class]).inc_by(n);
            }
        }

        let event = UsageEvent {
            event_id: self.event_id,
            started_at: self.started_at,
            finished_at: Utc::now(),
            account_id: self.account_id.clone(),
            access_key_id: self.access_key_id.clone(),
            client_api: self.client_api.surface(),
            endpoint: Some(self.client_api.event_endpoint()),
            provider: self.provider.clone(),
            model_requested: std::mem::take(&mut self.model_requested),
            model_served: self.model_served.clone(),
            credential_source: self.credential_source,
            provider_key_id: self.provider_key_id.take(),
            streamed: self.streamed,
            tokens,
            tokens_estimated,
            prices: self.prices,
            tool_calls: std::mem::take(&mut self.tool_calls),
            end_user: self.end_user.take(),
            tags: std::mem::take(&mut self.tags),
            upstream_request_id: self.upstream_request_id.take(),
            latency_us: latency.as_micros() as u64,
            ttft_us: self.ttft.map(|d| d.as_micros() as u64),
            upstream_latency_us: self.upstream_latency.map(|d| d.as_micros() as u64),
            status,
            error_kind: error_kind.map(str::to_owned),
            attempts: self.attempts,
            client_disconnected,
            plan: self.plan.clone(),
            instance_id: Some(self.gateway.instance_id.clone()),
            instance_seq: None,
        };
        self.output_text = TextWindow::default();
        self.request = None;
        let reservation = self.reserved.then_some(self.request_seq);
        emit_after_poll(&self.gateway, event, reservation);
    }
}

tokio::task_local! {
    /// Usage events finished while a client connection is being polled.
    static AFTER_POLL: std::cell::RefCell<Vec<PendingEvent>>;
}

struct PendingEvent {
    gateway: Arc<Gateway>,
    event: UsageEvent,
    reservation: Option<u64>,
}

/// Run one poll of a client connection, then emit the usage events of the
/// requests that finished during it. The poll has written their responses
/// by then, so serializing and logging an event is off the client's path
/// (a few microseconds per request, on the response's last byte).
pub(crate) fn poll_then_emit<T>(poll: impl FnOnce() -> T) -> T {
    thread_local! {
        // The queue's storage, kept between polls: a pending event is
        // ~0.5 KB, and allocating room for it on every request shows.
        static SPARE: std::cell::Cell<Vec<PendingEvent>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let queue = std::cell::RefCell::new(SPARE.take());
    let (result, mut pending) = AFTER_POLL.sync_scope(queue, || {
        let result = poll();
        (result, AFTER_POLL.with(std::cell::RefCell::take))
    });
    for pending in pending.drain(..) {
        emit(&pending.gateway, pending.event, pending.reservation);
    }
    // A burst's worth of room is not kept.
    if pending.capacity() <= 16 {
        SPARE.set(pending);
    }
    result
}

/// Emit after the current connection poll (see `poll_then_emit`), or now
/// when not inside one (a dropped connection, the estimate thread, tests).
fn emit_after_poll(gateway: &Arc<Gateway>, event: UsageEvent, reservation: Option<u64>) {
    let mut event = Some(event);
    let _ = AFTER_POLL.try_with(|queue| {
        if let (Ok(mut queue), Some(event)) = (queue.try_borrow_mut(), event.take()) {
            queue.push(PendingEvent {
                gateway: gateway.clone(),
                event,
                reservation,
            });
        }
    });
    if let Some(event) = event {
        emit(gateway, event, reservation);
    }
}

/// Token counts of a local estimate: the prompt's text (from the client's
/// body) and the output's, or only the output when the upstream reported
/// the input side before the stream broke off.
fn estimate_counts(
    model: &str,
    api: &dyn ClientApi,
    request: Option<&Bytes>,
    partial_input: Option<TokenCounts>,
    output: &TextWindow,
) -> TokenCounts {
    if let Some(partial) = partial_input.filter(|p| p.total_input() > 0) {
        return TokenCounts {
            output: output.estimate(model),
            // An estimate has no reasoning part to tell apart.
            reasoning: 0,
            ..partial
        };
    }
    let request = request.and_then(|raw| serde_json::from_slice::<Value>(raw).ok());
    let input_text = request
        .as_ref()
        .map(|req| api.request_text(req))
        .unwrap_or_default();
    let token_ids = request.as_ref().map_or(0, |req| api.request_token_ids(req));
    TokenCounts {
        input: estimate_tokens(model, &input_text) + token_ids,
        output: output.estimate(model),
        ..TokenCounts::default()
    }
}

/// A request's end whose token estimate runs on an estimate thread.
struct DeferredFinish {
    meter: Option<RequestMeter>,
    status: u16,
    error_kind: Option<String>,
    client_disconnected: bool,
}

impl crate::estimate::Finish for DeferredFinish {
    fn finish(mut self) {
        self.finish_here();
    }
}

impl DeferredFinish {
    fn finish_here(&mut self) {
        if let Some(mut meter) = self.meter.take() {
            meter.finish_now(
                self.status,
                self.error_kind.as_deref(),
                self.client_disconnected,
            );
        }
    }
}

impl Drop for DeferredFinish {
    fn drop(&mut self) {
        // Dropped before an estimate thread took it (the runtime is
        // shutting down): the event is still emitted, from here.
        self.finish_here();
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        // A handler future dropped mid-flight means the client went away.
        if !self.finished {
            self.finish(499, Some("client_disconnected"), true);
        }
    }
}

/// The serialized event ends with its `instance_seq`, written as `null`
/// by [`serialize_unsequenced`] and filled in by [`sequenced_payload`].
const UNSEQUENCED_TAIL: &[u8] = b"\"instance_seq\":null}}";

/// The event (with no sequence number yet) as JSON, written into a
/// per-thread buffer that keeps its size, so the ~1 KB payload is not grown
/// by repeated reallocation on every request.
fn serialize_unsequenced<R>(event: &UsageEvent, then: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        UsageEnvelope(event).write_json(&mut scratch);
        let result = then(&scratch);
        // A rare huge event must not pin its buffer to the thread.
        if scratch.capacity() > 16 * 1024 {
            *scratch = Vec::new();
        }
        result
    })
}

/// `unsequenced` with `seq` as its `instance_seq`, exactly as serde would
/// have written it; `None` if the payload does not end as expected.
fn sequenced_payload(unsequenced: &[u8], seq: u64) -> Option<Vec<u8>> {
    let head = unsequenced.strip_suffix(UNSEQUENCED_TAIL)?;
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(seq);
    let mut payload = Vec::with_capacity(unsequenced.len() + digits.len());
    payload.extend_from_slice(head);
    payload.extend_from_slice(b"\"instance_seq\":");
    payload.extend_from_slice(digits.as_bytes());
    payload.extend_from_slice(b"}}");
    Some(payload)
}

/// Hand the event to the log without blocking the response; if the queue is
/// full, wait for room on a background task rather than drop it.
fn emit(gateway: &Arc<Gateway>, event: UsageEvent, reservation: Option<u64>) {
    let key = event.account_id.to_string();
    // Shared from the start: the log keeps it for in-process readers.
    let mut event = Arc::new(event);
    // What the ledger will debit, priced before the order lock is taken.
    let cost = reservation.map(|_| tollgate_core::pricing::cost_of(&event).total());
    // Serialized before taking the order lock, which then only covers the
    // sequence number, the splice and the hand-off. Sequence numbers follow
    // the order events enter the log, so a balance update that covers
    // sequence N covers every event emitted before it.
    let (_order, seq, payload) = serialize_unsequenced(&event, |unsequenced| {
        let order = gateway.emit_order.lock();
        let seq = gateway
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (order, seq, sequenced_payload(unsequenced, seq))
    });
    // The reservation becomes the event's own cost (what the ledger will
    // debit), held until a balance update covers `seq`.
    let held = reservation.zip(cost).map(|(reservation, cost)| {
        let key_holds = gateway.admission.emitted(
            &event.account_id,
            &event.access_key_id,
            reservation,
            seq,
            cost,
        );
        // The key is copied only when its budgets hold the cost.
        let key = key_holds.then(|| event.access_key_id.clone());
        (seq, cost, key)
    });
    // Not shared yet, so this sets the field in place.
    Arc::make_mut(&mut event).instance_seq = Some(seq);
    // Not expected to be None (see `sequenced_payload`); writing the event
    // again with its sequence number is correct too.
    let payload = payload.unwrap_or_else(|| {
        let mut payload = Vec::new();
        UsageEnvelope(&event).write_json(&mut payload);
        payload
    });
    let record = LogRecord {
        topic: topics::ACCOUNT_EVENTS.to_owned(),
        key,
        payload,
    };
    // The event rides along so in-process readers need not decode it.
    match gateway.events.try_append_usage(record, event) {
        Ok(()) => gateway.metrics.events_emitted.inc(),
        Err(record) => {
            // Rare (the log's queue is full): the account is named again
            // only here, for the case that the append fails.
            let held =
                held.map(|(seq, cost, key)| (AccountId::from(record.key.as_str()), key, seq, cost));
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                // Off the runtime (the estimate thread): waiting here is fine.
                match futures::executor::block_on(gateway.events.append(record)) {
                    Ok(()) => gateway.metrics.events_emitted.inc(),
                    Err(err) => {
                        gateway.metrics.events_dropped.inc();
                        tracing::error!(error = %err, "usage event lost: event log refused it");
                        release_lost(gateway, held);
                    }
                }
                return;
            };
            let gateway = gateway.clone();
            runtime.spawn(async move {
                match gateway.events.append(record).await {
                    Ok(()) => gateway.metrics.events_emitted.inc(),
                    Err(err) => {
                        gateway.metrics.events_dropped.inc();
                        tracing::error!(error = %err, "usage event lost: event log refused it");
                        release_lost(&gateway, held);
                    }
                }
            });
        }
    }
}

/// The ledger will never apply a lost event: stop holding its cost.
fn release_lost(gateway: &Gateway, held: Option<(AccountId, Option<AccessKeyId>, u64, Usd)>) {
    if let Some((account, key, seq, cost)) = held {
        gateway.admission.lost(&account, key.as_ref(), seq, cost);
    }
}

/// The cost as JSON, exact decimal strings: `{"fee", "upstream", "total"}`.
pub fn cost_json(cost: &Cost) -> Value {
    serde_json::json!({
        "fee": cost.fee.to_string(),
        "upstream": cost.upstream.to_string(),
        "total": cost.total().to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tollgate_core::{ApiSurface, Envelope};

    fn event() -> UsageEvent {
        let now = Utc::now();
        UsageEvent {
            event_id: EventId::generate(),
            started_at: now,
            finished_at: now,
            account_id: AccountId::from("acct_a"),
            access_key_id: AccessKeyId::from("ak_a"),
            client_api: ApiSurface::Openai,
            endpoint: Some(tollgate_core::Endpoint::Chat),
            provider: Some("openai".into()),
            model_requested: "gpt-4o-mini".into(),
            model_served: Some("gpt-4o-mini".into()),
            credential_source: Some(CredentialSource::Operator),
            provider_key_id: None,
            streamed: true,
            tokens: TokenCounts::default(),
            tokens_estimated: false,
            prices: Prices::default(),
            tool_calls: Vec::new(),
            end_user: None,
            tags: Default::default(),
            upstream_request_id: Some("req_\"quoted\"".into()),
            latency_us: 250,
            ttft_us: Some(100),
            upstream_latency_us: Some(200),
            status: 200,
            error_kind: None,
            attempts: 1,
            client_disconnected: false,
            plan: None,
            instance_id: Some("gw_x".into()),
            instance_seq: None,
        }
    }

    #[test]
    fn the_spliced_sequence_number_matches_a_full_serialization() {
        for seq in [0, 7, 1_234_567, u64::MAX] {
            let unsequenced = event();
            let spliced =
                serialize_unsequenced(&unsequenced, |bytes| sequenced_payload(bytes, seq))
                    .expect("the payload ends with a null instance_seq");
            let sequenced = Envelope::usage(UsageEvent {
                instance_seq: Some(seq),
                ..unsequenced
            });
            assert_eq!(
                String::from_utf8(spliced).unwrap(),
                serde_json::to_string(&sequenced).unwrap()
            );
        }
    }

    #[test]
    fn a_payload_with_another_ending_is_not_spliced() {
        assert_eq!(sequenced_payload(br#"{"v":1,"type":"usage"}"#, 1), None);
    }
}
