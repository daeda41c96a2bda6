//! A `\r` progress line on stderr while a run goes, when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::load::Recorder;

/// A `\r` progress line on stderr, only when stderr is a terminal.
pub struct Progress {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Shows `label` with the recorder's counts every 250 ms until [`Progress::finish`].
    #[must_use]
    pub fn start(label: String, recorder: Arc<Recorder>, expected: Option<u64>) -> Self {
        let stop = CancellationToken::new();
        if !std::io::stderr().is_terminal() {
            return Self { stop, task: None };
        }
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while token.run_until_cancelled(tick.tick()).await.is_some() {
                let (confirmed, handled) = (recorder.confirmed(), recorder.handled_count());
                let of = expected.map_or_else(String::new, |n| format!("/{n}"));
                let rate = super::stats::rate(handled, recorder.end_to_end_elapsed());
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[K{label}: confirmed {confirmed}{of}, handled {handled}{of} ({rate:.0}/s)"
                );
                let _ = err.flush();
            }
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        });
        Self { stop, task: Some(task) }
    }

    /// Clears the line.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
