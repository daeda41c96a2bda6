//! `warren relay`: the PostgreSQL outbox relay and its operator commands
//! (`schema`, `failed`, `retry`, `stats`); `warren run --relay` runs it
//! beside the consumer and the ingress.

use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;
use warren::readiness::Readiness;
use warren::relay::{Relay, RetrySelection, Table};
use warren::{Publisher, Settings};

/// Options of `warren relay`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Print the outbox table's DDL (relay.table), for
    /// `psql "$DATABASE_URL" -c "$(warren relay schema)"`.
    Schema {
        /// Run it against relay.database_url instead of printing it.
        #[arg(long)]
        apply: bool,
    },
    /// List the rows the relay marked failed (invalid envelope, or
    /// unroutable), oldest first, one JSON object per line.
    Failed {
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put failed rows back in line (after fixing the cause); prints how many.
    Retry {
        /// Row ids (the `id` of `warren relay failed`).
        #[arg(required_unless_present = "all")]
        ids: Vec<i64>,
        /// Every failed row.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Pending and failed rows, and the age of the oldest pending row, as JSON.
    Stats,
}

/// Runs `warren relay [COMMAND]`.
///
/// # Errors
///
/// Bad settings, an unreachable database, a missing table.
pub async fn run(settings: &Settings, args: RelayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    match args.command {
        None => serve(settings, shutdown).await,
        Some(RelayCommand::Schema { apply: false }) => {
            print!("{}", Table::parse(&settings.relay.table)?.ddl());
            Ok(())
        }
        Some(RelayCommand::Schema { apply: true }) => {
            let relay = Relay::new(&settings.relay)?;
            relay.apply_schema().await?;
            eprintln!("created {} (or it was there)", relay.table().qualified());
            Ok(())
        }
        Some(RelayCommand::Failed { limit }) => {
            let rows = Relay::new(&settings.relay)?.failed(limit).await?;
            for row in &rows {
                // Rows hold what the application wrote: printed safe for a terminal.
                println!("{}", crate::terminal::json(serde_json::to_string(row)?));
            }
            eprintln!("{} failed row(s) listed", rows.len());
            Ok(())
        }
        Some(RelayCommand::Retry { ids, all }) => {
            let which = if all {
                RetrySelection::All
            } else {
                RetrySelection::Ids(ids)
            };
            let n = Relay::new(&settings.relay)?.retry(&which).await?;
            println!("{n}");
            eprintln!("{n} row(s) back to pending");
            Ok(())
        }
        Some(RelayCommand::Stats) => {
            let stats = Relay::new(&settings.relay)?.stats().await?;
            println!("{}", serde_json::to_string(&stats)?);
            Ok(())
        }
    }
}

/// The relay alone; `/metrics`, `/healthz` and `/readyz` on metrics.listen when set.
async fn serve(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle = warren::metrics::install()?;
    let relay = Relay::new(&settings.relay)?;
    let publisher = Publisher::start(settings, "relay");
    let metrics = match settings.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
            let state = warren::http::AppState::new(Arc::new(publisher.clone()), &settings.ingress)
                .with_metrics(handle)
                .with_readiness(readiness(&relay));
            Some(tokio::spawn(warren::http::serve_metrics(
                listener,
                state,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let relayed = relay.run(&publisher, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(metrics) = metrics {
        metrics.await.context("metrics task")??;
    }
    Ok(relayed?)
}

/// The relay task of `warren run --relay`.
pub type Relaying = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Starts the relay of `warren run --relay` in the background: its result
/// comes through the handle, and it stops with `shutdown`.
///
/// # Errors
///
/// Bad relay settings (no database URL, a bad table name).
pub fn spawn(settings: &Settings, readiness: &Readiness, shutdown: CancellationToken) -> anyhow::Result<Relaying> {
    let relay = Relay::new(&settings.relay)?;
    let publisher = Publisher::start(settings, "relay");
    relay.report_to(readiness);
    let task = tokio::spawn(async move {
        let result = relay.run(&publisher, shutdown.clone()).await;
        // A relay that cannot run stops the whole process, as the consumer does.
        shutdown.cancel();
        Ok(result?)
    });
    Ok(task)
}

/// `/readyz` of the relay alone: its database.
fn readiness(relay: &Relay) -> Readiness {
    let readiness = Readiness::new();
    relay.report_to(&readiness);
    readiness
}
