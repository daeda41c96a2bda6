//! One work queue on its own channel: prefetch, bounded concurrency, the
//! decide-publish-ack path, coalesced acks, and the drain on shutdown.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::acks::Acks;
use super::policy::RetryPolicy;
use super::process::{Processor, QueueMetrics};
use super::route::Route;
use crate::amqp::describe;
use crate::publisher::Publisher;
use crate::topology::Topology;

/// Per-queue limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `basic.qos` prefetch count of the queue's channel.
    pub prefetch: u16,
    /// Handlers running at once.
    pub concurrency: usize,
}

/// Why a queue worker stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[error("queue {queue}: {reason}")]
pub(crate) struct WorkerLost {
    pub queue: String,
    pub reason: String,
}

pub(super) struct Worker {
    pub route: Arc<dyn Route>,
    pub limits: Limits,
    pub topology: Arc<Topology>,
    pub policy: RetryPolicy,
    pub republisher: Publisher,
    pub shutdown_timeout: Duration,
}

impl Worker {
    /// Consumes until `stop` is cancelled (then drains and returns `Ok`) or
    /// the channel dies (returns the cause).
    pub async fn run(self, conn: &Connection, stop: CancellationToken) -> Result<(), WorkerLost> {
        let queue = self.topology.work_queue(self.route.event_type());
        let lost = |reason: String| WorkerLost {
            queue: queue.clone(),
            reason,
        };
        let channel = conn.create_channel().await.map_err(|e| lost(describe(&e)))?;
        channel
            .basic_qos(self.limits.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| lost(describe(&e)))?;
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lost(describe(&e)))?;
        let tag = deliveries.tag();
        info!(
            queue,
            prefetch = self.limits.prefetch,
            concurrency = self.limits.concurrency,
            "consuming"
        );

        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
        let (limits, shutdown_timeout) = (self.limits, self.shutdown_timeout);
        let processor = Arc::new(Processor {
            route: self.route,
            topology: self.topology,
            policy: self.policy,
            republisher: self.republisher,
            queue: Arc::from(queue.as_str()),
            channel: channel.clone(),
            metrics: QueueMetrics::new(&queue),
        });
        let mut acks = Acks::new(channel.clone(), queue.clone(), usize::from(limits.prefetch));
        let permits = Arc::new(Semaphore::new(limits.concurrency));
        let tracker = TaskTracker::new();
        let mut result = Ok(());
        // One cancellation future for the whole loop, not two per delivery.
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        // Handlers that went on in tasks and have not reported back yet.
        let mut in_tasks = 0usize;
        while !stop.is_cancelled() {
            if in_tasks > 0 {
                in_tasks -= acks.record_waiting(&mut settled_rx);
            }
            if acks.due() {
                acks.flush().await;
            }
            // A handler starts only while a permit is free. Only this loop
            // takes permits, so the one seen free here is still free below.
            let reserved = if permits.available_permits() == 0 {
                acks.flush().await;
                tokio::select! {
                    biased;
                    () = &mut cancelled => break,
                    p = permits.clone().acquire_owned() => Some(p.expect("semaphore never closed")),
                }
            } else {
                None
            };
            // Deliveries waiting in the stream are taken at once; only when
            // it is momentarily empty are the acks flushed and the loop parked.
            let next = match deliveries.next().now_or_never() {
                Some(next) => next,
                None => {
                    acks.flush().await;
                    tokio::select! {
                        biased;
                        () = &mut cancelled => break,
                        Some(s) = settled_rx.recv(), if in_tasks > 0 => {
                            in_tasks -= 1;
                            acks.record(s);
                            continue;
                        }
                        d = deliveries.next() => d,
                    }
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    let processor = processor.clone();
                    let mut work = Box::pin(async move { processor.process(&delivery).await });
                    // A handler that finishes without waiting (most do: the
                    // event is handled from memory) is settled here, with no
                    // task and no permit of its own; one that waits goes on
                    // in a task that holds a permit, and reports back over
                    // the channel.
                    match futures_util::poll!(work.as_mut()) {
                        Poll::Ready(settled) => acks.record(settled),
                        Poll::Pending => {
                            let permit = reserved.unwrap_or_else(|| {
                                permits
                                    .clone()
                                    .try_acquire_owned()
                                    .expect("a permit is free: only this loop takes them")
                            });
                            let settled_tx = settled_tx.clone();
                            in_tasks += 1;
                            tracker.spawn(async move {
                                let settled = work.await;
                                drop(permit);
                                // A closed receiver means the worker gave up on
                                // this channel: the broker redelivers the message.
                                let _ = settled_tx.send(settled);
                            });
                        }
                    }
                }
                Some(Err(e)) => {
                    result = Err(lost(describe(&e)));
                    break;
                }
                None => {
                    result = Err(lost("the broker cancelled the consumer (queue deleted?)".into()));
                    break;
                }
            }
        }
        if result.is_ok() {
            // Stop new deliveries; prefetched ones not started stay unacked and go back to the queue.
            let _ = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
        }
        tracker.close();
        // On a dead channel nothing can be acked any more: the broker
        // redelivers everything in flight, so there is nothing to wait for.
        let timeout = if channel.status().connected() {
            shutdown_timeout
        } else {
            Duration::ZERO
        };
        // Handlers still running are waited for, and acked as they finish.
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            acks.record_waiting(&mut settled_rx);
            acks.flush().await;
            tokio::select! {
                biased;
                Some(s) = settled_rx.recv() => acks.record(s),
                () = tracker.wait() => {
                    acks.record_waiting(&mut settled_rx);
                    break;
                }
                () = &mut deadline => {
                    warn!(
                        queue,
                        unfinished = tracker.len(),
                        "handlers still running after {timeout:?}: their messages stay unacked and will be redelivered"
                    );
                    break;
                }
            }
        }
        acks.finish().await;
        if channel.status().connected() {
            let _ = channel.close(200, "consumer stopped".into()).await;
        }
        info!(queue, "stopped consuming");
        result
    }
}
