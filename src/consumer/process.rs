//! One delivery, from its handler to what its channel owes the broker: the
//! handler runs, the policy decides the delivery's [`Fate`], a failure is
//! republished (the confirm awaited, retried with backoff while the queue
//! pauses), and the [`Settlement`] says what to ack.

use std::sync::Arc;
use std::time::Instant;

use lapin::Channel;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, warn};

use super::acks::Settlement;
use super::handler::Context;
use super::pause::Pause;
use super::policy::{Fate, RetryPolicy};
use super::route::{Outcome, Route};
use super::throttle::Throttle;
use crate::event::headers::{self, Origin};
use crate::publisher::{Message, Publisher};
use crate::topology::Topology;

/// What processing a delivery of one queue needs; shared by the worker loop
/// and the handler tasks it starts.
pub(crate) struct Processor {
    pub route: Arc<dyn Route>,
    pub topology: Arc<Topology>,
    pub policy: RetryPolicy,
    pub republisher: Publisher,
    pub queue: Arc<str>,
    /// The queue's channel: a republish stops waiting when it is gone.
    pub channel: Channel,
    pub metrics: QueueMetrics,
    /// Paused while failed deliveries cannot be republished.
    pub pause: Arc<Pause>,
    /// Cancelled when the worker stops: a waiting republish gives up.
    pub stop: CancellationToken,
    /// Rate limit of this queue's retry lines.
    pub retry_log: Throttle,
}

/// Metric handles of one queue, registered once instead of per delivery.
pub(crate) struct QueueMetrics {
    acked: metrics::Counter,
    retried: metrics::Counter,
    dead_lettered: metrics::Counter,
    handler: metrics::Histogram,
}

impl QueueMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!(crate::metrics::CONSUMED_TOTAL, "queue" => queue.to_owned(), "outcome" => outcome);
        Self {
            acked: counter("acked"),
            retried: counter("retried"),
            dead_lettered: counter("dead_lettered"),
            handler: metrics::histogram!(crate::metrics::HANDLER_DURATION_SECONDS, "queue" => queue.to_owned()),
        }
    }
}

impl Processor {
    /// Handles `delivery` and settles it.
    pub(crate) async fn process(&self, delivery: &Delivery) -> Settlement {
        let attempt = headers::attempt(&delivery.properties);
        // A debug span: at the default info level it is disabled, and the
        // delivery is processed without entering it.
        let span = debug_span!(
            "delivery",
            queue = %self.queue,
            event_type = self.route.event_type(),
            event_id = headers::message_id(&delivery.properties).unwrap_or(""),
            attempt
        );
        if span.is_disabled() {
            self.handle(delivery, attempt).await
        } else {
            self.handle(delivery, attempt).instrument(span).await
        }
    }

    /// Runs the handler, has the policy decide the delivery's fate and
    /// carries it out.
    async fn handle(&self, delivery: &Delivery, attempt: u32) -> Settlement {
        let outcome = self.run_handler(delivery, attempt).await;
        match self.policy.decide(outcome, attempt) {
            fate @ Fate::Ack => self.acked(&fate, delivery.delivery_tag),
            // The republish future is large and rare: boxed, it keeps every
            // delivery's task small.
            fate => Box::pin(self.republish(delivery, attempt, fate)).await,
        }
    }

    /// Runs the route's handler, timed.
    async fn run_handler(&self, delivery: &Delivery, attempt: u32) -> Outcome {
        let ctx = Context {
            attempt,
            queue: self.queue.clone(),
            redelivered: delivery.redelivered,
        };
        let started = Instant::now();
        let outcome = self.route.process(&delivery.data, ctx).await;
        self.metrics.handler.record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Publishes a delivery to the queue its fate names (its retry tier's
    /// or `.dead`) and waits for the confirm: then it wants an ack (a crash
    /// in between duplicates, never loses). If it cannot be published, the
    /// queue pauses and it tries again with backoff, never requeued.
    async fn republish(&self, delivery: &Delivery, attempt: u32, fate: Fate) -> Settlement {
        let tag = delivery.delivery_tag;
        let Some(to) = self.destination(delivery, attempt, &fate) else {
            return self.acked(&fate, tag);
        };
        let origin = Origin {
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
            queue: &self.queue,
        };
        let properties = headers::republish_properties(
            &delivery.properties,
            &origin,
            attempt + 1,
            fate.error(),
            fate.dead_reason(),
        );
        let msg = Message {
            exchange: "",
            routing_key: &to,
            body: &delivery.data,
            properties,
        };
        if self.send_until_taken(msg).await {
            self.acked(&fate, tag)
        } else {
            // The worker stops or its channel is gone: the broker redelivers it.
            Settlement::Unsettled
        }
    }

    /// Sends `msg` until the broker confirms it, pausing the queue between
    /// attempts (the delivery stays unacked meanwhile); `false` when the
    /// worker stops or its channel dies first.
    async fn send_until_taken(&self, msg: Message<'_>) -> bool {
        loop {
            let Err(e) = self.republisher.send(msg.clone()).await else {
                self.pause.succeeded();
                return true;
            };
            let wait = self.pause.failed(msg.routing_key, &e);
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
            if !self.channel.status().connected() {
                return false;
            }
        }
    }

    /// The queue a delivery of fate `fate` is republished to, logged: its
    /// retry tier's or `.dead`; none for an ack.
    fn destination(&self, delivery: &Delivery, attempt: u32, fate: &Fate) -> Option<String> {
        let event_type = self.route.event_type();
        match fate {
            Fate::Ack => None,
            Fate::Retry { tier, error } => {
                let to = self.topology.retry_queue(event_type, *tier);
                let to = to.expect("policy tiers match topology tiers");
                let event_id = headers::message_id(&delivery.properties).unwrap_or("");
                // Visible at the default level, but one line per queue per
                // interval: a receiver that is down fails every delivery.
                match self.retry_log.admit(Instant::now()) {
                    Some(suppressed) => warn!(
                        queue = %self.queue, event_id, attempt, tier = tier + 1, to,
                        error = crate::event::truncate(error, headers::MAX_ERROR_LEN), suppressed,
                        "transient failure: retrying later"
                    ),
                    None => debug!(event_id, attempt, tier = tier + 1, error, "retrying later"),
                }
                Some(to)
            }
            Fate::DeadLetter { reason, error } => {
                let event_id = headers::message_id(&delivery.properties).unwrap_or("");
                warn!(queue = %self.queue, event_id, attempt, reason = reason.as_str(), error, "dead-lettering");
                Some(self.topology.dead_queue(event_type))
            }
        }
    }

    /// A delivery settled by warren: it wants an ack, and counts as its fate's outcome.
    fn acked(&self, fate: &Fate, tag: u64) -> Settlement {
        match fate {
            Fate::Ack => &self.metrics.acked,
            Fate::Retry { .. } => &self.metrics.retried,
            Fate::DeadLetter { .. } => &self.metrics.dead_lettered,
        }
        .increment(1);
        Settlement::Ack(tag)
    }
}
