//! The crate's one error type, and how the sink classifies failures.

/// ClickHouse error codes that mean "this data can never be stored"
/// (parse, type, overflow errors). Everything else — network errors,
/// timeouts, "too many parts", memory limits, a missing table while an
/// operator fixes the schema — is retried: retrying bad data forever would
/// stall the sink, and skipping a transient failure would lose events.
const CLICKHOUSE_DATA_ERROR_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    407, // DECIMAL_OVERFLOW
];

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("clickhouse request failed: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("clickhouse did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("sqlite failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("opening the embedded database failed: {0}")]
    Store(#[from] tollgate_sqlite::StoreError),
    #[error("event log failed: {0}")]
    EventLog(#[from] tollgate_eventlog::EventLogError),
    /// An event that cannot be stored (undecodable, out-of-range values).
    #[error("event cannot be stored: {0}")]
    BadData(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("background task failed: {0}")]
    Task(String),
}

impl AnalyticsError {
    /// True when retrying the same data can never succeed: the sink then
    /// counts and skips the offending event instead of retrying.
    pub fn is_bad_data(&self) -> bool {
        match self {
            AnalyticsError::BadData(_) => true,
            AnalyticsError::ClickHouse(clickhouse::error::Error::BadResponse(message)) => {
                clickhouse_code(message).is_some_and(|c| CLICKHOUSE_DATA_ERROR_CODES.contains(&c))
            }
            _ => false,
        }
    }
}

/// The `Code: N` ClickHouse puts at the start of an exception message.
fn clickhouse_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_told_from_transient_ones() {
        let bad = AnalyticsError::ClickHouse(clickhouse::error::Error::BadResponse(
            "Code: 407, e.displayText() = DB::Exception: Decimal math overflow".into(),
        ));
        assert!(bad.is_bad_data());
        let missing = AnalyticsError::ClickHouse(clickhouse::error::Error::BadResponse(
            "Code: 60. DB::Exception: Table default.usage_events doesn't exist".into(),
        ));
        assert!(!missing.is_bad_data());
        assert!(!AnalyticsError::Timeout(std::time::Duration::from_secs(1)).is_bad_data());
        assert!(AnalyticsError::BadData("x".into()).is_bad_data());
    }
}
