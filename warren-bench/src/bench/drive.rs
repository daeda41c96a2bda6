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
use super::arena::Arena;
use super::figures::Raw;
use super::load::{Quota, Recorder};
use super::stats;

/// A run that neither confirms nor handles an event for this long has failed.
pub const STALL: Duration = Duration::from_secs(15);

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

/// Waits until the consumer task `consumer` is subscribed to `arena`'s work
/// queue; a consumer that ends first says why, rather than the wait timing out.
///
/// # Errors
///
/// [`BenchError::ConsumerStopped`], or the wait's error.
pub async fn consumer_ready<E: Display>(
    arena: &Arena,
    consumer: &mut JoinHandle<Result<(), E>>,
) -> Result<(), BenchError> {
    tokio::select! {
        ready = arena.wait_for_consumers(1) => ready,
        joined = &mut *consumer => Err(stopped(joined)),
    }
}

/// Why a consumer task ended.
fn stopped<E: Display>(joined: Result<Result<(), E>, tokio::task::JoinError>) -> BenchError {
    BenchError::ConsumerStopped(match joined {
        Ok(Ok(())) => "it returned".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    })
}

/// CPU time (this process's, and the broker's when its pid is known) and
/// peak RSS from the first publish on.
pub struct Measurement {
    recorder: Arc<Recorder>,
    cpu_start: Duration,
    broker: Option<(u32, Duration)>,
}

impl Measurement {
    /// Starts measuring: call right before the first publish.
    pub fn begin(recorder: Arc<Recorder>, broker_pid: Option<u32>) -> Self {
        stats::reset_peak_rss();
        let broker = broker_pid.and_then(|pid| Some((pid, stats::cpu_time_of(pid)?)));
        let cpu_start = stats::cpu_time();
        recorder.start();
        Self {
            recorder,
            cpu_start,
            broker,
        }
    }

    /// Waits for the publisher tasks, then for every confirmed event to be
    /// handled, and stops measuring.
    ///
    /// # Errors
    ///
    /// A publish failed, a publisher task panicked, the consumer task ended,
    /// or nothing was confirmed or handled for [`STALL`].
    pub async fn end<E: Display>(
        self,
        mut publishers: JoinSet<()>,
        consumer: &mut JoinHandle<Result<(), E>>,
    ) -> Result<Raw, BenchError> {
        let rec = &self.recorder;
        let moved = || rec.confirmed() + rec.failures().0 + rec.handled_count();
        let mut seen = moved();
        let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + STALL, STALL);
        let mut expected = None;
        loop {
            tokio::select! {
                joined = publishers.join_next(), if expected.is_none() => match joined {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return Err(BenchError::Broker(format!("a publisher task failed: {e}"))),
                    None => {
                        if let (failed @ 1.., first) = rec.failures() {
                            return Err(BenchError::PublishFailed { failed, first: first.unwrap_or_default() });
                        }
                        expected = Some(rec.confirmed());
                        rec.expect(rec.confirmed());
                    }
                },
                () = rec.done().cancelled() => break,
                joined = &mut *consumer => return Err(stopped(joined)),
                _ = watchdog.tick() => {
                    let now = moved();
                    if now == seen {
                        let expected = expected.unwrap_or(rec.confirmed());
                        return Err(BenchError::Stalled { handled: rec.handled_count(), expected, idle: STALL });
                    }
                    seen = now;
                }
            }
        }
        let expected = expected.unwrap_or(rec.confirmed());
        let cpu = stats::cpu_time().saturating_sub(self.cpu_start);
        let broker_cpu = self
            .broker
            .and_then(|(pid, start)| Some(stats::cpu_time_of(pid)?.saturating_sub(start)));
        Ok(Raw {
            confirmed: expected,
            handled: rec.handled_count(),
            publish_elapsed: rec.publish_elapsed(),
            end_to_end_elapsed: rec.end_to_end_elapsed(),
            latencies_ns: rec.take_latencies(),
            cpu,
            broker_cpu,
            peak_rss: stats::peak_rss(),
        })
    }
}
