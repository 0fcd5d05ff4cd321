//! Attribution labels a client declares on a request: tags from the
//! `x-tollgate-tags` header (merged over the access key configuration's
//! default tags) and the end user named in the body. Both are recorded in
//! the usage event as the client sent them (end users subject to the
//! gateway's `[privacy]` setting); neither is trusted nor a metric label.

use std::collections::BTreeMap;

/// The request header carrying tags: `team=search, feature=autocomplete`.
pub const TAGS_HEADER: &str = "x-tollgate-tags";
/// The most tags a request carries, after merging over the defaults.
pub const MAX_TAGS: usize = 10;
/// A tag key's longest length (bytes).
pub const MAX_TAG_KEY: usize = 64;
/// A tag value's longest length (bytes).
pub const MAX_TAG_VALUE: usize = 128;
/// An end user's longest length (bytes, as declared); longer is refused.
pub const MAX_END_USER_BYTES: usize = 256;

/// At most this much of a refused key or value is quoted back.
const QUOTE_MAX: usize = 64;

fn quoted(text: &str) -> String {
    // Only printable ASCII reaches here, so any byte is a char boundary.
    if text.len() > QUOTE_MAX {
        format!("{}…", &text[..QUOTE_MAX])
    } else {
        text.to_owned()
    }
}

/// A tag key is `[a-z0-9_.-]{1,64}`; the error names the problem.
pub fn check_tag_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_TAG_KEY
        && key
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else if key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Err(format!(
            "key `{}` must match [a-z0-9_.-]{{1,{MAX_TAG_KEY}}}",
            quoted(key)
        ))
    } else {
        Err(format!(
            "a key must match [a-z0-9_.-]{{1,{MAX_TAG_KEY}}} (it has other characters)"
        ))
    }
}

/// A tag value is 1–128 printable ASCII characters (0x20–0x7e) other than
/// `,` and `=`, without surrounding spaces.
pub fn check_tag_value(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("tag `{key}` has an empty value"));
    }
    if value.len() > MAX_TAG_VALUE {
        return Err(format!(
            "tag `{key}`: value is longer than {MAX_TAG_VALUE} characters"
        ));
    }
    if value.trim_matches(' ') != value {
        return Err(format!(
            "tag `{key}`: value must not start or end with a space"
        ));
    }
    if let Some(bad) = value
        .bytes()
        .find(|&b| !(0x20..0x7f).contains(&b) || b == b',' || b == b'=')
    {
        let what = match bad {
            b',' => "`,`".to_owned(),
            b'=' => "`=`".to_owned(),
            _ => "a character outside printable ASCII".to_owned(),
        };
        return Err(format!("tag `{key}`: value must not contain {what}"));
    }
    Ok(())
}

/// An access key configuration's default tags: valid keys and values, at
/// most `MAX_TAGS`.
pub fn check_default_tags(tags: &BTreeMap<String, String>) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "{} tags; at most {MAX_TAGS} are allowed",
            tags.len()
        ));
    }
    for (key, value) in tags {
        check_tag_key(key)?;
        check_tag_value(key, value)?;
    }
    Ok(())
}

/// The tags of one `x-tollgate-tags` header value: comma-separated
/// `key=value` pairs, spaces around each part trimmed. A blank header is
/// no tags. Duplicate keys, empty entries and anything outside printable
/// ASCII are refused; the error names the problem (without the header name).
pub fn parse_tags_header(raw: &[u8]) -> Result<Vec<(String, String)>, String> {
    if raw.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return Err("must be printable ASCII (no control or non-ASCII characters)".into());
    }
    // All printable ASCII: valid UTF-8.
    let text = std::str::from_utf8(raw).map_err(|_| "must be printable ASCII".to_owned())?;
    if text.trim_matches(' ').is_empty() {
        return Ok(Vec::new());
    }
    let mut tags: Vec<(String, String)> = Vec::new();
    for entry in text.split(',') {
        let entry = entry.trim_matches(' ');
        let Some((key, value)) = entry.split_once('=') else {
            return Err(if entry.is_empty() {
                "empty entry: tags are `key=value` pairs separated by `,`".to_owned()
            } else {
                format!("entry `{}` is not `key=value`", quoted(entry))
            });
        };
        let (key, value) = (key.trim_matches(' '), value.trim_matches(' '));
        check_tag_key(key)?;
        check_tag_value(key, value)?;
        if tags.iter().any(|(k, _)| k == key) {
            return Err(format!("key `{key}` is given more than once"));
        }
        if tags.len() == MAX_TAGS {
            return Err(format!("more than {MAX_TAGS} tags"));
        }
        tags.push((key.to_owned(), value.to_owned()));
    }
    Ok(tags)
}

/// The request's tags over the configuration's defaults (a request tag
/// replaces the default of the same key); at most `MAX_TAGS` in all.
pub fn merge_tags(
    defaults: Option<&BTreeMap<String, String>>,
    request: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, String> {
    let mut tags = defaults.cloned().unwrap_or_default();
    tags.extend(request);
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "{} tags with the access key's default tags; at most {MAX_TAGS} are allowed",
            tags.len()
        ));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_pairs_trimming_spaces() {
        assert_eq!(
            parse_tags_header(b" team=search ,  feature = auto complete").unwrap(),
            pairs(&[("team", "search"), ("feature", "auto complete")])
        );
        assert_eq!(parse_tags_header(b"").unwrap(), vec![]);
        assert_eq!(parse_tags_header(b"   ").unwrap(), vec![]);
        assert_eq!(
            parse_tags_header(b"a.b_c-9=x!~").unwrap(),
            pairs(&[("a.b_c-9", "x!~")])
        );
        let long = format!("{}={}", "k".repeat(64), "v".repeat(128));
        assert_eq!(parse_tags_header(long.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn refuses_bad_headers_naming_the_problem() {
        let long_key = format!("{}=v", "k".repeat(65));
        let long_value = format!("k={}", "v".repeat(129));
        let eleven = (0..11)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for (raw, says) in [
            (
                &b"Team=search"[..],
                "key `Team` must match [a-z0-9_.-]{1,64}",
            ),
            (b"team", "entry `team` is not `key=value`"),
            (b"team=a,,x=b", "empty entry"),
            (b"team=a,", "empty entry"),
            (b"=v", "key `` must match"),
            (b"team=", "tag `team` has an empty value"),
            (b"team=a=b", "tag `team`: value must not contain `=`"),
            (b"team=a,team=b", "key `team` is given more than once"),
            (b"team=caf\xc3\xa9", "must be printable ASCII"),
            (b"team=\xff", "must be printable ASCII"),
            (b"team=a\tb", "must be printable ASCII"),
            (b"team=a\x7f", "must be printable ASCII"),
            (b"t\x00=a", "must be printable ASCII"),
            (long_key.as_bytes(), "must match [a-z0-9_.-]{1,64}"),
            (long_value.as_bytes(), "longer than 128"),
            (eleven.as_bytes(), "more than 10 tags"),
        ] {
            let err = parse_tags_header(raw).unwrap_err();
            assert!(err.contains(says), "{raw:?}: {err}");
        }
    }

    #[test]
    fn request_tags_override_defaults_within_the_limit() {
        let defaults: BTreeMap<String, String> = pairs(&[("team", "core"), ("env", "prod")])
            .into_iter()
            .collect();
        let merged = merge_tags(Some(&defaults), pairs(&[("team", "search")])).unwrap();
        assert_eq!(merged.get("team").map(String::as_str), Some("search"));
        assert_eq!(merged.get("env").map(String::as_str), Some("prod"));
        let nine = (0..9).map(|i| (format!("r{i}"), "v".to_owned())).collect();
        assert!(merge_tags(Some(&defaults), nine)
            .unwrap_err()
            .contains("at most 10"));
        let eight_and_override: Vec<_> = (0..8)
            .map(|i| (format!("r{i}"), "v".to_owned()))
            .chain([("env".to_owned(), "dev".to_owned())])
            .collect();
        assert_eq!(
            merge_tags(Some(&defaults), eight_and_override)
                .unwrap()
                .len(),
            10
        );
    }

    #[test]
    fn default_tags_are_checked_like_header_tags() {
        let ok: BTreeMap<_, _> = pairs(&[("team", "core")]).into_iter().collect();
        assert!(check_default_tags(&ok).is_ok());
        for (k, v) in [("Team", "x"), ("team", ""), ("team", "a,b"), ("team", " x")] {
            let bad: BTreeMap<_, _> = pairs(&[(k, v)]).into_iter().collect();
            assert!(check_default_tags(&bad).is_err(), "{k}={v}");
        }
        let many: BTreeMap<_, _> = (0..11).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(check_default_tags(&many).is_err());
    }
}
