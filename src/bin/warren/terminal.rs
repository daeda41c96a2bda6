//! Text from outside warren (message ids, types, error summaries, header
//! values, database rows) made safe to print on a terminal. A producer
//! controls that text: raw, an escape sequence could clear the screen or
//! recolour it, and a newline could forge a line of a table. Every line a
//! person reads goes through [`text`]; JSON lines go through [`json`], which
//! keeps them the same JSON. [`ask_yes`] asks the operator before a
//! command removes something.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether a terminal could act on `c` instead of showing it: C0 controls
/// (newline and tab too: they break a table's lines and columns), DEL, C1
/// controls (U+009B is CSI on some terminals), the bidirectional overrides,
/// embeddings, isolates and marks (they reorder what is shown), and the
/// Unicode line and paragraph separators.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'
        )
}

/// `s` with each character a terminal could act on written as an escape:
/// `\n`, `\r`, `\t`, else `\u{..}` (Rust's notation); unchanged when it has none.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text (from serde_json) with the characters it leaves raw that a
/// terminal could act on (DEL, C1, bidirectional controls, separators)
/// written as `\uXXXX`: the same JSON value, safe to print. serde_json
/// already escapes the C0 controls, and outside strings JSON is ASCII, so
/// every character replaced is inside a string.
pub fn json(s: String) -> String {
    if !s.chars().any(is_unsafe) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes `prompt` to stderr and reads a line from stdin: `true` only for `yes`.
///
/// # Errors
///
/// stdin cannot be read.
pub fn ask_yes(prompt: &str) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    use std::io::BufRead as _;
    eprint!("{prompt}");
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(answer.trim() == "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            text("user.registered é ✓"),
            Cow::Borrowed("user.registered é ✓")
        ));
    }

    #[test]
    fn escapes_newlines_and_sequences_on_one_line() {
        assert_eq!(text("a\x1b[2J\nforged"), "a\\u{1b}[2J\\nforged");
        assert_eq!(text("tab\there\r"), "tab\\there\\r");
        assert_eq!(text("del\x7f nul\0"), "del\\u{7f} nul\\u{0}");
    }

    #[test]
    fn escapes_c1_and_bidi_controls() {
        assert_eq!(text("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(text("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(text("\u{2066}x\u{2069}\u{2028}"), "\\u{2066}x\\u{2069}\\u{2028}");
    }

    #[test]
    fn json_stays_the_same_json_value() {
        let value = serde_json::json!({"id": "a\x1b[2J\nforged \u{9b}1m \u{202e}x\u{7f}"});
        let raw = serde_json::to_string(&value).unwrap();
        let safe = json(raw);
        assert!(!safe.chars().any(is_unsafe), "{safe}");
        assert!(safe.contains("\\u009b") && safe.contains("\\u202e"), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), value);
    }
}
