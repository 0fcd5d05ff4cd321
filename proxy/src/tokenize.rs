//! Local token estimates (tiktoken), used only when an upstream does not
//! report usage. Encodings load lazily once; counting runs after the response.

use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();

/// Newer OpenAI families use o200k; everything else is approximated with cl100k.
fn encoding_for(model: &str) -> Option<&'static CoreBPE> {
    let name = model.rsplit('/').next().unwrap_or(model);
    let o200k = [
        "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt", "gpt-oss",
    ]
    .iter()
    .any(|family| name.starts_with(family));
    if o200k {
        O200K
            .get_or_init(|| tiktoken_rs::o200k_base().ok())
            .as_ref()
    } else {
        CL100K
            .get_or_init(|| tiktoken_rs::cl100k_base().ok())
            .as_ref()
    }
}

/// Estimated token count of `text` for `model`.
pub fn estimate_tokens(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match encoding_for(model) {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        // Encodings ship inside the crate, so this is only a safety net.
        None => (text.len() as u64).div_ceil(4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_model_family() {
        assert_eq!(estimate_tokens("gpt-4o", ""), 0);
        let n = estimate_tokens("gpt-4o", "Hello world, this is a test.");
        assert!((5..=10).contains(&n), "got {n}");
        let m = estimate_tokens("claude-sonnet-4-5", "Hello world, this is a test.");
        assert!((5..=10).contains(&m), "got {m}");
    }
}
