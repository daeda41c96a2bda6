//! The `warren` command: publish events, manage the topology, run the
//! services. It lives beside the library so that services using warren as a
//! library compile neither clap nor the allocator chosen here. The load
//! generator is a binary of its own (warren-bench), not part of this one.

mod contract;
mod dead;
mod listeners;
mod logging;
mod probes;
mod relay;
mod show_config;
mod terminal;
mod topology_delete;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use listeners::Listeners;
use show_config::Origins;
use tokio_util::sync::CancellationToken;
use warren::config::{Loaded, Sources};
use warren::consumer::{Consumer, LogHandler};
use warren::event::{EventType, RawEnvelope};
use warren::readiness::Readiness;
use warren::secrets::Scrubber;
use warren::{Publisher, Settings, Topology};

/// mimalloc instead of glibc's malloc: the ingress and the consumer allocate
/// small, short-lived buffers on every event across threads, where glibc's
/// arenas spent a fifth of the ingress's CPU (see warren-bench/docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Write logs (stderr) as JSON lines; filter them with RUST_LOG.
    #[arg(long, global = true, env = LOG_JSON_VAR, value_parser = clap::builder::BoolishValueParser::new())]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Switches JSON logs on like `--log-json`: `WARREN_LOG_JSON=1` (or `true`).
const LOG_JSON_VAR: &str = "WARREN_LOG_JSON";

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
    /// Declare, export or delete the exchange, queues and bindings.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Print the effective settings, with passwords and tokens redacted: as
    /// TOML with, after each value, where it came from (default, file, .env,
    /// environment), then the derived retry delays and queue names.
    Config {
        /// One JSON object instead: settings, sources, derived.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema (draft-07) of an event type's envelope, or of
    /// any known event when no type is given. Generated from warren's types.
    Schema {
        /// Event type: user.registered, user.login.
        event_type: Option<String>,
    },
    /// Print the AsyncAPI 3.0 document of this deployment (exchange, routing
    /// keys, queues, retry tiers, dead letters, message schemas) as YAML.
    Asyncapi {
        /// JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Run the consumer service: one work queue per event type, handled, acked,
    /// retried through the delay queues, or parked in the dead-letter queues.
    ///
    /// Declares the topology first. Serves /healthz, /readyz and /metrics on
    /// metrics.listen when it is set. Stops cleanly on SIGINT/SIGTERM: no new
    /// deliveries, in-flight handlers get consumer.shutdown_timeout to finish.
    Consume {
        #[command(flatten)]
        handler: HandlerArgs,
    },
    /// Run the HTTP ingress: POST /events publishes with a broker confirm,
    /// then answers 202. Also serves /healthz, /readyz and /metrics.
    Ingress,
    /// Run everything in one process: the consumer service and the HTTP
    /// ingress (with /healthz, /readyz, /metrics). The main job of a warren
    /// deployment.
    Run {
        #[command(flatten)]
        handler: HandlerArgs,
        /// Also relay the PostgreSQL outbox (relay.database_url); /readyz
        /// then includes the database.
        #[arg(long)]
        relay: bool,
    },
    /// Publish events written to the PostgreSQL outbox table
    /// (relay.database_url, DATABASE_URL) in commit order, each with a
    /// broker confirm; `schema`, `failed`, `retry` and `stats` manage the table.
    Relay(relay::RelayArgs),
    /// List, group, show, replay, purge and import the events parked in the
    /// service's `.dead` queues.
    Dead(dead::DeadArgs),
}

#[derive(clap::Args)]
struct HandlerArgs {
    /// What to do with each event: `log` writes it as one JSON line on
    /// stdout, `webhook` forwards it over HTTP.
    #[arg(long, value_enum, default_value_t = HandlerKind::Log)]
    handler: HandlerKind,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HandlerKind {
    /// One JSON line per event on stdout (event_id, event_type, timestamp, source,
    /// user_id, attempt, data).
    Log,
    /// POST each event to webhook.url + webhook.path (GO_BACKEND_URL), signed
    /// per Standard Webhooks with webhook.secret; 5xx/408/429/timeouts are
    /// retried, other 4xx dead-lettered.
    Webhook,
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Declare everything on the broker (idempotent; fails naming any queue whose
    /// arguments differ from the broker's).
    Apply,
    /// Print RabbitMQ definitions JSON (for `rabbitmqctl import_definitions`
    /// or `load_definitions`).
    Export,
    /// Delete the service's queues: retry tiers, work queues, `.dead` queues
    /// (and the exchange with --exchange). Asks first unless --yes; refuses
    /// queues holding messages unless --force.
    Delete(topology_delete::DeleteArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Settings first: the log scrubber needs their secrets before any line is written.
    let Loaded {
        settings,
        warnings,
        origins,
    } = match load_settings(&cli) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let scrubber = Scrubber::new(settings.secrets());
    logging::init(cli.log_json, scrubber.clone());
    for w in warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, settings, origins)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", scrubber.scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn load_settings(cli: &Cli) -> anyhow::Result<Loaded> {
    let sources = Sources {
        file: cli.config.clone(),
        dir: std::env::current_dir().context("reading the working directory")?,
        // WARREN_LOG_JSON is the command line's, not a setting.
        env: std::env::vars().filter(|(k, _)| k != LOG_JSON_VAR).collect(),
    };
    Ok(Settings::load(&sources)?)
}

async fn run(cli: Cli, settings: Settings, origins: Origins) -> anyhow::Result<()> {
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
            print!("{}", Topology::from_settings(&settings).to_definitions_string());
        }
        Command::Topology(TopologyCommand::Apply) => {
            let topology = Topology::from_settings(&settings);
            let conn = warren::amqp::connect(&warren::amqp::ConnectOptions::new(&settings.amqp, "topology")).await?;
            let channel = conn.create_channel().await.context("opening a channel")?;
            topology.declare(&channel).await?;
            close(&conn).await;
            eprintln!(
                "declared exchange {:?}, {} queues and {} bindings",
                topology.exchange,
                topology.queues().len(),
                topology.bindings().len()
            );
        }
        Command::Topology(TopologyCommand::Delete(args)) => topology_delete::run(&settings, &args).await?,
        Command::Config { json } => print!("{}", show_config::render(&settings, &origins, json)?),
        Command::Schema { event_type } => print!("{}", contract::schema(event_type.as_deref())?),
        Command::Asyncapi { json } => print!("{}", contract::asyncapi(&settings, json)?),
        Command::Consume { handler } => {
            settings.check_consuming(origins.get("consumer.event_types"))?;
            let shutdown = shutdown_on_signal();
            let consumer = consumer(settings.clone(), handler.handler).await?;
            probes::consume(&settings, consumer, shutdown).await?;
        }
        Command::Ingress => {
            check_export_dir(&settings)?;
            let listeners = Listeners::bind(&settings).await?;
            let shutdown = shutdown_on_signal();
            ingress(&settings, listeners, shutdown, Readiness::new()).await?;
        }
        Command::Relay(args) => relay::run(&settings, args, shutdown_on_signal()).await?,
        Command::Run { handler, relay } => {
            settings.check_consuming(origins.get("consumer.event_types"))?;
            run_all(settings, handler.handler, relay).await?;
        }
        Command::Dead(args) => dead::run(settings, args, shutdown_on_signal).await?,
    }
    Ok(())
}

/// Closes a connection of a one-shot command, waiting at most a few
/// seconds for the broker's answer: the command's work is done either way.
async fn close(conn: &lapin::Connection) {
    let closing = conn.close(200, "done".into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closing).await;
}

/// `warren run`: the consumer service and the ingress in one process (and
/// the outbox relay with `--relay`); whichever ends first stops the others.
/// The listeners are bound first: a taken port stops it before anything
/// has consumed, relayed or declared.
async fn run_all(settings: Settings, handler: HandlerKind, relay: bool) -> anyhow::Result<()> {
    check_export_dir(&settings)?;
    let listeners = Listeners::bind(&settings).await?;
    let shutdown = shutdown_on_signal();
    warren::metrics::install()?;
    // /readyz of the ingress also reports the consumer (and the relay's database).
    let readiness = Readiness::new();
    let consumer = consumer(settings.clone(), handler)
        .await?
        .with_readiness(readiness.clone());
    let relaying = relay
        .then(|| relay::spawn(&settings, &readiness, shutdown.clone()))
        .transpose()?;
    let stop = shutdown.clone();
    let gauge = warren::dead::watch::watch(settings.clone(), warren::dead::watch::REFRESH_EVERY, shutdown.clone());
    tokio::spawn(gauge);
    // Whichever ends first (a signal, or a fatal error) stops the other.
    let consuming = tokio::spawn(async move {
        let result = consumer.run(stop.clone()).await;
        stop.cancel();
        result
    });
    let serving = ingress(&settings, listeners, shutdown.clone(), readiness).await;
    shutdown.cancel();
    let consumed = consuming.await.context("consumer task")?;
    if let Some(task) = relaying {
        task.await.context("relay task")??;
    }
    serving?;
    consumed?;
    Ok(())
}

async fn consumer(settings: Settings, kind: HandlerKind) -> anyhow::Result<Consumer> {
    Ok(match kind {
        HandlerKind::Log => Consumer::new(settings).on_all(LogHandler),
        HandlerKind::Webhook => {
            let webhook = warren::webhook::WebhookHandler::new(&settings.webhook)?;
            // `consume` checks too: a `warren ingress` with the same settings
            // usually runs beside it.
            warren::webhook::check_not_ingress(&settings.webhook, settings.ingress.listen).await?;
            tracing::info!(
                endpoint = webhook.endpoint(),
                signed = webhook.is_signed(),
                "forwarding events"
            );
            Consumer::new(settings).on_all(webhook)
        }
    })
}

/// The `/dead` routes' purge writes there: a mistake is said at start,
/// before anything is bound or consumed, not at the first purge.
fn check_export_dir(settings: &Settings) -> anyhow::Result<()> {
    warren::dead::check_export_dir(&settings.dead.export_dir).map_err(|e| anyhow::anyhow!("dead.export_dir: {e}"))
}

/// Serves the ingress (and metrics) until `shutdown`; the publisher connects
/// in the background so /healthz answers and /readyz says 503 while the
/// broker is down. Ends with an error (cancelling `shutdown`) when the
/// broker refuses the publisher's login or vhost at start.
async fn ingress(
    settings: &Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let handle = warren::metrics::install()?;
    let publisher = Publisher::start(settings, "ingress");
    let refused = publisher.clone();
    let state = warren::http::AppState::new(std::sync::Arc::new(publisher), &fit_to_descriptors(&settings.ingress))
        .with_readiness(readiness)
        .with_dead_letters(settings);
    // The bound address, not the setting: with port 0 the log says which port.
    if let Ok(listen) = listeners.ingress.local_addr() {
        tracing::info!(listen = %listen, "ingress listening");
    }
    tokio::select! {
        served = serve(listeners, state, handle, shutdown.clone()) => served,
        error = refused.failed() => {
            shutdown.cancel();
            Err(error.into())
        }
    }
}

/// Serves the ingress, and `/metrics` on `metrics.listen` when it is set.
async fn serve(
    listeners: Listeners,
    state: warren::http::AppState,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = listeners.ingress;
    match listeners.metrics {
        None => warren::http::serve(listener, state.with_metrics(handle), shutdown).await?,
        Some(metrics_listener) => {
            if let Ok(addr) = metrics_listener.local_addr() {
                tracing::info!(listen = %addr, "metrics listening");
            }
            let metrics =
                warren::http::serve_metrics(metrics_listener, state.clone().with_metrics(handle), shutdown.clone());
            let (a, b) = tokio::join!(warren::http::serve(listener, state, shutdown), metrics);
            a?;
            b?;
        }
    }
    Ok(())
}

/// `ingress`, with `max_connections` lowered to fit the process's
/// file-descriptor limit (a quarter of it, at most 64, kept for the broker
/// connection, listeners and logs): past the limit `accept` fails, and the
/// cap could no longer make room for a new client such as a health probe.
fn fit_to_descriptors(ingress: &warren::config::IngressSettings) -> warren::config::IngressSettings {
    let mut ingress = ingress.clone();
    let mut limit = std::mem::MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: getrlimit only writes the struct it is given; it is read only
    // when the call succeeded.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) } != 0 {
        return ingress;
    }
    let soft = unsafe { limit.assume_init() }.rlim_cur;
    let fit = soft.saturating_sub((soft / 4).min(64)).max(1);
    let fit = usize::try_from(fit).unwrap_or(usize::MAX);
    if ingress.max_connections > fit {
        tracing::warn!(
            max_connections = ingress.max_connections,
            descriptors = soft,
            using = fit,
            "ingress.max_connections is above what the file-descriptor limit (ulimit -n) allows: lowered"
        );
        ingress.max_connections = fit;
    }
    ingress
}

/// The shutdown token of the long-running commands ([`warren::shutdown::on_signal`]).
fn shutdown_on_signal() -> CancellationToken {
    warren::shutdown::on_signal().unwrap_or_else(|e| {
        // The command still runs, but only SIGKILL stops it now: say why.
        tracing::error!("cannot listen for SIGTERM and SIGINT: {e}");
        CancellationToken::new()
    })
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
    // The ingress's rules: a lone surrogate would otherwise fail as an
    // obscure JSON error, deep nesting not at all.
    warren::event::portable::check_data(data.as_bytes()).context("invalid --data")?;
    // Published as given, as the ingress does: through a `Value` its keys
    // would come out sorted.
    let raw: Box<serde_json::value::RawValue> = serde_json::from_str(data).context("--data is not valid JSON")?;
    let user_id = match user_id.or_else(|| data_user_id(&raw)) {
        Some(id) => id,
        None => bail!("invalid field `data.user_id`: is required (or pass --user-id)"),
    };
    let mut envelope = RawEnvelope::new_raw(
        event_type,
        source.unwrap_or_else(|| settings.publisher.source.clone()),
        user_id,
        &serde_json::Value::Null,
    );
    envelope.data = raw;
    envelope.check_known()?;
    let publisher = Publisher::connect(settings, "publish").await?;
    publisher.publish_raw(&envelope).await?;
    Ok(envelope.event_id)
}

/// `data.user_id`, when `data` is an object with an integer there.
fn data_user_id(data: &serde_json::value::RawValue) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct UserId {
        user_id: Option<serde_json::Value>,
    }
    let found: UserId = serde_json::from_str(data.get()).ok()?;
    found.user_id?.as_i64()
}
