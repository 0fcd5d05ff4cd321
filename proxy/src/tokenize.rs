//! Local token estimates, used only when an upstream does not report usage.
//!
//! The encodings are tiktoken-rs's (o200k for newer OpenAI families, cl100k
//! for everything else), kept compact: a `CoreBPE` holds each of its ~200k
//! tokens three times over in separate heap blocks (~46 MB resident for
//! o200k, ~24 MB for cl100k), while counting needs only "bytes → rank". On
//! first use each encoding's ordinary tokens are read out of a `CoreBPE`
//! into one byte arena and a small open-addressing table (~5 MB for
//! o200k), and the `CoreBPE` is dropped. Counting splits text with the encoding's own pattern and runs
//! the same byte-pair merge as tiktoken; a test checks the counts against
//! tiktoken-rs's on varied text.

use fancy_regex::Regex;
use std::collections::HashSet;
use std::sync::OnceLock;
use tiktoken_rs::{CoreBPE, Rank};

/// The cl100k split pattern, as tiktoken-rs builds that encoding with.
const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

/// Pieces longer than this are merged in windows of this size: the merge
/// costs the square of a piece's length, and only text with no break in
/// thousands of bytes gets here (its count is then approximate).
const MAX_PIECE_BYTES: usize = 2_048;

/// Highest rank looked for when reading an encoding out.
const MAX_RANK: Rank = 300_000;

struct Encoding {
    /// The ordinary tokens' bytes (special ones excluded), back to back.
    arena: Box<[u8]>,
    /// Per token, in arena order: where its bytes start and its rank; a
    /// token ends where the next starts (a last entry marks the end).
    tokens: Box<[(u32, Rank)]>,
    /// Linear-probing table of indexes into `tokens` (`EMPTY`: none), a
    /// power of two in size and at most half full.
    slots: Box<[u32]>,
    split: Regex,
}

const EMPTY: u32 = u32::MAX;

static O200K: OnceLock<Option<Encoding>> = OnceLock::new();
static CL100K: OnceLock<Option<Encoding>> = OnceLock::new();

/// FNV-1a over the bytes, then a Fibonacci multiply so the top bits (the
/// slot) depend on all of them.
fn slot_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Encoding {
    fn load(bpe: CoreBPE, pattern: &str) -> Option<Encoding> {
        let special: HashSet<Vec<u8>> = bpe
            .special_tokens()
            .into_iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        // Large blocks only, filled while the `CoreBPE` lives, so none of
        // the memory it frees is pinned by a small allocation of ours.
        let mut arena = Vec::new();
        let mut tokens: Vec<(u32, Rank)> = Vec::new();
        for rank in 0..MAX_RANK {
            if let Ok(bytes) = bpe.decode_bytes(&[rank]) {
                if !special.contains(&bytes) {
                    tokens.push((u32::try_from(arena.len()).ok()?, rank));
                    arena.extend_from_slice(&bytes);
                }
            }
        }
        drop(bpe);
        let count = tokens.len();
        tokens.push((u32::try_from(arena.len()).ok()?, Rank::MAX));
        let mut encoding = Encoding {
            arena: arena.into_boxed_slice(),
            tokens: tokens.into_boxed_slice(),
            slots: vec![EMPTY; (count * 2).next_power_of_two().max(2)].into_boxed_slice(),
            split: Regex::new(pattern).ok()?,
        };
        for index in 0..count {
            let mut slot = encoding.first_slot(encoding.token_bytes(index));
            while encoding.slots[slot] != EMPTY {
                slot = (slot + 1) & (encoding.slots.len() - 1);
            }
            encoding.slots[slot] = u32::try_from(index).ok()?;
        }
        Some(encoding)
    }

    fn token_bytes(&self, index: usize) -> &[u8] {
        let start = self.tokens[index].0 as usize;
        let end = self.tokens[index + 1].0 as usize;
        &self.arena[start..end]
    }

    fn first_slot(&self, bytes: &[u8]) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (slot_hash(bytes) >> (64 - bits)) as usize
    }

    /// The rank of the token with exactly these bytes, if there is one.
    fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        let mut slot = self.first_slot(bytes);
        loop {
            let index = self.slots[slot];
            if index == EMPTY {
                return None;
            }
            if self.token_bytes(index as usize) == bytes {
                return Some(self.tokens[index as usize].1);
            }
            slot = (slot + 1) & (self.slots.len() - 1);
        }
    }

    fn count(&self, text: &str) -> u64 {
        let mut total = 0;
        for piece in self.split.find_iter(text) {
            let Ok(piece) = piece else {
                // The pattern's backtracking limit: count the rest roughly.
                return total + (text.len() as u64).div_ceil(4);
            };
            for window in piece.as_str().as_bytes().chunks(MAX_PIECE_BYTES) {
                total += self.count_piece(window);
            }
        }
        total
    }

    /// Tokens in one piece: byte-pair merging, where the adjacent pair whose
    /// joined bytes have the lowest rank merges first (the leftmost on a
    /// tie), until no adjacent pair is a token.
    fn count_piece(&self, piece: &[u8]) -> u64 {
        if piece.len() <= 1 || self.rank(piece).is_some() {
            return 1;
        }
        // Part k is piece[starts[k]..starts[k + 1]]; joined[k] is the rank
        // of parts k and k + 1 together (Rank::MAX: not a token, or no k + 1).
        let mut starts: Vec<usize> = (0..=piece.len()).collect();
        let rank_joined = |starts: &[usize], k: usize| -> Rank {
            match starts.get(k + 2) {
                Some(&end) => self.rank(&piece[starts[k]..end]).unwrap_or(Rank::MAX),
                None => Rank::MAX,
            }
        };
        let mut joined: Vec<Rank> = (0..piece.len()).map(|k| rank_joined(&starts, k)).collect();
        loop {
            let mut best = (Rank::MAX, 0);
            for (k, &rank) in joined.iter().enumerate() {
                if rank < best.0 {
                    best = (rank, k);
                }
            }
            if best.0 == Rank::MAX {
                break;
            }
            let k = best.1;
            starts.remove(k + 1);
            joined.remove(k + 1);
            joined[k] = rank_joined(&starts, k);
            if k > 0 {
                joined[k - 1] = rank_joined(&starts, k - 1);
            }
        }
        (starts.len() - 1) as u64
    }
}

/// Newer OpenAI families use o200k; everything else is approximated with cl100k.
fn encoding_for(model: &str) -> Option<&'static Encoding> {
    let name = model.rsplit('/').next().unwrap_or(model);
    let o200k = [
        "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt", "gpt-oss",
    ]
    .iter()
    .any(|family| name.starts_with(family));
    if o200k {
        O200K
            .get_or_init(|| {
                let bpe = tiktoken_rs::o200k_base().ok()?;
                Encoding::load(bpe, tiktoken_rs::O200K_BASE_PAT_STR)
            })
            .as_ref()
    } else {
        CL100K
            .get_or_init(|| Encoding::load(tiktoken_rs::cl100k_base().ok()?, CL100K_PATTERN))
            .as_ref()
    }
}

/// Estimated token count of `text` for `model`.
pub fn estimate_tokens(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match encoding_for(model) {
        Some(encoding) => encoding.count(text),
        // Encodings ship inside tiktoken-rs, so this is only a safety net.
        None => (text.len() as u64).div_ceil(4),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_by_model_family() {
        assert_eq!(estimate_tokens("gpt-4o", ""), 0);
        let n = estimate_tokens("gpt-4o", "Hello world, this is a test.");
        assert!((5..=10).contains(&n), "got {n}");
        let m = estimate_tokens("claude-sonnet-4-5", "Hello world, this is a test.");
        assert!((5..=10).contains(&m), "got {m}");
    }

    /// The compact encodings count exactly as tiktoken-rs does.
    #[test]
    fn counts_match_tiktoken() {
        let mut texts: Vec<String> = vec![
            "Hello world, this is a test.".into(),
            "The quick brown fox jumps over the lazy dog. It's 12:45 and we've 3,141,592 items!"
                .into(),
            "fn main() {\n    let x: Vec<u8> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n"
                .into(),
            "Ünïcödé — naïve café, 東京タワー, مرحبا بالعالم, Привет мир 🚀🔥👍🏽".into(),
            "    indented\n\n\n\ttabs\r\nwindows line\r\n   trailing spaces   ".into(),
            "<|endoftext|> is ordinary text here, as are <|fim_prefix|> and <|endofprompt|>".into(),
            "supercalifragilisticexpialidocious antidisestablishmentarianism".into(),
            "aGVsbG8gd29ybGQ=/+ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                .into(),
            "I'LL SAY IT'S FINE; they'd've DONE it. Don't, won't, can't.".into(),
            "1234567890 3.14159 -42 1e10 0x1F 1_000_000".into(),
            "!!!???...,,,;;;:::---___===+++***&&&%%%$$$###@@@".into(),
            String::new(),
        ];
        // Long runs with no break, and a long mixed text.
        texts.push("z".repeat(700));
        texts.push("ab".repeat(300));
        texts.push(texts[1..11].join(" ").repeat(20));
        for model in ["gpt-4o", "claude-sonnet-4-5"] {
            let reference = if model == "gpt-4o" {
                tiktoken_rs::o200k_base().unwrap()
            } else {
                tiktoken_rs::cl100k_base().unwrap()
            };
            for text in &texts {
                assert_eq!(
                    estimate_tokens(model, text),
                    reference.encode_ordinary(text).len() as u64,
                    "{model}: {text:?}"
                );
            }
        }
    }
}
