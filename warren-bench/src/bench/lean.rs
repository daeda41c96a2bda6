//! The lean loop: the fastest correct bare-lapin publish → consume → ack loop
//! this bench knows, tuned for speed alone, and the same loop with one of
//! warren's additions at a time (`--additions`), to put a price on each.
//!
//! Lean means: the bench's publishers and window (8 tasks × 128 confirms in
//! flight by default, as every loop) on one confirm channel, persistent
//! publishes with no other property, not mandatory, the seed's envelope
//! without an `event_id` (plain `serde_json` both ways), prefetch
//! [`PREFETCH`], one `multiple` ack every [`ACK_EVERY`] deliveries or when the
//! stream is momentarily idle, whatever `--prefetch` says (docs/BENCHMARKS.md
//! has how these were chosen).

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::arena::{Arena, within};
use super::baseline::{body_text, consume, open_consumer, open_publisher, publish_confirmed};
use super::drive::{Measurement, consumer_ready, publish_all};
use super::expiry::Expiries;
use super::figures::Raw;
use super::load::{Payload, Quota, Recorder};
use super::progress::Progress;
use super::{BenchError, Plan};
use warren::event::properties::event_properties;
use warren::event::{Envelope, Event, UserRegistered};

/// The lean consumer's `basic.qos`.
pub const PREFETCH: u16 = 512;
/// Deliveries per `multiple` ack.
pub const ACK_EVERY: u32 = 64;

/// One of warren's additions to the lean loop, measured one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addition {
    /// `mandatory` publishes: the broker returns unroutable ones.
    Mandatory,
    /// warren's AMQP properties: content type, message id, type, timestamp, app id.
    Properties,
    /// warren's envelope: a UUIDv7 `event_id` made per event, ~50 bytes more.
    EventId,
    /// warren's parse on consume: portable JSON checks, type, user ids, e-mail.
    Validation,
    /// A publish counter and duration histogram, a handled counter and
    /// handler-duration histogram, recorded per event into the Prometheus recorder.
    Metrics,
    /// Each confirm awaited under a deadline, shared as warren shares it.
    Deadlines,
    /// warren's consumer defaults: the settings' prefetch, an ack every prefetch/4.
    ConsumerDefaults,
}

impl Addition {
    /// Every addition, in the order of docs/BENCHMARKS.md.
    pub const ALL: [Self; 7] = [
        Self::Mandatory,
        Self::Properties,
        Self::EventId,
        Self::Validation,
        Self::Metrics,
        Self::Deadlines,
        Self::ConsumerDefaults,
    ];

    /// Its key in the JSON.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Mandatory => "mandatory",
            Self::Properties => "properties",
            Self::EventId => "event_id",
            Self::Validation => "validation",
            Self::Metrics => "metrics",
            Self::Deadlines => "deadlines",
            Self::ConsumerDefaults => "consumer_defaults",
        }
    }

    /// Its name in the report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Mandatory => "mandatory",
            Self::Properties => "AMQP properties",
            Self::EventId => "event_id, larger body",
            Self::Validation => "validation on consume",
            Self::Metrics => "metrics",
            Self::Deadlines => "confirm deadlines",
            Self::ConsumerDefaults => "consumer prefetch, ack policy",
        }
    }
}

/// The seed's envelope without an `event_id`: what a lean producer sends
/// (`S` is `&str` going out, `String` coming in).
#[derive(Debug, Serialize, Deserialize)]
struct Seed<S, D> {
    event_type: S,
    // The fastest RFC 3339 writer at hand: chrono's own is ~20× slower.
    #[serde(serialize_with = "warren::event::timestamp::serialize")]
    timestamp: DateTime<Utc>,
    source: S,
    user_id: i64,
    data: D,
}

/// One lean run on `arena`'s queues, with `addition` if any.
///
/// # Errors
///
/// See [`BenchError`].
pub async fn run(arena: &Arena, plan: &Plan, addition: Option<Addition>, label: String) -> Result<Raw, BenchError> {
    arena.declare().await?;
    let recorder = Arc::new(Recorder::new(plan.capacity()));
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let (prefetch, ack_every) = match addition {
        Some(Addition::ConsumerDefaults) => (plan.prefetch, (u32::from(plan.prefetch) / 4).max(1)),
        _ => (PREFETCH, ACK_EVERY),
    };
    let (consumer_conn, channel, deliveries) =
        within("starting the lean consumer", open_consumer(arena, prefetch)).await?;
    let sink = Sink {
        rec: recorder.clone(),
        addition,
        metrics: Metrics::new(),
    };
    let mut consumer = tokio::spawn(consume(channel, deliveries, ack_every, stop.clone(), move |body| {
        sink.handle(body)
    }));
    consumer_ready(arena, &mut consumer).await?;
    let (publisher_conn, channel) = within("starting the lean publisher", open_publisher(arena)).await?;
    let source = Arc::new(Source {
        channel,
        exchange: ShortString::from(arena.topology.exchange.as_str()),
        payload: Payload::new(plan.payload_size),
        addition,
        expiries: Expiries::new(arena.settings.publisher.confirm_timeout),
        metrics: Metrics::new(),
    });
    let progress = Progress::start(label, recorder.clone(), plan.events);
    let measurement = Measurement::begin(recorder.clone(), plan.broker_pid);
    let mut publishers = JoinSet::new();
    for quota in Quota::split(plan.limit(), plan.rate, plan.publishers) {
        let (source, rec, window) = (source.clone(), recorder.clone(), plan.window);
        publishers.spawn(async move {
            publish_all(quota, window, &rec, |seq, now| source.publish(seq, now)).await;
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

/// The handles of the metrics addition, registered once as warren does.
struct Metrics {
    count: metrics::Counter,
    time: metrics::Histogram,
}

impl Metrics {
    fn new() -> Self {
        let t = UserRegistered::TYPE;
        Self {
            count: metrics::counter!("warren_bench_lean_total", "event_type" => t),
            time: metrics::histogram!("warren_bench_lean_seconds", "event_type" => t),
        }
    }

    fn record(&self, since: Instant) {
        self.count.increment(1);
        self.time.record(since.elapsed().as_secs_f64());
    }
}

/// The publishing side of a lean run.
struct Source {
    channel: Channel,
    exchange: ShortString,
    payload: Payload,
    addition: Option<Addition>,
    expiries: Expiries,
    metrics: Metrics,
}

impl Source {
    async fn publish(&self, seq: u64, sent_ns: u64) -> Result<(), String> {
        let started = Instant::now();
        let result = match self.addition {
            Some(Addition::Deadlines) => {
                let expiry = self.expiries.around(started);
                tokio::select! {
                    biased;
                    r = self.send(seq, sent_ns) => r,
                    () = expiry.expired() => Err("confirm timed out".into()),
                }
            }
            _ => self.send(seq, sent_ns).await,
        };
        if self.addition == Some(Addition::Metrics) {
            self.metrics.record(started);
        }
        result
    }

    async fn send(&self, seq: u64, sent_ns: u64) -> Result<(), String> {
        let data = self.payload.data(sent_ns, seq);
        let (body, properties) = match self.addition {
            Some(Addition::EventId) => (serde_json::to_vec(&Envelope::new(SOURCE, data)), persistent()),
            Some(Addition::Properties) => {
                let seed = seed(&data);
                let properties = event_properties(Uuid::now_v7(), seed.event_type, seed.timestamp, SOURCE, None);
                (serde_json::to_vec(&seed), properties)
            }
            _ => (serde_json::to_vec(&seed(&data)), persistent()),
        };
        let body = body.map_err(|e| e.to_string())?;
        let mandatory = self.addition == Some(Addition::Mandatory);
        publish_confirmed(&self.channel, &self.exchange, mandatory, &body, properties).await
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// The `source` of every bench event.
const SOURCE: &str = "bench";

/// The seed's envelope of `data`, sent now.
fn seed(data: &UserRegistered) -> Seed<&'static str, &UserRegistered> {
    Seed {
        event_type: UserRegistered::TYPE,
        timestamp: Utc::now(),
        source: SOURCE,
        user_id: data.user_id,
        data,
    }
}

/// The consuming side of a lean run.
struct Sink {
    rec: Arc<Recorder>,
    addition: Option<Addition>,
    metrics: Metrics,
}

impl Sink {
    /// Decodes one body and records its latency.
    fn handle(&self, body: &[u8]) -> Result<(), String> {
        let started = Instant::now();
        let username = match self.addition {
            Some(Addition::Validation) => {
                Envelope::<UserRegistered>::from_slice(body)
                    .map_err(|e| format!("invalid body: {e}"))?
                    .data
                    .username
            }
            Some(Addition::EventId) => {
                serde_json::from_str::<Envelope<UserRegistered>>(body_text(body)?)
                    .map_err(|e| format!("undecodable body: {e}"))?
                    .data
                    .username
            }
            _ => {
                serde_json::from_str::<Seed<String, UserRegistered>>(body_text(body)?)
                    .map_err(|e| format!("undecodable body: {e}"))?
                    .data
                    .username
            }
        };
        self.rec
            .handled(Payload::sent_ns(&username).unwrap_or_else(|| self.rec.now_ns()));
        if self.addition == Some(Addition::Metrics) {
            self.metrics.record(started);
        }
        Ok(())
    }
}
