//! Secrets out of text: every encoding a secret takes in a formatted log line
//! (plain, percent-encoded, Debug- and JSON-escaped, base64, hex, byte lists)
//! and a [`Scrubber`] that replaces each with `***`.
//!
//! Why this is needed at all: at `trace`, lapin prints every frame it sends,
//! and the connection's `StartOk` frame carries the SASL PLAIN response
//! `\0user\0password` as a list of byte values. Filtering log targets cannot
//! stop a user who asks for `lapin=trace`; scrubbing what is written can.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Shorter encodings of a secret (and shorter secrets, in byte lists) are not
/// scrubbed: they would match ordinary text.
const MIN_NEEDLE: usize = 4;

/// Replaces known secrets, in every encoding, with [`MASK`].
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Textual forms of every secret, longest first, so that a longer form is
    /// masked whole before a shorter one inside it.
    needles: Vec<String>,
    /// The secrets' bytes, looked for in lists of byte values.
    secrets: Vec<Vec<u8>>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

impl Scrubber {
    /// A scrubber of `secrets` (empty ones are ignored).
    #[must_use]
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort();
        secrets.dedup();
        let mut needles: Vec<String> = secrets.iter().flat_map(|s| encodings(s)).collect();
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Self { needles, secrets }
    }

    /// Whether there is nothing to scrub.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every known secret, in every encoding, replaced by [`MASK`].
    #[must_use]
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = Cow::Owned(out.replace(needle.as_str(), MASK));
            }
        }
        for secret in self.secrets.iter().filter(|s| s.len() >= MIN_NEEDLE) {
            if let Some(masked) = mask_byte_lists(&out, secret) {
                out = Cow::Owned(masked);
            }
        }
        out
    }
}

/// The textual forms of `secret` that can appear in a formatted line.
fn encodings(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(text) = std::str::from_utf8(secret) {
        let debug = format!("{text:?}");
        let debug = &debug[1..debug.len() - 1];
        let json = json_escape(text);
        out.extend([text.to_owned(), debug.to_owned(), json_escape(debug), json]);
    }
    out.push(secret.escape_ascii().to_string());
    for keep in [is_unreserved as fn(u8) -> bool, |b: u8| b.is_ascii_alphanumeric()] {
        for upper in [true, false] {
            out.push(percent_encode(secret, keep, upper));
        }
    }
    out.push(hex(secret, false));
    out.push(hex(secret, true));
    for offset in 0..3 {
        out.push(base64_core(secret, offset, false));
        out.push(base64_core(secret, offset, true));
    }
    out.retain(|n| n.len() >= MIN_NEEDLE || n.as_bytes() == secret);
    out.retain(|n| !n.is_empty());
    out
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default()
        .to_owned()
}

/// RFC 3986 unreserved characters: never percent-encoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_encode(secret: &[u8], keep: fn(u8) -> bool, upper: bool) -> String {
    secret
        .iter()
        .map(|&b| match (keep(b), upper) {
            (true, _) => char::from(b).to_string(),
            (false, true) => format!("%{b:02X}"),
            (false, false) => format!("%{b:02x}"),
        })
        .collect()
}

fn hex(secret: &[u8], upper: bool) -> String {
    secret
        .iter()
        .map(|b| if upper { format!("{b:02X}") } else { format!("{b:02x}") })
        .collect()
}

/// The base64 characters that depend on `secret` alone when it sits `offset`
/// bytes (mod 3) into a longer encoded string, such as the SASL PLAIN
/// response `\0user\0password`: whatever surrounds it, they are the same.
fn base64_core(secret: &[u8], offset: usize, url_safe: bool) -> String {
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(secret);
    let encoded = if url_safe {
        URL_SAFE_NO_PAD.encode(&bytes)
    } else {
        STANDARD_NO_PAD.encode(&bytes)
    };
    // Character i holds bits 6i..6i+6; the secret holds bits 8*offset..8*(offset+len).
    let first = (8 * offset).div_ceil(6);
    let end = 8 * (offset + secret.len()) / 6;
    encoded.get(first..end).unwrap_or_default().to_owned()
}

/// `text` with every run of byte values (`112, 119, 95`, `0x70, 0x77`, or
/// hex without prefix, as `{:x?}` prints) that spells `secret` masked, or
/// `None` when there is none.
fn mask_byte_lists(text: &str, secret: &[u8]) -> Option<String> {
    let tokens = number_tokens(text);
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for run in list_runs(text, &tokens) {
        for radix in [10, 16] {
            let values: Vec<Option<u8>> = run.iter().map(|&(s, e)| byte_value(&text[s..e], radix)).collect();
            let mut i = 0;
            while i + secret.len() <= values.len() {
                if values[i..i + secret.len()]
                    .iter()
                    .zip(secret)
                    .all(|(v, b)| *v == Some(*b))
                {
                    spans.push((run[i].0, run[i + secret.len() - 1].1));
                    i += secret.len();
                } else {
                    i += 1;
                }
            }
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        if start >= at {
            out.push_str(&text[at..start]);
            out.push_str(MASK);
            at = end;
        }
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// Byte spans of the alphanumeric words of `text`.
fn number_tokens(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphanumeric() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            tokens.push((start, i));
        } else {
            i += 1;
        }
    }
    tokens
}

/// Groups tokens into runs separated by a comma and whitespace only.
fn list_runs(text: &str, tokens: &[(usize, usize)]) -> Vec<Vec<(usize, usize)>> {
    let mut runs: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut previous: Option<usize> = None;
    for &(start, end) in tokens {
        let joined = previous.is_some_and(|p| {
            let gap = text[p..start].trim();
            gap == ","
        });
        match runs.last_mut() {
            Some(run) if joined => run.push((start, end)),
            _ => runs.push(vec![(start, end)]),
        }
        previous = Some(end);
    }
    runs
}

fn byte_value(token: &str, radix: u32) -> Option<u8> {
    let digits = if radix == 16 {
        token.strip_prefix("0x").unwrap_or(token)
    } else {
        token
    };
    u8::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pw\"S3cr/t:1";

    fn scrubbed(line: &str) -> String {
        Scrubber::new([PASSWORD]).scrub(line).into_owned()
    }

    #[test]
    fn plain_escaped_and_percent_encoded_forms_are_masked() {
        for form in [
            PASSWORD.to_owned(),
            format!("{PASSWORD:?}"),
            serde_json::to_string(&format!("{PASSWORD:?}")).unwrap(),
            "pw%22S3cr%2Ft%3A1".to_owned(),
            "pw%22S3cr%2ft%3a1".to_owned(),
        ] {
            let out = scrubbed(&format!("url=amqp://u:{form}@h"));
            assert!(!out.contains("S3cr"), "{form}: {out}");
            assert!(out.contains(MASK) && out.starts_with("url=amqp://u:"), "{out}");
        }
    }

    #[test]
    fn base64_of_the_sasl_plain_response_is_masked_at_every_alignment() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        for user in ["", "u", "us", "usr", "guest"] {
            let response = format!("\0{user}\0{PASSWORD}");
            let at = 2 + user.len();
            for (encoded, at) in [
                (STANDARD.encode(&response), at),
                (URL_SAFE.encode(&response), at),
                (STANDARD.encode(PASSWORD), 0),
            ] {
                let out = scrubbed(&format!("auth={encoded} done"));
                // The characters carrying only the password's bits are gone.
                let inside = &encoded[(8 * at).div_ceil(6)..8 * (at + PASSWORD.len()) / 6];
                for i in 0..inside.len() - 3 {
                    assert!(!out.contains(&inside[i..i + 4]), "{user}: {encoded} -> {out}");
                }
                assert!(out.starts_with("auth=") && out.ends_with(" done"), "{out}");
            }
        }
    }

    #[test]
    fn byte_lists_as_lapin_prints_them_are_masked() {
        let bytes: Vec<u8> = [b"\0guest\0".as_slice(), PASSWORD.as_bytes()].concat();
        for line in [
            format!("response: LongString({bytes:?}), locale"),
            format!("{bytes:x?}"),
            format!("{bytes:#?}"),
            format!("{bytes:#x?}"),
            hex(&bytes, false),
        ] {
            let out = scrubbed(&line);
            assert!(out.contains(MASK), "{line} -> {out}");
            let secret_list = format!("{:?}", PASSWORD.as_bytes());
            assert!(!out.contains(&secret_list[1..secret_list.len() - 1]), "{out}");
        }
        let out = scrubbed(&format!("response: LongString({bytes:?}), locale"));
        assert_eq!(
            out,
            "response: LongString([0, 103, 117, 101, 115, 116, 0, ***]), locale"
        );
    }

    #[test]
    fn other_text_is_left_alone() {
        let scrubber = Scrubber::new([PASSWORD, "", "whsec_c2VjcmV0LWtleQ=="]);
        for line in ["channel=1 [1, 2, 3] heartbeat=30", "state is now waiting", ""] {
            assert_eq!(scrubber.scrub(line), line);
        }
        assert!(Scrubber::new([""; 0]).is_empty());
        assert!(!format!("{scrubber:?}").contains("whsec"));
    }
}
