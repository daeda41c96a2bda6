//! `warren dead …`: list, group, show, replay, purge and import the events
//! parked in the configured service's `.dead` queues.

mod print;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::bail;
use tokio_util::sync::CancellationToken;
use warren::Settings;
use warren::dead::{DeadLetters, FileSink, Filter, Parked, Record, ReplayOptions, parse_time, read_export};

use crate::terminal;

/// Operate on the service's `.dead` queues (see docs/CONSUMER.md#dead-letters).
#[derive(clap::Args)]
pub struct DeadArgs {
    /// Consumer service whose `.dead` queues to use; default: consumer.service.
    #[arg(long, global = true)]
    service: Option<String>,
    #[command(subcommand)]
    command: DeadCommand,
}

#[derive(clap::Subcommand)]
enum DeadCommand {
    /// Parked events, oldest parked first; the queues are left as they were.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Groups of parked events by (event type, reason, error class), largest first.
    Stats {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// One parked event whole: properties, every header, the body, its origin.
    Show {
        event_id: String,
        /// One JSON object per line (the export format).
        #[arg(long)]
        json: bool,
    },
    /// Send selected events back to this service's work queue (never through
    /// the topic exchange), each confirmed before it leaves `.dead`.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Skip (and report) events already replayed this many times.
        #[arg(long, default_value_t = warren::dead::DEFAULT_MAX_REPLAYS)]
        max_replays: i64,
        /// Show what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// The summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove selected events, after confirmation (or --yes), each written to
    /// --export first when given.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// Write every removed message here (JSON lines, a new file) before removing it.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Put the messages of an export (from `purge --export`) back into their `.dead` queue.
    Import { file: PathBuf },
}

/// The filters `list`, `stats`, `replay` and `purge` share.
#[derive(clap::Args)]
struct FilterArgs {
    /// Event type (user.registered, user.login).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    event_type: Option<String>,
    /// Reason: exhausted, permanent, malformed, invalid, unhandled (or the broker's, e.g. delivery_limit).
    #[arg(long)]
    reason: Option<String>,
    /// First failure at or after: RFC 3339, or a duration ago (2h, 90m).
    #[arg(long)]
    since: Option<String>,
    /// First failure before: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    event_id: Option<String>,
    /// A group id from `warren dead stats`.
    #[arg(long)]
    group: Option<String>,
    /// At most this many events, oldest parked first.
    #[arg(long)]
    limit: Option<usize>,
}

impl FilterArgs {
    fn to_filter(&self) -> anyhow::Result<Filter> {
        let now = chrono::Utc::now();
        let time = |s: &Option<String>, flag: &str| -> anyhow::Result<_> {
            s.as_deref()
                .map(|s| parse_time(s, now))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        };
        Ok(Filter {
            event_type: self.event_type.clone(),
            reason: self.reason.clone(),
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            event_id: self.event_id.clone(),
            group: self.group.clone(),
            limit: self.limit,
        })
    }
}

/// Runs one `warren dead` command.
pub async fn run(
    mut settings: Settings,
    args: DeadArgs,
    shutdown: impl FnOnce() -> CancellationToken,
) -> anyhow::Result<()> {
    if let Some(s) = args.service {
        settings.consumer.service = s;
    }
    if let DeadCommand::Import { file } = &args.command {
        // Read the whole file before connecting: a bad line publishes nothing.
        let records = read_export(file).map_err(anyhow::Error::msg)?;
        let dead = DeadLetters::connect(&settings, "dead-letters").await?;
        let n = dead.import(&records).await;
        dead.close().await;
        eprintln!(
            "imported {} of {} messages from {}",
            n.as_ref().unwrap_or(&0),
            records.len(),
            file.display()
        );
        n?;
        return Ok(());
    }
    let dead = DeadLetters::connect(&settings, "dead-letters").await?;
    let result = command(&dead, args.command, shutdown).await;
    dead.close().await;
    result
}

async fn command(
    dead: &DeadLetters,
    cmd: DeadCommand,
    shutdown: impl FnOnce() -> CancellationToken,
) -> anyhow::Result<()> {
    let mut bar = ProgressBar::new();
    match cmd {
        DeadCommand::List { filter, json } => {
            let found = dead.list(&filter.to_filter()?, &mut |d, t| bar.show(d, t)).await?;
            bar.clear();
            print_parked(&found, json);
        }
        DeadCommand::Stats { filter, json } => {
            let groups = dead.stats(&filter.to_filter()?, &mut |d, t| bar.show(d, t)).await?;
            bar.clear();
            print_groups(&groups, json);
        }
        DeadCommand::Show { event_id, json } => {
            let found = dead.show(&event_id, &mut |d, t| bar.show(d, t)).await?;
            bar.clear();
            if found.is_empty() {
                bail!("no parked event with event_id {event_id:?} in {}", queue_names(dead));
            }
            print_records(&found, json)?;
        }
        DeadCommand::Replay {
            filter,
            max_replays,
            dry_run,
            json,
        } => {
            let options = ReplayOptions {
                filter: filter.to_filter()?,
                max_replays,
                dry_run,
            };
            let report = dead.replay(&options, &shutdown(), &mut |d, t| bar.show(d, t)).await?;
            bar.clear();
            print::replay_summary(&report, json)?;
        }
        DeadCommand::Purge {
            filter,
            yes,
            export,
            json,
        } => purge(dead, &filter.to_filter()?, yes, export.as_deref(), json, shutdown()).await?,
        DeadCommand::Import { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// Asks (unless `yes`), then purges, writing to `export` first when given.
async fn purge(
    dead: &DeadLetters,
    filter: &Filter,
    yes: bool,
    export: Option<&Path>,
    json: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if !yes && !confirm_purge(dead, filter, export).await? {
        bail!("nothing purged");
    }
    let mut bar = ProgressBar::new();
    let report = match export {
        Some(path) => {
            let mut sink = FileSink::create(path).map_err(anyhow::Error::msg)?;
            dead.purge(filter, &mut sink, &stop, &mut |d, t| bar.show(d, t)).await?
        }
        None => dead.purge(filter, &mut (), &stop, &mut |d, t| bar.show(d, t)).await?,
    };
    bar.clear();
    print::purge_summary(&report, export, json)
}

fn queue_names(dead: &DeadLetters) -> String {
    let names: Vec<String> = dead.queues(&Filter::default()).into_iter().map(|(_, q)| q).collect();
    names.join(", ")
}

/// Lists what a purge would remove and asks; `false` unless the answer is `yes`.
async fn confirm_purge(dead: &DeadLetters, filter: &Filter, export: Option<&Path>) -> anyhow::Result<bool> {
    let selected = dead.list(filter, &mut |_, _| {}).await?;
    if selected.is_empty() {
        eprintln!("no parked event matches");
        return Ok(false);
    }
    let fate = export.map_or_else(
        || "removed for good (pass --export FILE to keep a copy)".to_owned(),
        |p| format!("written to {} and removed", p.display()),
    );
    terminal::ask_yes(&format!(
        "{} parked events of {} will be {fate}. Type yes to continue: ",
        selected.len(),
        queue_names(dead)
    ))
}

fn print_parked(found: &[Parked], json: bool) {
    if json {
        for p in found {
            println!("{}", terminal::json(serde_json::to_string(p).expect("serializable")));
        }
        return;
    }
    print::parked_table(found);
}

fn print_groups(groups: &[warren::dead::Group], json: bool) {
    if json {
        for g in groups {
            println!("{}", terminal::json(serde_json::to_string(g).expect("serializable")));
        }
        return;
    }
    print::groups_table(groups);
}

fn print_records(found: &[Record], json: bool) -> anyhow::Result<()> {
    for r in found {
        if json {
            println!("{}", terminal::json(serde_json::to_string(r)?));
        } else {
            print::record(r)?;
        }
    }
    Ok(())
}

/// A progress line on stderr, rewritten in place, when stderr is a terminal.
struct ProgressBar {
    on: bool,
    shown: bool,
}

impl ProgressBar {
    fn new() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, done: u64, total: u64) {
        // Every message would flood a slow terminal: every 50th, and the last.
        if !self.on || (!done.is_multiple_of(50) && done != total) {
            return;
        }
        const WIDTH: u64 = 30;
        // The total is the queues' count at the start: arrivals can pass it.
        let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
        let filled = usize::try_from(filled).unwrap_or(0);
        eprint!(
            "\r[{}{}] {done}/{total}",
            "#".repeat(filled),
            " ".repeat(WIDTH as usize - filled)
        );
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}
