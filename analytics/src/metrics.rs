//! Prometheus metrics of the analytics sink, registered on the caller's
//! registry so they appear on the process's one `/metrics`.

use crate::error::AnalyticsError;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct AnalyticsMetrics {
    /// Rows newly stored (after deduplication).
    pub rows_inserted: IntCounter,
    /// Rows per store write.
    pub batch_rows: Histogram,
    /// Duration of one successful store write.
    pub insert_duration: Histogram,
    /// Failed store writes, by kind (`transient`: retried; `bad_data`: skipped).
    pub insert_failures: IntCounterVec,
    /// Log records not stored, by reason (`undecodable`, `rejected`).
    pub events_skipped: IntCounterVec,
    /// Age of the newest record the sink has stored (0 when caught up).
    pub consumer_lag: Gauge,
    /// 1 once the sink stopped at a record from a newer build.
    pub halted: IntGauge,
}

impl AnalyticsMetrics {
    /// Create and register on `registry` (labelled with the backend).
    pub fn register(
        registry: &Registry,
        backend: &str,
    ) -> Result<AnalyticsMetrics, AnalyticsError> {
        let label = |opts: Opts| opts.const_label("backend", backend);
        let hlabel = |opts: HistogramOpts| opts.const_label("backend", backend);
        let rows_inserted = IntCounter::with_opts(label(Opts::new(
            "tollgate_analytics_rows_inserted_total",
            "Usage rows newly stored by the analytics sink",
        )))?;
        let batch_rows = Histogram::with_opts(hlabel(
            HistogramOpts::new(
                "tollgate_analytics_batch_rows",
                "Rows per analytics store write",
            )
            .buckets(vec![
                1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0, 100000.0,
            ]),
        ))?;
        let insert_duration = Histogram::with_opts(hlabel(
            HistogramOpts::new(
                "tollgate_analytics_insert_duration_seconds",
                "Duration of one successful analytics store write",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        ))?;
        let insert_failures = IntCounterVec::new(
            label(Opts::new(
                "tollgate_analytics_insert_failures_total",
                "Failed analytics store writes (transient: retried; bad_data: skipped)",
            )),
            &["kind"],
        )?;
        let events_skipped = IntCounterVec::new(
            label(Opts::new(
                "tollgate_analytics_events_skipped_total",
                "Log records the analytics sink could not store",
            )),
            &["reason"],
        )?;
        let consumer_lag = Gauge::with_opts(label(Opts::new(
            "tollgate_analytics_consumer_lag_seconds",
            "Age of the newest event the analytics sink has stored; 0 when caught up",
        )))?;
        // Known label values start at 0, so every series exists (and
        // rate() works) before the first failure.
        for kind in ["transient", "bad_data"] {
            insert_failures.with_label_values(&[kind]);
        }
        for reason in ["undecodable", "rejected"] {
            events_skipped.with_label_values(&[reason]);
        }
        registry.register(Box::new(rows_inserted.clone()))?;
        registry.register(Box::new(batch_rows.clone()))?;
        registry.register(Box::new(insert_duration.clone()))?;
        registry.register(Box::new(insert_failures.clone()))?;
        registry.register(Box::new(events_skipped.clone()))?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let halted = IntGauge::with_opts(label(Opts::new(
            "tollgate_analytics_halted",
            "1 when the analytics sink stopped at a record from a newer Tollgate (envelope version it does not read): upgrade analytics",
        )))?;
        registry.register(Box::new(halted.clone()))?;
        Ok(AnalyticsMetrics {
            rows_inserted,
            batch_rows,
            insert_duration,
            insert_failures,
            events_skipped,
            consumer_lag,
            halted,
        })
    }

    /// Metrics on a private registry (tests, tools).
    pub fn unregistered(backend: &str) -> Result<AnalyticsMetrics, AnalyticsError> {
        AnalyticsMetrics::register(&Registry::new(), backend)
    }
}
