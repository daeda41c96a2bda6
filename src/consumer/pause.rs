//! A queue's pause while its failed deliveries cannot be republished (to a
//! retry tier or `.dead`): the worker starts no new handler, the waiting
//! republishes retry with backoff, holding their deliveries unacked (never
//! requeued in a loop), and each episode is logged once and counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, error, info};

use crate::amqp::Backoff;
use crate::publisher::PublishError;

/// One queue's pause; shared by its worker loop and its handler tasks.
pub(crate) struct Pause {
    queue: String,
    /// Read for every delivery: an atomic, not the lock.
    paused: AtomicBool,
    resumed: Notify,
    episode: Mutex<Episode>,
    failures: metrics::Counter,
    gauge: metrics::Gauge,
}

/// Failed republishes since the queue paused.
struct Episode {
    since: Option<Instant>,
    failures: u64,
    backoff: Backoff,
}

impl Pause {
    pub(crate) fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            episode: Mutex::new(Episode {
                since: None,
                failures: 0,
                backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            }),
            failures: metrics::counter!(crate::metrics::REPUBLISH_FAILURES_TOTAL, "queue" => queue.to_owned()),
            gauge: metrics::gauge!(crate::metrics::QUEUE_PAUSED, "queue" => queue.to_owned()),
        }
    }

    /// Whether the queue is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// A republish to `to` failed with `error`: pauses the queue, logging
    /// the first failure of the episode, and says how long to wait before
    /// trying again.
    pub(crate) fn failed(&self, to: &str, error: &PublishError) -> Duration {
        self.failures.increment(1);
        let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        episode.failures += 1;
        let wait = episode.backoff.next_delay();
        if episode.since.is_none() {
            episode.since = Some(Instant::now());
            self.paused.store(true, Ordering::Release);
            self.gauge.set(1.0);
            error!(
                queue = self.queue,
                to,
                %error,
                "cannot republish a failed delivery: the queue pauses (no new handlers, nothing requeued) and retries with backoff"
            );
        } else {
            debug!(queue = self.queue, to, %error, retry_in = ?wait, "still cannot republish");
        }
        wait
    }

    /// A republish went through: resumes the queue if it was paused.
    pub(crate) fn succeeded(&self) {
        if !self.is_paused() {
            return;
        }
        let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = episode.since.take() {
            info!(
                queue = self.queue,
                failures = episode.failures,
                paused_for = ?since.elapsed(),
                "republishing works again: the queue resumes"
            );
            episode.failures = 0;
            episode.backoff.reset();
            self.paused.store(false, Ordering::Release);
            self.gauge.set(0.0);
            self.resumed.notify_waiters();
        }
    }

    /// Resolves once the queue is not paused.
    pub(crate) async fn resumed(&self) {
        loop {
            // Made before the flag is read, the waiter cannot miss the wake-up.
            let notified = self.resumed.notified();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_failure_pauses_with_growing_waits_until_a_success_resumes() {
        let pause = Arc::new(Pause::new("q"));
        assert!(!pause.is_paused());
        let lost = PublishError::ConnectionLost("channel closed".into());
        let first = pause.failed("q.retry.1s", &lost);
        assert!(pause.is_paused());
        assert!(first <= Duration::from_millis(250), "{first:?}");
        let waits: Vec<_> = (0..6).map(|_| pause.failed("q.retry.1s", &lost)).collect();
        assert!(waits[5] >= Duration::from_secs(8), "backs off: {waits:?}");

        let waiter = tokio::spawn({
            let pause = pause.clone();
            async move { pause.resumed().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "paused until a republish works");
        pause.succeeded();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("a success resumes the queue")
            .unwrap();
        assert!(!pause.is_paused());
        let again = pause.failed("q.dead", &lost);
        assert!(
            again <= Duration::from_millis(250),
            "a new episode backs off from the start: {again:?}"
        );
    }
}
