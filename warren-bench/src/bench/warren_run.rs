//! The warren run: [`Publisher`] tasks (or the HTTP ingress) feeding a
//! [`Consumer`] with a typed handler that records each event's latency.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::arena::{Arena, within};
use super::drive::{Measurement, consumer_ready, publish_all};
use super::figures::Raw;
use super::load::{Payload, Quota, Recorder};
use super::progress::Progress;
use super::{BenchError, INGRESS_CONNECTIONS, Plan, ingress};
use warren::consumer::{Consumer, Context, HandlerError, Limits};
use warren::event::{Envelope, UserRegistered};
use warren::publisher::Publisher;

/// One warren run on `arena`'s queues.
///
/// # Errors
///
/// See [`BenchError`].
pub async fn run(arena: &Arena, plan: &Plan, label: String) -> Result<Raw, BenchError> {
    arena.declare().await?;
    let recorder = Arc::new(Recorder::new(plan.capacity()));
    let stop = CancellationToken::new();
    // However this run ends, the consumer drains and disconnects.
    let _stop_on_drop = stop.clone().drop_guard();

    let rec = recorder.clone();
    let handler = move |e: Envelope<UserRegistered>, _ctx: Context| {
        rec.handled(Payload::sent_ns(&e.data.username).unwrap_or_else(|| rec.now_ns()));
        std::future::ready(Ok::<(), HandlerError>(()))
    };
    let limits = Limits {
        prefetch: arena.settings.consumer.prefetch,
        concurrency: plan.concurrency,
    };
    let consumer = Consumer::new(arena.settings.clone()).on_with(handler, limits);
    let mut consumer = tokio::spawn(consumer.run(stop.clone()));
    consumer_ready(arena, &mut consumer).await?;

    let payload = Payload::new(plan.payload_size);
    let mut publishers = JoinSet::new();
    let progress = Progress::start(label, recorder.clone(), plan.events);
    let measurement = match &plan.ingress {
        Some(url) => {
            let target = Arc::new(ingress::Target::parse(url)?);
            let opening = (0..INGRESS_CONNECTIONS).map(|_| ingress::Connection::open(target.clone()));
            let connections = futures_util::future::try_join_all(opening).await?;
            let measurement = Measurement::begin(recorder.clone(), plan.broker_pid);
            let quotas = Quota::split(plan.limit(), plan.rate, INGRESS_CONNECTIONS);
            for (quota, (connection, driver)) in quotas.into_iter().zip(connections) {
                let (payload, rec) = (payload.clone(), recorder.clone());
                publishers.spawn(async move {
                    let work = publish_all(quota, 1, &rec, |seq, now| connection.post(payload.envelope(now, seq)));
                    ingress::Connection::drive(driver, work).await;
                });
            }
            measurement
        }
        None => {
            let publisher = within("connecting the publisher", async {
                Ok(Publisher::connect(&arena.settings, "bench publisher").await?)
            })
            .await?;
            let measurement = Measurement::begin(recorder.clone(), plan.broker_pid);
            for quota in Quota::split(plan.limit(), plan.rate, plan.publishers) {
                let (publisher, payload, rec) = (publisher.clone(), payload.clone(), recorder.clone());
                let window = plan.window;
                publishers.spawn(async move {
                    let publisher = &publisher;
                    publish_all(quota, window, &rec, |seq, now| {
                        let event = payload.envelope(now, seq);
                        async move { publisher.publish(&event).await.map_err(|e| e.to_string()) }
                    })
                    .await;
                });
            }
            measurement
        }
    };
    let raw = measurement.end(publishers, &mut consumer).await;
    progress.finish().await;
    stop.cancel();
    let _ = consumer.await;
    raw
}
