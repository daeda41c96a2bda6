//! `warren topology delete`: removes the service's queues (and the exchange
//! with `--exchange`), after a confirmation typed on the terminal, and never
//! a queue holding messages without `--force`.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use warren::topology::{DeleteError, DeleteOptions, QueueState};
use warren::{Settings, Topology};

use crate::terminal;

/// Options of `warren topology delete`.
#[derive(clap::Args)]
pub struct DeleteArgs {
    /// Do not ask (needed when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
    /// Also delete queues that hold messages, and the exchange while other
    /// queues are bound to it: their messages are lost.
    #[arg(long)]
    force: bool,
    /// Also delete the exchange (topology.exchange), which other services
    /// and publishers may use: kept while another queue is bound to it.
    #[arg(long)]
    exchange: bool,
}

/// Runs `warren topology delete`.
///
/// # Errors
///
/// An unreachable broker, queues holding messages (without `--force`), no
/// confirmation, or what the broker refused.
pub async fn run(settings: &Settings, args: &DeleteArgs) -> anyhow::Result<()> {
    let topology = Topology::from_settings(settings);
    let options = warren::amqp::ConnectOptions::new(&settings.amqp, "topology");
    let conn = warren::amqp::connect(&options).await?;
    let result = delete(&topology, &conn, args).await;
    crate::close(&conn).await;
    result
}

async fn delete(topology: &Topology, conn: &lapin::Connection, args: &DeleteArgs) -> anyhow::Result<()> {
    let survey = topology.survey(conn).await.context("reading the service's queues")?;
    let existing: Vec<&QueueState> = survey.iter().filter(|q| q.messages.is_some()).collect();
    if existing.is_empty() && !args.exchange {
        eprintln!(
            "no queue of service {} exists: nothing to delete",
            terminal::text(&topology.service)
        );
        return Ok(());
    }
    let full: Vec<(String, u32)> = existing
        .iter()
        .filter_map(|q| q.messages.filter(|n| *n > 0).map(|n| (q.name.clone(), n)))
        .collect();
    if !args.force && !full.is_empty() {
        return Err(DeleteError::NotEmpty(full).into());
    }
    if !args.yes && !confirm(topology, &existing, args.exchange)? {
        bail!("nothing deleted");
    }
    let options = DeleteOptions {
        force: args.force,
        exchange: args.exchange,
    };
    let result = topology.delete(conn, options).await;
    // What went is said even when something stopped the rest.
    let done = match &result {
        Ok(done) => Some(done),
        Err(e) => e.deleted(),
    };
    for (queue, messages) in done.map_or(&[][..], |d| &d.queues) {
        println!("deleted queue {} ({messages} messages)", terminal::text(queue));
    }
    if done.is_some_and(|d| d.exchange) {
        println!("deleted exchange {}", terminal::text(&topology.exchange));
    }
    result?;
    Ok(())
}

/// Says what will go and asks on the terminal; `false` unless the answer is `yes`.
fn confirm(topology: &Topology, existing: &[&QueueState], exchange: bool) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("nothing deleted: stdin is not a terminal to confirm on (pass --yes)");
    }
    eprintln!("These will be deleted:");
    for q in existing {
        let messages = q.messages.unwrap_or(0);
        eprintln!("  queue {} ({messages} messages)", terminal::text(&q.name));
    }
    if exchange {
        eprintln!("  exchange {}", terminal::text(&topology.exchange));
    }
    terminal::ask_yes("Type yes to continue: ")
}
