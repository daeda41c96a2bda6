//! One parked message as an operator sees it: the event it carries and why
//! it was parked, read from its body, properties and `x-warren-*` headers.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde::Serialize;

use crate::event::headers::{self, text};

/// The `reason` of a message parked by the broker itself (not by warren's
/// consumer), when its `x-death` header says nothing: it has no
/// `x-warren-reason`.
pub const UNKNOWN_REASON: &str = "unknown";

/// A parked message, summarised (the `list` row, one `--json` line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parked {
    /// `message_id`, else the body's `event_id`; `None` for a body that has neither.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub user_id: Option<i64>,
    /// `x-warren-reason`: exhausted, permanent, malformed, invalid, unhandled;
    /// for a message the broker dead-lettered (delivery limit), `x-first-death-reason`.
    pub reason: String,
    /// `x-warren-error`, the last error.
    pub error: Option<String>,
    /// `x-warren-attempts`.
    pub attempts: Option<i64>,
    /// `x-warren-first-failure`.
    pub first_failure: Option<DateTime<Utc>>,
    /// `x-warren-dead-lettered-at` (absent on messages parked by older versions).
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// The `.dead` queue it is parked in.
    pub queue: String,
    /// `x-warren-replays`: how many times it was replayed already.
    pub replays: i64,
    pub body_size: usize,
}

impl Parked {
    /// Reads a message of `queue`.
    #[must_use]
    pub fn read(queue: &str, props: &BasicProperties, body: &[u8]) -> Self {
        let envelope = serde_json::from_slice::<serde_json::Value>(body).ok();
        let field = |k: &str| envelope.as_ref().and_then(|v| v.get(k));
        let field_str = |k: &str| field(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        Self {
            event_id: headers::message_id(props)
                .map(str::to_owned)
                .or_else(|| field_str("event_id")),
            event_type: props
                .kind()
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .or_else(|| field_str("event_type")),
            user_id: field("user_id").and_then(serde_json::Value::as_i64),
            reason: reason(props),
            error: text(props, headers::ERROR),
            attempts: headers::int(props, headers::ATTEMPTS),
            first_failure: time(props, headers::FIRST_FAILURE),
            dead_lettered_at: time(props, headers::DEAD_LETTERED_AT),
            queue: queue.to_owned(),
            replays: headers::int(props, headers::REPLAYS).unwrap_or(0),
            body_size: body.len(),
        }
    }
}

/// warren's reason, else the broker's (`delivery_limit`, `rejected`,
/// `expired`, `maxlen`), else [`UNKNOWN_REASON`].
fn reason(props: &BasicProperties) -> String {
    text(props, headers::REASON)
        .or_else(|| text(props, "x-first-death-reason"))
        .or_else(|| first_death_reason(props))
        .unwrap_or_else(|| UNKNOWN_REASON.to_owned())
}

/// The `reason` of the first `x-death` entry (brokers before 3.8 set no
/// `x-first-death-reason`).
fn first_death_reason(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn time(props: &BasicProperties, key: &str) -> Option<DateTime<Utc>> {
    let t = text(props, key)?;
    DateTime::parse_from_rfc3339(&t).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    fn props(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(h)
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn reads_the_envelope_and_warren_headers() {
        let p = props(&[
            (headers::REASON, s("exhausted")),
            (headers::ERROR, s("HTTP 503")),
            (headers::ATTEMPTS, AMQPValue::LongLongInt(4)),
            (headers::FIRST_FAILURE, s("2025-01-20T10:30:00.000Z")),
            (headers::REPLAYS, AMQPValue::LongLongInt(1)),
        ])
        .with_message_id("id-1".into())
        .with_type("user.login".into());
        let body = br#"{"event_id":"other","event_type":"x","user_id":7}"#;
        let m = Parked::read("s.user.login.dead", &p, body);
        assert_eq!(m.event_id.as_deref(), Some("id-1"), "the property wins");
        assert_eq!(m.event_type.as_deref(), Some("user.login"));
        assert_eq!(m.user_id, Some(7));
        assert_eq!(m.reason, "exhausted");
        assert_eq!(m.error.as_deref(), Some("HTTP 503"));
        assert_eq!(m.attempts, Some(4));
        assert_eq!(m.first_failure.unwrap().to_rfc3339(), "2025-01-20T10:30:00+00:00");
        assert_eq!(m.replays, 1);
        assert_eq!(m.body_size, body.len());
    }

    #[test]
    fn a_body_that_is_not_json_still_has_a_row() {
        let m = Parked::read("q.dead", &BasicProperties::default(), b"\xff garbage");
        assert_eq!(m.event_id, None);
        assert_eq!(m.reason, UNKNOWN_REASON);
        assert_eq!(m.body_size, 9);
    }

    #[test]
    fn a_message_the_broker_dead_lettered_has_its_reason() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), s("delivery_limit"));
        let p = props(&[(
            "x-death",
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        )]);
        assert_eq!(Parked::read("q.dead", &p, b"{}").reason, "delivery_limit");
        let p = props(&[("x-first-death-reason", s("rejected"))]);
        assert_eq!(Parked::read("q.dead", &p, b"{}").reason, "rejected");
    }
}
