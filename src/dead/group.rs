//! Grouping parked events as ServicePulse does: by (event type, reason,
//! error class), where the error class is the error's first line with the
//! parts that differ between occurrences of one failure (numbers, ids,
//! addresses) replaced by placeholders.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::parked::Parked;

/// One group of `warren dead stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// A stable short id (what `--group` takes): the same triple gives the
    /// same id on every run and every machine.
    pub group: String,
    pub event_type: Option<String>,
    pub reason: String,
    pub error_class: String,
    pub count: u64,
    /// First failure of the oldest and newest member (or, lacking it, their
    /// dead-lettered time).
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    /// The `.dead` queues its members are parked in.
    pub queues: Vec<String>,
}

/// The error class of an error summary: its first line, with URLs, IP
/// addresses, e-mail addresses and ids replaced by `<url>`, `<addr>`,
/// `<email>` and `<id>`, and every run of digits by `<n>`.
#[must_use]
pub fn error_class(error: &str) -> String {
    let line = error.lines().next().unwrap_or("");
    line.split_whitespace().map(class_of_word).collect::<Vec<_>>().join(" ")
}

fn class_of_word(word: &str) -> String {
    // Punctuation around a word ("(http://x)," or "id=42;") is kept.
    let core = word
        .trim_start_matches(['(', '[', '"', '\'', '<'])
        .trim_end_matches([')', ']', ',', ';', ':', '.', '"', '\'', '>']);
    let Some(at) = word.find(core).filter(|_| !core.is_empty()) else {
        return digits_to_n(word);
    };
    let (before, after) = (&word[..at], &word[at + core.len()..]);
    let value = core.split_once('=').map_or(core, |(_, v)| v);
    let key = &core[..core.len() - value.len()];
    let placeholder = if value.contains("://") {
        Some("<url>")
    } else if value.parse::<IpAddr>().is_ok() || value.parse::<SocketAddr>().is_ok() {
        Some("<addr>")
    } else if value.contains('@') && value.contains('.') {
        Some("<email>")
    } else if looks_like_id(value) {
        Some("<id>")
    } else {
        None
    };
    match placeholder {
        Some(p) => format!("{before}{}{p}{after}", digits_to_n(key)),
        None => digits_to_n(word),
    }
}

/// A UUID, or a run of 8+ hex digits with a digit in it (hashes, object ids).
fn looks_like_id(s: &str) -> bool {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    hex.len() >= 8 && hex.chars().all(|c| c.is_ascii_hexdigit()) && hex.chars().any(|c| c.is_ascii_digit())
}

fn digits_to_n(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_number = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push_str("<n>");
            }
            in_number = true;
        } else {
            // "1.5" is one number.
            if !(in_number && c == '.') {
                in_number = false;
                out.push(c);
            }
        }
    }
    out
}

/// The id of a group: 8 hex digits of the 64-bit FNV-1a hash of the triple.
#[must_use]
pub fn group_id(event_type: Option<&str>, reason: &str, error_class: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [event_type.unwrap_or(""), reason, error_class] {
        for b in part.bytes().chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:08x}", hash >> 32)
}

/// The group id of one parked event.
#[must_use]
pub fn group_of(p: &Parked) -> String {
    group_id(
        p.event_type.as_deref(),
        &p.reason,
        &error_class(p.error.as_deref().unwrap_or("")),
    )
}

/// Groups parked events, largest group first.
#[must_use]
pub fn groups<'a>(parked: impl IntoIterator<Item = &'a Parked>) -> Vec<Group> {
    let mut by_id: BTreeMap<String, Group> = BTreeMap::new();
    for p in parked {
        let class = error_class(p.error.as_deref().unwrap_or(""));
        let id = group_id(p.event_type.as_deref(), &p.reason, &class);
        let g = by_id.entry(id.clone()).or_insert_with(|| Group {
            group: id,
            event_type: p.event_type.clone(),
            reason: p.reason.clone(),
            error_class: class,
            count: 0,
            oldest: None,
            newest: None,
            queues: Vec::new(),
        });
        g.count += 1;
        if let Some(t) = p.first_failure.or(p.dead_lettered_at) {
            g.oldest = Some(g.oldest.map_or(t, |o| o.min(t)));
            g.newest = Some(g.newest.map_or(t, |n| n.max(t)));
        }
        if !g.queues.contains(&p.queue) {
            g.queues.push(p.queue.clone());
        }
    }
    let mut out: Vec<Group> = by_id.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.group.cmp(&b.group)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_with_different_numbers_is_one_class() {
        let a = error_class("HTTP 503 from http://go:8080/events after 10 s");
        let b = error_class("HTTP 503 from http://go:8080/events after 12 s\nbody: <html>");
        assert_eq!(a, b);
        assert_eq!(a, "HTTP <n> from <url> after <n> s");
        assert_eq!(
            error_class("cannot connect to http://127.0.0.1:1/events: Connection refused (os error 111)"),
            "cannot connect to <url>: Connection refused (os error <n>)"
        );
    }

    #[test]
    fn ids_and_addresses_are_stripped() {
        assert_eq!(
            error_class("user 01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a not found at 10.0.0.7:5432"),
            "user <id> not found at <addr>"
        );
        assert_eq!(
            error_class("mail to ann@example.com bounced (id=42)"),
            "mail to <email> bounced (id=<n>)"
        );
        assert_eq!(error_class("timed out after 1.5s"), "timed out after <n>s");
        assert_eq!(error_class("connect [::1]:80: refused"), "connect [::<n>]:<n>: refused");
        assert_eq!(error_class(""), "");
    }

    #[test]
    fn group_ids_are_stable_and_distinct() {
        let a = group_id(Some("user.login"), "exhausted", "HTTP <n>");
        assert_eq!(a, group_id(Some("user.login"), "exhausted", "HTTP <n>"));
        assert_eq!(a.len(), 8);
        assert_ne!(a, group_id(Some("user.login"), "permanent", "HTTP <n>"));
        assert_ne!(a, group_id(Some("user.registered"), "exhausted", "HTTP <n>"));
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(group_id(Some("ab"), "c", ""), group_id(Some("a"), "bc", ""));
    }

    fn parked(reason: &str, error: &str, t: &str) -> Parked {
        Parked {
            event_id: None,
            event_type: Some("user.login".into()),
            user_id: None,
            reason: reason.into(),
            error: Some(error.into()),
            attempts: None,
            first_failure: Some(t.parse().unwrap()),
            dead_lettered_at: None,
            queue: "s.user.login.dead".into(),
            replays: 0,
            body_size: 0,
        }
    }

    #[test]
    fn groups_count_and_span_their_members() {
        let items = [
            parked("exhausted", "HTTP 503 after 10 s", "2025-01-02T00:00:00Z"),
            parked("exhausted", "HTTP 503 after 12 s", "2025-01-01T00:00:00Z"),
            parked("permanent", "HTTP 404", "2025-01-03T00:00:00Z"),
        ];
        let g = groups(&items);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].count, g[0].reason.as_str()), (2, "exhausted"));
        assert_eq!(g[0].oldest.unwrap().to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(g[0].newest.unwrap().to_rfc3339(), "2025-01-02T00:00:00+00:00");
        assert_eq!(g[0].group, group_of(&items[0]));
        assert_eq!(g[1].count, 1);
    }
}
