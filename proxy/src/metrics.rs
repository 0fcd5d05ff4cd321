//! Prometheus metrics for the proxy, on the registry the gateway is given:
//! the process's, which the other roles register on too (tests give each
//! gateway its own, so several can live in one process).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub upstream_attempts: IntCounterVec,
    pub failovers: IntCounter,
    /// Anthropic's count_tokens requests: counted, never billed.
    pub count_tokens: IntCounterVec,
    pub tokens: IntCounterVec,
    pub events_emitted: IntCounter,
    pub events_dropped: IntCounter,
    /// Requests refused by a budget (402 `budget_exceeded`); no per-key
    /// label, which would grow without bound.
    pub budget_refusals: IntCounter,
    pub in_flight: IntGauge,
    pub ledger_round_trip: Histogram,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Finer around 100–500 ms, where a ledger round trip usually falls (the
/// gateway reads balances every 100 ms): the admission bound uses it.
const ROUND_TRIP_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
];

impl Metrics {
    /// The proxy's metrics, registered on `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_requests_total",
                "Requests handled, by client API and HTTP status class.",
            ),
            &["api", "status_class"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_errors_total",
                "Failed requests, by error kind.",
            ),
            &["kind"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_proxy_request_duration_seconds",
                "Time from request arrival to the end of the response.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api", "streamed"],
        )?;
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_proxy_time_to_first_token_seconds",
                "Time from request arrival to the first streamed byte sent to the client.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api"],
        )?;
        let upstream_attempts = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_upstream_attempts_total",
                "Upstream attempts, by provider and outcome.",
            ),
            &["provider", "outcome"],
        )?;
        let failovers = IntCounter::new(
            "tollgate_proxy_failovers_total",
            "Times a request moved on to the next candidate after a retryable failure.",
        )?;
        let count_tokens = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_count_tokens_requests_total",
                "Token-count requests (/v1/messages/count_tokens; not billed, no usage event), by the provider that answered (none when none did) and outcome.",
            ),
            &["provider", "outcome"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("tollgate_proxy_tokens_total", "Tokens metered, by class."),
            &["class"],
        )?;
        let events_emitted = IntCounter::new(
            "tollgate_proxy_usage_events_emitted_total",
            "Usage events handed to the event log.",
        )?;
        let events_dropped = IntCounter::new(
            "tollgate_proxy_usage_events_dropped_total",
            "Usage events the event log refused (log closed or failing).",
        )?;
        let in_flight = IntGauge::new(
            "tollgate_proxy_in_flight_requests",
            "Requests currently being handled (streams until they end).",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        registry.register(Box::new(upstream_attempts.clone()))?;
        registry.register(Box::new(failovers.clone()))?;
        registry.register(Box::new(count_tokens.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(events_emitted.clone()))?;
        registry.register(Box::new(events_dropped.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let (ledger_round_trip, budget_refusals) = Metrics::admission(registry)?;
        Ok(Metrics {
            registry: registry.clone(),
            requests,
            errors,
            request_duration,
            time_to_first_token,
            upstream_attempts,
            failovers,
            count_tokens,
            tokens,
            events_emitted,
            events_dropped,
            budget_refusals,
            in_flight,
            ledger_round_trip,
        })
    }

    /// Admission's own metrics: the ledger round trip and budget refusals.
    fn admission(registry: &Registry) -> Result<(Histogram, IntCounter), prometheus::Error> {
        let ledger_round_trip = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_proxy_ledger_round_trip_seconds",
                "Time from a usage event's emission to this gateway applying the balance update that covers it (admission stops holding its cost then).",
            )
            .buckets(ROUND_TRIP_BUCKETS.to_vec()),
        )?;
        let budget_refusals = IntCounter::new(
            "tollgate_proxy_budget_refusals_total",
            "Requests refused because a refusing budget had nothing left in its period (402 budget_exceeded).",
        )?;
        registry.register(Box::new(ledger_round_trip.clone()))?;
        registry.register(Box::new(budget_refusals.clone()))?;
        Ok((ledger_round_trip, budget_refusals))
    }

    /// Every metric on the gateway's registry, in the text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// Every metric on `registry`, in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    if TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(buffer).unwrap_or_default()
}
