//! The headers warren puts on retried and dead-lettered messages, and reads back.

use chrono::{SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::event::{DeadReason, truncate};

/// Attempt number of the next delivery (1 = first).
pub const ATTEMPT: &str = "x-warren-attempt";
/// Short summary of the last error.
pub const ERROR: &str = "x-warren-error";
/// Why the message is in `.dead`: exhausted, permanent, malformed, invalid, unhandled.
pub const REASON: &str = "x-warren-reason";
/// Attempts made before dead-lettering.
pub const ATTEMPTS: &str = "x-warren-attempts";
/// RFC 3339 time of the first failure.
pub const FIRST_FAILURE: &str = "x-warren-first-failure";
/// Exchange the event was first published to.
pub const ORIGINAL_EXCHANGE: &str = "x-warren-original-exchange";
/// Routing key the event was first published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-warren-original-routing-key";
/// The work queue that gave up on it.
pub const QUEUE: &str = "x-warren-queue";
/// RFC 3339 time the message was parked in `.dead`.
pub const DEAD_LETTERED_AT: &str = "x-warren-dead-lettered-at";
/// How many times `warren dead replay` sent it back; kept across retries so
/// the replay cap holds when a replayed event fails again.
pub const REPLAYS: &str = "x-warren-replays";
/// The per-message TTL (`expiration` property) the event was first
/// published with. Every copy warren makes drops the property, as the
/// broker does when it dead-letters: a parked copy must not expire, and a
/// retry must wait its tier's whole delay. The value stays visible here.
pub const ORIGINAL_EXPIRATION: &str = "x-warren-original-expiration";

/// Error summaries are cut to this many bytes: headers must stay far below
/// `frame_max`, or the broker closes the connection.
pub const MAX_ERROR_LEN: usize = 512;

/// The attempt number of a delivery: our header, else 1.
#[must_use]
pub fn attempt(props: &BasicProperties) -> u32 {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPT))
        .and_then(as_i64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

fn get_str<'a>(h: Option<&'a FieldTable>, key: &str) -> Option<&'a [u8]> {
    match h?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// Where a failed delivery came from, kept across retries.
#[derive(Debug, Clone)]
pub(crate) struct Origin<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub queue: &'a str,
}

/// Properties for republishing a failed delivery: the original properties,
/// the broker's `x-death` bookkeeping dropped, warren's headers set.
pub(crate) fn republish_properties(
    original: &BasicProperties,
    origin: &Origin<'_>,
    next_attempt: u32,
    error: &str,
    dead_reason: Option<DeadReason>,
) -> BasicProperties {
    let old = original.headers().as_ref();
    let mut headers = FieldTable::default();
    if let Some(old) = old {
        for (k, v) in old.inner() {
            let k = k.as_str();
            let ours = k.starts_with("x-warren-") && k != REPLAYS && k != ORIGINAL_EXPIRATION;
            if !ours && !k.starts_with("x-death") && !k.contains("-death-") {
                headers.insert(k.into(), v.clone());
            }
        }
    }
    let keep = |key: &str, fallback: &str| -> AMQPValue {
        let v = get_str(old, key).map_or_else(|| fallback.as_bytes().to_vec(), <[u8]>::to_vec);
        AMQPValue::LongString(v.into())
    };
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    headers.insert(FIRST_FAILURE.into(), keep(FIRST_FAILURE, &now));
    headers.insert(ORIGINAL_EXCHANGE.into(), keep(ORIGINAL_EXCHANGE, origin.exchange));
    headers.insert(
        ORIGINAL_ROUTING_KEY.into(),
        keep(ORIGINAL_ROUTING_KEY, origin.routing_key),
    );
    headers.insert(QUEUE.into(), AMQPValue::LongString(origin.queue.into()));
    headers.insert(
        ERROR.into(),
        AMQPValue::LongString(truncate(error, MAX_ERROR_LEN).into()),
    );
    match dead_reason {
        Some(reason) => {
            headers.insert(REASON.into(), AMQPValue::LongString(reason.as_str().into()));
            headers.insert(DEAD_LETTERED_AT.into(), AMQPValue::LongString(now.as_str().into()));
            headers.insert(
                ATTEMPTS.into(),
                AMQPValue::LongLongInt(i64::from(next_attempt.saturating_sub(1))),
            );
        }
        None => {
            headers.insert(ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(next_attempt)));
        }
    }
    without_expiration(&original.clone().with_headers(headers).with_delivery_mode(2))
}

/// `props` without the `expiration` property, its value kept in the
/// [`ORIGINAL_EXPIRATION`] header (unless that header is set already: the
/// first value is the original). Every copy warren publishes goes through
/// it, so no copy can expire in a queue that should keep it.
#[must_use]
pub fn without_expiration(props: &BasicProperties) -> BasicProperties {
    let Some(expiration) = props.expiration() else {
        return props.clone();
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    if !headers.inner().contains_key(ORIGINAL_EXPIRATION) {
        let value = AMQPValue::LongString(expiration.as_str().into());
        headers.insert(ORIGINAL_EXPIRATION.into(), value);
    }
    // lapin's properties have setters but no way to unset one: copy every
    // other field into a fresh value.
    let mut out = BasicProperties::default().with_headers(headers);
    macro_rules! copy {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(v) = props.$get() {
                out = out.$set(v.clone());
            })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    out
}

/// A header as text, for tests and tools.
#[must_use]
pub fn text(props: &BasicProperties, key: &str) -> Option<String> {
    get_str(props.headers().as_ref(), key).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A header as an integer.
#[must_use]
pub fn int(props: &BasicProperties, key: &str) -> Option<i64> {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
        .and_then(as_i64)
}

/// The `message_id` property as text.
#[must_use]
pub fn message_id(props: &BasicProperties) -> Option<&str> {
    props.message_id().as_ref().map(ShortString::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            exchange: "user.events",
            routing_key: "user.login",
            queue: "s.user.login",
        }
    }

    #[test]
    fn first_delivery_is_attempt_one() {
        assert_eq!(attempt(&BasicProperties::default()), 1);
    }

    #[test]
    fn retry_headers_carry_attempt_and_keep_the_first_failure_and_origin() {
        let mut old = FieldTable::default();
        old.insert("traceparent".into(), AMQPValue::LongString("00-abc-def-01".into()));
        old.insert("x-death".into(), AMQPValue::LongString("broker bookkeeping".into()));
        let p1 = republish_properties(
            &BasicProperties::default().with_headers(old),
            &origin(),
            2,
            "boom",
            None,
        );
        assert_eq!(attempt(&p1), 2);
        assert_eq!(text(&p1, "traceparent").as_deref(), Some("00-abc-def-01"));
        assert!(text(&p1, "x-death").is_none());
        let first = text(&p1, FIRST_FAILURE).unwrap();
        // Back from the retry queue: exchange "" and the queue name as key.
        let back = Origin {
            exchange: "",
            routing_key: "s.user.login",
            queue: "s.user.login",
        };
        let p2 = republish_properties(&p1, &back, 3, "boom again", Some(DeadReason::Exhausted));
        assert_eq!(text(&p2, FIRST_FAILURE).unwrap(), first);
        assert_eq!(text(&p2, ORIGINAL_EXCHANGE).as_deref(), Some("user.events"));
        assert_eq!(text(&p2, ORIGINAL_ROUTING_KEY).as_deref(), Some("user.login"));
        assert_eq!(text(&p2, REASON).as_deref(), Some("exhausted"));
        assert_eq!(int(&p2, ATTEMPTS), Some(2));
        assert_eq!(text(&p2, ERROR).as_deref(), Some("boom again"));
        assert_eq!(p2.delivery_mode(), &Some(2));
        assert!(text(&p2, DEAD_LETTERED_AT).is_some());
    }

    #[test]
    fn the_replay_count_survives_a_retry() {
        let mut old = FieldTable::default();
        old.insert(REPLAYS.into(), AMQPValue::LongLongInt(2));
        let p = republish_properties(&BasicProperties::default().with_headers(old), &origin(), 2, "e", None);
        assert_eq!(int(&p, REPLAYS), Some(2));
    }

    /// Every property but `expiration` and `headers`, set.
    fn all_but_expiration() -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("reply".into())
            .with_message_id("id-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("user.login".into())
            .with_user_id("guest".into())
            .with_app_id("django".into())
            .with_cluster_id("c".into())
    }

    #[test]
    fn without_expiration_keeps_every_other_property_and_the_value_in_a_header() {
        let mut h = FieldTable::default();
        h.insert("traceparent".into(), AMQPValue::LongString("00-abc-def-01".into()));
        let base = all_but_expiration().with_headers(h.clone());
        let p = without_expiration(&base.clone().with_expiration("4000".into()));
        assert_eq!(p.expiration(), &None);
        h.insert(ORIGINAL_EXPIRATION.into(), AMQPValue::LongString("4000".into()));
        assert_eq!(p, all_but_expiration().with_headers(h));
        // Without the property, nothing changes.
        assert_eq!(without_expiration(&base), base);
    }

    #[test]
    fn without_expiration_keeps_the_first_original_value() {
        let mut h = FieldTable::default();
        h.insert(ORIGINAL_EXPIRATION.into(), AMQPValue::LongString("9000".into()));
        let p = without_expiration(
            &BasicProperties::default()
                .with_headers(h)
                .with_expiration("4000".into()),
        );
        assert_eq!(p.expiration(), &None);
        assert_eq!(text(&p, ORIGINAL_EXPIRATION).as_deref(), Some("9000"));
    }

    #[test]
    fn retried_and_parked_copies_carry_no_expiration() {
        let original = all_but_expiration().with_expiration("4000".into());
        let retry = republish_properties(&original, &origin(), 2, "e", None);
        assert_eq!(retry.expiration(), &None);
        assert_eq!(text(&retry, ORIGINAL_EXPIRATION).as_deref(), Some("4000"));
        // The header survives the next republish, the one to `.dead`.
        let dead = republish_properties(&retry, &origin(), 3, "e", Some(DeadReason::Exhausted));
        assert_eq!(dead.expiration(), &None);
        assert_eq!(text(&dead, ORIGINAL_EXPIRATION).as_deref(), Some("4000"));
        assert_eq!(dead.message_id(), original.message_id());
        assert_eq!(dead.priority(), original.priority());
    }

    #[test]
    fn long_errors_are_truncated() {
        let p = republish_properties(&BasicProperties::default(), &origin(), 2, &"é".repeat(5000), None);
        assert!(text(&p, ERROR).unwrap().len() <= MAX_ERROR_LEN);
    }
}
