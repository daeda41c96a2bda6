//! Why a publish failed, as one error type for every publish path.

use std::time::Duration;

use crate::amqp;
use crate::refusal::{Permission, Refusal};

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
    /// RabbitMQ refused warren's user the write permission on the exchange:
    /// nothing was published. (A refused declare fails the connection
    /// instead; [`crate::Publisher::refusal`] names it.) Boxed: the error
    /// stays small for the `Ok` path.
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// Connecting or preparing the channel failed.
    #[error("{0}")]
    Setup(String),
    /// The event could not be serialized (a bug in a custom `Event`).
    #[error("cannot serialize event: {0}")]
    Serialize(String),
}

/// A channel could not be opened or set up.
pub(super) fn setup_err(e: lapin::Error) -> PublishError {
    PublishError::Setup(format!("opening a channel: {}", amqp::describe(&e)))
}

/// The channel or connection died under a publish.
pub(super) fn lost(e: lapin::Error) -> PublishError {
    PublishError::ConnectionLost(amqp::describe(&e))
}

/// A publish failed: refused (the broker closed the channel for want of
/// the write permission), or lost.
pub(super) fn publish_failed(e: lapin::Error) -> PublishError {
    match Refusal::from_error(&e, |_| &[Permission::Write]) {
        Some(refusal) => PublishError::Refused(Box::new(refusal)),
        None => lost(e),
    }
}
