//! Non-streamed upstream answers, shared by the client APIs: metered, then
//! passed through or translated by the function the client API picks.

use super::UpstreamApi;
use crate::meter::RequestMeter;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

/// Translates an upstream answer for the client (`client_model` named in it).
pub(super) type TranslateAnswer<'a> = &'a dyn Fn(&Value, &str) -> Value;
/// Translates an upstream error body (with its status) for the client.
pub(super) type TranslateError = fn(u16, &Value) -> Value;

/// A successful non-streamed upstream body → the client's response; `None`
/// for `translate` when the upstream speaks the client's API. Errors
/// (unparseable body) are retryable: nothing reached the client yet.
pub(super) fn complete_response(
    upstream: &dyn UpstreamApi,
    translate: Option<TranslateAnswer>,
    bytes: Bytes,
    meter: &mut RequestMeter,
) -> Result<Response, String> {
    if translate.is_none() {
        // Usual case: read only `usage` (the rest is skipped, not built) and
        // pass the body through untouched.
        #[derive(serde::Deserialize)]
        struct UsageProbe {
            usage: Option<Value>,
        }
        let probe: UsageProbe = serde_json::from_slice(&bytes)
            .map_err(|_| "upstream returned a body that is not a JSON object".to_owned())?;
        let reported = probe.usage.as_ref().and_then(|u| upstream.usage(u));
        if let Some(reported) = reported.filter(|r| !r.is_zero()) {
            meter.reported = Some(reported);
            return Ok(json_response(bytes));
        }
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| "upstream returned a body that is not JSON".to_owned())?;
    if !value.is_object() {
        return Err("upstream returned a JSON body that is not an object".into());
    }
    let reported = value.get("usage").and_then(|u| upstream.usage(u));
    if reported.is_none_or(|r| r.is_zero()) {
        let mut text = crate::tokenize::TextWindow::output();
        text.push_str(&upstream.response_text(&value));
        meter.output_text = text;
    }
    meter.reported = reported;
    let body = match translate {
        None => bytes,
        Some(translate) => {
            let translated = translate(&value, &meter.model_requested);
            Bytes::from(serde_json::to_vec(&translated).map_err(|e| e.to_string())?)
        }
    };
    Ok(json_response(body))
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An upstream's non-retryable error: as it came when the upstream speaks
/// the client's API (`translate` is `None`), else translated.
pub(super) fn upstream_error(
    translate: Option<TranslateError>,
    status: StatusCode,
    bytes: Bytes,
) -> Response {
    let Some(translate) = translate else {
        let mut response = json_response(bytes);
        *response.status_mut() = status;
        return response;
    };
    let value = serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|_| {
        Value::String(String::from_utf8_lossy(&bytes).chars().take(2000).collect())
    });
    (status, axum::Json(translate(status.as_u16(), &value))).into_response()
}
