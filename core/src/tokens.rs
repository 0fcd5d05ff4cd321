//! Token counts normalized across provider APIs.

use serde::{Deserialize, Serialize};

/// Token classes, normalized so that every class is billed once:
/// `input` is uncached input only (OpenAI `prompt_tokens` minus cached tokens;
/// Anthropic `input_tokens`); cached reads and cache writes are counted apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    pub input: u64,
    pub cached_input: u64,
    /// Anthropic 5-minute cache writes (and any cache write of unknown duration).
    pub cache_write_5m: u64,
    /// Anthropic 1-hour cache writes.
    pub cache_write_1h: u64,
    pub output: u64,
}

impl TokenCounts {
    /// Every input token of any class, as the upstream saw the prompt.
    pub fn total_input(&self) -> u64 {
        self.input + self.cached_input + self.cache_write_5m + self.cache_write_1h
    }

    /// All tokens, the base of the processing fee.
    pub fn total(&self) -> u64 {
        self.total_input() + self.output
    }

    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }
}
