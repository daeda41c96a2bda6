//! The matched baseline: the same work as the warren run in a tight bare-lapin loop.
//!
//! Same bodies and AMQP properties, persistent and mandatory publishes on one
//! confirm channel shared by the same number of tasks with the same window of
//! confirms in flight; one consumer with the same prefetch that parses each
//! body into `Envelope<UserRegistered>` with plain `serde_json` and acks with
//! `multiple` every `prefetch / 4` deliveries or as soon as the stream is
//! momentarily idle. No validation, spans, metrics or handler tasks.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::arena::{Arena, within};
use super::drive::{Measurement, consumer_ready, publish_all};
use super::figures::Raw;
use super::load::{Payload, Quota, Recorder};
use super::progress::Progress;
use super::{BenchError, Plan};
use warren::amqp::describe;
use warren::event::properties::event_properties;
use warren::event::{Envelope, Event, UserRegistered};

/// One baseline run on `arena`'s queues.
///
/// # Errors
///
/// See [`BenchError`].
pub async fn run(arena: &Arena, plan: &Plan, label: String) -> Result<Raw, BenchError> {
    arena.declare().await?;
    let recorder = Arc::new(Recorder::new(plan.capacity()));
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let (consumer_conn, channel, deliveries) =
        within("starting the baseline consumer", open_consumer(arena, plan.prefetch)).await?;
    let ack_every = (u32::from(plan.prefetch) / 4).max(1);
    let rec = recorder.clone();
    let handle = move |body: &[u8]| {
        let event: Envelope<UserRegistered> =
            serde_json::from_str(body_text(body)?).map_err(|e| format!("undecodable body: {e}"))?;
        rec.handled(Payload::sent_ns(&event.data.username).unwrap_or_else(|| rec.now_ns()));
        Ok(())
    };
    let mut consumer = tokio::spawn(consume(channel, deliveries, ack_every, stop.clone(), handle));
    consumer_ready(arena, &mut consumer).await?;
    let (publisher_conn, channel) = within("starting the baseline publisher", open_publisher(arena)).await?;
    let exchange = ShortString::from(arena.topology.exchange.as_str());
    let payload = Payload::new(plan.payload_size);
    let progress = Progress::start(label, recorder.clone(), plan.events);
    let measurement = Measurement::begin(recorder.clone(), plan.broker_pid);
    let mut publishers = JoinSet::new();
    for quota in Quota::split(plan.limit(), plan.rate, plan.publishers) {
        let (channel, exchange, payload, rec) = (channel.clone(), exchange.clone(), payload.clone(), recorder.clone());
        let window = plan.window;
        publishers.spawn(async move {
            let (channel, exchange) = (&channel, &exchange);
            publish_all(quota, window, &rec, |seq, now| {
                let event = payload.envelope(now, seq);
                async move { publish(channel, exchange, &event).await }
            })
            .await;
        });
    }
    let raw = measurement.end(publishers, &mut consumer).await;
    progress.finish().await;
    stop.cancel();
    let _ = consumer.await;
    let _ = publisher_conn.close(200, "done".into()).await;
    let _ = consumer_conn.close(200, "done".into()).await;
    raw
}

/// A body as text, checked as UTF-8 at once: serde_json's `from_str` then
/// skips checking each string, faster than `from_slice` (as warren reads).
pub(super) fn body_text(body: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(body).map_err(|e| format!("undecodable body: {e}"))
}

fn broker(e: lapin::Error) -> BenchError {
    BenchError::Broker(describe(&e))
}

pub(super) async fn open_consumer(
    arena: &Arena,
    prefetch: u16,
) -> Result<(Connection, Channel, lapin::Consumer), BenchError> {
    let conn = arena.connect("baseline consumer").await?;
    let channel = conn.create_channel().await.map_err(broker)?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker)?;
    let deliveries = channel
        .basic_consume(
            arena.queue().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    Ok((conn, channel, deliveries))
}

pub(super) async fn open_publisher(arena: &Arena) -> Result<(Connection, Channel), BenchError> {
    let conn = arena.connect("baseline publisher").await?;
    let channel = conn.create_channel().await.map_err(broker)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;
    Ok((conn, channel))
}

async fn publish(channel: &Channel, exchange: &ShortString, event: &Envelope<UserRegistered>) -> Result<(), String> {
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    // The publisher's own wire properties: the baseline carries what warren carries.
    let properties = event_properties(event.event_id, &event.event_type, event.timestamp, &event.source, None);
    publish_confirmed(channel, exchange, true, &body, properties).await
}

/// Publishes one `user.registered` body and waits for its confirm; a
/// returned (unroutable) or nacked message is an error.
pub(super) async fn publish_confirmed(
    channel: &Channel,
    exchange: &ShortString,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), String> {
    let options = BasicPublishOptions {
        mandatory,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(exchange.clone(), UserRegistered::TYPE.into(), options, body, properties)
        .await
        .map_err(|e| describe(&e))?;
    match confirm.await.map_err(|e| describe(&e))? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err("returned: unroutable".into()),
        Confirmation::Nack(_) => Err("nacked".into()),
        Confirmation::NotRequested => Err("confirms not enabled".into()),
    }
}

/// Consumes until `stop`: `handle` each body, ack with `multiple` every
/// `ack_every` deliveries or as soon as the stream is momentarily idle.
pub(super) async fn consume(
    channel: Channel,
    mut deliveries: lapin::Consumer,
    ack_every: u32,
    stop: CancellationToken,
    mut handle: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let ack = |tag| channel.basic_ack(tag, BasicAckOptions { multiple: true });
    let (mut last_tag, mut unacked) = (0, 0u32);
    while !stop.is_cancelled() {
        let next = match deliveries.next().now_or_never() {
            Some(next) => next,
            None => {
                // Momentarily idle: ack what was handled, then wait.
                if unacked > 0 {
                    ack(last_tag).await.map_err(|e| describe(&e))?;
                    unacked = 0;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    next = deliveries.next() => next,
                }
            }
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(describe(&e)),
            None => return Err("the broker cancelled the consumer".into()),
        };
        handle(&delivery.data)?;
        last_tag = delivery.delivery_tag;
        unacked += 1;
        if unacked >= ack_every {
            ack(last_tag).await.map_err(|e| describe(&e))?;
            unacked = 0;
        }
    }
    if unacked > 0 {
        let _ = ack(last_tag).await;
    }
    Ok(())
}
