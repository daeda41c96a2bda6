//! Logs on stderr, filtered by `RUST_LOG`, with every secret of the settings
//! scrubbed out of each line whatever its level or target (lapin's `trace`
//! frames included; see `warren::secrets`).

use std::io::{self, IsTerminal};
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use warren::secrets::{ScrubbedStderr, Scrubber};

/// Installs the global subscriber. It is built after the settings are
/// loaded, since only they say what the secrets are.
pub fn init(json: bool, scrubber: Scrubber) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warren=info"));
    let scrubber = Arc::new(scrubber);
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || ScrubbedStderr::new(scrubber.clone()));
    if json {
        fmt.json().init();
    } else {
        fmt.with_ansi(io::stderr().is_terminal()).init();
    }
}
