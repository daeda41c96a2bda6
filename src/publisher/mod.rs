//! Confirmed, mandatory, persistent publishing.
//!
//! A [`Publisher`] is cheap to clone and safe to share: every task that
//! publishes through it has its own confirm in flight, so N concurrent
//! publishers cost one round trip together, not N. A publish returns `Ok`
//! only once the broker has confirmed it *and* routed it to at least one
//! queue; everything else is a distinct [`PublishError`].
//!
//! One concern per file: the public API here, the publish path in `send`,
//! the connection's supervision in `supervisor`, the shared confirm
//! deadlines in `expiry`, errors and metrics. The AMQP properties an event
//! carries are the wire format's, in [`crate::event::properties`].

use std::sync::Arc;
use std::time::Duration;

mod channel;
mod error;
mod expiry;
mod health;
mod metrics;
mod send;
mod supervisor;

use futures_util::future::join_all;
use lapin::{BasicProperties, Connection};
use tokio::sync::watch;

use channel::{confirm_channel, supervise_channel};
pub use error::PublishError;
use expiry::Expiries;
use health::Health;
use metrics::PublishMetrics;
pub use metrics::outcome as metric_outcome;
use send::Destination;
use supervisor::{Link, Target, supervise};

use crate::config::Settings;
use crate::event::properties::event_properties;
use crate::event::{Envelope, Event, RawEnvelope};
use crate::refusal::Refusal;

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
    health: Arc<Health>,
    // Cancelled (stopping the supervisor) when the last clone is dropped.
    _supervisor: Option<tokio_util::sync::DropGuard>,
}

impl Publisher {
    /// Connects, opens a confirm channel, declares the events exchange (or,
    /// with `topology.declare = false`, checks that it exists), and
    /// keeps the connection up from then on. The connection is named
    /// `<amqp.connection_name> <role>` in the management console.
    ///
    /// # Errors
    ///
    /// [`PublishError::Setup`] naming the cause (URL redacted) when the first
    /// connection fails.
    pub async fn connect(settings: &Settings, role: &str) -> Result<Self, PublishError> {
        let target = Target::new(settings, role);
        let first = target.open().await.map_err(|e| e.error)?;
        Ok(Self::supervised(settings, target, Some(first)))
    }

    /// A publisher that connects in the background and keeps retrying until
    /// it can: for services that must start (and answer "not ready") while
    /// the broker is still down. Publishes wait for the connection until
    /// their deadline. If the broker refuses the login or the vhost before
    /// the first connection, it gives up: see [`Publisher::failed`].
    #[must_use]
    pub fn start(settings: &Settings, role: &str) -> Self {
        Self::supervised(settings, Target::new(settings, role), None)
    }

    fn supervised(settings: &Settings, target: Target, first: Option<Arc<Link>>) -> Self {
        let (tx, rx) = watch::channel(first.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let health = Arc::new(Health::default());
        tokio::spawn(supervise(target, first, tx, health.clone(), stop.clone()));
        Self {
            inner: Arc::new(Inner {
                link: rx,
                exchange: settings.topology.exchange.clone(),
                confirm_timeout: settings.publisher.confirm_timeout,
                expiries: Expiries::new(settings.publisher.confirm_timeout),
                resend: settings.publisher.resend_on_reconnect,
                metrics: PublishMetrics::default(),
                health,
                _supervisor: Some(stop.drop_guard()),
            }),
        }
    }

    /// A publisher on a new channel of an existing connection. It reopens
    /// its channel, with backoff, when the broker closes it (a refused
    /// permission, a precondition) and stops when the connection is gone:
    /// whoever owns the connection restarts it.
    ///
    /// # Errors
    ///
    /// [`PublishError::Setup`] when the channel cannot be opened.
    pub async fn on_connection(
        conn: Arc<Connection>,
        exchange: &str,
        confirm_timeout: Duration,
    ) -> Result<Self, PublishError> {
        let link = confirm_channel(&conn).await?;
        let (tx, rx) = watch::channel(Some(link.clone()));
        let stop = tokio_util::sync::CancellationToken::new();
        let health = Arc::new(Health::default());
        tokio::spawn(supervise_channel(link, tx, health.clone(), stop.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                link: rx,
                exchange: exchange.to_owned(),
                confirm_timeout,
                expiries: Expiries::new(confirm_timeout),
                resend: false,
                metrics: PublishMetrics::default(),
                health,
                _supervisor: Some(stop.drop_guard()),
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

    /// The permission RabbitMQ refused this publisher (to declare the
    /// exchange, or to publish to it) since it last (re)connected: why it
    /// cannot publish, when that is why. `None` when nothing was refused.
    #[must_use]
    pub fn refusal(&self) -> Option<Refusal> {
        self.inner.health.refusal()
    }

    /// Resolves when a publisher made with [`Publisher::start`] has given up
    /// for good: RabbitMQ refused its login or vhost before it ever
    /// connected. Never resolves otherwise. A service ends on it.
    pub async fn failed(&self) -> PublishError {
        self.inner.health.failed().await
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
        // Room for a usual event: `to_vec` would start at 128 bytes and
        // grow twice on the way to ~300.
        let mut body = Vec::with_capacity(512);
        serde_json::to_writer(&mut body, envelope).map_err(|e| PublishError::Serialize(e.to_string()))?;
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
}
