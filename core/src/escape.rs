//! Text that came from a client or an upstream, made safe to put in a log
//! line: `Escaped(text)` displays it with control characters written as
//! escapes (`\n`, `\r`, `\t`, `\u{1b}` …), so nobody can end a log line,
//! forge the next one or send terminal escape sequences through a model
//! name, a header or an upstream's error text. Backslashes are doubled, so
//! an escape in the output always means the character, not a look-alike
//! the sender typed. Structured (JSON) logs take the escaped text as an
//! ordinary string.

use std::fmt::{self, Write};

/// Displays the text with control characters (and the Unicode line and
/// bidirectional-override characters) escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escaped<'a>(pub &'a str);

/// Whether `c` is written as an escape.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        // Line and paragraph separators end lines in some viewers; the
        // bidirectional overrides reorder what a reader sees.
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut clean_from = 0;
        for (at, c) in self.0.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            // Runs of ordinary text are written whole.
            f.write_str(&self.0[clean_from..at])?;
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                other => write!(f, "\\u{{{:x}}}", u32::from(other))?,
            }
            clean_from = at + c.len_utf8();
        }
        f.write_str(&self.0[clean_from..])
    }
}

/// `text` as an owned escaped string (for a value that is built up first).
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = write!(out, "{}", Escaped(text));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let text = "gpt-4o\n2026-12-07T12:00:00Z  INFO forged\x1b[31m red\r\t\0\u{7f}\u{85}";
        assert_eq!(
            Escaped(text).to_string(),
            "gpt-4o\\n2026-12-07T12:00:00Z  INFO forged\\u{1b}[31m red\\r\\t\\u{0}\\u{7f}\\u{85}"
        );
    }

    #[test]
    fn ordinary_text_is_unchanged_and_backslashes_are_doubled() {
        assert_eq!(
            Escaped("claude-sonnet-4-5 · 東京 🚀").to_string(),
            "claude-sonnet-4-5 · 東京 🚀"
        );
        // A typed `\n` cannot pass for an escaped newline.
        assert_eq!(Escaped("a\\nb").to_string(), "a\\\\nb");
        assert_eq!(escaped("x\u{2028}y\u{202e}z"), "x\\u{2028}y\\u{202e}z");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn the_output_never_holds_a_control_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = escaped(&all);
        assert!(!out.chars().any(needs_escape_but_backslash), "{out}");
    }

    fn needs_escape_but_backslash(c: char) -> bool {
        c != '\\' && needs_escape(c)
    }
}
