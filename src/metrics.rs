//! Prometheus metrics: the names warren emits, their help texts, and the recorder.
//!
//! Every metric warren emits is named by a constant here, so producers of a
//! metric (the ingress, the publisher, the consumer, the webhook handler) and
//! `docs/HTTP.md` agree on one spelling. [`install`] sets up the global
//! `metrics` recorder once and returns the handle that renders `/metrics`.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`PUBLISHED_TOTAL`] | counter | `event_type`, `outcome` = `confirmed` \| `unroutable` \| `nacked` \| `timeout` \| `connection_lost` \| `refused` \| `error` |
//! | [`PUBLISH_DURATION_SECONDS`] | histogram | `event_type` |
//! | [`CONSUMED_TOTAL`] | counter | `queue`, `outcome` = `acked` \| `retried` \| `dead_lettered` |
//! | [`HANDLER_DURATION_SECONDS`] | histogram | `queue` |
//! | [`INGRESS_REQUESTS_TOTAL`] | counter | `route`, `status` |
//! | [`INGRESS_REQUEST_DURATION_SECONDS`] | histogram | `route` |
//! | [`BROKER_CONNECTED`] | gauge | `role` = `publisher` \| `consumer` \| `ingress` |
//! | [`BROKER_BLOCKED`] | gauge | none |
//! | [`STALE_ACKS_TOTAL`] | counter | `queue` |
//! | [`REPUBLISH_FAILURES_TOTAL`] | counter | `queue` |
//! | [`QUEUE_PAUSED`] | gauge | `queue` |
//! | [`BUILD_INFO`] | gauge (always 1) | `version` |
//!
//! [`BUILD_INFO`] and [`BROKER_BLOCKED`] (0) are set by [`install`], so they
//! are there before anything happens; [`crate::process_metrics`] adds the
//! process's CPU, memory and file descriptors at each scrape.
//! | [`WEBHOOK_REQUESTS_TOTAL`] | counter | `outcome` = `ok` \| `transient` \| `permanent` |
//! | [`WEBHOOK_DURATION_SECONDS`] | histogram | none |
//! | [`RELAY_PUBLISHED_TOTAL`], [`RELAY_FAILED_TOTAL`] | counter | `table` |
//! | [`RELAY_PENDING_ROWS`], [`RELAY_OLDEST_PENDING_AGE_SECONDS`], [`RELAY_FAILED_ROWS`], [`RELAY_DATABASE_UP`], [`RELAY_ACTIVE`] | gauge | `table` |
//! | [`DEAD_LETTERS`] | gauge | `queue` (each `.dead` queue; set by `warren run`) |
//! | [`DEAD_REPLAYED_TOTAL`] | counter | `queue` (the `.dead` queue replayed from) |
//! | [`DEAD_PURGED_TOTAL`] | counter | `queue` |

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Events published, by `event_type` and `outcome`.
pub const PUBLISHED_TOTAL: &str = "warren_published_total";
/// Time from publish to broker confirm (or failure), by `event_type`.
pub const PUBLISH_DURATION_SECONDS: &str = "warren_publish_duration_seconds";
/// Deliveries settled by the consumer, by `queue` and `outcome`.
pub const CONSUMED_TOTAL: &str = "warren_consumed_total";
/// Time a handler took for one delivery, by `queue`.
pub const HANDLER_DURATION_SECONDS: &str = "warren_handler_duration_seconds";
/// HTTP requests answered by the ingress, by `route` and `status`.
pub const INGRESS_REQUESTS_TOTAL: &str = "warren_ingress_requests_total";
/// Time the ingress took to answer, by `route`.
pub const INGRESS_REQUEST_DURATION_SECONDS: &str = "warren_ingress_request_duration_seconds";
/// 1 while the connection to RabbitMQ is up, else 0.
pub const BROKER_CONNECTED: &str = "warren_broker_connected";
/// Deliveries forwarded by the webhook handler, by `outcome`.
pub const WEBHOOK_REQUESTS_TOTAL: &str = "warren_webhook_requests_total";
/// Time one webhook delivery took.
pub const WEBHOOK_DURATION_SECONDS: &str = "warren_webhook_duration_seconds";
/// 1 while RabbitMQ blocks this process's publishing (memory or disk alarm).
pub const BROKER_BLOCKED: &str = "warren_broker_blocked";
/// Acks that could not be sent because their channel had died (the broker
/// redelivers those messages), by `queue`.
pub const STALE_ACKS_TOTAL: &str = "warren_stale_acks_total";
/// Republishes of failed deliveries (to a retry tier or `.dead`) that the
/// broker did not confirm, by `queue`: each pauses the queue.
pub const REPUBLISH_FAILURES_TOTAL: &str = "warren_republish_failures_total";
/// 1 while a queue is paused because its failed deliveries cannot be
/// republished, else 0, by `queue`.
pub const QUEUE_PAUSED: &str = "warren_queue_paused";

/// Outbox rows the relay published (confirmed), by `table`.
pub const RELAY_PUBLISHED_TOTAL: &str = "warren_relay_published_total";
/// Outbox rows the relay marked failed (invalid envelope, or unroutable), by `table`.
pub const RELAY_FAILED_TOTAL: &str = "warren_relay_failed_total";
/// Outbox rows not yet published, by `table`.
pub const RELAY_PENDING_ROWS: &str = "warren_relay_pending_rows";
/// Age of the oldest pending outbox row: the relay's lag, by `table`.
pub const RELAY_OLDEST_PENDING_AGE_SECONDS: &str = "warren_relay_oldest_pending_age_seconds";
/// Outbox rows marked failed and not retried, by `table`.
pub const RELAY_FAILED_ROWS: &str = "warren_relay_failed_rows";
/// 1 while the relay reaches its database, else 0, by `table`.
pub const RELAY_DATABASE_UP: &str = "warren_relay_database_up";
/// 1 while this relay holds the table's lock (the others are standbys), by `table`.
pub const RELAY_ACTIVE: &str = "warren_relay_active";
/// Always 1, labelled with the running `version`.
pub const BUILD_INFO: &str = "warren_build_info";

/// Messages parked in a `.dead` queue, by `queue` (refreshed by `warren run`).
pub const DEAD_LETTERS: &str = "warren_dead_letters";
/// Parked events sent back to their work queue by a replay, by `.dead` `queue`.
pub const DEAD_REPLAYED_TOTAL: &str = "warren_dead_replayed_total";
/// Parked events removed by a purge, by `.dead` `queue`.
pub const DEAD_PURGED_TOTAL: &str = "warren_dead_purged_total";

/// Histogram buckets (seconds) of every `*_seconds` metric: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder's upkeep (draining histogram samples) runs when
/// nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The Prometheus recorder could not be installed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot install the Prometheus metrics recorder: {0}")]
pub struct InstallError(String);

static HANDLE: OnceLock<Result<PrometheusHandle, InstallError>> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process; later calls
/// return the same handle) and describes every warren metric.
///
/// Metrics recorded before the first call are lost: call it at startup.
///
/// # Errors
///
/// [`InstallError`] when another `metrics` recorder was installed first (by
/// an embedding application), or the bucket configuration is rejected.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    HANDLE.get_or_init(install_once).clone()
}

fn install_once() -> Result<PrometheusHandle, InstallError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| InstallError(e.to_string()))?;
    describe();
    // Present from the first scrape, not only once something happens.
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(BROKER_BLOCKED).set(0.0);
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("warren-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| InstallError(format!("starting the upkeep thread: {e}")))?;
    Ok(handle)
}

fn describe() {
    describe_counter!(
        PUBLISHED_TOTAL,
        Unit::Count,
        "Events published, by event_type and outcome (confirmed, unroutable, nacked, timeout, connection_lost, refused, error)."
    );
    describe_histogram!(
        PUBLISH_DURATION_SECONDS,
        Unit::Seconds,
        "Time from publish to the broker's confirm or the failure, by event_type."
    );
    describe_counter!(
        CONSUMED_TOTAL,
        Unit::Count,
        "Deliveries settled by the consumer, by queue and outcome (acked, retried, dead_lettered)."
    );
    describe_histogram!(
        HANDLER_DURATION_SECONDS,
        Unit::Seconds,
        "Time a handler took for one delivery, by queue."
    );
    describe_counter!(
        INGRESS_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered by the ingress, by route and status code."
    );
    describe_histogram!(
        INGRESS_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time the ingress took to answer a request, by route."
    );
    describe_gauge!(
        BROKER_CONNECTED,
        "1 while the connection to RabbitMQ is up, else 0, by role."
    );
    describe_counter!(
        WEBHOOK_REQUESTS_TOTAL,
        Unit::Count,
        "Deliveries forwarded by the webhook handler, by outcome."
    );
    describe_histogram!(
        WEBHOOK_DURATION_SECONDS,
        Unit::Seconds,
        "Time one webhook delivery took."
    );
    describe_gauge!(
        BROKER_BLOCKED,
        "1 while RabbitMQ blocks publishing (memory or disk alarm), else 0."
    );
    describe_relay();
    describe_gauge!(BUILD_INFO, "Always 1, labelled with the running warren version.");
    describe_counter!(
        REPUBLISH_FAILURES_TOTAL,
        Unit::Count,
        "Republishes of failed deliveries to a retry tier or .dead that failed, by queue; each pauses the queue."
    );
    describe_gauge!(
        QUEUE_PAUSED,
        "1 while a queue is paused because its failed deliveries cannot be republished, else 0, by queue."
    );
    describe_counter!(
        STALE_ACKS_TOTAL,
        Unit::Count,
        "Acks lost with their channel, by queue: the broker redelivers those messages."
    );
    describe_dead();
}

fn describe_dead() {
    describe_gauge!(DEAD_LETTERS, "Messages parked in a .dead queue, by queue.");
    describe_counter!(
        DEAD_REPLAYED_TOTAL,
        Unit::Count,
        "Parked events sent back to their work queue by a replay, by .dead queue."
    );
    describe_counter!(
        DEAD_PURGED_TOTAL,
        Unit::Count,
        "Parked events removed by a purge, by .dead queue."
    );
}

fn describe_relay() {
    describe_counter!(
        RELAY_PUBLISHED_TOTAL,
        Unit::Count,
        "Outbox rows the relay published with a confirm, by table."
    );
    describe_counter!(
        RELAY_FAILED_TOTAL,
        Unit::Count,
        "Outbox rows the relay marked failed (invalid envelope, or unroutable), by table."
    );
    describe_gauge!(RELAY_PENDING_ROWS, "Outbox rows not yet published, by table.");
    describe_gauge!(
        RELAY_OLDEST_PENDING_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest pending outbox row (the relay's lag), by table."
    );
    describe_gauge!(
        RELAY_FAILED_ROWS,
        "Outbox rows marked failed and not retried, by table."
    );
    describe_gauge!(
        RELAY_DATABASE_UP,
        "1 while the relay reaches its database, else 0, by table."
    );
    describe_gauge!(
        RELAY_ACTIVE,
        "1 while this relay holds the table's lock (others are standbys), by table."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_twice_returns_a_working_handle() {
        let a = install().expect("first install");
        let b = install().expect("second install is not an error");
        metrics::counter!(PUBLISHED_TOTAL, "event_type" => "user.registered", "outcome" => "nacked").increment(1);
        let text = b.render();
        assert!(
            text.contains(r#"warren_published_total{event_type="user.registered",outcome="nacked"}"#),
            "{text}"
        );
        assert!(text.contains("# HELP warren_published_total"), "{text}");
        let version = format!(r#"warren_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&version), "{text}");
        assert!(
            text.contains("\nwarren_broker_blocked 0"),
            "present before any alarm: {text}"
        );
        assert!(
            a.render().contains("warren_published_total"),
            "both handles render the one global registry"
        );
    }
}
