//! Local token estimates, used only when an upstream does not report usage.
//!
//! The encodings are tiktoken-rs's (o200k for newer OpenAI families, cl100k
//! for everything else), kept compact: a `CoreBPE` holds each of its ~200k
//! tokens three times over in separate heap blocks (~46 MB resident for
//! o200k, ~24 MB for cl100k), while counting needs only "bytes → rank". On
//! first use each encoding's ordinary tokens are read out of a `CoreBPE`
//! into one byte arena and a small open-addressing table (~5 MB for
//! o200k), and the `CoreBPE` is dropped.
//!
//! Counting splits text as the encoding's pattern does (`split.rs`, by hand:
//! one pass, no backtracking) and runs tiktoken's byte-pair merge on each
//! piece, with a heap, so any text costs O(n log n); a test checks the
//! counts against tiktoken-rs's on varied text. A piece longer than
//! `MAX_PIECE_BYTES` (only text with no break for that long: one letter
//! repeated, a base64 blob's letters) is merged in windows of that size, so
//! its count is approximate.
//!
//! What one estimate counts is bounded ([`TextWindow`], rule in
//! `docs/events.md`): the first `PROMPT_WINDOW_BYTES` of a prompt's text and
//! `OUTPUT_WINDOW_BYTES` of an output's exactly; bytes past that are counted
//! at the tokens per byte of the counted part. Estimates run off the async
//! workers (`crate::estimate`).

mod split;

use split::{Pattern, Pieces};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::OnceLock;
use tiktoken_rs::{CoreBPE, Rank};

/// Pieces longer than this are merged in windows of this size: a bound on
/// the merge's memory; only text with no break in thousands of bytes gets
/// here (its count is then approximate).
const MAX_PIECE_BYTES: usize = 4_096;

/// Pieces shorter than this merge by scanning their parts (fewer steps
/// than a heap for the short pieces of ordinary text, as tiktoken does).
const SMALL_PIECE_BYTES: usize = 128;

/// Prompt text counted exactly per estimate. The request body is in memory
/// anyway (up to `max_body_bytes`); this bounds the time one estimate takes.
pub const PROMPT_WINDOW_BYTES: usize = 8 << 20;

/// Output text a request keeps for an estimate (1 MiB is ~250k tokens,
/// more than any model generates in one answer): the memory a stream holds
/// for its estimate whatever its length.
pub const OUTPUT_WINDOW_BYTES: usize = 1 << 20;

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
    /// The longest token's length: longer byte strings are not looked up.
    max_token_bytes: usize,
    pattern: Pattern,
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
    fn load(bpe: CoreBPE, pattern: Pattern) -> Option<Encoding> {
        let special: HashSet<Vec<u8>> = bpe
            .special_tokens()
            .into_iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        // Large blocks only, filled while the `CoreBPE` lives, so none of
        // the memory it frees is pinned by a small allocation of ours.
        let mut arena = Vec::new();
        let mut tokens: Vec<(u32, Rank)> = Vec::new();
        let mut max_token_bytes = 0;
        for rank in 0..MAX_RANK {
            if let Ok(bytes) = bpe.decode_bytes(&[rank]) {
                if !special.contains(&bytes) {
                    tokens.push((u32::try_from(arena.len()).ok()?, rank));
                    max_token_bytes = max_token_bytes.max(bytes.len());
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
            max_token_bytes,
            pattern,
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
        if bytes.len() > self.max_token_bytes {
            return None;
        }
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

    /// Tokens in `text`, or `None` if the pre-tokenizer is unavailable.
    fn count(&self, text: &str) -> Option<u64> {
        let mut total = 0;
        // A long run of one pattern (one letter repeated) gives the same
        // window again and again: its count is reused.
        let mut last_window: (&[u8], u64) = (&[], 0);
        for piece in Pieces::new(self.pattern, text)? {
            for window in piece.as_bytes().chunks(MAX_PIECE_BYTES) {
                if window.len() == MAX_PIECE_BYTES && window == last_window.0 {
                    total += last_window.1;
                    continue;
                }
                let count = self.count_piece(window);
                if window.len() == MAX_PIECE_BYTES {
                    last_window = (window, count);
                }
                total += count;
            }
        }
        Some(total)
    }

    /// Tokens in one piece: byte-pair merging, where the adjacent pair whose
    /// joined bytes have the lowest rank merges first (the leftmost on a
    /// tie), until no adjacent pair is a token.
    fn count_piece(&self, piece: &[u8]) -> u64 {
        if piece.len() <= 1 || self.rank(piece).is_some() {
            1
        } else if piece.len() < SMALL_PIECE_BYTES {
            self.merge_by_scan(piece)
        } else {
            self.merge_by_heap(piece)
        }
    }

    /// The merge for short pieces: O(n²), but few steps for small n.
    fn merge_by_scan(&self, piece: &[u8]) -> u64 {
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

    /// The same merge with the candidate pairs in a min-heap keyed by (rank,
    /// position), so the merge order is the same: O(n log n). Parts form a
    /// linked list by their start; a heap entry whose pair has changed
    /// since it was pushed is skipped (a pair's bytes only grow, so a
    /// changed pair never has its old rank again).
    fn merge_by_heap(&self, piece: &[u8]) -> u64 {
        let n = piece.len();
        // A heap entry: rank in the high half, position in the low half, so
        // one integer compare orders by (rank, position).
        let key = |rank: Rank, at: usize| Reverse((u64::from(rank) << 32) | at as u64);
        // For the part starting at i: where it ends, where the part before
        // it starts, and the rank of it joined with the next part.
        let mut end: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.saturating_sub(1)).collect();
        let mut pair: Vec<Rank> = vec![Rank::MAX; n];
        let mut initial = Vec::with_capacity(n);
        for i in 0..n - 1 {
            if let Some(rank) = self.rank(&piece[i..i + 2]) {
                pair[i] = rank;
                initial.push(key(rank, i));
            }
        }
        let mut heap = BinaryHeap::from(initial);
        let mut parts = n as u64;
        while let Some(Reverse(top)) = heap.pop() {
            let (rank, left) = ((top >> 32) as Rank, (top & u64::from(u32::MAX)) as usize);
            if pair[left] != rank {
                continue;
            }
            let right = end[left];
            let right_end = end[right];
            end[left] = right_end;
            pair[right] = Rank::MAX;
            parts -= 1;
            pair[left] = Rank::MAX;
            if right_end < n {
                prev[right_end] = left;
                if let Some(rank) = self.rank(&piece[left..end[right_end]]) {
                    pair[left] = rank;
                    heap.push(key(rank, left));
                }
            }
            if left > 0 {
                let before = prev[left];
                pair[before] = Rank::MAX;
                if let Some(rank) = self.rank(&piece[before..right_end]) {
                    pair[before] = rank;
                    heap.push(key(rank, before));
                }
            }
        }
        parts
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
            .get_or_init(|| Encoding::load(tiktoken_rs::o200k_base().ok()?, Pattern::O200k))
            .as_ref()
    } else {
        CL100K
            .get_or_init(|| Encoding::load(tiktoken_rs::cl100k_base().ok()?, Pattern::Cl100k))
            .as_ref()
    }
}

/// Exact token count of the whole of `text` for `model` (pieces past
/// `MAX_PIECE_BYTES` aside): O(n log n), with no bound on n. Estimates use
/// [`estimate_tokens`] / [`TextWindow`], which bound the text counted.
pub fn count_tokens(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    encoding_for(model)
        .and_then(|encoding| encoding.count(text))
        // Encodings ship inside tiktoken-rs, so this is only a safety net.
        .unwrap_or_else(|| (text.len() as u64).div_ceil(4))
}

/// Estimated token count of a prompt's `text` for `model`: its first
/// `PROMPT_WINDOW_BYTES` counted, the rest extrapolated (see [`TextWindow`]).
pub fn estimate_tokens(model: &str, text: &str) -> u64 {
    let counted = &text[..floor_char_boundary(text, PROMPT_WINDOW_BYTES)];
    extrapolate(model, counted, (text.len() - counted.len()) as u64)
}

/// Tokens in `counted` plus `beyond` more bytes at the same tokens per byte.
fn extrapolate(model: &str, counted: &str, beyond: u64) -> u64 {
    let exact = count_tokens(model, counted);
    if beyond == 0 {
        return exact;
    }
    if counted.is_empty() {
        return beyond.div_ceil(4);
    }
    let more = (u128::from(beyond) * u128::from(exact)).div_ceil(counted.len() as u128);
    exact.saturating_add(u64::try_from(more).unwrap_or(u64::MAX))
}

/// The largest char boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// Text kept for an estimate, with a bound on what is kept: the first
/// `limit` bytes, and the number of bytes that came after them. An estimate
/// counts the kept text exactly and the bytes after it at the kept text's
/// tokens per byte, so it costs bounded memory and time whatever the text's
/// length.
#[derive(Clone, Debug)]
pub struct TextWindow {
    kept: String,
    beyond: u64,
    limit: usize,
}

impl Default for TextWindow {
    fn default() -> TextWindow {
        TextWindow::output()
    }
}

impl TextWindow {
    pub fn new(limit: usize) -> TextWindow {
        TextWindow {
            kept: String::new(),
            beyond: 0,
            limit,
        }
    }

    /// A window for a request's output text (`OUTPUT_WINDOW_BYTES`).
    pub fn output() -> TextWindow {
        TextWindow::new(OUTPUT_WINDOW_BYTES)
    }

    /// Add text at the end.
    pub fn push_str(&mut self, text: &str) {
        let room = self.limit.saturating_sub(self.kept.len());
        if self.beyond == 0 && text.len() <= room {
            self.reserve_within_limit(text.len());
            self.kept.push_str(text);
            return;
        }
        // Once text is past the window, all later text is too: the kept
        // part stays the text's beginning.
        let cut = if self.beyond == 0 {
            floor_char_boundary(text, room)
        } else {
            0
        };
        self.reserve_within_limit(cut);
        self.kept.push_str(&text[..cut]);
        self.beyond = self.beyond.saturating_add((text.len() - cut) as u64);
    }

    /// Room for `more` bytes, without the string's doubling taking its
    /// capacity past the limit (it could reach twice the limit).
    fn reserve_within_limit(&mut self, more: usize) {
        let needed = self.kept.len() + more;
        if needed > self.kept.capacity() && self.kept.capacity().saturating_mul(2) > self.limit {
            self.kept
                .reserve_exact(self.limit.max(needed) - self.kept.len());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.beyond == 0
    }

    /// The whole text's length in bytes.
    pub fn len(&self) -> u64 {
        (self.kept.len() as u64).saturating_add(self.beyond)
    }

    /// The kept text (the beginning of the whole).
    pub fn kept(&self) -> &str {
        &self.kept
    }

    /// Estimated tokens in the whole text for `model`.
    pub fn estimate(&self, model: &str) -> u64 {
        extrapolate(model, &self.kept, self.beyond)
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
        // Pieces long enough for the heap merge, still under a window.
        texts.push("A".repeat(3_000));
        texts.push(" ".repeat(3_000) + "x");
        texts.push(pseudo_random(&LOWER_CASE, 3_000, 7));
        texts.push(pseudo_random(&BASE64, 20_000, 11));
        texts.push(pseudo_random(
            &"a \n\t.é東1'sS".chars().collect::<Vec<_>>(),
            5_000,
            3,
        ));
        for model in ["gpt-4o", "claude-sonnet-4-5"] {
            let reference = if model == "gpt-4o" {
                tiktoken_rs::o200k_base().unwrap()
            } else {
                tiktoken_rs::cl100k_base().unwrap()
            };
            for text in &texts {
                assert_eq!(
                    count_tokens(model, text),
                    reference.encode_ordinary(text).len() as u64,
                    "{model}: {text:?}"
                );
            }
        }
    }

    const LOWER_CASE: [char; 26] = [
        'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r',
        's', 't', 'u', 'v', 'w', 'x', 'y', 'z',
    ];
    const BASE64: [char; 8] = ['Q', 'z', 'k', '0', '9', '+', '/', 'w'];

    /// `len` characters drawn from `alphabet` by a xorshift seeded with `seed`.
    fn pseudo_random(alphabet: &[char], len: usize, seed: u64) -> String {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize]
            })
            .collect()
    }

    /// The heap merge and the scanning merge agree on any piece.
    #[test]
    fn heap_merge_matches_the_scanning_merge() {
        let encoding = encoding_for("gpt-4o").unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..300 {
            let len = 2 + round % 200;
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Few distinct bytes, so many merges apply.
                    b"aabbe \xc3\xa9"[(x % 8) as usize]
                })
                .collect();
            assert_eq!(
                encoding.merge_by_heap(&piece),
                encoding.merge_by_scan(&piece),
                "{piece:?}"
            );
        }
    }

    #[test]
    fn a_window_keeps_the_beginning_and_counts_the_rest() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(100);
        let mut whole = TextWindow::new(1 << 20);
        let mut bounded = TextWindow::new(1_000);
        for chunk in text.as_bytes().chunks(7) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            whole.push_str(chunk);
            bounded.push_str(chunk);
        }
        assert_eq!(whole.kept(), text);
        assert_eq!(whole.estimate("gpt-4o"), count_tokens("gpt-4o", &text));
        assert_eq!(bounded.kept(), &text[..1_000]);
        assert_eq!(bounded.len(), text.len() as u64);
        // The rest is counted at the kept part's tokens per byte.
        let kept = count_tokens("gpt-4o", &text[..1_000]);
        let expected = kept + ((text.len() as u64 - 1_000) * kept).div_ceil(1_000);
        assert_eq!(bounded.estimate("gpt-4o"), expected);
        let exact = count_tokens("gpt-4o", &text) as f64;
        assert!((bounded.estimate("gpt-4o") as f64 - exact).abs() / exact < 0.01);
    }

    #[test]
    fn a_window_never_holds_more_than_its_limit() {
        let mut window = TextWindow::new(1_000_000);
        let chunk = "x".repeat(3_001);
        for _ in 0..1_000 {
            window.push_str(&chunk);
        }
        assert_eq!(window.kept().len(), 1_000_000);
        assert!(
            window.kept.capacity() <= 1_000_000,
            "{}",
            window.kept.capacity()
        );
        assert_eq!(window.len(), 3_001_000);
    }

    #[test]
    fn a_window_cuts_at_a_character_boundary() {
        let mut window = TextWindow::new(5);
        window.push_str("ab");
        window.push_str("ééé");
        window.push_str("c");
        assert_eq!(window.kept(), "abé");
        assert_eq!(window.len(), 9);
        assert!(!window.is_empty());
        assert!(TextWindow::output().is_empty());
    }

    #[test]
    fn a_prompt_past_its_window_is_extrapolated() {
        let text = "word ".repeat(PROMPT_WINDOW_BYTES / 5 + 1_000);
        let estimate = estimate_tokens("gpt-4o", &text);
        let exact = count_tokens("gpt-4o", &text);
        assert!(estimate.abs_diff(exact) <= 2, "{estimate} vs {exact}");
    }

    /// The case: 9 MiB of one letter. Prints the time; the bound
    /// only catches a hang (the figure is for a release build).
    #[test]
    #[cfg_attr(debug_assertions, ignore = "a timing figure: run with --release")]
    fn nine_mib_of_one_letter_counts_in_bounded_time() {
        let _ = count_tokens("gpt-4o", "warm up");
        let _ = count_tokens("claude-sonnet-4-5", "warm up");
        for (name, text) in [
            ("one letter", "a".repeat(9 << 20)),
            ("base64", pseudo_random(&BASE64_FULL, 9 << 20, 5)),
            ("random letters", pseudo_random(&LOWER_CASE, 9 << 20, 9)),
            (
                "prose",
                "The quick brown fox jumps over the lazy dog. It's 12:45!\n".repeat(9 << 14),
            ),
            ("spaces", " ".repeat(9 << 20)),
        ] {
            for model in ["gpt-4o", "claude-sonnet-4-5"] {
                let started = std::time::Instant::now();
                let tokens = count_tokens(model, &text);
                let took = started.elapsed();
                eprintln!("count_tokens({model}, 9 MiB of {name}): {tokens} tokens in {took:?}");
                assert!(tokens > 0);
                assert!(took < std::time::Duration::from_secs(60), "{took:?}");
            }
        }
    }

    const BASE64_FULL: [char; 64] = [
        'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R',
        'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j',
        'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', '0', '1',
        '2', '3', '4', '5', '6', '7', '8', '9', '+', '/',
    ];
}
