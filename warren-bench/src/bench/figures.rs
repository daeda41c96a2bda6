//! What one run measured ([`Raw`]) and the figures made of it ([`Figures`]).

use std::time::Duration;

use serde::Serialize;

use super::stats;

/// What one run measured, before any arithmetic.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    /// Publishes the broker confirmed.
    pub confirmed: u64,
    /// Events the handler saw.
    pub handled: u64,
    /// First publish → last confirm.
    pub publish_elapsed: Duration,
    /// First publish → last event handled.
    pub end_to_end_elapsed: Duration,
    /// Publish → handler, per event.
    pub latencies_ns: Vec<u64>,
    /// CPU time of the whole process (user + system) over the run.
    pub cpu: Duration,
    /// CPU time of the broker's process over the run, when its pid was given.
    pub broker_cpu: Option<Duration>,
    /// Peak resident set size of the whole process during the run.
    pub peak_rss: Option<u64>,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub events: u64,
    /// Confirmed publishes per second.
    pub publish_rate: f64,
    /// Events handled per second, first publish to last handled.
    pub end_to_end_rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Process CPU time (user + system) per event handled.
    pub cpu_us_per_event: f64,
    /// The broker's CPU time (user + system) per event handled, when measured.
    pub broker_cpu_us_per_event: Option<f64>,
    /// Peak RSS of the whole process, MiB.
    pub peak_rss_mib: Option<f64>,
    pub elapsed_s: f64,
}

impl Figures {
    /// The figures of what a run measured.
    #[must_use]
    pub fn from_raw(mut raw: Raw) -> Self {
        let p = stats::percentiles(&mut raw.latencies_ns).unwrap_or_default();
        let ms = |ns: u64| ns as f64 / 1e6;
        Self {
            events: raw.handled,
            publish_rate: stats::rate(raw.confirmed, raw.publish_elapsed),
            end_to_end_rate: stats::rate(raw.handled, raw.end_to_end_elapsed),
            latency_p50_ms: ms(p.p50),
            latency_p90_ms: ms(p.p90),
            latency_p99_ms: ms(p.p99),
            latency_max_ms: ms(p.max),
            cpu_us_per_event: stats::micros_per_event(raw.cpu, raw.handled),
            broker_cpu_us_per_event: raw.broker_cpu.map(|cpu| stats::micros_per_event(cpu, raw.handled)),
            peak_rss_mib: raw.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
            elapsed_s: raw.end_to_end_elapsed.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_computed_from_what_was_measured() {
        let f = Figures::from_raw(Raw {
            confirmed: 1000,
            handled: 1000,
            publish_elapsed: Duration::from_millis(40),
            end_to_end_elapsed: Duration::from_millis(50),
            latencies_ns: (1..=1000).rev().map(|i| i * 1_000_000).collect(),
            cpu: Duration::from_millis(40),
            broker_cpu: Some(Duration::from_millis(60)),
            peak_rss: Some(64 * 1024 * 1024),
        });
        assert!((f.publish_rate - 25_000.0).abs() < 1e-6, "{}", f.publish_rate);
        assert!((f.end_to_end_rate - 20_000.0).abs() < 1e-6, "{}", f.end_to_end_rate);
        assert!((f.cpu_us_per_event - 40.0).abs() < 1e-6, "{}", f.cpu_us_per_event);
        assert!((f.broker_cpu_us_per_event.unwrap() - 60.0).abs() < 1e-6);
        assert_eq!(f.latency_p50_ms, 500.0);
        assert_eq!(f.latency_p99_ms, 990.0);
        assert_eq!(f.latency_max_ms, 1000.0);
        assert_eq!(f.peak_rss_mib, Some(64.0));
        assert_eq!(f.events, 1000);
        assert_eq!(f.elapsed_s, 0.05);
        let empty = Figures::from_raw(Raw::default());
        assert_eq!(
            (empty.end_to_end_rate, empty.cpu_us_per_event, empty.latency_max_ms),
            (0.0, 0.0, 0.0)
        );
    }
}
