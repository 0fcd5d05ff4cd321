//! librdkafka's logs and errors, forwarded to `tracing`.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    // librdkafka reports transient connection trouble at "error" level; it
    // retries by itself, so these are warnings for us.
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Notice => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility, "{message}")
        }
    }
}

pub(crate) fn error(error: &KafkaError, reason: &str) {
    // Readers ask for end-of-partition events (`enable.partition.eof`) and
    // handle them; librdkafka also hands each one to this callback.
    if matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
    {
        tracing::trace!(target: "librdkafka", "{reason}");
        return;
    }
    let fatal = matches!(
        error.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::Fatal)
    );
    if fatal {
        tracing::error!(target: "librdkafka", error = %error, "{reason}");
    } else {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

/// Context of clients with no callbacks of their own.
#[derive(Clone, Copy, Default)]
pub(crate) struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(&error, reason);
    }
}

impl ConsumerContext for LogContext {}
