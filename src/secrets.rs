//! Secrets out of text: a [`Scrubber`] that masks each known secret with
//! `***` where a secret sits (a URI's user info, an `Authorization` header,
//! a key named `password` or `token`, the SASL PLAIN response as lapin
//! prints it), in every encoding it takes there (plain, percent-encoded,
//! Debug- and JSON-escaped, base64, hex, byte lists).
//!
//! Why this is needed at all: at `trace`, lapin prints every frame it sends,
//! and the connection's `StartOk` frame carries the SASL PLAIN response
//! `\0user\0password` as a list of byte values. Filtering log targets cannot
//! stop a user who asks for `lapin=trace`; scrubbing what is written can.
//!
//! Why by place and not everywhere: a password such as `o`, `guest` or
//! `password` also spells ordinary words, and replacing it everywhere both
//! garbles every line (`l***gin`) and shows the password by the gap it
//! leaves (`wrong username or ***`). Only a distinctive secret (long, of
//! mixed characters, see [`distinctive`]) is also masked wherever it appears.

mod contexts;
mod stderr;

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

pub use stderr::ScrubbedStderr;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Shorter encodings of a secret are not scrubbed: they would match
/// ordinary text.
const MIN_NEEDLE: usize = 4;

/// Replaces known secrets, in every encoding, with [`MASK`] (see the module
/// documentation for where).
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Forms masked wherever they appear, longest first (so that a longer
    /// form is masked whole before a shorter one inside it): the textual
    /// forms of distinctive secrets, and the encoded forms (base64, hex) of
    /// every secret, which ordinary text does not spell.
    anywhere: Vec<String>,
    /// The textual forms of every secret, masked where a key names a secret.
    textual: Vec<String>,
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
        let mut anywhere = Vec::new();
        let mut textual = Vec::new();
        for secret in &secrets {
            let text = textual_forms(secret);
            let encoded = encoded_forms(secret).into_iter().filter(|e| !text.contains(e));
            anywhere.extend(encoded.filter(|n| n.len() >= MIN_NEEDLE));
            if distinctive(secret) {
                anywhere.extend(text.iter().cloned());
            }
            textual.extend(text);
        }
        for list in [&mut anywhere, &mut textual] {
            list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            list.dedup();
        }
        Self {
            anywhere,
            textual,
            secrets,
        }
    }

    /// Whether there is nothing to scrub.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every known secret, in every encoding, replaced by
    /// [`MASK`] where it sits; and every URI password and `Authorization`
    /// credential, known or not.
    #[must_use]
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        if text.contains("://") {
            let known = |p: &str| self.textual.iter().any(|t| t == p);
            set(&mut out, contexts::mask_userinfo(text, &known));
        }
        if let Some(masked) = contexts::mask_authorization(&out) {
            set(&mut out, masked);
        }
        for needle in &self.anywhere {
            if out.contains(needle.as_str()) {
                let masked = out.replace(needle.as_str(), MASK);
                set(&mut out, masked);
            }
        }
        if let Some(masked) = contexts::mask_key_values(&out, &self.textual) {
            set(&mut out, masked);
        }
        for secret in &self.secrets {
            if let Some(masked) = mask_byte_lists(&out, secret, distinctive(secret)) {
                set(&mut out, masked);
            }
        }
        out
    }
}

/// Replaces `out` with `masked` when they differ (so a line with nothing to
/// mask stays borrowed).
fn set(out: &mut Cow<'_, str>, masked: String) {
    if masked != **out {
        *out = Cow::Owned(masked);
    }
}

/// Whether `secret` is unlike ordinary text, so that masking it wherever it
/// appears garbles nothing and tells nothing: at least 8 bytes of at least
/// three kinds (lower case, upper case, digits, others), or 16 bytes and more.
#[must_use]
pub fn distinctive(secret: &[u8]) -> bool {
    let kinds = [
        secret.iter().any(u8::is_ascii_lowercase),
        secret.iter().any(u8::is_ascii_uppercase),
        secret.iter().any(u8::is_ascii_digit),
        secret.iter().any(|b| !b.is_ascii_alphanumeric()),
    ];
    secret.len() >= 16 || (secret.len() >= 8 && kinds.iter().filter(|k| **k).count() >= 3)
}

/// The forms of `secret` that read as text in a formatted line: as is,
/// Debug- and JSON-escaped, percent-encoded.
fn textual_forms(secret: &[u8]) -> Vec<String> {
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
    out.retain(|n| !n.is_empty());
    out.sort();
    out.dedup();
    out
}

/// The forms of `secret` that ordinary text does not spell: hex, and the
/// base64 characters that depend on it alone at each alignment.
fn encoded_forms(secret: &[u8]) -> Vec<String> {
    let mut out = vec![hex(secret, false), hex(secret, true)];
    for offset in 0..3 {
        out.push(base64_core(secret, offset, false));
        out.push(base64_core(secret, offset, true));
    }
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
/// `None` when there is none. Unless `anywhere`, only the end of a list,
/// after a zero byte, counts: the SASL PLAIN response `\0user\0password`.
fn mask_byte_lists(text: &str, secret: &[u8], anywhere: bool) -> Option<String> {
    let tokens = number_tokens(text);
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for run in list_runs(text, &tokens) {
        for radix in [10, 16] {
            let values: Vec<Option<u8>> = run.iter().map(|&(s, e)| byte_value(&text[s..e], radix)).collect();
            let mut i = 0;
            while i + secret.len() <= values.len() {
                // SASL PLAIN is `authzid \0 user \0 password`: the password
                // follows a zero and ends the list (a user named like the
                // password is not masked).
                let sasl = i > 0 && values[i - 1] == Some(0) && i + secret.len() == values.len();
                let placed = anywhere || sasl;
                if placed
                    && values[i..i + secret.len()]
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
    contexts::replace_spans(text, spans)
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

    /// Passwords that spell ordinary words: masked where they sit, and the
    /// words around them left whole.
    const WEAK: [&str; 5] = ["o", "wrong", "password", "guest", "vhost"];

    #[test]
    fn a_short_or_common_password_is_masked_where_it_sits_and_nowhere_else() {
        for password in WEAK {
            let scrubber = Scrubber::new([password]);
            for line in [
                "login refused: wrong username or password (fix amqp.url)",
                "RabbitMQ at amqp://guest:***@127.0.0.1:5672/%2f refused user \"guest\" on vhost \"/\"",
                "declared queue \"warren.user.login\" on vhost \"/\"; a guest user of host o",
            ] {
                assert_eq!(scrubber.scrub(line), line, "password {password:?}");
            }
            let bytes: Vec<u8> = [b"\0guest\0".as_slice(), password.as_bytes()].concat();
            for (line, masked) in [
                (
                    format!("cannot connect to RabbitMQ at amqp://guest:{password}@h:5672/%2f: refused"),
                    "cannot connect to RabbitMQ at amqp://guest:***@h:5672/%2f: refused".to_owned(),
                ),
                (
                    format!("userinfo: AMQPUserInfo {{ username: \"guest\", password: \"{password}\" }}"),
                    "userinfo: AMQPUserInfo { username: \"guest\", password: \"***\" }".to_owned(),
                ),
                (
                    format!("response: LongString({bytes:?}), locale"),
                    "response: LongString([0, 103, 117, 101, 115, 116, 0, ***]), locale".to_owned(),
                ),
                (
                    format!("authorization: Bearer {password}"),
                    "authorization: Bearer ***".to_owned(),
                ),
            ] {
                assert_eq!(scrubber.scrub(&line), masked, "password {password:?}");
            }
        }
    }

    #[test]
    fn only_distinctive_secrets_are_masked_anywhere() {
        assert!(distinctive(PASSWORD.as_bytes()) && distinctive(b"a-very-long-passphrase"));
        for weak in WEAK.into_iter().chain(["Password", "password1", "hunter22"]) {
            assert!(!distinctive(weak.as_bytes()), "{weak}");
        }
        let out = Scrubber::new([PASSWORD])
            .scrub(&format!("echoed {PASSWORD} here"))
            .into_owned();
        assert_eq!(out, "echoed *** here");
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
