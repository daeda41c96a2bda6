//! Every publish metric: the outcome label of a result, and the handles of
//! [`PUBLISHED_TOTAL`] and [`PUBLISH_DURATION_SECONDS`].

use std::sync::OnceLock;
use std::time::Duration;

use super::error::PublishError;
use crate::event::EVENT_TYPES;
use crate::metrics::{PUBLISH_DURATION_SECONDS, PUBLISHED_TOTAL};

/// Handles of the confirmed-publish metrics of the known event types,
/// registered on first use (the recorder must be installed before the
/// publisher is made). One slot per entry of [`EVENT_TYPES`]: no lock on
/// the publish path. Other routing keys are looked up each time.
#[derive(Default)]
pub(super) struct PublishMetrics {
    by_type: [OnceLock<(metrics::Counter, metrics::Histogram)>; EVENT_TYPES.len()],
}

impl PublishMetrics {
    pub(super) fn confirmed(&self, event_type: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let register = || {
            (
                metrics::counter!(PUBLISHED_TOTAL, "event_type" => event_type.to_owned(), "outcome" => "confirmed"),
                metrics::histogram!(PUBLISH_DURATION_SECONDS, "event_type" => event_type.to_owned()),
            )
        };
        let (count, time) = match EVENT_TYPES.iter().position(|t| t.name == event_type) {
            Some(i) => self.by_type[i].get_or_init(register),
            None => &register(),
        };
        count.increment(1);
        time.record(secs);
    }
}

/// The `outcome` label of [`PUBLISHED_TOTAL`] for a publish result.
#[must_use]
pub fn outcome(result: &Result<(), PublishError>) -> &'static str {
    match result {
        Ok(()) => "confirmed",
        Err(PublishError::Unroutable { .. }) => "unroutable",
        Err(PublishError::Nacked { .. }) => "nacked",
        Err(PublishError::Timeout(_)) => "timeout",
        Err(PublishError::ConnectionLost(_)) => "connection_lost",
        Err(PublishError::Refused(_)) => "refused",
        Err(PublishError::Setup(_) | PublishError::Serialize(_)) => "error",
    }
}

/// Records one failed publish (confirmed ones go through
/// [`PublishMetrics::confirmed`]'s cached handles).
///
/// `event_type` must come from a known type (it is a label: unbounded values
/// would explode the series count).
pub(super) fn failed(event_type: &str, result: &Result<(), PublishError>, elapsed: Duration) {
    metrics::counter!(
        PUBLISHED_TOTAL,
        "event_type" => event_type.to_owned(),
        "outcome" => outcome(result),
    )
    .increment(1);
    metrics::histogram!(PUBLISH_DURATION_SECONDS, "event_type" => event_type.to_owned()).record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_rendered_with_their_outcome_and_buckets() {
        let handle = crate::metrics::install().expect("recorder");
        let nacked = Err(PublishError::Nacked {
            routing_key: "user.registered".into(),
        });
        failed("user.registered", &nacked, Duration::from_millis(3));
        let text = handle.render();
        assert!(
            text.contains(r#"warren_published_total{event_type="user.registered",outcome="nacked"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"warren_publish_duration_seconds_bucket{event_type="user.registered",le="0.005"}"#),
            "histograms have latency buckets:\n{text}"
        );
    }

    #[test]
    fn outcomes_match_the_documented_labels() {
        assert_eq!(outcome(&Ok(())), "confirmed");
        assert_eq!(outcome(&Err(PublishError::Timeout(Duration::from_secs(1)))), "timeout");
        assert_eq!(
            outcome(&Err(PublishError::ConnectionLost("x".into()))),
            "connection_lost"
        );
        assert_eq!(
            outcome(&Err(PublishError::Unroutable {
                exchange: "x".into(),
                routing_key: "y".into()
            })),
            "unroutable"
        );
    }
}
