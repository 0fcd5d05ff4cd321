//! Access-key tokens: generation and hashing. Only hashes are ever stored.

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

/// Every access-key token starts with this, so secret scanners can find leaked ones.
pub const ACCESS_TOKEN_PREFIX: &str = "tgk_";
/// Characters of a token shown in listings to tell keys apart.
pub const DISPLAY_PREFIX_LEN: usize = 12;
const RANDOM_LEN: usize = 40;

/// A new random access-key token (`tgk_` + 40 alphanumerics, ~238 bits).
pub fn generate_access_token() -> String {
    let random: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(RANDOM_LEN)
        .map(char::from)
        .collect();
    format!("{ACCESS_TOKEN_PREFIX}{random}")
}

/// SHA-256 of the token, hex. Tokens are long and random, so a fast hash
/// suffices (no password stretching needed) and keeps auth off the hot path.
pub fn hash_access_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token a request presents, read from its headers only (so it is
/// checked before any body byte is read): `Authorization: Bearer <token>`
/// (OpenAI SDKs, curl) or `x-api-key: <token>` (Anthropic SDKs). Every API
/// (gateway, credits, usage, admin) reads its token through this.
pub fn request_token(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            None if value.eq_ignore_ascii_case("bearer") => "",
            _ => value,
        };
        if !token.is_empty() {
            return Some(token);
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The displayable start of a token.
pub fn display_prefix(token: &str) -> String {
    token.chars().take(DISPLAY_PREFIX_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_read_from_either_sdks_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(request_token(&headers), None);
        headers.insert("x-api-key", http::HeaderValue::from_static(" tgk_b "));
        assert_eq!(request_token(&headers), Some("tgk_b"));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("BEARER tgk_a"),
        );
        assert_eq!(request_token(&headers), Some("tgk_a"));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer  "),
        );
        assert_eq!(
            request_token(&headers),
            Some("tgk_b"),
            "an empty bearer falls back"
        );
    }

    #[test]
    fn tokens_are_prefixed_unique_and_hash_stably() {
        let a = generate_access_token();
        let b = generate_access_token();
        assert!(a.starts_with(ACCESS_TOKEN_PREFIX));
        assert_eq!(a.len(), ACCESS_TOKEN_PREFIX.len() + RANDOM_LEN);
        assert_ne!(a, b);
        assert_eq!(hash_access_token(&a), hash_access_token(&a));
        assert_ne!(hash_access_token(&a), hash_access_token(&b));
        assert!(!hash_access_token(&a).contains(&a[4..]));
    }
}
