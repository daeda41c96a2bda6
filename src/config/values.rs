//! What each setting accepts, in plain words, and the check of one value as
//! the user wrote it. Checking before serde sees the value keeps the error
//! in the user's words (the variable or file key they set) and refuses what
//! serde would quietly bend, such as a concurrency of `1.5` read as 1.

use std::borrow::Cow;

use super::{QueueType, duration};
use crate::event::EventType;

/// A value as the user wrote it.
#[derive(Debug, Clone)]
pub(super) enum Raw {
    /// From `.env` or the environment: lists are comma separated.
    Text(String),
    /// From the settings file.
    Toml(toml::Value),
}

/// The kinds of value settings take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// Text that must not be empty nor hold control characters (a name in
    /// the broker, in the console and in every log line).
    Name,
    /// Free text sent to the broker as a short string (`app_id`): no
    /// control characters, at most 255 bytes.
    Label,
    /// Free text shown in the console and the log: no control characters.
    Line,
    /// The ingress token: trimmed when read, so it must not be blank, nor
    /// hold a control character inside.
    Token,
    Whole {
        min: u64,
        max: u64,
    },
    Bool,
    Duration,
    /// A duration above zero.
    Positive,
    /// Retry delays: durations above zero.
    Delays,
    Address,
    QueueType,
    EventTypes,
    /// `Host` names: `name` or `name:port`, no blanks or slashes.
    Hosts,
    AmqpUrl,
}

const fn whole(min: u64, max: u64) -> Kind {
    Kind::Whole { min, max }
}

/// The kind of every setting; `None` for a key that is no setting.
fn kind_of(key: &str) -> Option<Kind> {
    Some(match key {
        "amqp.url" => Kind::AmqpUrl,
        "publisher.source" => Kind::Label,
        "amqp.connection_name" => Kind::Line,
        "ingress.token" => Kind::Token,
        "webhook.url" | "webhook.path" | "webhook.secret" | "relay.database_url" | "amqp.tls_ca_file"
        | "amqp.tls_cert_file" | "amqp.tls_key_file" | "dead.export_dir" => Kind::Text,
        "topology.exchange" | "consumer.service" | "relay.table" => Kind::Name,
        // Zero means something here: no heartbeats, no drain, no retention.
        "amqp.heartbeat" | "consumer.shutdown_timeout" | "relay.retention" => Kind::Duration,
        // Zero here would fail every request, publish or delivery.
        "relay.poll_interval"
        | "ingress.header_timeout"
        | "ingress.idle_timeout"
        | "ingress.request_timeout"
        | "publisher.confirm_timeout"
        | "webhook.timeout" => Kind::Positive,
        "topology.queue_type" => Kind::QueueType,
        "topology.delivery_limit" | "consumer.retry.attempts" => whole(0, u64::from(u32::MAX)),
        "consumer.prefetch" => whole(1, u64::from(u16::MAX)),
        "consumer.concurrency" | "relay.batch_size" | "relay.pool_size" => whole(1, usize::MAX as u64),
        // Zero bytes or zero events would refuse every request.
        "ingress.max_body" | "ingress.max_batch" | "ingress.max_connections" => whole(1, usize::MAX as u64),
        "publisher.resend_on_reconnect" | "topology.declare" | "amqp.shuffle_urls" => Kind::Bool,
        "topology.quorum_initial_group_size" => whole(1, u64::from(u32::MAX)),
        "consumer.event_types" => Kind::EventTypes,
        "ingress.allowed_hosts" => Kind::Hosts,
        "consumer.retry.delays" => Kind::Delays,
        "ingress.listen" | "metrics.listen" => Kind::Address,
        _ => return None,
    })
}

/// What `key` accepts, in plain words: "a whole number from 1 to 65535".
pub(super) fn expected(key: &str) -> String {
    match kind_of(key) {
        None | Some(Kind::Text) => "text".into(),
        Some(Kind::Name) => "a name that is not empty, without control characters".into(),
        Some(Kind::Label) => "text of at most 255 bytes, without control characters".into(),
        Some(Kind::Line) => "text without control characters".into(),
        Some(Kind::Token) => "a token that is not blank, without control characters inside".into(),
        Some(Kind::Whole { min, max }) if max == usize::MAX as u64 => format!("a whole number of {min} or more"),
        Some(Kind::Whole { min, max }) => format!("a whole number from {min} to {max}"),
        Some(Kind::Bool) => "true or false".into(),
        Some(Kind::Duration) => "a duration like 500ms, 30s or 2m (a bare number is seconds)".into(),
        Some(Kind::Positive) => "a duration above zero, like 500ms, 30s or 2m (a bare number is seconds)".into(),
        Some(Kind::Delays) => "a list of durations above zero, like 1s,10s,1m".into(),
        Some(Kind::Address) => "an address like 127.0.0.1:8597 or localhost:8597".into(),
        Some(Kind::QueueType) => "quorum or classic".into(),
        Some(Kind::Hosts) => {
            "a list of host names, each alone or with a port, like warren.internal,localhost:8597".into()
        }
        Some(Kind::EventTypes) => format!("a list of event types from: {}", EventType::known_names()),
        Some(Kind::AmqpUrl) => "an AMQP URL like amqp://user:password@host:5672/%2f".into(),
    }
}

/// A variable's value as the loader takes it: blanks around it trimmed (but
/// for text settings, where they may be part of the value), and around each
/// item of a list.
pub(super) fn normalize(key: &str, value: &str) -> String {
    match kind_of(key) {
        // The token is trimmed when deserialized, wherever it was set.
        None | Some(Kind::Text | Kind::Label | Kind::Line | Kind::Token) => value.to_owned(),
        Some(Kind::Delays | Kind::EventTypes | Kind::Hosts) => {
            value.split(',').map(str::trim).collect::<Vec<_>>().join(",")
        }
        Some(_) => value.trim().to_owned(),
    }
}

/// Checks one value of `key`.
///
/// # Errors
///
/// What in particular is wrong, when more can be said than [`expected`]
/// (it never quotes the value: the caller decides whether it may be shown).
pub(super) fn check(key: &str, raw: &Raw) -> Result<(), Option<String>> {
    let Some(kind) = kind_of(key) else {
        return Err(None);
    };
    let ok = match kind {
        Kind::Delays => return check_delays(raw),
        Kind::EventTypes => return check_event_types(raw),
        Kind::Hosts => return check_hosts(raw),
        Kind::AmqpUrl => return crate::uri::check_url(&scalar(raw).ok_or(None)?).map_err(Some),
        Kind::Name => return check_name(&scalar(raw).ok_or(None)?),
        Kind::Label => return check_label(&scalar(raw).ok_or(None)?),
        Kind::Line => return control_character(&scalar(raw).ok_or(None)?),
        Kind::Token => return check_token(&scalar(raw).ok_or(None)?),
        Kind::Address => {
            return super::address::resolve(&scalar(raw).ok_or(None)?)
                .map(|_| ())
                .map_err(Some);
        }
        Kind::Text => scalar(raw).is_some(),
        Kind::Whole { min, max } => scalar(raw)
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| (min..=max).contains(&n)),
        Kind::Bool => scalar(raw).is_some_and(|s| {
            ["true", "false", "1", "0", "yes", "no", "on", "off"].contains(&s.to_lowercase().as_str())
        }),
        Kind::Duration => scalar(raw).is_some_and(|s| duration::parse(&s).is_ok()),
        Kind::Positive => scalar(raw).is_some_and(|s| duration::parse(&s).is_ok_and(|d| !d.is_zero())),
        Kind::QueueType => scalar(raw).is_some_and(|s| s.parse::<QueueType>().is_ok()),
    };
    if ok { Ok(()) } else { Err(None) }
}

fn check_name(name: &str) -> Result<(), Option<String>> {
    if name.is_empty() {
        return Err(None);
    }
    control_character(name)
}

fn check_label(text: &str) -> Result<(), Option<String>> {
    if text.len() > 255 {
        return Err(Some(format!("it is {} bytes long", text.len())));
    }
    control_character(text)
}

fn check_token(token: &str) -> Result<(), Option<String>> {
    if token.trim().is_empty() {
        return Err(Some("it is blank: unset it to accept clients without a token".into()));
    }
    control_character(token.trim())
}

/// Refuses a control character (a newline, an escape): in a queue name or a
/// log line it forges lines and moves the terminal's cursor.
fn control_character(text: &str) -> Result<(), Option<String>> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(Some(format!("it holds the control character U+{:04X}", u32::from(c)))),
        None => Ok(()),
    }
}

fn check_delays(raw: &Raw) -> Result<(), Option<String>> {
    for item in items(raw).ok_or(None)? {
        match duration::parse(&item) {
            Ok(d) if d.is_zero() => return Err(Some("a delay of zero would retry at once".into())),
            Ok(_) => {}
            Err(_) => return Err(None),
        }
    }
    Ok(())
}

fn check_event_types(raw: &Raw) -> Result<(), Option<String>> {
    for item in items(raw).ok_or(None)? {
        if EventType::find(&item).is_none() {
            return Err(Some(format!(
                "{} is not one",
                super::errors::quote(&format!("{item:?}"))
            )));
        }
    }
    Ok(())
}

fn check_hosts(raw: &Raw) -> Result<(), Option<String>> {
    for item in items(raw).ok_or(None)? {
        let bad = |c: char| c.is_whitespace() || c.is_control() || "/\\@?#,".contains(c);
        if item.is_empty() || item.contains(bad) {
            return Err(Some(
                "each name is a host, or host:port, without blanks, slashes or a scheme".into(),
            ));
        }
    }
    Ok(())
}

/// A single value as text: a TOML string as is, a number or boolean as written.
fn scalar(raw: &Raw) -> Option<Cow<'_, str>> {
    match raw {
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => Some(Cow::Borrowed(s)),
        Raw::Toml(v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_))) => {
            Some(Cow::Owned(v.to_string()))
        }
        Raw::Toml(_) => None,
    }
}

/// The items of a list: comma-separated text (empty: no items), or a TOML array.
fn items(raw: &Raw) -> Option<Vec<String>> {
    match raw {
        Raw::Text(s) if s.trim().is_empty() => Some(Vec::new()),
        Raw::Text(s) => Some(s.split(',').map(str::to_owned).collect()),
        Raw::Toml(toml::Value::Array(values)) => values
            .iter()
            .map(|v| scalar(&Raw::Toml(v.clone())).map(Cow::into_owned))
            .collect(),
        Raw::Toml(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn text(s: &str) -> Raw {
        Raw::Text(s.to_owned())
    }

    #[test]
    fn every_setting_has_a_kind_and_its_default_passes() {
        let defaults = toml::Value::try_from(Settings::default()).unwrap();
        for key in Settings::keys() {
            assert!(kind_of(&key).is_some(), "{key} has no kind in config/values.rs");
            let value = key.split('.').try_fold(&defaults, |v, part| v.get(part));
            if let Some(value) = value {
                assert_eq!(check(&key, &Raw::Toml(value.clone())), Ok(()), "default of {key}");
            }
        }
    }

    #[test]
    fn whole_numbers_are_whole_and_in_range() {
        assert_eq!(check("consumer.prefetch", &text("65535")), Ok(()));
        for bad in ["abc", "70000", "0", "-3", "1.5", ""] {
            assert!(check("consumer.prefetch", &text(bad)).is_err(), "{bad}");
        }
        assert!(check("consumer.concurrency", &text("1.5")).is_err());
        assert!(check("consumer.prefetch", &Raw::Toml(toml::Value::Integer(70000))).is_err());
        assert_eq!(expected("consumer.prefetch"), "a whole number from 1 to 65535");
        assert_eq!(expected("consumer.concurrency"), "a whole number of 1 or more");
    }

    #[test]
    fn lists_durations_and_the_rest() {
        assert_eq!(check("consumer.retry.delays", &text("1s,10s")), Ok(()));
        assert_eq!(check("consumer.retry.delays", &text("")), Ok(()));
        assert!(matches!(check("consumer.retry.delays", &text("1s,0s")), Err(Some(m)) if m.contains("zero")));
        assert!(check("consumer.retry.delays", &Raw::Toml(toml::Value::String("1s".into()))).is_err());
        assert!(matches!(
            check("consumer.event_types", &text("user.registered,user.deleted")),
            Err(Some(m)) if m.contains("\"user.deleted\"")
        ));
        assert!(check("webhook.timeout", &text("-1")).is_err());
        // A connection limit of zero would close every connection at once.
        for key in ["ingress.header_timeout", "ingress.idle_timeout"] {
            assert_eq!(check(key, &text("250ms")), Ok(()), "{key}");
            assert!(check(key, &text("0s")).is_err(), "{key}");
        }
        assert!(check("ingress.max_connections", &text("0")).is_err());
        assert_eq!(check("ingress.max_connections", &text("64")), Ok(()));
        assert!(check("publisher.resend_on_reconnect", &text("maybe")).is_err());
        assert!(check("ingress.listen", &text("localhost")).is_err());
        assert!(check("topology.queue_type", &text("stream")).is_err());
        assert!(check("consumer.service", &text("")).is_err());
        assert_eq!(
            normalize("consumer.event_types", " user.login , user.registered"),
            "user.login,user.registered"
        );
        assert_eq!(normalize("consumer.prefetch", " 5 "), "5");
        assert_eq!(normalize("ingress.token", " t "), " t ");
        assert!(matches!(check("amqp.url", &text("amqp://u:p/w@h")), Err(Some(m)) if m.contains("%2F")));
    }
}
