//! The error returned when a request cannot be translated.

use crate::util::obj;
use serde_json::Value;

/// Why a request could not be translated. Every message names the offending
/// field (e.g. `messages[2].tool_calls[0].function.arguments`) and is written
/// to be returned to the client verbatim as a 400 `invalid_request_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The field is malformed (wrong type, invalid JSON, out of range).
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the field, e.g. `messages[0].content`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The field is well-formed but has no equivalent in the target API.
    #[error("{field}: {what} cannot be translated to the {target} API")]
    Unsupported {
        /// JSON path of the field.
        field: String,
        /// The feature that has no equivalent.
        what: String,
        /// `"Anthropic Messages"` or `"OpenAI Chat Completions"`.
        target: &'static str,
    },
}

pub(crate) const TO_ANTHROPIC: &str = "Anthropic Messages";
pub(crate) const TO_OPENAI: &str = "OpenAI Chat Completions";

impl TranslateError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(
        field: impl Into<String>,
        what: impl Into<String>,
        target: &'static str,
    ) -> Self {
        Self::Unsupported {
            field: field.into(),
            what: what.into(),
            target,
        }
    }

    /// JSON path of the offending field.
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } | Self::Unsupported { field, .. } => field,
        }
    }

    /// The error as an OpenAI error body (`{"error":{"message","type","param","code"}}`),
    /// to send with HTTP 400.
    pub fn to_openai_error(&self) -> Value {
        obj([(
            "error",
            obj([
                ("message", Value::String(self.to_string())),
                ("type", Value::from("invalid_request_error")),
                ("param", Value::String(self.field().to_owned())),
                ("code", Value::Null),
            ]),
        )])
    }

    /// The error as an Anthropic error body (`{"type":"error","error":{...}}`),
    /// to send with HTTP 400.
    pub fn to_anthropic_error(&self) -> Value {
        obj([
            ("type", Value::from("error")),
            (
                "error",
                obj([
                    ("type", Value::from("invalid_request_error")),
                    ("message", Value::String(self.to_string())),
                ]),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_and_bodies() {
        let e = TranslateError::invalid("messages[1].content", "must be a string");
        assert_eq!(e.to_string(), "messages[1].content: must be a string");
        assert_eq!(e.field(), "messages[1].content");
        assert_eq!(
            e.to_openai_error(),
            json!({"error":{"message":"messages[1].content: must be a string",
                "type":"invalid_request_error","param":"messages[1].content","code":null}})
        );
        let u = TranslateError::unsupported("n", "n > 1", TO_ANTHROPIC);
        assert_eq!(
            u.to_string(),
            "n: n > 1 cannot be translated to the Anthropic Messages API"
        );
        assert_eq!(
            u.to_anthropic_error(),
            json!({"type":"error","error":{"type":"invalid_request_error",
                "message":"n: n > 1 cannot be translated to the Anthropic Messages API"}})
        );
    }
}
