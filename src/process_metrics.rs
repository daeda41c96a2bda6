//! Process metrics under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, …), read from `/proc/self` at each scrape and
//! rendered as exposition text to append to the recorder's.
//!
//! Read at scrape time rather than recorded: the numbers are the kernel's,
//! always current, and no background task is needed. Outside Linux there is
//! no `/proc`, and nothing is rendered.

use std::fmt::Write;

/// The kernel reports CPU times in USER_HZ ticks, 100 per second on every
/// architecture Linux exposes to user space through /proc.
const TICKS_PER_SECOND: f64 = 100.0;

/// One sample: name, type, help, value.
type Sample = (&'static str, &'static str, &'static str, f64);

/// The process metrics as Prometheus text; empty when `/proc` cannot be read.
#[must_use]
pub fn render() -> String {
    let mut out = String::new();
    for (name, kind, help, value) in samples() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    out
}

fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    if let Some((cpu, start)) = read("/proc/self/stat").as_deref().and_then(stat) {
        out.push((
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        ));
        if let Some(boot) = read("/proc/stat").as_deref().and_then(boot_time) {
            out.push((
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot + start,
            ));
        }
    }
    if let Some(kb) = read("/proc/self/status")
        .as_deref()
        .and_then(|s| status_kb(s, "VmRSS:"))
    {
        out.push((
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kb * 1024.0,
        ));
    }
    if let Some(kb) = read("/proc/self/status")
        .as_deref()
        .and_then(|s| status_kb(s, "VmSize:"))
    {
        out.push((
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            kb * 1024.0,
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle being read is one of the entries: not counted.
        let open = fds.count().saturating_sub(1);
        out.push((
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open as f64,
        ));
    }
    if let Some(max) = read("/proc/self/limits").as_deref().and_then(max_fds) {
        out.push((
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        ));
    }
    out
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// (CPU seconds, start time in seconds after boot) from `/proc/self/stat`.
fn stat(text: &str) -> Option<(f64, f64)> {
    // The command name (field 2) is in parentheses and may hold spaces:
    // the fields to count start after its last ')', with field 3.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    Some(((utime + stime) / TICKS_PER_SECOND, start / TICKS_PER_SECOND))
}

/// Boot time (unix seconds) from `/proc/stat`'s `btime` line.
fn boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `Key:   1234 kB` value of `/proc/self/status`, in kB.
fn status_kb(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_fds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" { None } else { soft.parse().ok() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 9 0 12345 1000 200";
        let (cpu, start) = stat(line).unwrap();
        assert!((cpu - 4.0).abs() < 1e-9, "{cpu}");
        assert!((start - 123.45).abs() < 1e-9, "{start}");
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        assert_eq!(status_kb("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"), Some(2048.0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 1048576              files\n";
        assert_eq!(max_fds(limits), Some(1024.0));
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_rendered() {
        let text = render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing from:\n{text}");
        }
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
