use prometheus::{IntCounter, IntGauge, Registry};

/// The backend's counters. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct EventLogMetrics {
    /// `tollgate_eventlog_appended_total`: records committed to the spool.
    pub appended: IntCounter,
    /// `tollgate_eventlog_spooled_records`: spooled, not yet acknowledged by Kafka.
    pub spooled: IntGauge,
    /// `tollgate_eventlog_delivered_total`: records acknowledged by Kafka (each once).
    pub delivered: IntCounter,
    /// `tollgate_eventlog_delivery_failures_total`: failed delivery reports
    /// (each is re-sent later).
    pub delivery_failures: IntCounter,
    /// `tollgate_eventlog_dropped_total`: records lost because the spool was full.
    pub dropped: IntCounter,
}

impl EventLogMetrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        Ok(EventLogMetrics {
            appended: IntCounter::new(
                "tollgate_eventlog_appended_total",
                "Event-log records committed to the local spool",
            )?,
            spooled: IntGauge::new(
                "tollgate_eventlog_spooled_records",
                "Event-log records in the local spool not yet acknowledged by Kafka",
            )?,
            delivered: IntCounter::new(
                "tollgate_eventlog_delivered_total",
                "Event-log records acknowledged by Kafka",
            )?,
            delivery_failures: IntCounter::new(
                "tollgate_eventlog_delivery_failures_total",
                "Event-log records whose delivery to Kafka failed (they are re-sent)",
            )?,
            dropped: IntCounter::new(
                "tollgate_eventlog_dropped_total",
                "Event-log records dropped because the local spool was full",
            )?,
        })
    }

    /// Add these metrics to `registry` (e.g. the gateway's `/metrics`).
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.appended.clone()))?;
        registry.register(Box::new(self.spooled.clone()))?;
        registry.register(Box::new(self.delivered.clone()))?;
        registry.register(Box::new(self.delivery_failures.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        Ok(())
    }
}
