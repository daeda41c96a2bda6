//! The report: one line per run, then a summary table (medians with min–max
//! over runs, warren as a ratio of the baseline) or the same as JSON.

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
        key: "broker_cpu_us_per_event",
        label: "broker CPU per event (µs)",
        get: |f| f.broker_cpu_us_per_event,
        decimals: 1,
    },
    Metric {
        key: "peak_rss_mib",
        label: "peak RSS (MiB, whole process)",
        get: |f| f.peak_rss_mib,
        decimals: 1,
    },
];

/// A ratio the summary shows: column `num` ÷ column `den`, paired per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub num: usize,
    pub den: usize,
}

/// Every run of a bench: `runs[i][c]` is run `i`'s figures of `columns[c]`.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    pub columns: Vec<Kind>,
    pub ratios: Vec<Ratio>,
    pub runs: Vec<Vec<Option<Figures>>>,
}

/// A metric's spread per column, and per ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub columns: Vec<Option<Spread>>,
    pub ratios: Vec<Option<Spread>>,
}

impl Report {
    /// An empty report of `plan`'s columns.
    #[must_use]
    pub fn new(plan: Plan) -> Self {
        let columns = plan.columns();
        let ratios = match columns.first() {
            // --additions and --prefetches: each loop against the first.
            Some(Kind::Lean(None) | Kind::WarrenWith(_)) => {
                (1..columns.len()).map(|num| Ratio { num, den: 0 }).collect()
            }
            _ => (1..columns.len()).map(|den| Ratio { num: 0, den }).collect(),
        };
        Self {
            plan,
            columns,
            ratios,
            runs: Vec::new(),
        }
    }

    /// Stores run `i`'s figures of `kind`.
    pub fn set(&mut self, i: usize, kind: Kind, figures: Figures) {
        if self.runs.len() <= i {
            self.runs.resize(i + 1, vec![None; self.columns.len()]);
        }
        if let Some(c) = self.columns.iter().position(|k| *k == kind) {
            self.runs[i][c] = Some(figures);
        }
    }

    /// The summary of one metric over all runs.
    #[must_use]
    pub fn row(&self, metric: &Metric) -> Row {
        let value = |run: &Vec<Option<Figures>>, c: usize| run[c].as_ref().and_then(metric.get);
        let columns = (0..self.columns.len())
            .map(|c| Spread::of(&self.runs.iter().filter_map(|r| value(r, c)).collect::<Vec<_>>()))
            .collect();
        let ratios = self
            .ratios
            .iter()
            .map(|q| {
                let paired: Vec<f64> = self
                    .runs
                    .iter()
                    .filter_map(|r| {
                        let (n, d) = (value(r, q.num)?, value(r, q.den)?);
                        (d != 0.0).then(|| n / d)
                    })
                    .collect();
                Spread::of(&paired)
            })
            .collect();
        Row { columns, ratios }
    }

    fn ratio_name(&self, q: Ratio) -> String {
        format!("{} ÷ {}", self.columns[q.num].key(), self.columns[q.den].key())
    }

    /// The summary table: a row per metric, or with `--additions` a row per loop.
    #[must_use]
    pub fn render(&self) -> String {
        if self.plan.additions || !self.plan.prefetches.is_empty() {
            return self.render_against_first();
        }
        let many = self.runs.len() > 1;
        let mut header: Vec<String> = vec![if many { "median (min–max)" } else { "" }.to_owned()];
        header.extend(self.columns.iter().map(|k| k.title().to_owned()));
        header.extend(self.ratios.iter().map(|q| self.ratio_name(*q)));
        let rows: Vec<Vec<String>> = METRICS
            .iter()
            .map(|m| (m, self.row(m)))
            // The broker's CPU is only there when its pid was given.
            .filter(|(_, row)| row.columns.iter().any(Option::is_some))
            .map(|(m, row)| {
                let mut cells = vec![m.label.to_owned()];
                cells.extend(row.columns.iter().map(|s| cell(*s, m.decimals, "")));
                cells.extend(row.ratios.iter().map(|s| cell(*s, 2, "×")));
                cells
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut out = render_table(&header, &rows);
        if !self.ratios.is_empty() {
            out.push_str("ratios are paired per run: above 1 is better for rates, below 1 for latency, CPU and RSS\n");
        }
        out
    }

    /// A row per loop (the lean one then each addition, or warren at each
    /// prefetch), with its paired ratios to the first.
    fn render_against_first(&self) -> String {
        let by_key = |key: &str| self.row(METRICS.iter().find(|m| m.key == key).expect("a metric"));
        let (rate, cpu, broker) = (
            by_key("end_to_end_rate"),
            by_key("cpu_us_per_event"),
            by_key("broker_cpu_us_per_event"),
        );
        let p99 = by_key("latency_p99_ms");
        let with_broker = broker.columns.iter().any(Option::is_some);
        let first = if self.plan.additions { "÷ lean" } else { "÷ first" };
        let mut header = vec![
            "median (min–max)",
            "end-to-end (events/s)",
            first,
            "client CPU/event (µs)",
            first,
        ];
        if with_broker {
            header.extend(["broker CPU/event (µs)", first]);
        }
        header.push("p99 (ms)");
        let rows: Vec<Vec<String>> = (0..self.columns.len())
            .map(|c| {
                let ratio = |row: &Row| match c {
                    0 => String::new(),
                    _ => cell(row.ratios[c - 1], 2, "×"),
                };
                let mut cells = vec![self.columns[c].title(), cell(rate.columns[c], 0, ""), ratio(&rate)];
                cells.extend([cell(cpu.columns[c], 1, ""), ratio(&cpu)]);
                if with_broker {
                    cells.extend([cell(broker.columns[c], 1, ""), ratio(&broker)]);
                }
                cells.push(cell(p99.columns[c], 2, ""));
                cells
            })
            .collect();
        let mut out = render_table(&header, &rows);
        out.push_str(if self.plan.additions {
            "each addition alone on the lean loop; ratios are paired per run\n"
        } else {
            "ratios to the first row (the configured prefetch) are paired per run\n"
        });
        out
    }

    /// The plan, every run's figures and the summary, as JSON.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|run| {
                let by_kind: serde_json::Map<_, _> =
                    self.columns.iter().zip(run).map(|(k, f)| (k.key(), json!(f))).collect();
                serde_json::Value::Object(by_kind)
            })
            .collect();
        let summary: serde_json::Map<String, serde_json::Value> = METRICS
            .iter()
            .map(|m| {
                let row = self.row(m);
                let mut entry: serde_json::Map<_, _> = self
                    .columns
                    .iter()
                    .zip(&row.columns)
                    .map(|(k, s)| (k.key(), json!(s)))
                    .collect();
                let ratios: serde_json::Map<_, _> = self
                    .ratios
                    .iter()
                    .zip(&row.ratios)
                    .map(|(q, s)| {
                        (
                            format!("{}/{}", self.columns[q.num].key(), self.columns[q.den].key()),
                            json!(s),
                        )
                    })
                    .collect();
                entry.insert("ratios".to_owned(), serde_json::Value::Object(ratios));
                (m.key.to_owned(), serde_json::Value::Object(entry))
            })
            .collect();
        json!({ "plan": self.plan, "runs": runs, "summary": summary })
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

/// One line per finished run.
// Never inlined: scripts/bench-callgrind.sh dumps a profile after each call.
#[must_use]
#[inline(never)]
pub fn run_line(i: usize, of: usize, kind: Kind, f: &Figures) -> String {
    let rss = f.peak_rss_mib.map_or_else(|| "?".to_owned(), |m| format!("{m:.1}"));
    format!(
        "run {i}/{of} {:<8}  {} events in {:.2} s: end-to-end {:.0}/s, publish {:.0}/s, latency p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms, CPU {:.1} µs/event, peak RSS {rss} MiB",
        kind.key(),
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
    use crate::bench::lean::Addition;
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
            additions: false,
            prefetches: Vec::new(),
            broker_pid: None,
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
            broker_cpu: None,
            peak_rss: Some(64 * 1024 * 1024),
        })
    }

    /// Three runs of warren, the matched baseline and the lean loop.
    fn three_runs(warren: [f64; 3], baseline: f64, lean: f64) -> Report {
        let mut r = Report::new(plan());
        for (i, w) in warren.into_iter().enumerate() {
            r.set(i, Kind::Lean(None), figures(lean, 30.0));
            r.set(i, Kind::Warren, figures(w, 50.0));
            r.set(i, Kind::Baseline, figures(baseline, 40.0));
        }
        r
    }

    #[test]
    fn ratios_are_paired_per_run_and_summarised_by_median() {
        let r = three_runs([9_000.0, 10_000.0, 12_000.0], 10_000.0, 15_000.0);
        let rate = r.row(&METRICS[1]);
        let ratio = rate.ratios[0].unwrap();
        assert!((ratio.median - 1.0).abs() < 1e-6);
        assert!((ratio.min - 0.9).abs() < 1e-6 && (ratio.max - 1.2).abs() < 1e-6);
        let lean = rate.ratios[1].unwrap();
        assert!((lean.median - 10_000.0 / 15_000.0).abs() < 1e-6, "{lean:?}");
        let cpu = r.row(&METRICS[6]).ratios[0].unwrap();
        assert!((cpu.median - 1.25).abs() < 1e-6, "{cpu:?}");
        let json = r.to_json();
        assert_eq!(json["plan"]["events"], 1000);
        assert_eq!(json["runs"].as_array().unwrap().len(), 3);
        assert_eq!(json["runs"][2]["lean"]["events"], 1000);
        let e2e = &json["summary"]["end_to_end_rate"];
        assert!((e2e["warren"]["max"].as_f64().unwrap() - 12_000.0).abs() < 0.01);
        assert!((e2e["ratios"]["warren/lean"]["median"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn the_table_shows_medians_ranges_and_ratios_aligned() {
        let r = three_runs([9_000.0, 10_000.0, 12_000.0], 10_000.0, 20_000.0);
        let table = r.render();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("median (min–max)"), "{table}");
        assert!(lines[0].ends_with("warren ÷ baseline      warren ÷ lean"), "{table}");
        let e2e = lines.iter().find(|l| l.starts_with("end-to-end rate")).unwrap();
        assert!(e2e.contains("10000 (9000–12000)"), "{e2e}");
        assert!(e2e.contains("  10000  "), "all baseline runs agree: no range: {e2e}");
        assert!(e2e.ends_with("1.00× (0.90–1.20)  0.50× (0.45–0.60)"), "{e2e}");
        let cpu = lines.iter().find(|l| l.starts_with("CPU per event")).unwrap();
        assert!(cpu.split_whitespace().rev().take(2).eq(["1.67×", "1.25×"]), "{cpu}");
        let width = |l: &str| l.chars().count();
        assert_eq!(width(lines[1]), width(e2e), "ratio column is right-aligned to the rule");
    }

    #[test]
    fn the_additions_table_has_a_row_per_loop_with_ratios_to_the_lean_one() {
        let mut r = Report::new(Plan {
            baseline: false,
            additions: true,
            ..plan()
        });
        assert_eq!(r.columns.len(), 8, "{:?}", r.columns);
        for i in 0..3 {
            r.set(i, Kind::Lean(Some(Addition::Mandatory)), figures(9_000.0, 33.0));
            r.set(i, Kind::Lean(None), figures(10_000.0, 30.0));
        }
        let table = r.render();
        let cells = |name: &str| -> Vec<&str> {
            let line = table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{table}"));
            line[name.len()..].split_whitespace().collect()
        };
        assert_eq!(cells("lean loop"), ["10000", "30.0", "990.00"], "{table}");
        assert_eq!(
            cells("+ mandatory"),
            ["9000", "0.90×", "33.0", "1.10×", "990.00"],
            "{table}"
        );
        assert_eq!(cells("+ metrics"), ["–"; 5], "not run: {table}");
        let json = r.to_json();
        let ratio = &json["summary"]["cpu_us_per_event"]["ratios"]["lean+mandatory/lean"]["median"];
        assert!((ratio.as_f64().unwrap() - 1.1).abs() < 1e-6, "{ratio}");
    }

    #[test]
    fn prefetches_compare_warren_at_each_with_the_configured_one_first() {
        let mut r = Report::new(Plan {
            baseline: false,
            prefetches: vec![128, 256, 512],
            ..plan()
        });
        let expected = [Kind::WarrenWith(256), Kind::WarrenWith(128), Kind::WarrenWith(512)];
        assert_eq!(r.columns, expected, "the configured 256 first, once");
        for i in 0..3 {
            r.set(i, Kind::WarrenWith(256), figures(10_000.0, 30.0));
            r.set(i, Kind::WarrenWith(512), figures(10_500.0, 29.0));
        }
        let table = r.render();
        assert!(table.lines().next().unwrap().contains("÷ first"), "{table}");
        let line = table.lines().find(|l| l.starts_with("warren, prefetch 512")).unwrap();
        assert!(line.contains("10500    1.05×"), "{table}");
        let json = r.to_json();
        assert!(json["summary"]["end_to_end_rate"]["ratios"]["warren@512/warren@256"]["median"].is_number());
    }

    #[test]
    fn a_warren_only_report_has_one_figure_column() {
        let mut r = Report::new(Plan {
            runs: 1,
            baseline: false,
            ..plan()
        });
        r.set(0, Kind::Warren, figures(1000.0, 10.0));
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
