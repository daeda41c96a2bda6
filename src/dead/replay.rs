//! Replaying parked events: what a replayed message looks like, and the pass
//! visitor that sends the selected ones to their work queue.
//!
//! A replay goes to the failing service's own work queue through the
//! default exchange, never back through the topic exchange: the other
//! services bound to the event's routing key handled it already.

use std::collections::HashMap;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use super::filter::{Filter, Selector};
use super::parked::Parked;
use super::rotate::{Action, Visitor};
use crate::event::headers;

/// Default of `--max-replays`: an event replayed this many times is skipped.
pub const DEFAULT_MAX_REPLAYS: i64 = 5;

/// What to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOptions {
    pub filter: Filter,
    /// Events already replayed this many times are skipped and reported.
    pub max_replays: i64,
    /// Select and report, move nothing.
    pub dry_run: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            filter: Filter::default(),
            max_replays: DEFAULT_MAX_REPLAYS,
            dry_run: false,
        }
    }
}

/// The summary of a replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Events now in their work queue and gone from `.dead` (with `dry_run`:
    /// the events that would move).
    pub moved: Vec<Parked>,
    /// Events at the replay cap, left in `.dead`.
    pub skipped_over_cap: Vec<Parked>,
    /// Selected events left in `.dead` because the pass stopped (an error
    /// or a cancellation) before they were moved.
    pub failed: u64,
    /// Events that may be both in their work queue and still in `.dead`
    /// (a confirm or an ack was lost): consumers dedupe on `event_id`.
    pub possible_duplicates: u64,
    /// Why the replay stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The properties of a replayed message: the original's (message_id, type,
/// timestamp, app_id, traceparent, the original exchange and routing key),
/// without the failure bookkeeping (attempt, reason, error, attempts, first
/// failure, queue, parked time, `x-death`, delivery count), so the consumer
/// starts again at attempt 1, with `x-warren-replays` incremented, and
/// without `expiration` (kept in `x-warren-original-expiration`).
#[must_use]
pub fn replay_properties(original: &BasicProperties, replays: i64) -> BasicProperties {
    const DROPPED: [&str; 8] = [
        headers::ATTEMPT,
        headers::REASON,
        headers::ERROR,
        headers::ATTEMPTS,
        headers::FIRST_FAILURE,
        headers::QUEUE,
        headers::DEAD_LETTERED_AT,
        "x-delivery-count",
    ];
    let mut kept = FieldTable::default();
    if let Some(old) = original.headers() {
        for (k, v) in old.inner() {
            let k_str = k.as_str();
            let death = k_str.starts_with("x-death") || k_str.contains("-death-");
            if !death && !DROPPED.contains(&k_str) && k_str != headers::REPLAYS {
                kept.insert(k.clone(), v.clone());
            }
        }
    }
    kept.insert(
        headers::REPLAYS.into(),
        AMQPValue::LongLongInt(replays.saturating_add(1)),
    );
    headers::without_expiration(&original.clone().with_headers(kept).with_delivery_mode(2))
}

/// Moves selected messages of one `.dead` queue to `work_queue`.
pub(crate) struct ReplayVisitor<'a> {
    pub selector: Selector<'a>,
    pub options: &'a ReplayOptions,
    pub work_queue: String,
    pub report: ReplayReport,
    /// Moves sent, by delivery tag, until their original is acked.
    in_flight: HashMap<u64, Parked>,
}

impl<'a> ReplayVisitor<'a> {
    pub(crate) fn new(options: &'a ReplayOptions) -> Self {
        Self {
            selector: Selector::new(&options.filter),
            options,
            work_queue: String::new(),
            report: ReplayReport {
                dry_run: options.dry_run,
                ..ReplayReport::default()
            },
            in_flight: HashMap::new(),
        }
    }

    /// Moves sent but not confirmed and acked: after a pass, these failed.
    pub(crate) fn take_unfinished(&mut self) -> u64 {
        let n = self.in_flight.len() as u64;
        self.in_flight.clear();
        n
    }
}

impl Visitor for ReplayVisitor<'_> {
    fn visit(&mut self, queue: &str, m: &Delivery) -> Action {
        let p = Parked::read(queue, &m.properties, &m.data);
        if !self.selector.select(&p) {
            return Action::Keep;
        }
        if p.replays >= self.options.max_replays {
            self.report.skipped_over_cap.push(p);
            return Action::Keep;
        }
        if self.options.dry_run {
            self.report.moved.push(p);
            return Action::Keep;
        }
        let properties = Box::new(replay_properties(&m.properties, p.replays));
        self.in_flight.insert(m.delivery_tag, p);
        Action::Move {
            queue: self.work_queue.clone(),
            properties,
        }
    }

    fn done(&mut self, queue: &str, tag: u64) {
        if let Some(p) = self.in_flight.remove(&tag) {
            metrics::counter!(crate::metrics::DEAD_REPLAYED_TOTAL, "queue" => queue.to_owned()).increment(1);
            self.report.moved.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_starts_over_and_counts_itself() {
        let mut h = FieldTable::default();
        for (k, v) in [
            (headers::REASON, "exhausted"),
            (headers::ERROR, "boom"),
            (headers::FIRST_FAILURE, "2025-01-01T00:00:00Z"),
            (headers::QUEUE, "s.user.login"),
            (headers::DEAD_LETTERED_AT, "2025-01-01T00:01:00Z"),
            (headers::ORIGINAL_EXCHANGE, "user.events"),
            (headers::ORIGINAL_ROUTING_KEY, "user.login"),
            ("traceparent", "00-abc-def-01"),
            ("x-first-death-reason", "delivery_limit"),
        ] {
            h.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(4));
        h.insert(headers::REPLAYS.into(), AMQPValue::LongLongInt(2));
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(1));
        let original = BasicProperties::default()
            .with_headers(h)
            .with_message_id("id-1".into())
            .with_type("user.login".into());
        let p = replay_properties(&original, 2);
        let got: Vec<&str> = p
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "traceparent",
                headers::ORIGINAL_EXCHANGE,
                headers::ORIGINAL_ROUTING_KEY,
                headers::REPLAYS
            ]
        );
        assert_eq!(headers::int(&p, headers::REPLAYS), Some(3));
        assert_eq!(headers::attempt(&p), 1);
        assert_eq!(p.message_id(), original.message_id());
        assert_eq!(p.kind(), original.kind());
        assert_eq!(p.delivery_mode(), &Some(2));
    }

    #[test]
    fn a_replay_carries_no_expiration() {
        let original = BasicProperties::default().with_expiration("4000".into());
        let p = replay_properties(&original, 0);
        assert_eq!(p.expiration(), &None);
        assert_eq!(headers::text(&p, headers::ORIGINAL_EXPIRATION).as_deref(), Some("4000"));
    }
}
