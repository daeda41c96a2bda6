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
use uuid::Uuid;

use crate::amqp::{self, ConnectOptions};
use crate::config::Settings;
use crate::event::{Envelope, Event, RawEnvelope};
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
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    // Held so the channel stays open as long as the publisher lives.
    _connection: Option<Arc<Connection>>,
    channel: Channel,
    exchange: String,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Connects, opens a confirm channel and declares the events exchange.
    ///
    /// # Errors
    ///
    /// [`PublishError::Setup`] naming the cause (URL redacted).
    pub async fn connect(settings: &Settings, connection_name: &str) -> Result<Self, PublishError> {
        let opts = ConnectOptions {
            url: settings.amqp.url.clone(),
            name: connection_name.to_owned(),
            heartbeat: settings.amqp.heartbeat,
        };
        let conn = Arc::new(
            amqp::connect(&opts)
                .await
                .map_err(|e| PublishError::Setup(e.to_string()))?,
        );
        let topology = Topology::from_settings(settings);
        let setup = conn.create_channel().await.map_err(setup_err)?;
        topology
            .declare_exchange(&setup)
            .await
            .map_err(|e| PublishError::Setup(e.to_string()))?;
        let _ = setup.close(200, "declared".into()).await;
        Self::on_connection(conn, &topology.exchange, settings.publisher.confirm_timeout).await
    }

    /// A publisher on a new channel of an existing connection.
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
        Ok(Self {
            inner: Arc::new(Inner {
                _connection: Some(conn),
                channel,
                exchange: exchange.to_owned(),
                confirm_timeout,
            }),
        })
    }

    /// The events exchange this publisher sends to.
    #[must_use]
    pub fn exchange(&self) -> &str {
        &self.inner.exchange
    }

    /// Whether the channel is still open.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.inner.channel.status().connected()
    }

    /// Publishes a typed event and waits for the broker's confirm.
    ///
    /// # Errors
    ///
    /// See [`PublishError`].
    pub async fn publish<E: Event>(&self, envelope: &Envelope<E>) -> Result<(), PublishError> {
        let body = serde_json::to_vec(envelope).map_err(|e| PublishError::Serialize(e.to_string()))?;
        self.publish_encoded(
            &body,
            envelope.event_id,
            &envelope.event_type,
            envelope.timestamp,
            &envelope.source,
        )
        .await
    }

    /// Publishes an already validated untyped envelope (the ingress and CLI path).
    ///
    /// # Errors
    ///
    /// See [`PublishError`].
    pub async fn publish_raw(&self, envelope: &RawEnvelope) -> Result<(), PublishError> {
        let body = serde_json::to_vec(envelope).map_err(|e| PublishError::Serialize(e.to_string()))?;
        self.publish_encoded(
            &body,
            envelope.event_id,
            &envelope.event_type,
            envelope.timestamp,
            &envelope.source,
        )
        .await
    }

    /// Publishes many events with their confirms in flight together; one
    /// result per event, in order.
    pub async fn publish_batch<E: Event>(&self, envelopes: &[Envelope<E>]) -> Vec<Result<(), PublishError>> {
        join_all(envelopes.iter().map(|e| self.publish(e))).await
    }

    async fn publish_encoded(
        &self,
        body: &[u8],
        event_id: Uuid,
        event_type: &str,
        timestamp: chrono::DateTime<chrono::Utc>,
        source: &str,
    ) -> Result<(), PublishError> {
        let properties = event_properties(event_id, event_type, timestamp, source, None);
        self.send(Message {
            exchange: &self.inner.exchange,
            routing_key: event_type,
            body,
            properties,
        })
        .await
    }

    /// Publishes any message (mandatory, with confirm) and waits for the confirm.
    ///
    /// # Errors
    ///
    /// See [`PublishError`].
    pub async fn send(&self, msg: Message<'_>) -> Result<(), PublishError> {
        let timeout = self.inner.confirm_timeout;
        tokio::time::timeout(timeout, self.send_inner(&msg))
            .await
            .map_err(|_| PublishError::Timeout(timeout))?
    }

    async fn send_inner(&self, msg: &Message<'_>) -> Result<(), PublishError> {
        let confirm = self
            .inner
            .channel
            .basic_publish(
                msg.exchange.into(),
                msg.routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                msg.body,
                msg.properties.clone(),
            )
            .await
            .map_err(lost)?;
        match confirm.await.map_err(lost)? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: msg.exchange.to_owned(),
                routing_key: msg.routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                routing_key: msg.routing_key.to_owned(),
            }),
            Confirmation::NotRequested => Err(PublishError::Setup("publisher confirms are not enabled".into())),
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
        .with_message_id(ShortString::from(event_id.to_string()))
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
