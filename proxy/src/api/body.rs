//! The request body as the chat-style client APIs read it, and the
//! unchanged-or-patched body they pass to an upstream of the same API.

use crate::error::ProxyError;
use crate::gateway::Candidate;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

/// What the gateway needs from the client's request body.
pub struct ClientRequest {
    /// The body as received: passed upstream untouched when nothing in it
    /// changes, and parsed further only for translation or a token estimate.
    pub raw: Bytes,
    /// Whether the body has a `models` key (which never goes upstream).
    pub has_fallbacks: bool,
    /// The output cap the client asked for, if any.
    pub max_tokens: Option<u64>,
    pub model: String,
    pub fallbacks: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// The end user the client declares the request is for (as declared,
    /// at most `MAX_END_USER_BYTES`); stored as `[privacy] end_user` says.
    pub end_user: Option<String>,
}

/// Where a chat-style API names the request's end user.
#[derive(Clone, Copy)]
pub(super) enum EndUserField {
    /// OpenAI: `safety_identifier` when a non-empty string, else `user`.
    OpenAi,
    /// Anthropic: `metadata.user_id`.
    Anthropic,
}

/// The request fields the gateway reads, borrowed from the body (a JSON
/// `null` included, as the text `null`); the rest is skipped by the parser,
/// not built, so a large prompt costs one scan.
#[derive(serde::Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    models: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    safety_identifier: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    metadata: Option<&'a RawValue>,
}

/// A declared end user from one body member: a non-empty string (anything
/// else is not one: the upstream judges the member), at most
/// `MAX_END_USER_BYTES` or refused naming the member.
pub(super) fn end_user_member(
    param: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<String>, ProxyError> {
    let Some(raw) = raw.filter(|r| r.get().starts_with('"')) else {
        return Ok(None);
    };
    let Ok(text) = serde_json::from_str::<String>(raw.get()) else {
        return Ok(None);
    };
    const MAX: usize = tollgate_core::attribution::MAX_END_USER_BYTES;
    if text.len() > MAX {
        return Err(ProxyError::invalid_param(
            param,
            format!("`{param}` is longer than {MAX} bytes; the gateway records it as the end user"),
        ));
    }
    Ok(Some(text).filter(|t| !t.is_empty()))
}

/// OpenAI's end user: `safety_identifier` when a non-empty string, else `user`.
pub(super) fn openai_end_user(
    safety_identifier: Option<&RawValue>,
    user: Option<&RawValue>,
) -> Result<Option<String>, ProxyError> {
    match end_user_member("safety_identifier", safety_identifier)? {
        Some(id) => Ok(Some(id)),
        None => end_user_member("user", user),
    }
}

/// Anthropic's end user: `metadata.user_id` (only `metadata` is parsed again).
fn anthropic_end_user(metadata: Option<&RawValue>) -> Result<Option<String>, ProxyError> {
    #[derive(serde::Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow, default)]
        user_id: Option<&'a RawValue>,
    }
    let user_id = metadata
        .filter(|r| r.get().starts_with('{'))
        .and_then(|r| serde_json::from_str::<Metadata>(r.get()).ok())
        .and_then(|m| m.user_id);
    end_user_member("metadata.user_id", user_id)
}

/// A member that is present, whatever its value (`null` too).
pub(super) fn present<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// The fields of a body that must be a JSON object. Only an object may go
/// on to the typed parse (which would also accept an array as a struct).
pub(super) fn object_fields<'a, T: serde::Deserialize<'a>>(
    bytes: &'a Bytes,
) -> Result<T, ProxyError> {
    let not_json =
        |e: serde_json::Error| ProxyError::invalid(format!("request body is not valid JSON: {e}"));
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ProxyError::invalid("request body must be a JSON object"),
                Err(e) => not_json(e),
            },
        );
    }
    serde_json::from_slice(bytes).map_err(not_json)
}

/// `model` (a non-empty string) and the optional `models` fallbacks (an
/// array of non-empty names), as every client API takes them.
pub(super) fn model_and_fallbacks(
    model: Option<&RawValue>,
    models: Option<&RawValue>,
) -> Result<(String, Vec<String>), ProxyError> {
    let model = match model.map(|r| serde_json::from_str::<String>(r.get())) {
        Some(Ok(m)) if !m.is_empty() => m,
        _ => {
            return Err(ProxyError::invalid_param(
                "model",
                "`model` is required and must be a non-empty string",
            ))
        }
    };
    let fallbacks = match models.map(RawValue::get) {
        None | Some("null") => Vec::new(),
        Some(raw) => serde_json::from_str::<Vec<String>>(raw)
            .ok()
            .filter(|names| names.iter().all(|n| !n.is_empty()))
            .ok_or_else(|| {
                ProxyError::invalid_param("models", "`models` must be an array of model names")
            })?,
    };
    Ok((model, fallbacks))
}

fn raw_u64(raw: Option<&RawValue>) -> Option<u64> {
    raw.and_then(|r| serde_json::from_str::<u64>(r.get()).ok())
}

/// Parse a chat-style body (`model`, `messages`, optional `models`,
/// `stream`, `stream_options`), requiring `max_tokens` when the API does.
pub(super) fn parse_chat_request(
    bytes: Bytes,
    max_tokens_required: bool,
    end_user_field: EndUserField,
) -> Result<ClientRequest, ProxyError> {
    let fields: RequestFields = object_fields(&bytes)?;
    let (model, fallbacks) = model_and_fallbacks(fields.model, fields.models)?;
    if !fields.messages.is_some_and(|r| r.get().starts_with('[')) {
        return Err(ProxyError::invalid_param(
            "messages",
            "`messages` is required and must be an array",
        ));
    }
    let max_tokens_field = raw_u64(fields.max_tokens);
    if max_tokens_required && max_tokens_field.is_none() {
        return Err(ProxyError::invalid_param(
            "max_tokens",
            "`max_tokens` is required and must be a positive integer",
        ));
    }
    let stream = match fields.stream.map(|r| r.get()) {
        None | Some("null") => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "stream",
                "`stream` must be a boolean",
            ))
        }
    };
    #[derive(serde::Deserialize)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    let include_usage = fields
        .stream_options
        .and_then(|r| serde_json::from_str::<StreamOptions>(r.get()).ok())
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let max_tokens = raw_u64(fields.max_completion_tokens).or(max_tokens_field);
    let end_user = match end_user_field {
        EndUserField::OpenAi => openai_end_user(fields.safety_identifier, fields.user)?,
        EndUserField::Anthropic => anthropic_end_user(fields.metadata)?,
    };
    Ok(ClientRequest {
        end_user,
        has_fallbacks: fields.models.is_some(),
        max_tokens,
        model,
        fallbacks,
        stream,
        include_usage,
        raw: bytes,
    })
}

/// The client's body as a JSON value (for translation).
pub(super) fn request_value(request: &ClientRequest) -> Result<Value, ProxyError> {
    serde_json::from_slice(&request.raw)
        .map_err(|e| ProxyError::invalid(format!("request body is not valid JSON: {e}")))
}

/// A JSON object's members in their order, values left as raw text.
struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// The client's body with `model` replaced, `models` dropped and, for
/// OpenAI streams, usage requested — every other member copied as it came.
struct Patched<'a> {
    pub body: &'a [(Cow<'a, str>, &'a RawValue)],
    pub model: &'a str,
    pub stream_usage: bool,
}

impl serde::Serialize for Patched<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let mut options_written = false;
        for (key, value) in self.body {
            match key.as_ref() {
                "model" => map.serialize_entry(key, self.model)?,
                "models" => {}
                "stream_options" if self.stream_usage => {
                    options_written = true;
                    let mut options =
                        serde_json::from_str::<serde_json::Map<String, Value>>(value.get())
                            .unwrap_or_default();
                    options.insert("include_usage".into(), Value::Bool(true));
                    map.serialize_entry(key, &options)?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        if self.stream_usage && !options_written {
            map.serialize_entry(
                "stream_options",
                &serde_json::json!({"include_usage": true}),
            )?;
        }
        map.end()
    }
}

/// The body for an upstream that speaks the client's API: the bytes as they
/// came when nothing changes, else `model` replaced, `models` dropped and,
/// when `stream_usage`, usage asked for in the stream.
pub(super) fn same_api_body(
    candidate: &Candidate,
    request: &ClientRequest,
    stream_usage: bool,
) -> Result<Bytes, ProxyError> {
    if candidate.upstream_model == request.model && !request.has_fallbacks && !stream_usage {
        // Usual case: nothing changes, the bytes go as they came.
        return Ok(request.raw.clone());
    }
    let body: Members = serde_json::from_slice(&request.raw)
        .map_err(|e| ProxyError::invalid(format!("request body is not valid JSON: {e}")))?;
    let patched = Patched {
        body: &body.0,
        model: &candidate.upstream_model,
        stream_usage,
    };
    serde_json::to_vec(&patched)
        .map(Bytes::from)
        .map_err(|e| ProxyError::Internal(format!("upstream body did not serialize: {e}")))
}

/// A translated body, serialized for the upstream.
pub(super) fn translated_body(value: &Value) -> Result<Bytes, ProxyError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ProxyError::Internal(format!("upstream body did not serialize: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn end_user(body: &str, field: EndUserField) -> Result<Option<String>, ProxyError> {
        parse_chat_request(Bytes::from(body.to_owned()), false, field).map(|r| r.end_user)
    }

    #[test]
    fn end_users_are_non_empty_strings_from_the_apis_member() {
        let openai = EndUserField::OpenAi;
        let anthropic = EndUserField::Anthropic;
        for (body, field, expected) in [
            (
                r#"{"model":"m","messages":[],"user":"a\"b"}"#,
                openai,
                Some("a\"b"),
            ),
            (r#"{"model":"m","messages":[],"user":5}"#, openai, None),
            (r#"{"model":"m","messages":[],"user":null}"#, openai, None),
            (r#"{"model":"m","messages":[],"user":""}"#, openai, None),
            (
                r#"{"model":"m","messages":[],"safety_identifier":7,"user":"u"}"#,
                openai,
                Some("u"),
            ),
            (
                r#"{"model":"m","messages":[],"metadata":{"user_id":"x"}}"#,
                openai,
                None,
            ),
            (
                r#"{"model":"m","messages":[],"metadata":{"user_id":"x"}}"#,
                anthropic,
                Some("x"),
            ),
            (
                r#"{"model":"m","messages":[],"metadata":"x","user":"u"}"#,
                anthropic,
                None,
            ),
            (
                r#"{"model":"m","messages":[],"metadata":{"user_id":["x"]}}"#,
                anthropic,
                None,
            ),
        ] {
            assert_eq!(
                end_user(body, field).unwrap().as_deref(),
                expected,
                "{body}"
            );
        }
        let long = format!(
            r#"{{"model":"m","messages":[],"user":"{}"}}"#,
            "é".repeat(129)
        );
        match end_user(&long, openai) {
            Err(ProxyError::InvalidRequest { param, .. }) => assert_eq!(param, Some("user")),
            other => panic!("not refused: {:?}", other.map(|_| ())),
        }
    }
}
