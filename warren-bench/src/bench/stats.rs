//! Figures from raw samples: percentiles, rates, medians over runs, and the
//! process's CPU time and peak resident memory.

use std::time::Duration;

use serde::Serialize;

/// Latency percentiles, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Nearest-rank percentiles of `samples` (sorted in place); `None` when empty.
#[must_use]
pub fn percentiles(samples: &mut [u64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    Some(Percentiles {
        p50: nearest_rank(samples, 50.0),
        p90: nearest_rank(samples, 90.0),
        p99: nearest_rank(samples, 99.0),
        max: samples[samples.len() - 1],
    })
}

/// The smallest sample with at least `p` percent of the samples at or below
/// it. `sorted` must be sorted and non-empty.
#[must_use]
pub fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    // Rank in 1..=n; the float is exact for any realistic n.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// `count` events over `elapsed`, per second; 0 when nothing elapsed.
#[must_use]
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// `total` spread over `count` events, in microseconds each; 0 for no events.
#[must_use]
pub fn micros_per_event(total: Duration, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total.as_secs_f64() * 1e6 / count as f64
    }
}

/// Median with min and max of one figure over several runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none (or one is NaN).
    #[must_use]
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// User plus system CPU time of the whole process so far (`getrusage(RUSAGE_SELF)`).
#[must_use]
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer it is given;
    // a zeroed `rusage` is a valid value should it fail.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(t: libc::timeval) -> Duration {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u32::try_from(t.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

/// User plus system CPU time of process `pid` so far (`/proc/<pid>/stat`,
/// in clock ticks of 10 ms), `None` when it cannot be read.
#[must_use]
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    parse_stat_ticks(&stat).map(|ticks| Duration::from_millis(ticks * 1000 / hz.max(1)))
}

/// utime + stime of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) may hold spaces and parentheses: fields are counted after
/// its last `)`.
#[must_use]
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size of the whole process (`VmHWM`), in bytes.
#[must_use]
pub fn peak_rss() -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Lowers the peak resident set size to the current one (Linux ≥ 4.0), so
/// the next [`peak_rss`] is the peak of what runs from now on. Returns
/// whether the kernel took it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The `VmHWM:` line of `/proc/<pid>/status`, in bytes.
#[must_use]
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(kib * 1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let p = percentiles(&mut samples).unwrap();
        assert_eq!(
            p,
            Percentiles {
                p50: 50,
                p90: 90,
                p99: 99,
                max: 100
            }
        );
        assert_eq!(percentiles(&mut []), None);
    }

    #[test]
    fn percentiles_of_few_samples_pick_real_samples() {
        let mut one = vec![7];
        assert_eq!(percentiles(&mut one).unwrap().p50, 7);
        assert_eq!(percentiles(&mut one).unwrap().p99, 7);
        let mut three = vec![30, 10, 20];
        let p = percentiles(&mut three).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (20, 30, 30, 30));
        let sorted = [1, 2, 3, 4];
        assert_eq!(nearest_rank(&sorted, 0.0), 1, "p0 is the minimum");
        assert_eq!(nearest_rank(&sorted, 25.0), 1);
        assert_eq!(nearest_rank(&sorted, 25.1), 2);
    }

    #[test]
    fn rates_and_per_event_costs() {
        assert_eq!(rate(50_000, Duration::from_millis(2_500)), 20_000.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(micros_per_event(Duration::from_secs(2), 40_000), 50.0);
        assert_eq!(micros_per_event(Duration::from_secs(2), 0), 0.0);
    }

    #[test]
    fn spread_is_median_with_min_and_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (3.0, 1.0, 10.0));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\twarren\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12_345 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM: lots kB\n"), None);
    }

    #[test]
    fn stat_ticks_are_counted_after_the_command_name() {
        let stat = "2981 (beam.smp (x) y) S 1 2 3 4 5 6 7 8 9 10 1234 56 0 0 20 0";
        assert_eq!(parse_stat_ticks(stat), Some(1290));
        assert_eq!(parse_stat_ticks("1 (short) S 1"), None);
        let own = cpu_time_of(std::process::id()).expect("this process has a stat");
        assert!(own < Duration::from_secs(3600), "{own:?}");
    }

    #[test]
    fn this_process_has_a_cpu_time_and_a_peak() {
        // Not a timing assertion: both only have to be readable.
        let before = cpu_time();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() >= before);
        assert!(peak_rss().is_some_and(|b| b > 0));
    }
}
