//! `warren-bench`: an end-to-end load run against the configured broker.
//!
//! Each run publishes `user.registered` events to its own uniquely named
//! exchange and queues (deleted afterwards) and consumes them with a typed
//! handler that records the publish→handler latency from a timestamp inside
//! the event. The **warren** run publishes with [`Publisher`](warren::Publisher)
//! (or through an HTTP ingress) and consumes with
//! [`Consumer`](warren::consumer::Consumer). Two bare-lapin loops are the
//! yardsticks: the **matched baseline** does warren's work (its body,
//! properties, window and prefetch) in a tight loop, and the **lean** loop
//! ([`lean`]) is the fastest correct loop this bench knows, alone or with one
//! of warren's additions. With `--runs K` the loops take turns going first
//! and the report gives medians with min–max of ratios paired per run.
//!
//! - [`load`]: event bodies, publisher quotas and pacing, the recorder.
//! - [`arena`]: the run's unique topology, declared and cleaned up.
//! - [`stats`]: percentiles, rates, medians, CPU time and peak RSS.
//! - [`figures`]: what a run measured and the figures made of it.
//! - [`report`]: the per-run lines, the summary table and the JSON.

pub mod arena;
mod baseline;
mod drive;
mod expiry;
pub mod figures;
mod ingress;
pub mod lean;
pub mod load;
mod progress;
mod relay;
pub mod report;
pub mod stats;
mod warren_run;

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::arena::Arena;
use self::figures::Figures;
use self::lean::Addition;
use self::load::Limit;
use self::report::Report;
use warren::config::QueueType;
use warren::config::Settings;
use warren::event::{Event, UserRegistered};
use warren::topology::Topology;

/// Options of `warren-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events per run [default: 50000, unless --duration is given].
    #[arg(long, value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub events: Option<u64>,
    /// Publish for this long instead of a fixed count (500ms, 20s, 2m).
    #[arg(long, value_name = "TIME", value_parser = crate::duration::parse)]
    pub duration: Option<Duration>,
    /// Size of each event's JSON body in bytes (the username is padded; the
    /// smallest envelope is about 285 bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 300)]
    pub payload_size: usize,
    /// Publisher tasks (sharing one confirm channel), in every loop.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub publishers: u32,
    /// Confirms each publisher task keeps in flight, in every loop.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub window: u32,
    /// Consumer prefetch (basic.qos) [default: consumer.prefetch].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,
    /// Handlers running at once [default: consumer.concurrency].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
    /// Pace publishing at this many events/s in total (for latency at a fixed load).
    #[arg(long, value_name = "EVENTS_PER_S", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Publish through the HTTP ingress at this base URL (http://host:port,
    /// http://127.0.0.1:8597 for a `warren ingress` with its default
    /// ingress.listen; POST {URL}/events over 64 keep-alive connections) instead of the
    /// library publisher. The ingress must publish to the configured
    /// topology.exchange; give both an exchange of their own
    /// (WARREN_TOPOLOGY__EXCHANGE=warren-bench), or every queue bound there
    /// gets a copy of the bench events.
    #[arg(long, value_name = "URL")]
    pub ingress: Option<String>,
    /// Also run two bare-lapin loops and report warren's figures as ratios
    /// of each: the matched baseline (warren's body, properties, window and
    /// prefetch) and the lean loop (the fastest this bench knows).
    #[arg(long)]
    pub baseline: bool,
    /// Price warren's additions: run the lean loop, then the lean loop with
    /// each addition alone (mandatory, properties, event_id, validation,
    /// metrics, confirm deadlines, consumer defaults), paired per run.
    #[arg(long, conflicts_with_all = ["ingress", "baseline", "relay"])]
    pub additions: bool,
    /// Compare warren's consumer at these prefetch counts (each acking every
    /// prefetch/4) with its configured one, paired per run: 128,256,1024.
    #[arg(long, value_name = "LIST", value_delimiter = ',', conflicts_with_all = ["ingress", "baseline", "relay", "additions"], value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetches: Vec<u16>,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Repeat this many times and report medians with min–max.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Bench the outbox relay (relay.database_url) next to the library
    /// publisher: rows inserted as fast as the database takes them,
    /// relayed and handled; reports events/s and the commit → handler lag.
    #[arg(long, conflicts_with_all = ["ingress", "baseline", "duration", "rate"])]
    pub relay: bool,
    /// Also measure the broker's CPU per event: the pid of its process on
    /// this machine (`pgrep -f 'beam.smp.*rabbit'`), read from /proc.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Queue type of the bench queues [default: topology.queue_type].
    #[arg(long, value_name = "TYPE")]
    pub queue_type: Option<QueueType>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("invalid rate {s:?}: a positive number of events per second")),
    }
}

/// The options of a bench, resolved against the settings.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub events: Option<u64>,
    pub duration_s: Option<f64>,
    pub rate: Option<f64>,
    pub payload_size: usize,
    pub publishers: usize,
    pub window: usize,
    pub prefetch: u16,
    pub concurrency: usize,
    pub queue_type: QueueType,
    pub ingress: Option<String>,
    pub baseline: bool,
    pub additions: bool,
    /// Prefetch counts to compare warren's configured one with.
    pub prefetches: Vec<u16>,
    pub broker_pid: Option<u32>,
    pub runs: usize,
}

/// Concurrent HTTP connections of `--ingress`.
pub const INGRESS_CONNECTIONS: usize = 64;

impl Plan {
    /// `args` with the settings' defaults filled in.
    #[must_use]
    pub fn new(settings: &Settings, args: &BenchArgs) -> Self {
        let events = match (args.events, args.duration) {
            (None, None) => Some(50_000),
            (events, _) => events,
        };
        Self {
            events,
            duration_s: args.duration.map(|d| d.as_secs_f64()),
            rate: args.rate,
            payload_size: args.payload_size,
            publishers: args.publishers as usize,
            window: args.window as usize,
            prefetch: args.prefetch.unwrap_or(settings.consumer.prefetch),
            concurrency: args.concurrency.map_or(settings.consumer.concurrency, |c| c as usize),
            queue_type: args.queue_type.unwrap_or(settings.topology.queue_type),
            ingress: args.ingress.clone(),
            baseline: args.baseline,
            additions: args.additions,
            prefetches: args.prefetches.clone(),
            broker_pid: args.broker_pid,
            runs: args.runs as usize,
        }
    }

    /// A count or a time limit per run.
    #[must_use]
    pub fn limit(&self) -> Limit {
        match (self.events, self.duration_s) {
            (Some(n), _) => Limit::Events(n),
            (None, Some(s)) => Limit::Duration(Duration::from_secs_f64(s)),
            (None, None) => Limit::Events(50_000),
        }
    }

    /// The loops each run measures, in the order of the first run.
    #[must_use]
    pub fn columns(&self) -> Vec<Kind> {
        if self.additions {
            std::iter::once(Kind::Lean(None))
                .chain(Addition::ALL.into_iter().map(|a| Kind::Lean(Some(a))))
                .collect()
        } else if !self.prefetches.is_empty() {
            let mut kinds = vec![Kind::WarrenWith(self.prefetch)];
            for &p in &self.prefetches {
                if !kinds.contains(&Kind::WarrenWith(p)) {
                    kinds.push(Kind::WarrenWith(p));
                }
            }
            kinds
        } else if self.baseline {
            vec![Kind::Warren, Kind::Baseline, Kind::Lean(None)]
        } else {
            vec![Kind::Warren]
        }
    }

    /// Latency samples to make room for.
    fn capacity(&self) -> usize {
        let n = match (self.events, self.duration_s, self.rate) {
            (Some(n), _, _) => n as f64,
            (None, Some(s), Some(r)) => s * r * 1.05,
            _ => 1e6,
        };
        n.min(1e8) as usize
    }

    /// One line describing the plan.
    #[must_use]
    pub fn describe(&self) -> String {
        let amount = match (self.events, self.duration_s) {
            (Some(n), _) => format!("{n} events"),
            (None, Some(s)) => format!("{s} s"),
            _ => String::new(),
        };
        let pace = self
            .rate
            .map_or_else(|| "unpaced".to_owned(), |r| format!("paced at {r}/s"));
        let queues = self.queue_type;
        let source = match &self.ingress {
            Some(url) => format!("HTTP ingress {url} × {INGRESS_CONNECTIONS} connections"),
            None => format!("{} publishers × {} confirms in flight", self.publishers, self.window),
        };
        let lean = if self.baseline || self.additions {
            format!(
                "; lean loop: prefetch {}, an ack every {}",
                lean::PREFETCH,
                lean::ACK_EVERY
            )
        } else {
            String::new()
        };
        format!(
            "{amount} per run × {} run(s), {pace}, {}-byte events, {queues} queues, {source}, prefetch {}, concurrency {}{lean}",
            self.runs, self.payload_size, self.prefetch, self.concurrency
        )
    }
}

/// Why a bench did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("broker: {0}")]
    Broker(String),
    #[error(transparent)]
    Topology(#[from] warren::topology::TopologyError),
    #[error(transparent)]
    Publisher(#[from] warren::publisher::PublishError),
    #[error("{failed} publishes failed (first: {first}): the run is void")]
    PublishFailed { failed: u64, first: String },
    #[error("the consumer stopped during the run: {0}")]
    ConsumerStopped(String),
    #[error("stalled: {handled} of {expected} events handled, nothing confirmed or handled for {idle:?}")]
    Stalled {
        handled: u64,
        expected: u64,
        idle: Duration,
    },
    #[error("ingress: {0}")]
    Ingress(String),
    #[error("interrupted")]
    Interrupted,
}

/// Which loop a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// warren's publisher (or the ingress) and consumer.
    Warren,
    /// The same, its consumer at this prefetch (`--prefetches`).
    WarrenWith(u16),
    /// Bare lapin doing what warren does: its body, properties, window, prefetch.
    Baseline,
    /// The lean bare-lapin loop, alone or with one of warren's additions.
    Lean(Option<Addition>),
}

impl Kind {
    /// Its key in the JSON and the per-run lines.
    #[must_use]
    pub fn key(self) -> String {
        match self {
            Self::Warren => "warren".into(),
            Self::WarrenWith(prefetch) => format!("warren@{prefetch}"),
            Self::Baseline => "baseline".into(),
            Self::Lean(None) => "lean".into(),
            Self::Lean(Some(a)) => format!("lean+{}", a.key()),
        }
    }

    /// Its column title in the summary.
    #[must_use]
    pub fn title(self) -> String {
        match self {
            Self::Warren => "warren".into(),
            Self::WarrenWith(prefetch) => format!("warren, prefetch {prefetch}"),
            Self::Baseline => "matched baseline".into(),
            Self::Lean(None) => "lean loop".into(),
            Self::Lean(Some(a)) => format!("+ {}", a.name()),
        }
    }

    /// A short label for its run's queue names.
    fn label(self) -> &'static str {
        match self {
            Self::Warren | Self::WarrenWith(_) => "w",
            Self::Baseline => "b",
            Self::Lean(_) => "l",
        }
    }
}

/// Runs the bench described by `args` and prints its report on stdout.
/// Cancelling `shutdown` stops it (after deleting the current run's queues).
///
/// # Errors
///
/// [`BenchError`]: the broker is unreachable, a publish failed, the consumer
/// stalled, or `shutdown` was cancelled.
pub async fn run(settings: &Settings, args: &BenchArgs, shutdown: CancellationToken) -> Result<(), BenchError> {
    let plan = Plan::new(settings, args);
    if args.relay {
        return relay::run(settings, &plan, &shutdown).await;
    }
    if let Some(url) = &plan.ingress {
        // A URL the load generator cannot use fails before any queue exists.
        ingress::Target::parse(url)?;
        warn_about_copies(settings).await?;
    }
    let mut report = Report::new(plan.clone());
    let mut stdout = std::io::stdout();
    if !args.json {
        let _ = writeln!(stdout, "warren-bench: {}", plan.describe());
    }
    let mut kinds = plan.columns();
    for i in 0..plan.runs {
        for &kind in &kinds {
            let figures = run_one(settings, &plan, kind, i, &shutdown).await?;
            if !args.json {
                let _ = writeln!(stdout, "{}", report::run_line(i + 1, plan.runs, kind, &figures));
            }
            report.set(i, kind, figures);
        }
        // Each loop goes first in turn: none always runs on a fresher broker.
        kinds.rotate_left(1);
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report.to_json()).expect("figures serialize")
    } else {
        report.render()
    };
    let _ = writeln!(stdout, "{text}");
    Ok(())
}

/// The ingress publishes the bench events to the configured exchange, so
/// any other queue bound to it for `user.registered` gets a copy of each
/// (and its consumers handle them). Over AMQP the bindings cannot be listed;
/// the configured service's own queue is the usual one, so say so when it
/// exists.
async fn warn_about_copies(settings: &Settings) -> Result<(), BenchError> {
    let own = Topology::from_settings(settings).work_queue(UserRegistered::TYPE);
    if Arena::new(settings, "lookup", true).queue_exists(&own).await? {
        eprintln!(
            "warning: queue {own} exists: if it is bound to exchange {exchange}, where the ingress publishes, \
             it gets a copy of every bench event, and the broker does that work too. Bench the ingress on an \
             exchange of its own: the same WARREN_TOPOLOGY__EXCHANGE=warren-bench for `warren ingress` and \
             `warren-bench`.",
            exchange = settings.topology.exchange
        );
    }
    Ok(())
}

async fn run_one(
    settings: &Settings,
    plan: &Plan,
    kind: Kind,
    i: usize,
    shutdown: &CancellationToken,
) -> Result<Figures, BenchError> {
    let mut base = settings.clone();
    base.topology.queue_type = plan.queue_type;
    base.consumer.prefetch = match kind {
        Kind::WarrenWith(prefetch) => prefetch,
        _ => plan.prefetch,
    };
    base.consumer.concurrency = plan.concurrency;
    let via_ingress = kind == Kind::Warren && plan.ingress.is_some();
    let arena = Arena::new(&base, &format!("{}{}", kind.label(), i + 1), via_ingress);
    let progress_label = format!("run {}/{} {}", i + 1, plan.runs, kind.key());
    let work = async {
        let raw = match kind {
            Kind::Warren | Kind::WarrenWith(_) => warren_run::run(&arena, plan, progress_label).await?,
            Kind::Baseline => baseline::run(&arena, plan, progress_label).await?,
            Kind::Lean(addition) => lean::run(&arena, plan, addition, progress_label).await?,
        };
        Ok(Figures::from_raw(raw))
    };
    let result = tokio::select! {
        r = work => r,
        () = shutdown.cancelled() => Err(BenchError::Interrupted),
    };
    arena.cleanup().await;
    // Let the broker settle after deleting the queues.
    tokio::time::sleep(Duration::from_millis(300)).await;
    result
}
