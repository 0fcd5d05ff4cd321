//! What the analytics stores hold and answer: one flattened row per usage
//! event (with its log position), the usage query and its result groups.

use crate::error::AnalyticsError;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use tollgate_core::{
    pricing::cost_of, AccountId, CredentialSource, Endpoint, Envelope, EventBody, TokenCounts,
    UsageEvent, Usd,
};
use tollgate_eventlog::StoredRecord;

/// Money columns are `Decimal(38, 18)` in ClickHouse: 18 decimal places.
pub const MONEY_SCALE: u32 = 18;

/// The latest event time a ClickHouse `DateTime` (UInt32 seconds) can hold.
const MAX_EVENT_MS: i64 = u32::MAX as i64 * 1000;

/// One usage event as stored, with the log position it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    pub log_partition: u32,
    pub log_offset: u64,
    pub event_id: String,
    pub account_id: String,
    pub access_key_id: String,
    /// Empty when no provider was tried.
    pub provider: String,
    /// The model that answered (`model_served`), else the one requested.
    pub model: String,
    pub model_requested: String,
    /// `operator`, `byok`, or empty when no upstream was called.
    pub credential_source: String,
    pub client_api: String,
    /// The endpoint that served the event (`UsageEvent::served_endpoint`:
    /// backfilled from `client_api` for events that do not record one).
    pub endpoint: Endpoint,
    /// The end user the client declared (`UsageEvent::end_user`); None when
    /// none (an empty one is none too: ClickHouse stores none as `''`).
    pub end_user: Option<String>,
    /// The request's tags (`UsageEvent::tags`), empty when none.
    pub tags: BTreeMap<String, String>,
    pub status: u16,
    /// Request arrival, milliseconds since the Unix epoch (UTC).
    pub started_ms: i64,
    pub streamed: bool,
    pub error_kind: String,
    pub tokens: TokenCounts,
    /// `cost_of(event).fee`, at most 18 decimal places.
    pub fee: Decimal,
    /// `cost_of(event).upstream`, at most 18 decimal places.
    pub upstream_cost: Decimal,
    pub latency_us: u64,
    pub ttft_us: Option<u64>,
}

impl UsageRecord {
    /// Flatten a usage event; costs come from the one pricing function.
    pub fn from_event(
        partition: u32,
        offset: u64,
        event: &UsageEvent,
    ) -> Result<UsageRecord, AnalyticsError> {
        let started_ms = event.started_at.timestamp_millis();
        if !(0..MAX_EVENT_MS).contains(&started_ms) {
            return Err(AnalyticsError::BadData(format!(
                "event {} starts at {}, outside 1970..2106",
                event.event_id, event.started_at
            )));
        }
        let cost = cost_of(event);
        Ok(UsageRecord {
            log_partition: partition,
            log_offset: offset,
            event_id: event.event_id.to_string(),
            account_id: event.account_id.to_string(),
            access_key_id: event.access_key_id.to_string(),
            provider: event.provider.clone().unwrap_or_default(),
            model: event
                .model_served
                .clone()
                .unwrap_or_else(|| event.model_requested.clone()),
            model_requested: event.model_requested.clone(),
            credential_source: event
                .credential_source
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            client_api: event.client_api.as_str().to_owned(),
            endpoint: event.served_endpoint(),
            end_user: event.end_user.clone().filter(|u| !u.is_empty()),
            tags: event.tags.clone(),
            status: event.status,
            started_ms,
            streamed: event.streamed,
            error_kind: event.error_kind.clone().unwrap_or_default(),
            tokens: event.tokens,
            fee: money(cost.fee)?,
            upstream_cost: money(cost.upstream)?,
            latency_us: event.latency_us,
            ttft_us: event.ttft_us,
        })
    }

    /// `toYYYYMM` of the event time: the storage partition it lands in.
    pub fn month(&self) -> u32 {
        yyyymm(self.started_ms)
    }
}

/// A cost at storage precision. Costs are price × tokens / 10⁶, so with
/// catalog prices of up to 12 decimal places they are exact; a finer
/// remainder (below 10⁻¹⁸ USD) is rounded half-even, identically in both
/// stores. The ledger, not analytics, is the authority on money owed.
fn money(amount: Usd) -> Result<Decimal, AnalyticsError> {
    let value = amount.amount().round_dp(MONEY_SCALE).normalize();
    // Decimal(38, 18) holds 20 integer digits; rust_decimal at most 28.
    if value.abs() >= Decimal::from(10u64.pow(10)) {
        return Err(AnalyticsError::BadData(format!(
            "cost {value} is out of range"
        )));
    }
    Ok(value)
}

/// The ClickHouse `Decimal(38, 18)` representation (RowBinary Int128).
pub fn money_to_i128(value: Decimal) -> i128 {
    let scale = value.scale();
    let mantissa = value.mantissa();
    // `money` guarantees scale ≤ 18 and |value| < 10¹⁰, so this cannot overflow.
    mantissa * 10i128.pow(MONEY_SCALE.saturating_sub(scale))
}

/// Parse a decimal string from a store, normalized (no trailing zeros).
pub fn parse_money(text: &str) -> Result<Decimal, AnalyticsError> {
    // ClickHouse prints all 18 places; trim them so rust_decimal's 28 digits suffice.
    let trimmed = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    };
    let trimmed = if trimmed.is_empty() || trimmed == "-" {
        "0"
    } else {
        trimmed
    };
    trimmed
        .parse::<Decimal>()
        .map(|d| d.normalize())
        .map_err(|e| AnalyticsError::Corrupt(format!("money value {text:?}: {e}")))
}

/// `YYYYMM` of a millisecond timestamp, as ClickHouse's `toYYYYMM` in UTC.
pub fn yyyymm(ms: i64) -> u32 {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => {
            use chrono::Datelike;
            t.year() as u32 * 100 + t.month()
        }
        None => 0,
    }
}

/// What decoding one log record gave.
#[derive(Debug)]
pub enum Decoded {
    Usage(Box<UsageRecord>),
    /// Another event type: not analytics' business.
    Other,
    /// Undecodable or unstorable: counted and skipped, never retried.
    Bad(String),
    /// Written by a newer build: the sink stops before it (never skips it).
    Unsupported(tollgate_core::UnsupportedVersion),
}

/// Decode a log record's envelope; only usage events become rows.
pub fn decode(record: &StoredRecord) -> Decoded {
    if let Some(event) = &record.usage {
        // Written by this process: the event itself, not its JSON.
        return match UsageRecord::from_event(record.partition, record.offset, event) {
            Ok(row) => Decoded::Usage(Box::new(row)),
            Err(err) => Decoded::Bad(err.to_string()),
        };
    }
    match serde_json::from_slice::<Envelope>(&record.payload) {
        Ok(envelope) if envelope.check_version().is_err() => {
            Decoded::Unsupported(tollgate_core::UnsupportedVersion { found: envelope.v })
        }
        Ok(Envelope {
            body: EventBody::Usage(event),
            ..
        }) => match UsageRecord::from_event(record.partition, record.offset, &event) {
            Ok(row) => Decoded::Usage(Box::new(row)),
            Err(err) => Decoded::Bad(err.to_string()),
        },
        // Other kinds, including kinds newer than this build (`Unknown`).
        Ok(_) => Decoded::Other,
        Err(err) => Decoded::Bad(format!(
            "record {}/{}: {err}",
            record.partition, record.offset
        )),
    }
}

/// Time bucket of a usage query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    pub fn parse(text: &str) -> Option<Bucket> {
        match text {
            "minute" => Some(Bucket::Minute),
            "hour" => Some(Bucket::Hour),
            "day" => Some(Bucket::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    pub fn millis(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }

    /// Start of the bucket holding `ms`. Unix time has no leap seconds, so
    /// UTC minutes, hours and days are plain multiples from the epoch.
    pub fn floor(self, ms: i64) -> i64 {
        ms.div_euclid(self.millis()) * self.millis()
    }
}

/// A dimension results can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Provider,
    Model,
    AccessKey,
    Status,
    Endpoint,
    /// The end user (`group_by=end_user`).
    EndUser,
    /// One tag's value (`group_by=tag:<key>`; the key is `UsageQuery::group_tag`).
    Tag,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        match text {
            "provider" => Some(GroupBy::Provider),
            "model" => Some(GroupBy::Model),
            "access_key" => Some(GroupBy::AccessKey),
            "status" => Some(GroupBy::Status),
            "endpoint" => Some(GroupBy::Endpoint),
            "end_user" => Some(GroupBy::EndUser),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::AccessKey => "access_key",
            GroupBy::Status => "status",
            GroupBy::Endpoint => "endpoint",
            GroupBy::EndUser => "end_user",
            GroupBy::Tag => "tag",
        }
    }

    /// The stored column holding this dimension (same name in both stores;
    /// a tag's value is looked up by key, see the stores).
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::AccessKey => "access_key_id",
            GroupBy::Status => "status",
            GroupBy::Endpoint => "endpoint",
            GroupBy::EndUser => "end_user",
            GroupBy::Tag => "tags",
        }
    }
}

/// HTTP status class filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn parse(text: &str) -> Option<StatusClass> {
        match text {
            "2xx" => Some(StatusClass::Success),
            "4xx" => Some(StatusClass::ClientError),
            "5xx" => Some(StatusClass::ServerError),
            _ => None,
        }
    }

    /// Half-open status range `[low, high)`.
    pub fn range(self) -> (u16, u16) {
        match self {
            StatusClass::Success => (200, 300),
            StatusClass::ClientError => (400, 500),
            StatusClass::ServerError => (500, 600),
        }
    }
}

/// A usage query, already validated. Time range is `[start, end)`.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageQuery {
    /// None: every account (admin scope only).
    pub account_id: Option<AccountId>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub access_key_id: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status_class: Option<StatusClass>,
    pub credential_source: Option<CredentialSource>,
    /// Only events served by this endpoint.
    pub endpoint: Option<Endpoint>,
    /// Only events for this end user.
    pub end_user: Option<String>,
    /// Only events carrying this tag with this value: (key, value).
    pub tag: Option<(String, String)>,
    /// Distinct dimensions, in the order the caller gave.
    pub group_by: Vec<GroupBy>,
    /// The tag key `GroupBy::Tag` groups by (set exactly when it is in `group_by`).
    pub group_tag: Option<String>,
    pub bucket: Option<Bucket>,
}

impl UsageQuery {
    /// A query over `[start, end)` for everything, with no grouping.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> UsageQuery {
        UsageQuery {
            account_id: None,
            start,
            end,
            access_key_id: None,
            provider: None,
            model: None,
            status_class: None,
            credential_source: None,
            endpoint: None,
            end_user: None,
            tag: None,
            group_by: Vec::new(),
            group_tag: None,
            bucket: None,
        }
    }

    pub fn start_ms(&self) -> i64 {
        self.start.timestamp_millis()
    }

    pub fn end_ms(&self) -> i64 {
        self.end.timestamp_millis()
    }

    pub fn groups(&self, dim: GroupBy) -> bool {
        self.group_by.contains(&dim)
    }

    /// Whether the query filters or groups by an attribution (end user or
    /// tag), which only raw rows keep.
    pub fn uses_attribution(&self) -> bool {
        self.end_user.is_some()
            || self.tag.is_some()
            || self.groups(GroupBy::EndUser)
            || self.groups(GroupBy::Tag)
    }

    /// `group_by` as the API echoes it: `tag:<key>` for the tag dimension.
    pub fn group_by_names(&self) -> Vec<String> {
        self.group_by
            .iter()
            .map(|g| match (g, &self.group_tag) {
                (GroupBy::Tag, Some(key)) => format!("tag:{key}"),
                _ => g.as_str().to_owned(),
            })
            .collect()
    }
}

/// Token sums by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenTotals {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub output: u64,
    /// The part of `output` the provider reported as reasoning (already in
    /// `output`, billed there once).
    pub reasoning: u64,
}

impl TokenTotals {
    pub fn add(&mut self, tokens: &TokenCounts) {
        self.input += tokens.input;
        self.cached_input += tokens.cached_input;
        self.cache_write_5m += tokens.cache_write_5m;
        self.cache_write_1h += tokens.cache_write_1h;
        self.output += tokens.output;
        self.reasoning += tokens.reasoning;
    }
}

/// Exact cost sums, serialized as normalized decimal strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CostTotals {
    /// Tollgate's fee (USD, exact decimal string).
    #[serde(serialize_with = "decimal_string")]
    #[schema(value_type = String, pattern = r"^-?[0-9]+(\.[0-9]+)?$", example = "0.0001805")]
    pub fee: Decimal,
    /// The upstream provider's cost (USD, exact decimal string).
    #[serde(serialize_with = "decimal_string")]
    #[schema(value_type = String, pattern = r"^-?[0-9]+(\.[0-9]+)?$", example = "0.0001805")]
    pub upstream: Decimal,
}

fn decimal_string<S: serde::Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&value.normalize())
}

/// Total latency percentiles in milliseconds (None when no requests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LatencyPercentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Time-to-first-byte percentiles in milliseconds (None when no request
/// in the group recorded one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TtftPercentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

/// One result row: a (bucket, group) and its metrics. Dimensions that were
/// not grouped on are None and left out of JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UsageGroup {
    /// Present when `bucket` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub bucket_start: Option<DateTime<Utc>>,
    /// Present when grouped by provider; empty when no provider was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub provider: Option<String>,
    /// Present when grouped by model.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub model: Option<String>,
    /// Present when grouped by access_key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub access_key_id: Option<String>,
    /// HTTP status; present when grouped by status.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub status: Option<u16>,
    /// The endpoint that served the requests; present when grouped by endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub endpoint: Option<Endpoint>,
    /// Present when grouped by end_user: the end user, null for requests
    /// that declared none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = true)]
    pub end_user: Option<Option<String>>,
    /// Present when grouped by `tag:<key>`: that tag's value, null for
    /// requests without the tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = true)]
    pub tag: Option<Option<String>>,
    pub requests: u64,
    /// Requests answered with a status ≥ 400.
    pub errors: u64,
    pub tokens: TokenTotals,
    pub cost: CostTotals,
    pub latency_ms: LatencyPercentiles,
    pub ttft_ms: TtftPercentiles,
}

/// The order every store returns groups in: bucket, then dimensions
/// (endpoints by name, as ClickHouse orders the stored strings; requests
/// without an end user or the tag before those with one).
pub fn sort_groups(groups: &mut [UsageGroup]) {
    groups.sort_by(|a, b| {
        (
            a.bucket_start,
            &a.provider,
            &a.model,
            &a.access_key_id,
            a.status,
            a.endpoint.map(Endpoint::as_str),
            &a.end_user,
            &a.tag,
        )
            .cmp(&(
                b.bucket_start,
                &b.provider,
                &b.model,
                &b.access_key_id,
                b.status,
                b.endpoint.map(Endpoint::as_str),
                &b.end_user,
                &b.tag,
            ))
    });
}

/// The percentile levels reported for latency and TTFT.
pub const LATENCY_LEVELS: [f64; 3] = [0.5, 0.95, 0.99];
pub const TTFT_LEVELS: [f64; 2] = [0.5, 0.95];

/// The exact percentile both raw paths use: the element at 0-based index
/// ⌊q·n⌋ (capped at n−1) of the sorted values — the definition of
/// ClickHouse's `quantileExact`, computed the same way in the SQLite store
/// so both give identical numbers. `sorted` must be ascending.
pub fn exact_quantile(sorted: &[u64], level: f64) -> Option<u64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let index = if level < 1.0 {
        ((level * n as f64) as usize).min(n - 1)
    } else {
        n - 1
    };
    sorted.get(index).copied()
}

/// Microseconds to milliseconds for the JSON report.
pub fn us_to_ms(us: f64) -> f64 {
    us / 1000.0
}

/// Milliseconds to a UTC time, for bucket starts read back from a store.
pub fn ms_to_time(ms: i64) -> Result<DateTime<Utc>, AnalyticsError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| AnalyticsError::Corrupt(format!("timestamp {ms} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_quantile_matches_clickhouse_quantile_exact() {
        let values: Vec<u64> = (0..100).collect();
        // ClickHouse: quantilesExact(0.5, 0.95, 0.99)(number) FROM numbers(100) = [50, 95, 99]
        assert_eq!(exact_quantile(&values, 0.5), Some(50));
        assert_eq!(exact_quantile(&values, 0.95), Some(95));
        assert_eq!(exact_quantile(&values, 0.99), Some(99));
        assert_eq!(exact_quantile(&[7], 0.99), Some(7));
        assert_eq!(exact_quantile(&[], 0.5), None);
    }

    #[test]
    fn money_round_trips_through_clickhouse_representation() {
        let fee = "0.0001805".parse::<Decimal>().unwrap_or_default();
        assert_eq!(money_to_i128(fee), 180_500_000_000_000);
        let parsed = parse_money("0.000180500000000000").unwrap_or_default();
        assert_eq!(parsed, fee);
        assert_eq!(parse_money("0").unwrap_or_default(), Decimal::ZERO);
        assert_eq!(
            parse_money("12.000000000000000000").unwrap_or_default(),
            Decimal::from(12)
        );
    }

    #[test]
    fn buckets_floor_in_utc() {
        let t = 1_700_000_123_456; // 2023-11-14T22:15:23.456Z
        assert_eq!(Bucket::Minute.floor(t), 1_700_000_100_000);
        assert_eq!(Bucket::Hour.floor(t), 1_699_999_200_000);
        assert_eq!(Bucket::Day.floor(t), 1_699_920_000_000);
        assert_eq!(yyyymm(t), 202311);
    }
}
