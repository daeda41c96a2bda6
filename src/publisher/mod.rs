//! Confirmed, mandatory, persistent publishing.
//!
//! A [`Publisher`] is cheap to clone and safe to share: every task that
//! publishes through it has its own confirm in flight, so N concurrent
//! publishers cost one round trip together, not N. A publish returns `Ok`
//! only once the broker has confirmed it *and* routed it to at least one
//! queue; everything else is a distinct [`PublishError`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::watch;
use uuid::Uuid;

use crate::amqp::{self, ConnectOptions};
use crate::config::Settings;
use crate::event::{EVENT_TYPES, Envelope, Event, RawEnvelope};
use crate::topology::Topology;

/// Why a publish is not confirmed. Nothing here means "maybe delivered"
/// except [`PublishError::Timeout`] and [`PublishError::ConnectionLost`],
/// after which a re-send with the same `event_id` is safe for consumers that
/// dedupe on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No queue is bound for the routing key: the broker returned the message.
    #[error("unroutable: no queue is bound to exchange {exchange:?} with routing key {routing_key:?}")]
    Unroutable { exchange: String, routing_key: String },
    /// The broker refused the message (basic.nack).
    #[error("the broker rejected the message (nack) for routing key {routing_key:?}")]
    Nacked { routing_key: String },
    /// No confirm arrived in time.
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    /// The channel or connection closed before the confirm.
    #[error("connection to RabbitMQ lost: {0}")]
    ConnectionLost(String),
    /// Connecting or preparing the channel failed.
    #[error("{0}")]
    Setup(String),
    /// The event could not be serialized (a bug in a custom `Event`).
    #[error("cannot serialize event: {0}")]
    Serialize(String),
}

/// One message to publish: body plus the AMQP properties that go with it.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// A confirmed publisher on its own channel.
///
/// Made with [`Publisher::connect`], it owns its connection and keeps it up:
/// a supervisor task notices a lost connection (heartbeats, broker close,
/// TCP reset) and reconnects with capped, jittered backoff. A publish that
/// finds no connection waits for one until its deadline
/// (`publisher.confirm_timeout`); one whose connection dies before the
/// confirm is sent again on the new connection, with the same `event_id`,
/// when `publisher.resend_on_reconnect` is set (it may then reach consumers
/// twice: they dedupe on `event_id`), and fails with
/// [`PublishError::ConnectionLost`] otherwise.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    link: watch::Receiver<Option<Arc<Link>>>,
    exchange: String,
    confirm_timeout: Duration,
    expiries: Expiries,
    resend: bool,
    metrics: PublishMetrics,
    // Cancelled (stopping the supervisor) when the last clone is dropped.
    _supervisor: Option<tokio_util::sync::DropGuard>,
}

/// One live connection and its confirm channel.
struct Link {
    channel: Channel,
    _connection: Arc<Connection>,
}

impl Publisher {
    /// Connects, opens a confirm channel, declares the events exchange, and
    /// keeps the connection up from then on.
    ///
    /// # Errors
    ///
    /// [`PublishError::Setup`] naming the cause (URL redacted) when the first
    /// connection fails.
    pub async fn connect(settings: &Settings, connection_name: &str) -> Result<Self, PublishError> {
        let target = Target::new(settings, connection_name);
        let first = target.open().await?;
        Ok(Self::supervised(settings, target, Some(first)))
    }

    /// A publisher that connects in the background and keeps retrying until
    /// it can: for services that must start (and answer "not ready") while
    /// the broker is still down. Publishes wait for the connection until
    /// their deadline.
    #[must_use]
    pub fn start(settings: &Settings, connection_name: &str) -> Self {
        Self::supervised(settings, Target::new(settings, connection_name), None)
    }

    fn supervised(settings: &Settings, target: Target, first: Option<Arc<Link>>) -> Self {
        let (tx, rx) = watch::channel(first.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(supervise(target, first, tx, stop.clone()));
        Self {
            inner: Arc::new(Inner {
                link: rx,
                exchange: settings.topology.exchange.clone(),
                confirm_timeout: settings.publisher.confirm_timeout,
                expiries: Expiries::new(settings.publisher.confirm_timeout),
                resend: settings.publisher.resend_on_reconnect,
                metrics: PublishMetrics::default(),
                _supervisor: Some(stop.drop_guard()),
            }),
        }
    }

    /// A publisher on a new channel of an existing connection, without
    /// reconnection: whoever owns the connection restarts it.
    ///
    /// # Errors
    ///
    /// [`PublishError::Setup`] when the channel cannot be opened.
    pub async fn on_connection(
        conn: Arc<Connection>,
        exchange: &str,
        confirm_timeout: Duration,
    ) -> Result<Self, PublishError> {
        let channel = conn.create_channel().await.map_err(setup_err)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(setup_err)?;
        let link = Arc::new(Link {
            channel,
            _connection: conn,
        });
        let (_tx, rx) = watch::channel(Some(link));
        Ok(Self {
            inner: Arc::new(Inner {
                link: rx,
                exchange: exchange.to_owned(),
                confirm_timeout,
                expiries: Expiries::new(confirm_timeout),
                resend: false,
                metrics: PublishMetrics::default(),
                _supervisor: None,
            }),
        })
    }

    /// The events exchange this publisher sends to.
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.inner.exchange
    }

    /// Whether the publisher has a live connection right now.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.inner
            .link
            .borrow()
            .as_ref()
            .is_some_and(|l| l.channel.status().connected())
    }

    /// Publishes a typed event and waits for the broker's confirm.
    ///
    /// # Errors
    ///
    /// See [`PublishError`].
    pub async fn publish<E: Event>(&self, envelope: &Envelope<E>) -> Result<(), PublishError> {
        self.publish_envelope(envelope).await
    }

    /// Publishes an already validated untyped envelope (the ingress and CLI path).
    ///
    /// # Errors
    ///
    /// See [`PublishError`].
    pub async fn publish_raw(&self, envelope: &RawEnvelope) -> Result<(), PublishError> {
        self.publish_envelope(envelope).await
    }

    async fn publish_envelope<D: serde::Serialize>(&self, envelope: &Envelope<D>) -> Result<(), PublishError> {
        let body = serde_json::to_vec(envelope).map_err(|e| PublishError::Serialize(e.to_string()))?;
        let to = Destination {
            exchange: &self.inner.exchange,
            routing_key: &envelope.event_type,
            body: &body,
        };
        // Made again for a re-send rather than cloned for every publish.
        let properties = || {
            event_properties(
                envelope.event_id,
                &envelope.event_type,
                envelope.timestamp,
                &envelope.source,
                None,
            )
        };
        self.send_with(to, properties).await
    }

    /// Publishes many events with their confirms in flight together; one
    /// result per event, in order.
    pub async fn publish_batch<E: Event>(&self, envelopes: &[Envelope<E>]) -> Vec<Result<(), PublishError>> {
        join_all(envelopes.iter().map(|e| self.publish(e))).await
    }

    /// Publishes any message (mandatory, with confirm) and waits for the confirm.
    ///
    /// # Errors
    ///
    /// See [`PublishError`].
    pub async fn send(&self, msg: Message<'_>) -> Result<(), PublishError> {
        let to = Destination {
            exchange: msg.exchange,
            routing_key: msg.routing_key,
            body: msg.body,
        };
        // Each attempt takes a copy: a re-send after a reconnect needs them again.
        let properties = msg.properties;
        self.send_with(to, || properties.clone()).await
    }

    /// Sends to `to` with the properties `properties()` makes, once per attempt.
    async fn send_with(
        &self,
        to: Destination<'_>,
        properties: impl FnMut() -> BasicProperties,
    ) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.inner.confirm_timeout;
        let result = self.send_until(&to, properties, started, deadline).await;
        if !self.inner.exchange.is_empty() && to.exchange == self.inner.exchange {
            match &result {
                Ok(()) => self.inner.metrics.confirmed(to.routing_key, started.elapsed()),
                Err(_) => crate::metrics::record_publish(to.routing_key, &result, started.elapsed()),
            }
        }
        result
    }

    async fn send_until(
        &self,
        to: &Destination<'_>,
        mut properties: impl FnMut() -> BasicProperties,
        started: std::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Result<(), PublishError> {
        let timeout = self.inner.confirm_timeout;
        // The confirm's deadline, shared with the publishes that started
        // about now (waiting for a connection keeps the exact `deadline`).
        let expiry = self.inner.expiries.around(started);
        // A receiver of our own only to wait for a (new) connection.
        let mut waiting: Option<watch::Receiver<Option<Arc<Link>>>> = None;
        loop {
            // Fast path: connected (no waiting, no timer).
            let current = self.inner.link.borrow().clone();
            let link = match current {
                Some(link) => link,
                None => match tokio::time::timeout_at(
                    deadline,
                    waiting
                        .get_or_insert_with(|| self.inner.link.clone())
                        .wait_for(Option::is_some),
                )
                .await
                {
                    Ok(Ok(link)) => link.clone().expect("waited for Some"),
                    Ok(Err(_)) => return Err(PublishError::ConnectionLost("publisher stopped".into())),
                    Err(_) => {
                        return Err(PublishError::ConnectionLost(format!(
                            "not connected to RabbitMQ for {timeout:?}"
                        )));
                    }
                },
            };
            let sent = tokio::select! {
                biased;
                sent = send_on(&link.channel, to, properties()) => sent,
                () = expiry.expired() => return Err(PublishError::Timeout(timeout)),
            };
            match sent {
                Err(PublishError::ConnectionLost(reason)) => {
                    if !self.inner.resend || self.inner._supervisor.is_none() {
                        return Err(PublishError::ConnectionLost(reason));
                    }
                    tracing::debug!(%reason, "connection lost before the confirm: sending again after reconnect");
                    // Wait for the supervisor to replace this link.
                    let link_rx = waiting.get_or_insert_with(|| self.inner.link.clone());
                    let _ = tokio::time::timeout_at(
                        deadline,
                        link_rx.wait_for(|l| l.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &link))),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }
}

/// Where a message goes, and its body.
struct Destination<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    body: &'a [u8],
}

async fn send_on(channel: &Channel, to: &Destination<'_>, properties: BasicProperties) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            to.exchange.into(),
            to.routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            to.body,
            properties,
        )
        .await
        .map_err(lost)?;
    match confirm.await.map_err(lost)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
            exchange: to.exchange.to_owned(),
            routing_key: to.routing_key.to_owned(),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked {
            routing_key: to.routing_key.to_owned(),
        }),
        Confirmation::NotRequested => Err(PublishError::Setup("publisher confirms are not enabled".into())),
    }
}

/// Handles of the confirmed-publish metrics of the known event types,
/// registered on first use (the recorder must be installed before the
/// publisher is made). One slot per entry of [`EVENT_TYPES`]: no lock on
/// the publish path. Other routing keys are looked up each time.
#[derive(Default)]
struct PublishMetrics {
    by_type: [std::sync::OnceLock<(metrics::Counter, metrics::Histogram)>; EVENT_TYPES.len()],
}

impl PublishMetrics {
    fn confirmed(&self, event_type: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let register = || {
            (
                metrics::counter!(crate::metrics::PUBLISHED_TOTAL, "event_type" => event_type.to_owned(), "outcome" => "confirmed"),
                metrics::histogram!(crate::metrics::PUBLISH_DURATION_SECONDS, "event_type" => event_type.to_owned()),
            )
        };
        let (count, time) = match EVENT_TYPES.iter().position(|t| t.name == event_type) {
            Some(i) => self.by_type[i].get_or_init(register),
            None => &register(),
        };
        count.increment(1);
        time.record(secs);
    }
}

/// Confirm deadlines at a coarse grain.
///
/// A timer of its own per publish was about a quarter of what warren spent
/// per event over a bare lapin loop (~1.2k of ~4.6k instructions): its entry
/// in tokio's timer wheel was registered and cleared again for every confirm
/// that arrived in time, which is nearly all of them. Publishes that start within the same
/// `grain` share one [`Expiry`] instead. It fires `grain` after the last of
/// them could have started plus the timeout, so a publish gives up between
/// `timeout` and `timeout + grain` after it started, never before.
struct Expiries {
    timeout: Duration,
    grain: Duration,
    current: std::sync::Mutex<Option<Arc<Expiry>>>,
}

/// One shared confirm deadline; see [`Expiries`].
struct Expiry {
    /// Start of the publishes that share it.
    opened: std::time::Instant,
    fired: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Expiries {
    /// The grain is a sixteenth of the timeout, and at most 250 ms.
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            grain: (timeout / 16).min(Duration::from_millis(250)),
            current: std::sync::Mutex::new(None),
        }
    }

    /// The expiry of a publish that started at `started`.
    fn around(&self, started: std::time::Instant) -> Arc<Expiry> {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(expiry) = current.as_ref()
            && started >= expiry.opened
            && started - expiry.opened < self.grain
        {
            return expiry.clone();
        }
        let expiry = Arc::new(Expiry {
            opened: started,
            fired: std::sync::atomic::AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
        });
        *current = Some(expiry.clone());
        drop(current);
        let at = tokio::time::Instant::from_std(started) + self.grain + self.timeout;
        let firing = expiry.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            firing.fired.store(true, std::sync::atomic::Ordering::Release);
            firing.notify.notify_waiters();
        });
        expiry
    }
}

impl Expiry {
    /// Resolves once the deadline has passed.
    async fn expired(&self) {
        // Made before the flag is read, the waiter cannot miss the wake-up.
        let notified = self.notify.notified();
        if self.fired.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Where the supervisor connects, and what it declares there.
struct Target {
    opts: ConnectOptions,
    topology: Topology,
}

impl Target {
    fn new(settings: &Settings, connection_name: &str) -> Self {
        Self {
            opts: ConnectOptions {
                url: settings.amqp.url.clone(),
                name: connection_name.to_owned(),
                heartbeat: settings.amqp.heartbeat,
            },
            topology: Topology::from_settings(settings),
        }
    }

    async fn open(&self) -> Result<Arc<Link>, PublishError> {
        let conn = Arc::new(
            amqp::connect(&self.opts)
                .await
                .map_err(|e| PublishError::Setup(e.to_string()))?,
        );
        let setup = conn.create_channel().await.map_err(setup_err)?;
        self.topology
            .declare_exchange(&setup)
            .await
            .map_err(|e| PublishError::Setup(e.to_string()))?;
        let _ = setup.close(200, "declared".into()).await;
        let channel = conn.create_channel().await.map_err(setup_err)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(setup_err)?;
        Ok(Arc::new(Link {
            channel,
            _connection: conn,
        }))
    }
}

/// Watches the live link; when it dies, clears it (publishes wait) and
/// reconnects with backoff.
async fn supervise(
    target: Target,
    mut link: Option<Arc<Link>>,
    tx: watch::Sender<Option<Arc<Link>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff = crate::consumer::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        if let Some(live) = &link {
            metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "publisher").set(1.0);
            let cause = tokio::select! {
                () = stop.cancelled() => return,
                cause = watch_link(live) => cause,
            };
            let _ = tx.send(None);
            tracing::warn!(%cause, "publisher lost its connection to RabbitMQ; reconnecting");
        }
        metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "publisher").set(0.0);
        link = loop {
            match target.open().await {
                Ok(new) => {
                    let _ = tx.send(Some(new.clone()));
                    backoff.reset();
                    tracing::info!("publisher connected to RabbitMQ");
                    break Some(new);
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "publisher cannot connect yet");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
    }
}

/// Resolves when the link is dead; logs flow control on the way.
async fn watch_link(link: &Link) -> String {
    use futures_util::StreamExt;
    let mut events = link._connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    metrics::gauge!(crate::metrics::BROKER_BLOCKED).set(1.0);
                    tracing::warn!(%reason, "RabbitMQ blocked publishing (resource alarm): publishes wait up to their timeout");
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    metrics::gauge!(crate::metrics::BROKER_BLOCKED).set(0.0);
                    tracing::info!("RabbitMQ unblocked publishing");
                }
                Some(lapin::Event::Error(e)) => return amqp::describe(&e),
                Some(_) => {}
                None => return "connection dropped".into(),
            },
            _ = tick.tick() => {
                if !link.channel.status().connected() {
                    return "channel closed".into();
                }
            }
        }
    }
}

/// The AMQP properties every event carries (DESIGN: wire contract).
#[must_use]
pub fn event_properties(
    event_id: Uuid,
    event_type: &str,
    timestamp: chrono::DateTime<chrono::Utc>,
    source: &str,
    traceparent: Option<&str>,
) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(
            &*event_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        ))
        .with_type(event_type.into())
        .with_timestamp(u64::try_from(timestamp.timestamp()).unwrap_or(0))
        .with_app_id(crate::event::truncate(source, 255).into());
    if let Some(tp) = traceparent {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        props = props.with_headers(headers);
    }
    props
}

fn setup_err(e: lapin::Error) -> PublishError {
    PublishError::Setup(format!("opening a channel: {}", amqp::describe(&e)))
}

fn lost(e: lapin::Error) -> PublishError {
    PublishError::ConnectionLost(amqp::describe(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_within_a_grain_share_an_expiry_and_later_ones_get_their_own() {
        let expiries = Expiries::new(Duration::from_millis(1600));
        assert_eq!(expiries.grain, Duration::from_millis(100));
        let t0 = std::time::Instant::now();
        let first = expiries.around(t0);
        assert!(Arc::ptr_eq(&first, &expiries.around(t0 + Duration::from_millis(99))));
        let next = expiries.around(t0 + Duration::from_millis(100));
        assert!(!Arc::ptr_eq(&first, &next));
        // A start before the current expiry's (a clock read earlier by a
        // slower task) gets one of its own, so it never fires late.
        assert!(!Arc::ptr_eq(&next, &expiries.around(t0)));
        assert_eq!(Expiries::new(Duration::from_secs(60)).grain, Duration::from_millis(250));
    }

    #[tokio::test]
    async fn an_expiry_fires_after_the_timeout_and_its_grain_never_before() {
        let timeout = Duration::from_millis(320);
        let expiries = Expiries::new(timeout);
        let started = std::time::Instant::now();
        let expiry = expiries.around(started);
        // Waiting before and after it fired both resolve.
        let early = expiry.expired();
        tokio::time::timeout(Duration::from_secs(10), early)
            .await
            .expect("fires");
        let waited = started.elapsed();
        assert!(waited >= timeout + expiries.grain, "fired after {waited:?}");
        tokio::time::timeout(Duration::from_millis(100), expiry.expired())
            .await
            .expect("already fired: resolves at once");
    }
}
