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

#[cfg(all(test, unix))]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Set in the copy of the test binary that receives the signals, so the
    /// test process itself keeps SIGTERM's default action.
    const CHILD: &str = "WARREN_SHUTDOWN_TEST_CHILD";
    const NAME: &str = "shutdown::tests::a_first_signal_cancels_and_a_second_exits_130";

    /// The child process, killed if the test fails half-way.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_first_signal_cancels_and_a_second_exits_130() {
        if std::env::var_os(CHILD).is_some() {
            return child();
        }
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Child(
            Command::new(exe)
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .stdout(Stdio::piped())
                .spawn()
                .expect("running the test binary again"),
        );
        let (tx, lines) = mpsc::channel();
        let stdout = child.0.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The harness prints `test <name> ... ` before the child's own lines.
        let wait_for = |want: &str| loop {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.ends_with(want) => break,
                Ok(_) => {}
                Err(e) => panic!("no {want:?} line from the child: {e}"),
            }
        };
        let pid = child.0.id().to_string();
        let term = || {
            let sent = Command::new("kill").args(["-TERM", &pid]).status();
            assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        };
        wait_for("signals ready");
        term();
        wait_for("token cancelled");
        term();
        let status = child.0.wait().expect("the child's exit");
        assert_eq!(status.code(), Some(super::EXIT_ON_SECOND_SIGNAL), "{status}");
    }

    fn child() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let token = super::on_signal().expect("signal handlers");
            println!("signals ready");
            token.cancelled().await;
            println!("token cancelled");
            // Only the second signal ends this process.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
    }
}
