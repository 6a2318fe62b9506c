//! Text taken from a participant's answer, made fit to store and publish.
//!
//! PostgreSQL `text` and `jsonb` refuse NUL, so one NUL in an error body
//! made the store refuse the saga's transition for good; other control
//! characters break log lines and terminals. Whatever a participant says is
//! escaped and bounded before it reaches a saga.

use std::fmt::Write as _;

/// `text` with control characters escaped (`\n`, `\r`, `\t`, otherwise
/// `\uXXXX`, so nothing stored holds a NUL or breaks a line) and cut to
/// `max_chars` characters, an ellipsis marking the cut.
pub fn storable(text: &str, max_chars: usize) -> String {
    cut(&escape_controls(text), max_chars)
}

/// Control characters (C0, DEL, C1) and the Unicode line and paragraph
/// separators written as escapes; everything else as it is.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The first `max_chars` characters of `text`, plus `…` if there were more.
pub fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_other_controls_are_escaped() {
        assert_eq!(escape_controls("a\0b"), "a\\u0000b");
        assert_eq!(
            escape_controls("x\u{1b}[31m\u{7f}\u{85}"),
            "x\\u001b[31m\\u007f\\u0085"
        );
        assert_eq!(escape_controls("l1\nl2\r\tz"), "l1\\nl2\\r\\tz");
        assert_eq!(escape_controls("a\u{2028}b"), "a\\u2028b");
        assert_eq!(escape_controls("ünïcødé ✓ \\u0000"), "ünïcødé ✓ \\u0000");
    }

    #[test]
    fn storable_text_is_bounded_after_escaping() {
        let nuls = "\0".repeat(100);
        let stored = storable(&nuls, 50);
        assert_eq!(stored.chars().count(), 51);
        assert!(stored.ends_with('…'));
        assert!(!stored.contains('\0'));
        assert_eq!(storable("short", 50), "short");
        assert_eq!(cut("ééé", 2), "éé…");
    }
}
