//! Process metrics under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`,
//! `process_threads`, …), read by the `metrics-process` crate from the
//! operating system at each scrape.
//!
//! Read at scrape time rather than by a background task: the numbers are
//! the kernel's, always current. They go to the installed `metrics`
//! recorder ([`crate::metrics::install`]), so a scrape renders them with
//! warren's own metrics.

use std::sync::OnceLock;

use metrics_process::Collector;

/// Described once, on the first scrape (the recorder is installed by then).
static COLLECTOR: OnceLock<Collector> = OnceLock::new();

/// Records the process's current CPU time, memory, file descriptors and
/// threads into the installed recorder; call it before rendering a scrape.
pub fn collect() {
    COLLECTOR
        .get_or_init(|| {
            let collector = Collector::default();
            collector.describe();
            collector
        })
        .collect();
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_rendered_under_the_standard_names() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, super::collect);
        let text = recorder.handle().render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
            assert!(value.parse::<f64>().is_ok_and(|v| v >= 0.0), "{name} {value}");
        }
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "));
        assert!(
            rss.and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 1e6),
            "{rss:?}"
        );
    }
}
