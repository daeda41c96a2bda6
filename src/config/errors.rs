//! The errors of loading settings, in the user's words: the variable or file
//! key they set, the value as they gave it (unless it is a secret) and what
//! the setting accepts; and the nearest valid name for a misspelt one.

use super::Origin;
use super::layers::Entry;
use super::values::{Raw, expected};
use crate::uri::redact_url;

/// Settings whose value is never shown, not even in an error about it.
pub(super) const SECRET_KEYS: &[&str] = &["amqp.url", "ingress.token", "webhook.secret", "relay.database_url"];

/// A setting that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error(".env file {path}: {message}")]
    DotEnv { path: String, message: String },
    /// A value its setting does not accept. `given` is how the user set it:
    /// `environment variable WARREN_CONSUMER__PREFETCH=abc`,
    /// `consumer.prefetch = "abc" in /etc/warren/warren.toml`.
    #[error("{given}: must be {expected}")]
    Value {
        /// The setting (`consumer.prefetch`).
        key: String,
        given: String,
        /// What the setting accepts, in plain words.
        expected: String,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The error for `entry`'s value; `detail` says more when there is more to say.
    pub(super) fn value(entry: &Entry, detail: Option<String>) -> Self {
        let expected = expected(&entry.key);
        ConfigError::Value {
            key: entry.key.clone(),
            given: given(entry),
            expected: match detail {
                Some(detail) => format!("{expected} ({detail})"),
                None => expected,
            },
        }
    }
}

/// The error for a rule that spans settings, naming `key` as the user set it
/// (the last of `entries` that set it, or its default).
pub(super) fn setting(entries: &[Entry], key: &str, problem: &str) -> ConfigError {
    let given = entries
        .iter()
        .rev()
        .find(|e| e.key == key)
        .map_or_else(|| format!("the default of {key}"), given);
    ConfigError::Invalid(format!("{given}: {problem}"))
}

/// How the user set `entry`, with its value when it may be shown.
fn given(entry: &Entry) -> String {
    let value = shown(entry);
    match &entry.origin {
        Origin::Environment { variable } => match value {
            Some(v) => format!("environment variable {variable}={v}"),
            None => format!("environment variable {variable}"),
        },
        Origin::DotEnv { path, variable } => match value {
            Some(v) => format!("{variable}={v} in {}", path.display()),
            None => format!("{variable} in {}", path.display()),
        },
        Origin::File { path, key } => match value {
            Some(v) => format!("{key} = {v} in {}", path.display()),
            None => format!("{key} in {}", path.display()),
        },
        Origin::Default => format!("the default of {}", entry.key),
    }
}

/// The value as it may be shown: not at all for a secret, `webhook.url`
/// without its password, and cut to [`QUOTED`] bytes.
fn shown(entry: &Entry) -> Option<String> {
    if SECRET_KEYS.contains(&entry.key.as_str()) {
        return None;
    }
    let url = entry.key == "webhook.url";
    Some(quote(&match &entry.value {
        Raw::Text(s) if url => redact_url(s),
        Raw::Text(s) => s.clone(),
        Raw::Toml(toml::Value::String(s)) if url => format!("{:?}", redact_url(s)),
        Raw::Toml(v) => v.to_string(),
    }))
}

/// The most of a value (or name) an error quotes, in bytes: a value pasted
/// by mistake (a whole file, 10 MB) must not flood the terminal or the log.
pub(super) const QUOTED: usize = 100;

/// `text` as an error may quote it: control characters escaped (so a
/// newline or an escape cannot forge lines or move the cursor), and cut to
/// [`QUOTED`] bytes, saying so and how long it was.
pub(super) fn quote(text: &str) -> String {
    quote_at_most(text, QUOTED)
}

/// [`quote`] with a limit of `max` bytes.
pub(super) fn quote_at_most(text: &str, max: usize) -> String {
    let cut = crate::event::truncate(text, max);
    let mut out: String = cut
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if cut.len() < text.len() {
        out.push_str(&format!("… (cut: {} bytes in all)", text.len()));
    }
    out
}

/// The candidate nearest to `name` (ignoring case) when it is near enough
/// to be what was meant: a few edits, a quarter of the name at most.
pub(super) fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_uppercase();
    let limit = (name.len() / 4).max(2);
    candidates
        .into_iter()
        // The distance is at least the difference in length: a name far
        // longer than any candidate (a pasted file) costs nothing to skip.
        .filter(|c| c.len().abs_diff(name.len()) <= limit)
        .map(|c| (distance(&name, &c.to_uppercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance: insertions, deletions and substitutions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_are_suggested_and_far_ones_are_not() {
        let names = ["WARREN_CONSUMER__PREFETCH", "WARREN_CONSUMER__SERVICE", "AMQP_URL"];
        assert_eq!(
            nearest("WARREN_CONSUMER__PREFECH", names),
            Some("WARREN_CONSUMER__PREFETCH")
        );
        assert_eq!(
            nearest("warren_consumer_prefetch", names),
            Some("WARREN_CONSUMER__PREFETCH")
        );
        assert_eq!(nearest("WARREN_NOPE", names), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
