//! The parts of a run that warren and the baseline share, so they differ only
//! in the publish and consume calls: the windowed publish loop, the
//! measurement window (CPU time, peak RSS), and waiting for the last event.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::task::{JoinHandle, JoinSet};

use super::BenchError;
use super::load::{Quota, Recorder};
use super::report::Raw;
use super::stats;

/// Keeps up to `window` sends in flight until `quota` is used up, recording
/// each result. `send(seq, sent_ns)` starts one publish.
pub async fn publish_all<F, Fut>(mut quota: Quota, window: usize, recorder: &Recorder, mut send: F)
where
    F: FnMut(u64, u64) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut inflight = FuturesUnordered::new();
    loop {
        let can_send = inflight.len() < window && !quota.exhausted();
        tokio::select! {
            biased;
            Some(result) = inflight.next(), if !inflight.is_empty() => recorder.published(result),
            Some(seq) = quota.next(), if can_send => inflight.push(send(seq, recorder.now_ns())),
            else => break,
        }
    }
}

/// CPU time and peak RSS from the first publish on.
pub struct Measurement {
    recorder: Arc<Recorder>,
    cpu_start: Duration,
}

impl Measurement {
    /// Starts measuring: call right before the first publish.
    pub fn begin(recorder: Arc<Recorder>) -> Self {
        stats::reset_peak_rss();
        let cpu_start = stats::cpu_time();
        recorder.start();
        Self { recorder, cpu_start }
    }

    /// Waits for the publisher tasks, then for every confirmed event to be
    /// handled, and stops measuring.
    ///
    /// # Errors
    ///
    /// A publish failed, a publisher task panicked, the consumer task ended,
    /// or no event was handled for 15 s.
    pub async fn end<E: Display>(
        self,
        mut publishers: JoinSet<()>,
        consumer: &mut JoinHandle<Result<(), E>>,
    ) -> Result<Raw, BenchError> {
        while let Some(joined) = publishers.join_next().await {
            joined.map_err(|e| BenchError::Broker(format!("a publisher task failed: {e}")))?;
        }
        let rec = &self.recorder;
        if let (failed @ 1.., first) = rec.failures() {
            return Err(BenchError::PublishFailed {
                failed,
                first: first.unwrap_or_default(),
            });
        }
        let expected = rec.confirmed();
        rec.expect(expected);
        let idle = Duration::from_secs(15);
        let mut seen = rec.handled_count();
        loop {
            tokio::select! {
                () = rec.done().cancelled() => break,
                joined = &mut *consumer => {
                    let why = match joined {
                        Ok(Ok(())) => "it returned".to_owned(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(BenchError::ConsumerStopped(why));
                }
                () = tokio::time::sleep(idle) => {
                    let now = rec.handled_count();
                    if now == seen {
                        return Err(BenchError::Stalled { handled: now, expected, idle });
                    }
                    seen = now;
                }
            }
        }
        let cpu = stats::cpu_time().saturating_sub(self.cpu_start);
        Ok(Raw {
            confirmed: expected,
            handled: rec.handled_count(),
            publish_elapsed: rec.publish_elapsed(),
            end_to_end_elapsed: rec.end_to_end_elapsed(),
            latencies_ns: rec.take_latencies(),
            cpu,
            peak_rss: stats::peak_rss(),
        })
    }
}
