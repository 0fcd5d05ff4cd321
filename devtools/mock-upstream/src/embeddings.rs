//! OpenAI embeddings (`POST /v1/embeddings`): request reading and response
//! rendering. Vectors are deterministic and every component is a multiple of
//! 1/16, exact in f32, so a test can compare decoded base64 with floats.

use serde_json::{json, Value};

/// Vector length when the request does not ask for `dimensions`.
pub(crate) const DEFAULT_DIMENSIONS: usize = 8;

/// What the mock needs from an embeddings request.
pub(crate) struct EmbeddingRequest {
    /// Prompt tokens per input: whitespace-separated words of a string, or
    /// the number of token ids.
    pub(crate) tokens: Vec<u64>,
    pub(crate) base64: bool,
    pub(crate) dimensions: usize,
}

/// How the reply reports usage.
#[derive(Clone, Copy)]
pub(crate) enum UsageReport {
    Honest,
    Zero,
    Omitted,
}

impl EmbeddingRequest {
    /// The request as OpenAI reads it, or why OpenAI would refuse it.
    pub(crate) fn read(body: &Value) -> Result<EmbeddingRequest, &'static str> {
        if !body.is_object() {
            return Err("request body must be a JSON object");
        }
        let tokens = match body.get("input") {
            Some(Value::String(text)) => vec![words(text)],
            Some(Value::Array(items)) if !items.is_empty() => {
                let ids = items.iter().all(Value::is_u64);
                if ids {
                    vec![items.len() as u64]
                } else {
                    items
                        .iter()
                        .map(|item| match item {
                            Value::String(text) => Ok(words(text)),
                            Value::Array(ids)
                                if !ids.is_empty() && ids.iter().all(Value::is_u64) =>
                            {
                                Ok(ids.len() as u64)
                            }
                            _ => Err("'$.input' is invalid"),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
            }
            _ => return Err("'$.input' is invalid"),
        };
        let base64 = match body.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(f)) if f == "float" => false,
            Some(Value::String(f)) if f == "base64" => true,
            Some(_) => return Err("encoding_format must be 'float' or 'base64'"),
        };
        let dimensions = match body.get("dimensions") {
            None | Some(Value::Null) => DEFAULT_DIMENSIONS,
            Some(d) => match d.as_u64() {
                Some(d @ 1..=4096) => d as usize,
                _ => return Err("dimensions must be between 1 and 4096"),
            },
        };
        Ok(EmbeddingRequest {
            tokens,
            base64,
            dimensions,
        })
    }

    /// The response body for `model`.
    pub(crate) fn response(&self, model: &str, usage: UsageReport) -> Value {
        let data: Vec<Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(index, &tokens)| {
                let vector = vector(index, tokens, self.dimensions);
                let embedding = if self.base64 {
                    Value::String(base64(&vector))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let prompt: u64 = self.tokens.iter().sum();
        let mut body = json!({"object": "list", "data": data, "model": model});
        let reported = match usage {
            UsageReport::Honest => Some(prompt),
            UsageReport::Zero => Some(0),
            UsageReport::Omitted => None,
        };
        if let Some(n) = reported {
            body["usage"] = json!({"prompt_tokens": n, "total_tokens": n});
        }
        body
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Input `index`'s vector: component `j` is `((index + tokens + j) % 16) / 16 - 0.5`.
pub fn vector(index: usize, tokens: u64, dimensions: usize) -> Vec<f32> {
    (0..dimensions)
        .map(|j| {
            let step = (index as u64 + tokens + j as u64) % 16;
            step as f32 / 16.0 - 0.5
        })
        .collect()
}

/// The vector as OpenAI's base64: little-endian f32s, standard alphabet, padded.
fn base64(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_encoding() {
        assert_eq!(base64(&[]), "");
        // 1.0f32 = 00 00 80 3f
        assert_eq!(base64(&[1.0]), "AACAPw==");
        assert_eq!(base64(&[1.0, -0.5]), "AACAPwAAAL8=");
    }

    #[test]
    fn inputs_count_words_or_token_ids() {
        let read = |body: Value| EmbeddingRequest::read(&body).map(|r| r.tokens);
        assert_eq!(read(json!({"input": "a b c"})), Ok(vec![3]));
        assert_eq!(read(json!({"input": ["a b", "c"]})), Ok(vec![2, 1]));
        assert_eq!(read(json!({"input": [5, 6, 7]})), Ok(vec![3]));
        assert_eq!(read(json!({"input": [[5, 6], [7]]})), Ok(vec![2, 1]));
        assert!(read(json!({"input": []})).is_err());
        assert!(read(json!({"model": "m"})).is_err());
        assert!(EmbeddingRequest::read(&json!({"input": "a", "encoding_format": "int8"})).is_err());
    }
}
