//! The `warren` command: publish events, manage the topology, run the services.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use warren::config::{Loaded, Sources};
use warren::event::{EventType, RawEnvelope};
use warren::{Publisher, Settings, Topology};

/// Typed user.* events between services over RabbitMQ.
///
/// Settings come from built-in defaults, then warren.toml (or --config), then
/// .env in the working directory, then WARREN_* environment variables
/// (WARREN_AMQP__URL, WARREN_CONSUMER__PREFETCH, ...). AMQP_URL,
/// GO_BACKEND_URL, EVENT_TIMEOUT and EVENT_RETRY_ATTEMPTS work too.
#[derive(Parser)]
#[command(name = "warren", version, about, long_about)]
struct Cli {
    /// Settings file (TOML); default: ./warren.toml when present.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish one event to the events exchange and wait for the broker's confirm.
    ///
    /// Builds the envelope (event_id UUIDv7, timestamp now), validates it as its
    /// type, publishes it persistent and mandatory, and prints the event_id.
    /// Fails, publishing nothing, when the data is invalid, the type unknown,
    /// no queue is bound to the routing key, or the broker is unreachable.
    Publish {
        /// Event type, also the routing key: user.registered, user.login.
        event_type: String,
        /// The event's `data` object, as JSON.
        #[arg(long, value_name = "JSON")]
        data: String,
        /// Envelope user_id; default: data.user_id.
        #[arg(long)]
        user_id: Option<i64>,
        /// Envelope source (AMQP app_id); default: publisher.source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Declare or export the exchange, queues and bindings.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Print the effective settings as TOML, with passwords and tokens redacted.
    Config,
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Declare everything on the broker (idempotent; fails naming any queue whose
    /// arguments differ from the broker's).
    Apply,
    /// Print RabbitMQ definitions JSON (for `rabbitmqctl import_definitions`
    /// or `load_definitions`).
    Export,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warren=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let sources = Sources {
        file: cli.config.clone(),
        dir: std::env::current_dir().context("reading the working directory")?,
        env: std::env::vars().collect(),
    };
    let Loaded { settings, warnings } = Settings::load(&sources)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(settings)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = load_settings(&cli)?;
    match cli.command {
        Command::Publish {
            event_type,
            data,
            user_id,
            source,
        } => {
            let id = publish(&settings, event_type, &data, user_id, source).await?;
            println!("{id}");
        }
        Command::Topology(TopologyCommand::Export) => {
            print!(
                "{}",
                Topology::from_settings(&settings).to_definitions_string()
            );
        }
        Command::Topology(TopologyCommand::Apply) => {
            let topology = Topology::from_settings(&settings);
            let conn = warren::amqp::connect(&connect_options(&settings, "topology")).await?;
            let channel = conn.create_channel().await.context("opening a channel")?;
            topology.declare(&channel).await?;
            let _ = conn.close(200, "done".into()).await;
            eprintln!(
                "declared exchange {:?}, {} queues and {} bindings",
                topology.exchange,
                topology.queues().len(),
                topology.bindings().len()
            );
        }
        Command::Config => print!("{}", settings.redacted_toml()),
    }
    Ok(())
}

fn connect_options(settings: &Settings, role: &str) -> warren::amqp::ConnectOptions {
    warren::amqp::ConnectOptions {
        url: settings.amqp.url.clone(),
        name: format!("{} {role}", settings.amqp.connection_name),
        heartbeat: settings.amqp.heartbeat,
    }
}

async fn publish(
    settings: &Settings,
    event_type: String,
    data: &str,
    user_id: Option<i64>,
    source: Option<String>,
) -> anyhow::Result<uuid::Uuid> {
    if EventType::find(&event_type).is_none() {
        bail!(
            "unknown event type {event_type:?} (known: {})",
            EventType::known_names()
        );
    }
    let data: serde_json::Value = serde_json::from_str(data).context("--data is not valid JSON")?;
    let user_id = match user_id.or_else(|| data.get("user_id").and_then(serde_json::Value::as_i64))
    {
        Some(id) => id,
        None => bail!("invalid field `data.user_id`: is required (or pass --user-id)"),
    };
    let envelope = RawEnvelope::new_raw(
        event_type,
        source.unwrap_or_else(|| settings.publisher.source.clone()),
        user_id,
        data,
    );
    envelope.check_known()?;
    let publisher = Publisher::connect(
        settings,
        &format!("{} publish", settings.amqp.connection_name),
    )
    .await?;
    publisher.publish_raw(&envelope).await?;
    Ok(envelope.event_id)
}
