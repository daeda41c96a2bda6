//! A shutdown token for a program's entry point: cancelled on the first
//! SIGINT (Ctrl-C) or SIGTERM; a second signal exits at once.
//!
//! warren never listens for signals by itself: every long-running part
//! takes a [`CancellationToken`]. [`on_signal`] is for a `main` that wants
//! the usual behaviour of a service (the `warren` command uses it); one
//! that has its own shutdown cancels the token its own way.

use tokio_util::sync::CancellationToken;

/// The exit status after a second signal: 128 + SIGINT, as a shell reports
/// a process it interrupted.
const EXIT_ON_SECOND_SIGNAL: i32 = 130;

/// A token cancelled on the first SIGINT or SIGTERM (Ctrl-C only outside
/// Unix). A second signal ends the process with status 130 at once: the
/// deliveries it had not acknowledged are redelivered by the broker.
///
/// # Errors
///
/// The signal handlers could not be installed.
///
/// # Panics
///
/// Outside a Tokio runtime.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    let mut signals = Signals::new()?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutting down: finishing in-flight events (signal again to exit at once)");
        cancel.cancel();
        signals.recv().await;
        tracing::warn!("second signal: exiting; unacked messages will be redelivered");
        std::process::exit(EXIT_ON_SECOND_SIGNAL);
    });
    Ok(token)
}

/// SIGINT and, on Unix, SIGTERM, registered before the first wait so that
/// a signal that arrives early is not missed.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
