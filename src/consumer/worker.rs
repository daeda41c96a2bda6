//! One work queue on its own channel: open it (prefetch, consume), take
//! deliveries with bounded concurrency while coalescing their acks, and on
//! shutdown drain the handlers still running.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::acks::{Acks, Settlement};
use super::pause::Pause;
use super::policy::RetryPolicy;
use super::process::{Processor, QueueMetrics};
use super::route::Route;
use super::throttle::{RETRY_LOG_EVERY, Throttle};
use crate::amqp::describe;
use crate::publisher::Publisher;
use crate::readiness::Readiness;
use crate::refusal::{Permission, Refusal};
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
    /// Told whether this queue has a consumer (part `queue <name>`).
    pub readiness: Readiness,
}

impl Worker {
    /// Consumes until `stop` is cancelled (then drains and returns `Ok`) or
    /// the channel dies (returns the cause).
    pub async fn run(self, conn: &Connection, stop: CancellationToken) -> Result<(), WorkerLost> {
        let queue = self.topology.work_queue(self.route.event_type());
        let lost = |reason| WorkerLost {
            queue: queue.clone(),
            reason,
        };
        let part = super::queue_part(&queue);
        let opened = open(conn, &queue, self.limits.prefetch).await;
        let (channel, mut deliveries) = opened.map_err(|e| {
            // The cause is logged with the lost worker, never served.
            self.readiness.set(&part, false, "cannot open its channel");
            lost(e)
        })?;
        self.readiness.set(&part, true, "consuming");
        let readiness = self.readiness.clone();
        info!(
            queue,
            prefetch = self.limits.prefetch,
            concurrency = self.limits.concurrency,
            "consuming"
        );
        let shutdown_timeout = self.shutdown_timeout;
        let mut consuming = Consuming::new(self, &channel, &queue, &stop);
        let result = consuming.deliver(&mut deliveries, &stop).await;
        if result.is_ok() {
            // Stop new deliveries; prefetched ones not started stay unacked and go back to the queue.
            let _ = channel
                .basic_cancel(deliveries.tag(), BasicCancelOptions::default())
                .await;
        }
        consuming.drain(&channel, &queue, shutdown_timeout).await;
        if channel.status().connected() {
            let _ = channel.close(200, "consumer stopped".into()).await;
        }
        info!(queue, "stopped consuming");
        readiness.set(&part, false, "stopped consuming");
        result.map_err(lost)
    }
}

/// Opens `queue`'s own channel with its prefetch and starts consuming.
async fn open(conn: &Connection, queue: &str, prefetch: u16) -> Result<(Channel, lapin::Consumer), String> {
    let channel = conn.create_channel().await.map_err(|e| describe(&e))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| describe(&e))?;
    let deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            Refusal::from_error(&e, |_| &[Permission::Read]).map_or_else(|| describe(&e), |r| r.to_string())
        })?;
    Ok((channel, deliveries))
}

/// The delivery loop's state: the acks it owes, the permits of the handlers
/// that wait, and the channel those handlers report back on.
struct Consuming {
    processor: Arc<Processor>,
    acks: Acks,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    settled_tx: mpsc::UnboundedSender<Settlement>,
    settled_rx: mpsc::UnboundedReceiver<Settlement>,
    /// Handlers that went on in tasks and have not reported back yet.
    in_tasks: usize,
}

impl Consuming {
    fn new(worker: Worker, channel: &Channel, queue: &str, stop: &CancellationToken) -> Self {
        let (settled_tx, settled_rx) = mpsc::unbounded_channel();
        Self {
            acks: Acks::new(channel.clone(), queue.to_owned(), usize::from(worker.limits.prefetch)),
            permits: Arc::new(Semaphore::new(worker.limits.concurrency)),
            processor: Arc::new(Processor {
                route: worker.route,
                topology: worker.topology,
                policy: worker.policy,
                republisher: worker.republisher,
                queue: Arc::from(queue),
                channel: channel.clone(),
                metrics: QueueMetrics::new(queue),
                pause: Arc::new(Pause::new(queue)),
                stop: stop.clone(),
                retry_log: Throttle::new(RETRY_LOG_EVERY),
            }),
            tracker: TaskTracker::new(),
            settled_tx,
            settled_rx,
            in_tasks: 0,
        }
    }

    /// Takes deliveries until `stop` is cancelled (`Ok`) or the delivery
    /// stream fails or ends (`Err`, the cause).
    async fn deliver(&mut self, deliveries: &mut lapin::Consumer, stop: &CancellationToken) -> Result<(), String> {
        // One cancellation future for the whole loop, not two per delivery.
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        while !stop.is_cancelled() {
            if self.in_tasks > 0 {
                self.in_tasks -= self.acks.record_waiting(&mut self.settled_rx);
            }
            if self.acks.due() {
                self.acks.flush().await;
            }
            // A handler starts only while a permit is free. Only this loop
            // takes permits, so the one seen free here is still free below.
            let reserved = if self.permits.available_permits() == 0 {
                self.acks.flush().await;
                tokio::select! {
                    biased;
                    () = &mut cancelled => break,
                    p = self.permits.clone().acquire_owned() => Some(p.expect("semaphore never closed")),
                }
            } else {
                None
            };
            // Deliveries waiting in the stream are taken at once; only when
            // it is momentarily empty are the acks flushed and the loop parked.
            let next = match deliveries.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.acks.flush().await;
                    tokio::select! {
                        biased;
                        () = &mut cancelled => break,
                        Some(s) = self.settled_rx.recv(), if self.in_tasks > 0 => {
                            self.in_tasks -= 1;
                            self.acks.record(s);
                            continue;
                        }
                        d = deliveries.next() => d,
                    }
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    // Taken while the queue paused, it waits unstarted (and unacked).
                    if self.processor.pause.is_paused() && !self.wait_resumed(stop).await {
                        break;
                    }
                    self.start(delivery, reserved).await;
                }
                Some(Err(e)) => return Err(describe(&e)),
                None => return Err("the broker cancelled the consumer (queue deleted?)".into()),
            }
        }
        Ok(())
    }

    /// While the queue is paused (its failed deliveries cannot be
    /// republished), starts no handler: prefetched deliveries wait unacked
    /// in the stream, and the handlers running are settled as they finish.
    /// `false` when `stop` came first.
    async fn wait_resumed(&mut self, stop: &CancellationToken) -> bool {
        let pause = self.processor.pause.clone();
        loop {
            self.acks.flush().await;
            tokio::select! {
                biased;
                () = stop.cancelled() => return false,
                () = pause.resumed() => return true,
                Some(s) = self.settled_rx.recv(), if self.in_tasks > 0 => {
                    self.in_tasks -= 1;
                    self.acks.record(s);
                }
            }
        }
    }

    /// Processes `delivery`. A handler that finishes without waiting (most
    /// do: the event is handled from memory) is settled here, with no task
    /// and no permit of its own; one that waits goes on in a task.
    async fn start(&mut self, delivery: Delivery, reserved: Option<OwnedSemaphorePermit>) {
        let processor = self.processor.clone();
        let mut work = Box::pin(async move { processor.process(&delivery).await });
        match futures_util::poll!(work.as_mut()) {
            Poll::Ready(settled) => self.acks.record(settled),
            Poll::Pending => self.spawn(work, reserved),
        }
    }

    /// Runs a handler that waits in a task holding a permit (`reserved`, or
    /// a free one); it reports back over the channel.
    fn spawn(
        &mut self,
        work: Pin<Box<impl Future<Output = Settlement> + Send + 'static>>,
        reserved: Option<OwnedSemaphorePermit>,
    ) {
        let permit = reserved.unwrap_or_else(|| {
            self.permits
                .clone()
                .try_acquire_owned()
                .expect("a permit is free: only this loop takes them")
        });
        let settled_tx = self.settled_tx.clone();
        self.in_tasks += 1;
        self.tracker.spawn(async move {
            let settled = work.await;
            drop(permit);
            // A closed receiver means the worker gave up on this channel:
            // the broker redelivers the message.
            let _ = settled_tx.send(settled);
        });
    }

    /// Waits up to `timeout` for the handlers still running, acking each as
    /// it finishes, then sends the last acks. On a dead channel nothing can
    /// be acked any more: the broker redelivers everything in flight, so
    /// there is nothing to wait for.
    async fn drain(mut self, channel: &Channel, queue: &str, timeout: Duration) {
        self.tracker.close();
        let timeout = if channel.status().connected() {
            timeout
        } else {
            Duration::ZERO
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            self.acks.record_waiting(&mut self.settled_rx);
            self.acks.flush().await;
            tokio::select! {
                biased;
                Some(s) = self.settled_rx.recv() => self.acks.record(s),
                () = self.tracker.wait() => {
                    self.acks.record_waiting(&mut self.settled_rx);
                    break;
                }
                () = &mut deadline => {
                    warn!(
                        queue,
                        unfinished = self.tracker.len(),
                        "handlers still running after {timeout:?}: their messages stay unacked and will be redelivered"
                    );
                    break;
                }
            }
        }
        self.acks.finish().await;
    }
}
