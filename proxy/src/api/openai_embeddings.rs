//! OpenAI Embeddings (`POST /v1/embeddings`) as a client API. Only providers
//! that offer embeddings (`ProviderSpec::embeddings`, OpenAI wire API) take
//! it, at their `/embeddings` endpoint; the body goes as it came (`model`
//! replaced, `models` dropped), `encoding_format` included, so a base64
//! answer reaches the SDK that asked for it untouched. Billed on input
//! tokens: the upstream's `usage.prompt_tokens`, else a local estimate of
//! the input text.

use super::answer;
use super::body::{self, ClientRequest};
use super::openai_chat::{self, OpenAiChat};
use super::{ClientApi, StreamStart};
use crate::error::ProxyError;
use crate::gateway::{Candidate, ProviderRuntime};
use crate::meter::RequestMeter;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;
use tollgate_core::{ApiSurface, Prices};

pub struct OpenAiEmbeddings;

/// The request fields the gateway reads, borrowed; `input` stays raw text
/// (the estimate reads it again only when the upstream reports no usage).
#[derive(serde::Deserialize)]
struct EmbeddingFields<'a> {
    #[serde(borrow, default, deserialize_with = "super::present")]
    model: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    models: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    input: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    encoding_format: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    user: Option<&'a RawValue>,
}

impl ClientApi for OpenAiEmbeddings {
    fn surface(&self) -> ApiSurface {
        // The OpenAI API family: events tell embeddings apart by their model.
        ApiSurface::Openai
    }

    fn event_endpoint(&self) -> tollgate_core::Endpoint {
        tollgate_core::Endpoint::Embeddings
    }

    fn path(&self) -> &'static str {
        "/v1/embeddings"
    }

    fn named_by(&self, _headers: &HeaderMap) -> bool {
        false
    }

    fn parse(&self, body: Bytes) -> Result<ClientRequest, ProxyError> {
        parse_embeddings_request(body)
    }

    fn error_body(&self, err: &ProxyError) -> Value {
        openai_chat::error_body(err)
    }

    fn error_headers(&self, err: &ProxyError, status: StatusCode, headers: &mut HeaderMap) {
        OpenAiChat.error_headers(err, status, headers);
    }

    fn request_text(&self, request: &Value) -> String {
        input_text(request.get("input"))
    }

    fn request_token_ids(&self, request: &Value) -> u64 {
        token_ids(request.get("input"))
    }

    fn accepts(&self, candidate: &Candidate) -> Result<(), ProxyError> {
        let provider = &candidate.provider.spec.id;
        let model = &candidate.upstream_model;
        if candidate.provider.embeddings_endpoint.is_none() {
            return Err(ProxyError::invalid_param(
                "model",
                format!(
                    "model `{provider}:{model}`: provider `{provider}` does not offer embeddings"
                ),
            ));
        }
        if candidate.embedding == Some(false) {
            return Err(ProxyError::invalid_param(
                "model",
                format!("model `{provider}:{model}` is not an embedding model"),
            ));
        }
        Ok(())
    }

    fn endpoint<'p>(&self, provider: &'p ProviderRuntime) -> &'p http::Uri {
        // `accepts` let only providers with an embeddings endpoint through.
        provider
            .embeddings_endpoint
            .as_ref()
            .unwrap_or(&provider.endpoint)
    }

    fn upstream_body(
        &self,
        candidate: &Candidate,
        request: &ClientRequest,
    ) -> Result<Bytes, ProxyError> {
        body::same_api_body(candidate, request, false)
    }

    fn upstream_headers(&self, _upstream: ApiSurface, _client: &HeaderMap, _out: &mut HeaderMap) {}

    fn complete_response(
        &self,
        upstream: ApiSurface,
        bytes: Bytes,
        meter: &mut RequestMeter,
    ) -> Result<Response, String> {
        // OpenAI's answer carries `usage.prompt_tokens` (no completion side).
        let response = answer::complete_response(super::upstream(upstream), None, bytes, meter)?;
        // Embedding no input is refused upstream, so zero input tokens means
        // the upstream did not count them: estimate instead of billing nothing.
        if meter.reported.is_some_and(|r| r.total_input() == 0) {
            meter.reported = None;
        }
        Ok(response)
    }

    fn upstream_error(&self, _upstream: ApiSurface, status: StatusCode, bytes: Bytes) -> Response {
        // Every embeddings upstream speaks OpenAI's API: its error passes as it came.
        answer::upstream_error(None, status, bytes)
    }

    fn stream_body(&self, upstream: ApiSurface, stream: StreamStart, meter: RequestMeter) -> Body {
        // Not reached: embeddings are never streamed (`parse` sets `stream`
        // false), but a stream in OpenAI's shape is relayed like chat's.
        OpenAiChat.stream_body(upstream, stream, meter)
    }

    fn model_object(&self, id: &str, provider: &str, prices: Option<&Prices>) -> Value {
        OpenAiChat.model_object(id, provider, prices)
    }

    fn model_list(&self, data: Vec<Value>, first: Option<&str>, last: Option<&str>) -> Value {
        OpenAiChat.model_list(data, first, last)
    }
}

/// Parse and validate an embeddings body: `model` (and optional `models`),
/// `input` as a string, strings, token ids or arrays of token ids, and
/// `encoding_format` `float` or `base64` when present.
fn parse_embeddings_request(bytes: Bytes) -> Result<ClientRequest, ProxyError> {
    let fields: EmbeddingFields = body::object_fields(&bytes)?;
    let (model, fallbacks) = body::model_and_fallbacks(fields.model, fields.models)?;
    if !fields.input.is_some_and(valid_input) {
        return Err(ProxyError::invalid_param(
            "input",
            "`input` is required: a string, an array of strings, an array of token ids or an array of token-id arrays, not empty",
        ));
    }
    match fields.encoding_format.map(RawValue::get) {
        None | Some("null" | "\"float\"" | "\"base64\"") => {}
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "encoding_format",
                "`encoding_format` must be \"float\" or \"base64\"",
            ))
        }
    }
    let end_user = body::end_user_member("user", fields.user)?;
    Ok(ClientRequest {
        end_user,
        has_fallbacks: fields.models.is_some(),
        // Nothing is generated: the most a request costs is its input.
        max_tokens: Some(0),
        model,
        fallbacks,
        stream: false,
        include_usage: false,
        raw: bytes,
    })
}

/// Input OpenAI's embeddings API takes: a string, or a non-empty array of
/// strings, of token ids, or of non-empty token-id arrays.
fn valid_input(raw: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Items {
        Texts(Vec<String>),
        Tokens(Vec<u32>),
        TokenLists(Vec<Vec<u32>>),
    }
    if raw.get().starts_with('"') {
        return serde_json::from_str::<String>(raw.get()).is_ok();
    }
    match serde_json::from_str::<Items>(raw.get()) {
        Ok(Items::Texts(items)) => !items.is_empty(),
        Ok(Items::Tokens(ids)) => !ids.is_empty(),
        Ok(Items::TokenLists(lists)) => !lists.is_empty() && lists.iter().all(|l| !l.is_empty()),
        Err(_) => false,
    }
}

/// The text of `input` for a token estimate: its strings, one per line
/// (token ids are counted by `token_ids`).
fn input_text(input: Option<&Value>) -> String {
    match input {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// How many token ids `input` holds: each id is one input token.
fn token_ids(input: Option<&Value>) -> u64 {
    let Some(Value::Array(items)) = input else {
        return 0;
    };
    items
        .iter()
        .map(|item| match item {
            Value::Number(_) => 1,
            Value::Array(ids) => ids.iter().filter(|id| id.is_number()).count() as u64,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Result<ClientRequest, ProxyError> {
        parse_embeddings_request(Bytes::from(body.to_owned()))
    }

    #[test]
    fn every_input_shape_openai_takes_is_accepted() {
        for input in [r#""one""#, r#"["one","two"]"#, "[1,2,3]", "[[1,2],[3]]"] {
            let body = format!(r#"{{"model":"m","input":{input},"encoding_format":"base64"}}"#);
            let read = parsed(&body).map(|r| (r.stream, r.max_tokens, r.model));
            assert_eq!(read.ok(), Some((false, Some(0), "m".to_owned())), "{input}");
        }
    }

    #[test]
    fn bad_bodies_are_refused_naming_the_field() {
        for (body, param) in [
            (r#"{"input":"x"}"#, Some("model")),
            (r#"{"model":"m"}"#, Some("input")),
            (r#"{"model":"m","input":[]}"#, Some("input")),
            (r#"{"model":"m","input":[[]]}"#, Some("input")),
            (r#"{"model":"m","input":{"a":1}}"#, Some("input")),
            (
                r#"{"model":"m","input":"x","encoding_format":"int8"}"#,
                Some("encoding_format"),
            ),
            (r#"{"model":"m","input":"x","models":"n"}"#, Some("models")),
            ("[1]", None),
            ("{nope", None),
        ] {
            let refused = match parsed(body) {
                Err(ProxyError::InvalidRequest { param, .. }) => Some(param),
                _ => None,
            };
            assert_eq!(refused, Some(param), "{body}");
        }
    }

    #[test]
    fn the_estimate_reads_every_string_input() {
        let request: Value = serde_json::json!({"input": ["a b", "c"]});
        assert_eq!(OpenAiEmbeddings.request_text(&request), "a b\nc");
        let single: Value = serde_json::json!({"input": "a b"});
        assert_eq!(OpenAiEmbeddings.request_text(&single), "a b");
        let ids: Value = serde_json::json!({"input": [1, 2]});
        assert_eq!(OpenAiEmbeddings.request_text(&ids), "");
        assert_eq!(OpenAiEmbeddings.request_token_ids(&ids), 2);
        let lists: Value = serde_json::json!({"input": [[1, 2, 3], [4]]});
        assert_eq!(OpenAiEmbeddings.request_token_ids(&lists), 4);
        let texts: Value = serde_json::json!({"input": ["a b", "c"]});
        assert_eq!(OpenAiEmbeddings.request_token_ids(&texts), 0);
    }
}
