//! Small helpers shared by the translation modules.

use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Current Unix time in seconds; 0 if the clock is before the epoch, so a
/// misconfigured clock can never make a translation fail.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A non-negative token count from a JSON number. Floats such as `12.0` are
/// accepted (truncated) because some OpenAI-compatible providers emit them.
pub(crate) fn as_count(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// `obj[key]` as a count; `None` when absent, null or not a count.
pub(crate) fn count_field(obj: &Value, key: &str) -> Option<u64> {
    obj.get(key).and_then(as_count)
}

/// `obj[key]` as a string slice.
pub(crate) fn str_field<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

/// `obj[key]`, treating JSON `null` the same as a missing key.
pub(crate) fn non_null<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Splits a `data:<media type>;base64,<payload>` URL. Returns `None` for
/// anything that is not a base64 data URL.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .and_then(|_| url.get(5..))?;
    let (meta, payload) = rest.split_once(',')?;
    let mut params = meta.split(';');
    let media_type = params.next().unwrap_or("");
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return None;
    }
    let media_type = if media_type.is_empty() {
        "application/octet-stream"
    } else {
        media_type
    };
    Some((media_type, payload))
}

/// Builds a JSON object from key/value pairs.
pub(crate) fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Map::with_capacity(N);
    for (k, v) in pairs {
        m.insert(k.to_owned(), v);
    }
    Value::Object(m)
}

/// A tool-call id acceptable to Anthropic (`^[a-zA-Z0-9_-]+$`). OpenAI-
/// compatible providers sometimes use other characters; the mapping is
/// deterministic so a `tool_use` id and the `tool_result` that references it
/// still match after translation.
pub(crate) fn sanitize_tool_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts() {
        assert_eq!(as_count(&json!(5)), Some(5));
        assert_eq!(as_count(&json!(5.0)), Some(5));
        assert_eq!(as_count(&json!(-1)), None);
        assert_eq!(as_count(&json!("5")), None);
        assert_eq!(as_count(&Value::Null), None);
    }

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_data_url("data:image/png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(
            parse_data_url("DATA:image/jpeg;name=x;base64,QQ=="),
            Some(("image/jpeg", "QQ=="))
        );
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        assert_eq!(parse_data_url("https://x/y.png"), None);
        assert_eq!(parse_data_url("da"), None);
        assert_eq!(parse_data_url("dat\u{e9}:x"), None);
    }

    #[test]
    fn tool_ids() {
        assert_eq!(sanitize_tool_id("call_ab-C9"), "call_ab-C9");
        assert_eq!(sanitize_tool_id("fn:1.2"), "fn_1_2");
    }
}
