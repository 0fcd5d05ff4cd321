//! The encodings' pre-tokenizers, written out by hand.
//!
//! tiktoken splits text with a regular expression before merging bytes
//! (`CL100K_PATTERN`, `O200K_PATTERN` in the tests). Run by `fancy-regex`,
//! those patterns cost ~10 MB/s on prose, and a long whitespace run exceeds
//! its backtracking limit (the rest of the text was then only guessed).
//! The scanners below take each alternative in the pattern's order, with
//! the same greedy, possessive and look-ahead rules, in one pass: every
//! character is looked at a bounded number of times. The tests compare
//! them with the patterns run by `fancy-regex` on random text.

use std::sync::OnceLock;

/// Character classes, as bits.
const LETTER: u8 = 1; // \p{L}
const NUMBER: u8 = 2; // \p{N}
const SPACE: u8 = 4; // \s
const UPPER: u8 = 8; // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
const LOWER: u8 = 16; // [\p{Ll}\p{Lm}\p{Lo}\p{M}]

/// Which pattern a scanner follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pattern {
    Cl100k,
    O200k,
}

/// Each character's classes: a table for ASCII, sorted ranges beyond.
struct Classes {
    ascii: [u8; 128],
    /// (first, last, classes), sorted and disjoint; absent: no class.
    ranges: Box<[(u32, u32, u8)]>,
}

impl Classes {
    /// Built from `regex-syntax`'s Unicode tables, the ones `fancy-regex`
    /// matches the patterns with.
    fn build() -> Option<Classes> {
        let sets: [(u8, &str); 5] = [
            (LETTER, r"\p{L}"),
            (NUMBER, r"\p{N}"),
            (SPACE, r"\s"),
            (UPPER, r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"),
            (LOWER, r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"),
        ];
        let mut classes: Vec<(u8, Vec<(u32, u32)>)> = Vec::new();
        for (bit, pattern) in sets {
            let hir = regex_syntax::parse(pattern).ok()?;
            let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) =
                hir.kind()
            else {
                return None;
            };
            let ranges = class
                .ranges()
                .iter()
                .map(|r| (u32::from(r.start()), u32::from(r.end())))
                .collect();
            classes.push((bit, ranges));
        }
        let member = |ranges: &[(u32, u32)], c: u32| {
            ranges
                .binary_search_by(|&(lo, hi)| {
                    if hi < c {
                        std::cmp::Ordering::Less
                    } else if lo > c {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
        };
        let mask_of = |c: u32| {
            classes
                .iter()
                .filter(|(_, ranges)| member(ranges, c))
                .fold(0u8, |mask, (bit, _)| mask | bit)
        };
        let mut ascii = [0u8; 128];
        for (c, slot) in ascii.iter_mut().enumerate() {
            *slot = mask_of(c as u32);
        }
        // Every place a class starts or stops bounds a run of one mask.
        let mut cuts: Vec<u32> = vec![128, 0x11_0000];
        for (_, ranges) in &classes {
            for &(lo, hi) in ranges {
                cuts.extend([lo.max(128), (hi + 1).max(128)]);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut ranges: Vec<(u32, u32, u8)> = Vec::new();
        for pair in cuts.windows(2) {
            let (lo, hi) = (pair[0], pair[1] - 1);
            let mask = mask_of(lo);
            if mask == 0 {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.2 == mask && last.1 + 1 == lo => last.1 = hi,
                _ => ranges.push((lo, hi, mask)),
            }
        }
        Some(Classes {
            ascii,
            ranges: ranges.into_boxed_slice(),
        })
    }

    fn of(&self, c: char) -> u8 {
        let c = u32::from(c);
        if let Some(&mask) = self.ascii.get(c as usize) {
            return mask;
        }
        let at = self.ranges.partition_point(|&(_, hi, _)| hi < c);
        match self.ranges.get(at) {
            Some(&(lo, _, mask)) if lo <= c => mask,
            _ => 0,
        }
    }
}

fn classes() -> Option<&'static Classes> {
    static CLASSES: OnceLock<Option<Classes>> = OnceLock::new();
    CLASSES.get_or_init(Classes::build).as_ref()
}

/// Splits a text into the pieces its pattern would match, one after the
/// other (the patterns match at every position, so nothing is skipped).
pub(crate) struct Pieces<'a> {
    text: &'a str,
    at: usize,
    pattern: Pattern,
    classes: &'static Classes,
}

impl<'a> Pieces<'a> {
    /// `None` only if the Unicode tables cannot be built (not expected).
    pub(crate) fn new(pattern: Pattern, text: &'a str) -> Option<Pieces<'a>> {
        Some(Pieces {
            text,
            at: 0,
            pattern,
            classes: classes()?,
        })
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.at;
        let scan = Scan {
            text: self.text,
            classes: self.classes,
        };
        let (_, _, after_first) = scan.char_at(start)?;
        let end = match self.pattern {
            Pattern::Cl100k => scan.cl100k(start),
            Pattern::O200k => scan.o200k(start),
        }
        // Not expected: every character starts some alternative. One
        // character then stands alone, and the scan goes on.
        .unwrap_or(after_first);
        self.at = end;
        self.text.get(start..end)
    }
}

struct Scan<'a> {
    text: &'a str,
    classes: &'a Classes,
}

impl Scan<'_> {
    /// The character at byte `i`, its classes and where the next one starts.
    fn char_at(&self, i: usize) -> Option<(char, u8, usize)> {
        let byte = *self.text.as_bytes().get(i)?;
        if byte < 0x80 {
            return Some((char::from(byte), self.classes.ascii[byte as usize], i + 1));
        }
        let c = self.text.get(i..)?.chars().next()?;
        Some((c, self.classes.of(c), i + c.len_utf8()))
    }

    /// Where the run of characters from `i` that `keep` accepts ends.
    fn run(&self, mut i: usize, keep: impl Fn(char, u8) -> bool) -> usize {
        while let Some((c, mask, next)) = self.char_at(i) {
            if !keep(c, mask) {
                break;
            }
            i = next;
        }
        i
    }

    /// The character at `i` if `accept` takes it: where the next one starts.
    fn one(&self, i: usize, accept: impl Fn(char, u8) -> bool) -> Option<usize> {
        self.char_at(i)
            .and_then(|(c, mask, next)| accept(c, mask).then_some(next))
    }

    /// `(?i:[sdmt]|ll|ve|re)` (cl100k, after its apostrophe) or
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` (o200k): the end of the match at `i`.
    fn contraction(&self, i: usize, pattern: Pattern) -> Option<usize> {
        // Unicode case folding: `s` also matches U+017F (long s).
        let is = |want: char| {
            move |c: char, _: u8| c.eq_ignore_ascii_case(&want) || (want == 's' && c == '\u{17f}')
        };
        let pairs = [('l', 'l'), ('v', 'e'), ('r', 'e')];
        match pattern {
            Pattern::Cl100k => {
                for single in ['s', 'd', 'm', 't'] {
                    if let Some(end) = self.one(i, is(single)) {
                        return Some(end);
                    }
                }
                pairs
                    .iter()
                    .find_map(|&(a, b)| self.one(self.one(i, is(a))?, is(b)))
            }
            Pattern::O200k => {
                let i = self.one(i, |c, _| c == '\'')?;
                let two = |(a, b): (char, char)| self.one(self.one(i, is(a))?, is(b));
                self.one(i, is('s'))
                    .or_else(|| self.one(i, is('t')))
                    .or_else(|| two(('r', 'e')))
                    .or_else(|| two(('v', 'e')))
                    .or_else(|| self.one(i, is('m')))
                    .or_else(|| two(('l', 'l')))
                    .or_else(|| self.one(i, is('d')))
            }
        }
    }

    /// `[^\r\n\p{L}\p{N}]`: where the character after a match at `i` starts.
    fn prefix(&self, i: usize) -> Option<usize> {
        self.one(i, |c, mask| {
            c != '\r' && c != '\n' && mask & (LETTER | NUMBER) == 0
        })
    }

    /// `[^\s\p{L}\p{N}]`
    fn is_other(mask: u8) -> bool {
        mask & (LETTER | NUMBER | SPACE) == 0
    }

    /// The whitespace alternatives shared by both patterns, from `i`:
    /// `\s*[\r\n]` (cl100k) / `\s*[\r\n]+` (o200k) end after the run's last
    /// line break; `\s+(?!\S)` ends before the run's last character unless
    /// the run ends the text; then `\s` / `\s+`.
    fn whitespace(&self, i: usize, pattern: Pattern) -> Option<usize> {
        let mut last_break = None;
        let mut last_start = i;
        let mut count = 0usize;
        let mut at = i;
        while let Some((c, mask, next)) = self.char_at(at) {
            if mask & SPACE == 0 {
                break;
            }
            if c == '\r' || c == '\n' {
                last_break = Some(next);
            }
            last_start = at;
            count += 1;
            at = next;
        }
        let run_end = at;
        if count == 0 {
            return None;
        }
        let at_text_end = run_end == self.text.len();
        if pattern == Pattern::Cl100k && at_text_end {
            return Some(run_end); // \s++$
        }
        if let Some(end) = last_break {
            return Some(end);
        }
        if at_text_end {
            return Some(run_end); // o200k: \s+(?!\S) at the end
        }
        if count >= 2 {
            return Some(last_start);
        }
        // `\s` / `\s+` over a single character.
        Some(run_end)
    }

    /// `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|
    /// ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`
    fn cl100k(&self, i: usize) -> Option<usize> {
        let apostrophe = self.one(i, |c, _| c == '\'');
        if let Some(end) = apostrophe.and_then(|after| self.contraction(after, Pattern::Cl100k)) {
            return Some(end);
        }
        // Possessive prefix: once taken it is not given back.
        let letters_from = self.prefix(i).unwrap_or(i);
        let letters_end = self.run(letters_from, |_, mask| mask & LETTER != 0);
        if letters_end > letters_from {
            return Some(letters_end);
        }
        let mut digits_end = i;
        for _ in 0..3 {
            match self.one(digits_end, |_, mask| mask & NUMBER != 0) {
                Some(next) => digits_end = next,
                None => break,
            }
        }
        if digits_end > i {
            return Some(digits_end);
        }
        if let Some(end) = self.other_run(i, |c| c == '\r' || c == '\n') {
            return Some(end);
        }
        self.whitespace(i, Pattern::Cl100k)
    }

    /// ` ?[^\s\p{L}\p{N}]+` then the characters `tail` accepts.
    fn other_run(&self, i: usize, tail: impl Fn(char) -> bool) -> Option<usize> {
        let from = self.one(i, |c, _| c == ' ').unwrap_or(i);
        let others_end = self.run(from, |_, mask| Self::is_other(mask));
        if others_end == from {
            // Without the space the run would start with it: no match.
            return None;
        }
        Some(self.run(others_end, |c, _| tail(c)))
    }

    /// `[^\r\n\p{L}\p{N}]?[U]*[W]+C?|[^\r\n\p{L}\p{N}]?[U]+[W]*C?|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+` where U is
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`, W `[\p{Ll}\p{Lm}\p{Lo}\p{M}]` and
    /// C the contractions.
    fn o200k(&self, i: usize) -> Option<usize> {
        // The optional prefix is tried taken first, then not (backtracking).
        let starts = [self.prefix(i), Some(i)];
        for &from in starts.iter().flatten() {
            if let Some(end) = self.upper_then_lower(from) {
                return Some(self.contraction(end, Pattern::O200k).unwrap_or(end));
            }
        }
        for &from in starts.iter().flatten() {
            let uppers_end = self.run(from, |_, mask| mask & UPPER != 0);
            if uppers_end > from {
                let end = self.run(uppers_end, |_, mask| mask & LOWER != 0);
                return Some(self.contraction(end, Pattern::O200k).unwrap_or(end));
            }
        }
        let mut digits_end = i;
        for _ in 0..3 {
            match self.one(digits_end, |_, mask| mask & NUMBER != 0) {
                Some(next) => digits_end = next,
                None => break,
            }
        }
        if digits_end > i {
            return Some(digits_end);
        }
        if let Some(end) = self.other_run(i, |c| c == '\r' || c == '\n' || c == '/') {
            return Some(end);
        }
        self.whitespace(i, Pattern::O200k)
    }

    /// `[U]*[W]+` from `i`: the greedy `[U]*` gives characters back until a
    /// `[W]` can start, so the match ends after the upper run's lower tail,
    /// or just after the run's last character that is also lower.
    fn upper_then_lower(&self, i: usize) -> Option<usize> {
        let uppers_end = self.run(i, |_, mask| mask & UPPER != 0);
        let lowers_end = self.run(uppers_end, |_, mask| mask & LOWER != 0);
        if lowers_end > uppers_end {
            return Some(lowers_end);
        }
        // Give back: the last character of the upper run that is also lower.
        let run = self.text.get(i..uppers_end)?;
        run.char_indices()
            .rev()
            .find(|&(_, c)| self.classes.of(c) & LOWER != 0)
            .map(|(at, c)| i + at + c.len_utf8())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

    fn regex_pieces(pattern: &str, text: &str) -> Vec<String> {
        let regex = fancy_regex::Regex::new(pattern).unwrap();
        regex
            .find_iter(text)
            .map(|m| m.unwrap().as_str().to_owned())
            .collect()
    }

    fn scanned(pattern: Pattern, text: &str) -> Vec<String> {
        Pieces::new(pattern, text)
            .unwrap()
            .map(str::to_owned)
            .collect()
    }

    /// Characters that exercise every class and alternative: ASCII letters
    /// of both cases (some in contractions), digits, other numbers, the
    /// apostrophe, punctuation and `/`, several kinds of whitespace and
    /// line breaks, long s, titlecase, modifier and other letters, marks.
    const ALPHABET: &[char] = &[
        'a', 'B', 's', 'S', 't', 'l', 'L', 'v', 'e', 'r', 'm', 'd', 'D', '\'', '\'', '1', '2', '½',
        '٣', '!', '/', '.', ' ', ' ', ' ', '\t', '\n', '\r', '\u{a0}', '\u{2028}', '\u{17f}', 'ǅ',
        'ʰ', '東', 'é', 'Ж', 'ж', '\u{301}', '\u{903}', '🚀', '_', '\u{b}',
    ];

    #[test]
    fn scanners_split_as_the_patterns_do() {
        let o200k = tiktoken_rs::O200K_BASE_PAT_STR;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut texts: Vec<String> = vec![
            String::new(),
            "Hello world, it's 12:45!\n\n  indented\r\n\ttab  ".into(),
            "I'LL SAY IT'S FINE; they'd've DONE it. Don't".into(),
            "camelCaseWORDSAnd ÉCOLE école Ǆemal ʰa \u{301}x".into(),
            "a/b\n/c !!\n\n/ x".into(),
            " ".repeat(50) + "x",
            "\n".to_owned() + &" ".repeat(50) + "x",
            " \n \n \n   ".into(),
        ];
        for _ in 0..3000 {
            let len = 1 + (seed % 40) as usize;
            let mut text = String::new();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push(ALPHABET[(seed % ALPHABET.len() as u64) as usize]);
            }
            texts.push(text);
        }
        for text in &texts {
            assert_eq!(
                scanned(Pattern::Cl100k, text),
                regex_pieces(CL100K_PATTERN, text),
                "cl100k: {text:?}"
            );
            assert_eq!(
                scanned(Pattern::O200k, text),
                regex_pieces(o200k, text),
                "o200k: {text:?}"
            );
        }
    }

    #[test]
    fn long_runs_split_in_one_pass() {
        for text in [
            "A".repeat(200_000),
            " ".repeat(200_000),
            "é".repeat(100_000),
        ] {
            for pattern in [Pattern::Cl100k, Pattern::O200k] {
                let pieces = scanned(pattern, &text);
                assert!(pieces.len() <= 2, "{pattern:?}: {} pieces", pieces.len());
                assert_eq!(pieces.concat(), text);
            }
        }
    }
}
