//! `warren-bench`: the load generator of warren, kept out of the product
//! binary. It loads warren's settings as `warren` does (defaults,
//! warren.toml, .env, `WARREN_*`), then runs [`bench::run`]: warren's
//! publisher and consumer on throwaway queues, and with `--baseline` or
//! `--additions` bare-lapin loops to compare them with.

mod bench;
mod duration;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use warren::Settings;
use warren::config::{Loaded, Sources};
use warren::secrets::Scrubber;

/// The `warren` binary's allocator, so warren is measured as it ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load-test publish → broker → handler on throwaway queues; with
/// --baseline, against two bare-lapin loops (warren's work, and the leanest).
///
/// Settings come from warren's own sources: built-in defaults, then
/// warren.toml (or --config), then .env, then WARREN_* environment variables.
#[derive(Parser)]
#[command(name = "warren-bench", version, about, long_about)]
struct Cli {
    /// Settings file (TOML); default: ./warren.toml when present.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Write logs (stderr) as JSON lines; filter them with RUST_LOG.
    #[arg(long, env = LOG_JSON_VAR, value_parser = clap::builder::BoolishValueParser::new())]
    log_json: bool,
    #[command(flatten)]
    bench: bench::BenchArgs,
}

/// Switches JSON logs on like `--log-json`, as for `warren`.
const LOG_JSON_VAR: &str = "WARREN_LOG_JSON";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Settings first: the log scrubber needs their secrets before any line is written.
    let Loaded { settings, warnings, .. } = match load_settings(&cli) {
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
    let outcome = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(&settings, &cli.bench)));
    match outcome {
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

async fn run(settings: &Settings, args: &bench::BenchArgs) -> anyhow::Result<()> {
    // Metrics are recorded as in `warren run`, where a recorder serves /metrics.
    warren::metrics::install()?;
    bench::run(settings, args, stop_on_signal()).await?;
    Ok(())
}

/// Cancelled on the first SIGINT or SIGTERM, so the bench deletes the
/// current run's queues before it exits; a second signal exits at once.
fn stop_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: deleting this run's queues (signal again to exit at once)");
        cancel.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
    token
}
