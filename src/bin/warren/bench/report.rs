//! The report: one line per run, then a summary table (medians with min–max
//! over runs, warren as a ratio of the baseline) or the same as JSON.

use serde::Serialize;
use serde_json::json;

use super::figures::Figures;
use super::stats::Spread;
use super::{Kind, Plan};

/// One figure of the summary.
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub get: fn(&Figures) -> Option<f64>,
    pub decimals: usize,
}

/// The summary's rows, in order.
pub const METRICS: &[Metric] = &[
    Metric {
        key: "publish_rate",
        label: "confirmed publish rate (events/s)",
        get: |f| Some(f.publish_rate),
        decimals: 0,
    },
    Metric {
        key: "end_to_end_rate",
        label: "end-to-end rate (events/s)",
        get: |f| Some(f.end_to_end_rate),
        decimals: 0,
    },
    Metric {
        key: "latency_p50_ms",
        label: "latency p50 (ms)",
        get: |f| Some(f.latency_p50_ms),
        decimals: 2,
    },
    Metric {
        key: "latency_p90_ms",
        label: "latency p90 (ms)",
        get: |f| Some(f.latency_p90_ms),
        decimals: 2,
    },
    Metric {
        key: "latency_p99_ms",
        label: "latency p99 (ms)",
        get: |f| Some(f.latency_p99_ms),
        decimals: 2,
    },
    Metric {
        key: "latency_max_ms",
        label: "latency max (ms)",
        get: |f| Some(f.latency_max_ms),
        decimals: 2,
    },
    Metric {
        key: "cpu_us_per_event",
        label: "CPU per event (µs, whole process)",
        get: |f| Some(f.cpu_us_per_event),
        decimals: 1,
    },
    Metric {
        key: "peak_rss_mib",
        label: "peak RSS (MiB, whole process)",
        get: |f| f.peak_rss_mib,
        decimals: 1,
    },
];

/// The figures of one run of each kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunPair {
    pub warren: Option<Figures>,
    pub baseline: Option<Figures>,
}

impl RunPair {
    /// Stores `figures` as `kind`'s.
    pub fn set(&mut self, kind: Kind, figures: Figures) {
        match kind {
            Kind::Warren => self.warren = Some(figures),
            Kind::Baseline => self.baseline = Some(figures),
        }
    }
}

/// Every run of a bench.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    pub runs: Vec<RunPair>,
}

/// A metric's spread for warren, the baseline, and warren ÷ baseline (paired per run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Row {
    pub warren: Option<Spread>,
    pub baseline: Option<Spread>,
    pub ratio: Option<Spread>,
}

impl Report {
    #[must_use]
    pub fn new(plan: Plan) -> Self {
        Self { plan, runs: Vec::new() }
    }

    /// The summary of one metric over all runs.
    #[must_use]
    pub fn row(&self, metric: &Metric) -> Row {
        let of = |pick: fn(&RunPair) -> Option<&Figures>| {
            let v: Vec<f64> = self.runs.iter().filter_map(|r| pick(r).and_then(metric.get)).collect();
            Spread::of(&v)
        };
        let ratios: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| {
                let (w, b) = ((metric.get)(r.warren.as_ref()?)?, (metric.get)(r.baseline.as_ref()?)?);
                (b != 0.0).then(|| w / b)
            })
            .collect();
        Row {
            warren: of(|r| r.warren.as_ref()),
            baseline: of(|r| r.baseline.as_ref()),
            ratio: Spread::of(&ratios),
        }
    }

    /// The summary table.
    #[must_use]
    pub fn render(&self) -> String {
        let many = self.runs.len() > 1;
        let with_baseline = self.runs.iter().any(|r| r.baseline.is_some());
        let mut header = vec![if many { "median (min–max)" } else { "" }, "warren"];
        if with_baseline {
            header.extend(["baseline (bare lapin)", "warren ÷ baseline"]);
        }
        let mut rows = Vec::new();
        for m in METRICS {
            let row = self.row(m);
            let mut cells = vec![m.label.to_owned(), cell(row.warren, m.decimals, "")];
            if with_baseline {
                cells.push(cell(row.baseline, m.decimals, ""));
                cells.push(cell(row.ratio, 2, "×"));
            }
            rows.push(cells);
        }
        let mut out = render_table(&header, &rows);
        if with_baseline {
            out.push_str("ratios are paired per run: above 1 is better for rates, below 1 for latency, CPU and RSS\n");
        }
        out
    }

    /// The plan, every run's figures and the summary, as JSON.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let summary: serde_json::Map<String, serde_json::Value> = METRICS
            .iter()
            .map(|m| {
                (
                    m.key.to_owned(),
                    serde_json::to_value(self.row(m)).expect("serializable"),
                )
            })
            .collect();
        json!({ "plan": self.plan, "runs": self.runs, "summary": summary })
    }
}

/// `median (min–max)`, or the value alone when all runs agree or there is one.
#[must_use]
pub fn cell(spread: Option<Spread>, decimals: usize, unit: &str) -> String {
    match spread {
        None => "–".to_owned(),
        Some(s) if s.min == s.max => format!("{:.*}{unit}", decimals, s.median),
        Some(s) => format!("{:.d$}{unit} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = decimals),
    }
}

/// Columns padded to their widest cell: the first left-aligned, the others right-aligned.
#[must_use]
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(c));
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w - width(c));
            if i == 0 {
                s.push_str(c);
                s.push_str(&pad);
            } else {
                s.push_str("  ");
                s.push_str(&pad);
                s.push_str(c);
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(rule.iter().map(String::as_str).collect()));
    for row in rows {
        let mut cells: Vec<&str> = row.iter().map(String::as_str).collect();
        cells.resize(columns, "");
        out.push_str(&line(cells));
    }
    out
}

/// `warren` or `baseline`.
#[must_use]
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Warren => "warren",
        Kind::Baseline => "baseline",
    }
}

/// One line per finished run.
#[must_use]
pub fn run_line(i: usize, of: usize, kind: Kind, f: &Figures) -> String {
    let rss = f.peak_rss_mib.map_or_else(|| "?".to_owned(), |m| format!("{m:.1}"));
    format!(
        "run {i}/{of} {:<8}  {} events in {:.2} s: end-to-end {:.0}/s, publish {:.0}/s, latency p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms, CPU {:.1} µs/event, peak RSS {rss} MiB",
        kind_name(kind),
        f.events,
        f.elapsed_s,
        f.end_to_end_rate,
        f.publish_rate,
        f.latency_p50_ms,
        f.latency_p90_ms,
        f.latency_p99_ms,
        f.latency_max_ms,
        f.cpu_us_per_event,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::figures::Raw;
    use warren::config::QueueType;

    fn plan() -> Plan {
        Plan {
            events: Some(1000),
            duration_s: None,
            rate: None,
            payload_size: 300,
            publishers: 4,
            window: 64,
            prefetch: 256,
            concurrency: 64,
            queue_type: QueueType::Quorum,
            ingress: None,
            baseline: true,
            runs: 3,
        }
    }

    fn figures(rate: f64, cpu: f64) -> Figures {
        Figures::from_raw(Raw {
            confirmed: 1000,
            handled: 1000,
            publish_elapsed: Duration::from_secs_f64(1000.0 / rate),
            end_to_end_elapsed: Duration::from_secs_f64(1000.0 / rate),
            latencies_ns: (1..=1000).map(|i| i * 1_000_000).collect(),
            cpu: Duration::from_secs_f64(cpu * 1000.0 / 1e6),
            peak_rss: Some(64 * 1024 * 1024),
        })
    }

    #[test]
    fn ratios_are_paired_per_run_and_summarised_by_median() {
        let mut r = Report::new(plan());
        for (w, b) in [(9_000.0, 10_000.0), (10_000.0, 10_000.0), (12_000.0, 10_000.0)] {
            r.runs.push(RunPair {
                warren: Some(figures(w, 50.0)),
                baseline: Some(figures(b, 40.0)),
            });
        }
        let rate = r.row(&METRICS[1]);
        let ratio = rate.ratio.unwrap();
        assert!((ratio.median - 1.0).abs() < 1e-6);
        assert!((ratio.min - 0.9).abs() < 1e-6 && (ratio.max - 1.2).abs() < 1e-6);
        let cpu = r.row(&METRICS[6]).ratio.unwrap();
        assert!((cpu.median - 1.25).abs() < 1e-6, "{cpu:?}");
        let json = r.to_json();
        assert_eq!(json["plan"]["events"], 1000);
        assert_eq!(json["runs"].as_array().unwrap().len(), 3);
        assert!((json["summary"]["end_to_end_rate"]["warren"]["max"].as_f64().unwrap() - 12_000.0).abs() < 0.01);
    }

    #[test]
    fn the_table_shows_medians_ranges_and_ratios_aligned() {
        let mut r = Report::new(plan());
        for w in [9_000.0, 10_000.0, 12_000.0] {
            r.runs.push(RunPair {
                warren: Some(figures(w, 50.0)),
                baseline: Some(figures(10_000.0, 40.0)),
            });
        }
        let table = r.render();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("median (min–max)"), "{table}");
        assert!(lines[0].ends_with("warren ÷ baseline"), "{table}");
        let e2e = lines.iter().find(|l| l.starts_with("end-to-end rate")).unwrap();
        assert!(e2e.contains("10000 (9000–12000)"), "{e2e}");
        assert!(e2e.contains("  10000  "), "all baseline runs agree: no range: {e2e}");
        assert!(e2e.ends_with("1.00× (0.90–1.20)"), "{e2e}");
        let cpu = lines.iter().find(|l| l.starts_with("CPU per event")).unwrap();
        assert!(cpu.ends_with("1.25×"), "{cpu}");
        let width = |l: &str| l.chars().count();
        assert_eq!(width(lines[1]), width(e2e), "ratio column is right-aligned to the rule");
    }

    #[test]
    fn a_warren_only_report_has_one_figure_column() {
        let mut r = Report::new(Plan { runs: 1, ..plan() });
        r.runs.push(RunPair {
            warren: Some(figures(1000.0, 10.0)),
            baseline: None,
        });
        let table = r.render();
        assert!(!table.contains("baseline"), "{table}");
        let p99 = table.lines().find(|l| l.starts_with("latency p99")).unwrap();
        assert!(p99.ends_with("  990.00"), "{table}");
        assert_eq!(cell(None, 1, ""), "–");
        assert_eq!(cell(Spread::of(&[1.5]), 1, "×"), "1.5×");
    }

    #[test]
    fn table_columns_pad_to_the_widest_cell() {
        let t = render_table(
            &["", "a", "bb"],
            &[
                vec!["x".into(), "1".into(), "2".into()],
                vec!["long".into(), "333".into()],
            ],
        );
        assert_eq!(t, "        a  bb\n----  ---  --\nx       1   2\nlong  333\n");
    }
}
