//! JSON that other languages read as warren does. serde_json skips the
//! values of unknown fields without looking closely, and warren publishes
//! `data` as it came; so a body warren accepts could still break the
//! consumers in other languages:
//!
//! - nesting: Python's `json` raises `RecursionError` near 1000 levels, so
//!   more than [`MAX_DEPTH`] levels (the envelope is the first) are refused;
//! - lone surrogate escapes (`"\ud800"`): Python keeps them in a string that
//!   cannot be encoded as UTF-8, Go replaces them with U+FFFD silently;
//! - numbers: Python refuses integers of more than 4300 digits and Go one
//!   beyond the range of a double (`1e400`) when it decodes into `any`, so a
//!   number of more than [`MAX_NUMBER_LEN`] characters or beyond a double's
//!   range is refused;
//! - bytes that are not UTF-8, even in fields warren ignores.
//!
//! [`check`] finds all of it in one pass over the bytes (it does not check
//! the syntax: serde_json does that), tracking where it is only as far as
//! needed to name the field of the first problem.

use std::fmt::Write as _;

/// The deepest nesting accepted; the envelope object is level 1, `data` 2.
pub const MAX_DEPTH: usize = 32;

/// The longest number accepted, in characters.
pub const MAX_NUMBER_LEN: usize = 100;

/// JSON that another language would not read as warren does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortableError {
    /// A byte sequence that is not UTF-8.
    #[error("the body is not UTF-8: invalid bytes at line {line} column {column}")]
    NotUtf8 {
        /// 1-based line of the first invalid byte.
        line: usize,
        /// 1-based column (in bytes) of the first invalid byte.
        column: usize,
    },
    /// Arrays or objects nested deeper than [`MAX_DEPTH`].
    #[error("`{field}` is nested deeper than {limit} levels (the envelope is level 1)")]
    TooDeep {
        /// Where the nesting goes past the limit.
        field: String,
        /// [`MAX_DEPTH`].
        limit: usize,
    },
    /// A `\uD800`–`\uDFFF` escape that is not half of a surrogate pair.
    #[error(
        "`{field}` holds a lone surrogate escape ({escape}), which is not a character: Python cannot encode it as UTF-8 and Go turns it into U+FFFD"
    )]
    LoneSurrogate {
        /// The string (or the key) that holds it.
        field: String,
        /// The escape, e.g. `\ud800`.
        escape: String,
    },
    /// A number of more than [`MAX_NUMBER_LEN`] characters, or beyond the
    /// range of a double.
    #[error("`{field}` {reason}")]
    Number {
        /// The number's field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl PortableError {
    /// The JSON path of the offending field, if there is one.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::NotUtf8 { .. } => None,
            Self::TooDeep { field, .. } | Self::LoneSurrogate { field, .. } | Self::Number { field, .. } => Some(field),
        }
    }
}

/// Checks a whole JSON document (an envelope): see the module docs.
///
/// # Errors
///
/// The first [`PortableError`] in the document.
pub fn check(json: &[u8]) -> Result<(), PortableError> {
    check_text(json).map(|_| ())
}

/// [`check`], giving the document back as the text it was found to be, so
/// that a parser can skip checking its strings' UTF-8 again
/// (`serde_json::from_str` against `from_slice`).
///
/// # Errors
///
/// The first [`PortableError`] in the document.
pub fn check_text(json: &[u8]) -> Result<&str, PortableError> {
    let text = std::str::from_utf8(json).map_err(|e| not_utf8(json, e.valid_up_to()))?;
    Scan::new(json, "", 0).run()?;
    Ok(text)
}

/// Checks the `data` of an envelope on its own: paths start with `data`,
/// and its depth counts the envelope around it.
///
/// # Errors
///
/// The first [`PortableError`] in it.
pub fn check_data(json: &[u8]) -> Result<(), PortableError> {
    std::str::from_utf8(json).map_err(|e| not_utf8(json, e.valid_up_to()))?;
    Scan::new(json, "data", 1).run()
}

/// An open array or object.
#[derive(Clone, Copy, Default)]
struct Frame {
    object: bool,
    /// In an object: the byte range of the current key.
    key: (usize, usize),
    /// In an array: the index of the current element.
    index: usize,
}

struct Scan<'a> {
    bytes: &'a [u8],
    root: &'static str,
    /// Levels around the scanned text.
    outer: usize,
    /// Fixed-size, so the common case allocates nothing.
    stack: [Frame; MAX_DEPTH],
    depth: usize,
    /// The next string of the innermost object is a key.
    key_next: bool,
}

impl<'a> Scan<'a> {
    fn new(bytes: &'a [u8], root: &'static str, outer: usize) -> Self {
        Self {
            bytes,
            root,
            outer,
            stack: [Frame::default(); MAX_DEPTH],
            depth: 0,
            key_next: false,
        }
    }

    /// Scans a document already known to be UTF-8.
    fn run(mut self) -> Result<(), PortableError> {
        let mut i = 0;
        while let Some(&b) = self.bytes.get(i) {
            i = match b {
                b'"' => self.string(i)?,
                b'{' | b'[' => self.open(i, b == b'{')?,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.key_next = false;
                    i + 1
                }
                b':' => {
                    self.key_next = false;
                    i + 1
                }
                b',' => {
                    self.next_member();
                    i + 1
                }
                b'-' | b'0'..=b'9' => self.number(i)?,
                _ => i + 1,
            };
        }
        Ok(())
    }

    fn open(&mut self, at: usize, object: bool) -> Result<usize, PortableError> {
        if self.outer + self.depth >= MAX_DEPTH {
            return Err(PortableError::TooDeep {
                field: self.path(),
                limit: MAX_DEPTH,
            });
        }
        self.stack[self.depth] = Frame {
            object,
            key: (at, at),
            index: 0,
        };
        self.depth += 1;
        self.key_next = object;
        Ok(at + 1)
    }

    fn next_member(&mut self) {
        if let Some(top) = self.depth.checked_sub(1).map(|d| &mut self.stack[d]) {
            if top.object {
                self.key_next = true;
            } else {
                top.index += 1;
            }
        }
    }

    /// Scans the string opening at `at`; returns the index after it.
    fn string(&mut self, at: usize) -> Result<usize, PortableError> {
        let is_key = self.key_next && self.depth > 0;
        let end = match scan_string(self.bytes, at + 1) {
            Ok(end) => end,
            Err(escape_at) => {
                if is_key {
                    self.stack[self.depth - 1].key = (at + 1, escape_at);
                }
                let escape = &self.bytes[escape_at..(escape_at + 6).min(self.bytes.len())];
                return Err(PortableError::LoneSurrogate {
                    field: self.path(),
                    escape: String::from_utf8_lossy(escape).into_owned(),
                });
            }
        };
        if is_key {
            self.stack[self.depth - 1].key = (at + 1, end - 1);
        }
        Ok(end)
    }

    /// Scans the number starting at `at`; returns the index after it.
    fn number(&self, at: usize) -> Result<usize, PortableError> {
        let len = self.bytes[at..]
            .iter()
            .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        let text = &self.bytes[at..at + len];
        let reason = if len > MAX_NUMBER_LEN {
            format!("is a number of more than {MAX_NUMBER_LEN} characters")
        } else if text.iter().any(|b| matches!(b, b'e' | b'E'))
            && std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(f64::is_infinite)
        {
            "is a number beyond the range of a double (about 1.8e308)".to_owned()
        } else {
            return Ok(at + len.max(1));
        };
        Err(PortableError::Number {
            field: self.path(),
            reason,
        })
    }

    /// Where the scan is: `data.tags[2]`; `.` for the whole document.
    fn path(&self) -> String {
        let mut path = String::from(self.root);
        for frame in &self.stack[..self.depth] {
            if frame.object {
                let (start, end) = frame.key;
                if end > start {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&String::from_utf8_lossy(&self.bytes[start..end.min(start + 64)]));
                }
            } else {
                let _ = write!(path, "[{}]", frame.index);
            }
            if path.len() > 256 {
                path.push('…');
                break;
            }
        }
        if path.is_empty() {
            path.push('.');
        }
        path
    }
}

/// Scans a string's content from `from` (after its opening quote): the
/// index after its closing quote, or the index of a lone surrogate escape.
fn scan_string(bytes: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    // Only quotes and escapes matter: jump to the next (SIMD where it can).
    while let Some(skip) = bytes.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
        i += skip;
        match bytes[i] {
            b'"' => return Ok(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                i = match hex4(bytes, i + 2) {
                    Some(0xD800..=0xDBFF) => {
                        let pair = bytes.get(i + 6) == Some(&b'\\') && bytes.get(i + 7) == Some(&b'u');
                        if !pair || !matches!(hex4(bytes, i + 8), Some(0xDC00..=0xDFFF)) {
                            return Err(i);
                        }
                        i + 12
                    }
                    Some(0xDC00..=0xDFFF) => return Err(i),
                    // Other escapes, and bad ones serde_json will report.
                    _ => i + 2,
                };
            }
            _ => i += 2,
        }
    }
    Ok(bytes.len())
}

/// The value of the four hex digits at `at`.
fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16)
        .ok()
        .filter(|_| !digits.starts_with('+'))
}

fn not_utf8(bytes: &[u8], at: usize) -> PortableError {
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
    PortableError::NotUtf8 { line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(json: &str) -> Option<String> {
        check(json.as_bytes()).err().and_then(|e| e.field().map(str::to_owned))
    }

    #[test]
    fn ordinary_json_passes() {
        for ok in [
            r#"{"a": [1, 2.5e3, -0, "x", {"b": null}], "c": "\ud83d\ude00 \u00e9 \\ud800 \n"}"#,
            r#""plain""#,
            "[]",
            "{}",
            "",
        ] {
            assert_eq!(check(ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn depth_counts_the_envelope_as_level_one() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check(deep(MAX_DEPTH).as_bytes()), Ok(()));
        assert!(matches!(
            check(deep(MAX_DEPTH + 1).as_bytes()),
            Err(PortableError::TooDeep { limit: 32, .. })
        ));
        let data = format!(r#"{{"x": {}}}"#, deep(MAX_DEPTH - 2));
        assert_eq!(check_data(data.as_bytes()), Ok(()));
        let data = format!(r#"{{"x": {}}}"#, deep(MAX_DEPTH - 1));
        assert_eq!(
            check_data(data.as_bytes()).unwrap_err().field(),
            Some(format!("data.x{}", "[0]".repeat(MAX_DEPTH - 2)).as_str())
        );
        let body = format!(r#"{{"data": {{"extra": {}}}}}"#, deep(10_000));
        assert!(field(&body).unwrap().starts_with("data.extra[0][0]"));
    }

    #[test]
    fn lone_surrogates_are_named_by_field() {
        assert_eq!(field(r#"{"data": {"note": "\ud800"}}"#).as_deref(), Some("data.note"));
        assert_eq!(field(r#"{"a": ["x", "ok\uDC00"]}"#).as_deref(), Some("a[1]"));
        assert_eq!(field(r#"{"a": 1, "b\ud800c": 2}"#).as_deref(), Some("b"));
        assert_eq!(
            field(r#"{"a": "\ud800\u0041"}"#).as_deref(),
            Some("a"),
            "a high half, then no low half"
        );
        assert_eq!(field(r#""\udbff""#).as_deref(), Some("."));
        let err = check(br#"{"x": "\uD800"}"#).unwrap_err();
        assert!(err.to_string().contains(r"\uD800"), "{err}");
        assert_eq!(check(br#"{"a": "\\ud800"}"#), Ok(()), "an escaped backslash, then text");
    }

    #[test]
    fn numbers_must_fit_every_reader() {
        let long = format!(r#"{{"n": {}}}"#, "9".repeat(MAX_NUMBER_LEN + 1));
        assert_eq!(field(&long).as_deref(), Some("n"));
        let fits = format!(r#"{{"n": {}}}"#, "9".repeat(MAX_NUMBER_LEN));
        assert_eq!(check(fits.as_bytes()), Ok(()));
        assert_eq!(field(r#"{"a": [1, 1e400]}"#).as_deref(), Some("a[1]"));
        assert_eq!(field(r#"{"a": -1E+309}"#).as_deref(), Some("a"));
        assert_eq!(check(br#"{"a": 1e308, "b": 1e-400}"#), Ok(()));
    }

    #[test]
    fn invalid_utf8_says_where() {
        let err = check(b"{\n  \"a\": \"x\xffy\"\n}").unwrap_err();
        assert_eq!(err, PortableError::NotUtf8 { line: 2, column: 10 });
    }

    #[test]
    fn paths_follow_arrays_and_objects() {
        let body = r#"{"a": {"b": [0, {"c": [1, 2, "\udc00"]}]}, "d": 1}"#;
        assert_eq!(field(body).as_deref(), Some("a.b[1].c[2]"));
    }
}
