//! One work queue on its own channel: prefetch, bounded concurrency, the
//! decide-publish-ack path, coalesced acks, and the drain on shutdown.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::acks::{Acks, Settlement};
use super::handler::Context;
use super::headers::{self, Origin};
use super::policy::{Decision, RetryPolicy};
use super::route::{Outcome, Route};
use crate::amqp::describe;
use crate::publisher::{Message, Publisher};
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
        let shared = Arc::new(Shared {
            metrics: QueueMetrics::new(&queue),
            worker: self,
            queue: Arc::from(queue.as_str()),
            channel: channel.clone(),
        });
        let mut acks = Acks::new(
            channel.clone(),
            queue.clone(),
            usize::from(shared.worker.limits.prefetch),
        );
        let permits = Arc::new(Semaphore::new(shared.worker.limits.concurrency));
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
                    let shared = shared.clone();
                    let mut work = Box::pin(async move { shared.process(&delivery).await });
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
            shared.worker.shutdown_timeout
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

/// Metric handles of one queue, registered once instead of per delivery.
struct QueueMetrics {
    acked: metrics::Counter,
    retried: metrics::Counter,
    dead_lettered: metrics::Counter,
    requeued: metrics::Counter,
    handler: metrics::Histogram,
}

impl QueueMetrics {
    fn new(queue: &str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!(crate::metrics::CONSUMED_TOTAL, "queue" => queue.to_owned(), "outcome" => outcome);
        Self {
            acked: counter("acked"),
            retried: counter("retried"),
            dead_lettered: counter("dead_lettered"),
            requeued: counter("requeued"),
            handler: metrics::histogram!(crate::metrics::HANDLER_DURATION_SECONDS, "queue" => queue.to_owned()),
        }
    }
}

#[derive(Clone, Copy)]
enum Settled {
    Acked,
    Retried,
    DeadLettered,
}

struct Shared {
    metrics: QueueMetrics,
    worker: Worker,
    queue: Arc<str>,
    channel: Channel,
}

impl Shared {
    async fn process(&self, delivery: &Delivery) -> Settlement {
        let attempt = headers::attempt(&delivery.properties);
        // A debug span: at the default info level it is disabled, and the
        // delivery is processed without entering it.
        let span = debug_span!(
            "delivery",
            queue = %self.queue,
            event_type = self.worker.route.event_type(),
            event_id = headers::message_id(&delivery.properties).unwrap_or(""),
            attempt
        );
        if span.is_disabled() {
            self.process_inner(delivery, attempt).await
        } else {
            self.process_inner(delivery, attempt).instrument(span).await
        }
    }

    async fn process_inner(&self, delivery: &Delivery, attempt: u32) -> Settlement {
        let ctx = Context {
            attempt,
            queue: self.queue.clone(),
            redelivered: delivery.redelivered,
        };
        let started = Instant::now();
        let outcome = self.worker.route.process(&delivery.data, ctx).await;
        self.metrics.handler.record(started.elapsed().as_secs_f64());
        let (decision, error) = match outcome {
            Outcome::Handled(Ok(())) => (Decision::Ack, String::new()),
            Outcome::Handled(r) => {
                let error = r.as_ref().err().map(ToString::to_string).unwrap_or_default();
                (self.worker.policy.decide(&r, attempt), error)
            }
            Outcome::Undecodable(reason, error) => (Decision::DeadLetter(reason), error),
        };
        let target = match decision {
            Decision::Ack => return self.settle(delivery.delivery_tag, Settled::Acked),
            Decision::Retry { tier } => {
                let q = self.worker.topology.retry_queue(self.worker.route.event_type(), tier);
                debug!(tier, error, "retrying later");
                (q.expect("policy tiers match topology tiers"), None)
            }
            Decision::DeadLetter(reason) => {
                let event_id = headers::message_id(&delivery.properties).unwrap_or("");
                warn!(queue = %self.queue, event_id, attempt, reason = reason.as_str(), error, "dead-lettering");
                (
                    self.worker.topology.dead_queue(self.worker.route.event_type()),
                    Some(reason.as_str()),
                )
            }
        };
        // The republish future is large and rare: boxed, it keeps every
        // delivery's task small.
        Box::pin(self.republish(delivery, attempt, target, error)).await
    }

    async fn republish(
        &self,
        delivery: &Delivery,
        attempt: u32,
        target: (String, Option<&'static str>),
        error: String,
    ) -> Settlement {
        let tag = delivery.delivery_tag;
        let origin = Origin {
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
            queue: &self.queue,
        };
        let properties = headers::republish_properties(&delivery.properties, &origin, attempt + 1, &error, target.1);
        let msg = Message {
            exchange: "",
            routing_key: &target.0,
            body: &delivery.data,
            properties,
        };
        match self.worker.republisher.send(msg).await {
            // Publish confirmed, then ack: a crash in between duplicates, never loses.
            Ok(()) => self.settle(
                tag,
                if target.1.is_some() {
                    Settled::DeadLettered
                } else {
                    Settled::Retried
                },
            ),
            Err(e) => {
                warn!(error = %e, target = target.0, "cannot republish; returning the message to its queue");
                tokio::time::sleep(Duration::from_millis(200)).await;
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                self.metrics.requeued.increment(1);
                if self.channel.basic_nack(tag, requeue).await.is_ok() {
                    Settlement::Elsewhere(tag)
                } else {
                    // The channel is gone: the broker redelivers it.
                    Settlement::Unsettled
                }
            }
        }
    }

    fn settle(&self, tag: u64, outcome: Settled) -> Settlement {
        match outcome {
            Settled::Acked => &self.metrics.acked,
            Settled::Retried => &self.metrics.retried,
            Settled::DeadLettered => &self.metrics.dead_lettered,
        }
        .increment(1);
        Settlement::Ack(tag)
    }
}
