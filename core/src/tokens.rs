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
    /// The part of `output` the model spent reasoning, when the provider
    /// reports it (OpenAI `completion_tokens_details.reasoning_tokens`, the
    /// Responses API's `output_tokens_details.reasoning_tokens`). Already
    /// counted in `output` and billed there, once; absent from events = 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TokenCounts {
    /// Every input token of any class, as the upstream saw the prompt.
    pub fn total_input(&self) -> u64 {
        self.input + self.cached_input + self.cache_write_5m + self.cache_write_1h
    }

    /// All tokens, the base of the processing fee (`reasoning` is a part of
    /// `output`, not added to it).
    pub fn total(&self) -> u64 {
        self.total_input() + self.output
    }

    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reasoning_is_written_only_when_reported_and_read_as_zero_when_absent() {
        let plain = TokenCounts {
            input: 1,
            output: 9,
            ..TokenCounts::default()
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(
            json,
            r#"{"input":1,"cached_input":0,"cache_write_5m":0,"cache_write_1h":0,"output":9}"#
        );
        assert_eq!(serde_json::from_str::<TokenCounts>(&json).unwrap(), plain);
        let reasoned = TokenCounts {
            reasoning: 7,
            ..plain
        };
        let json = serde_json::to_string(&reasoned).unwrap();
        assert!(json.ends_with(r#""output":9,"reasoning":7}"#), "{json}");
        assert_eq!(
            serde_json::from_str::<TokenCounts>(&json).unwrap(),
            reasoned
        );
        // A part of output, not added to it.
        assert_eq!(reasoned.total(), plain.total());
    }
}
