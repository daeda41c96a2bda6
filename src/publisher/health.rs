//! What a publisher's supervisor knows besides its link: the permission
//! RabbitMQ refused it, whether it gave up for good, and why.

use std::sync::{Mutex, OnceLock, PoisonError};

use tokio_util::sync::CancellationToken;

use super::error::PublishError;
use crate::refusal::Refusal;

/// Shared by the supervisor and every clone of the publisher.
#[derive(Default)]
pub(super) struct Health {
    /// The permission RabbitMQ last refused, until the next (re)connection.
    refused: Mutex<Option<Refusal>>,
    /// Cancelled when the supervisor gave up; `fatal` then holds why.
    gave_up: CancellationToken,
    fatal: OnceLock<PublishError>,
}

impl Health {
    /// RabbitMQ refused `refusal`: that, not the network, is why publishing fails.
    pub(super) fn refused(&self, refusal: &Refusal) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(refusal.clone());
    }

    /// A new link is up: whatever was refused may be granted now.
    pub(super) fn connected(&self) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The permission RabbitMQ last refused, since the last (re)connection.
    pub(super) fn refusal(&self) -> Option<Refusal> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The supervisor stops for good because of `error`.
    pub(super) fn give_up(&self, error: PublishError) {
        let _ = self.fatal.set(error);
        self.gave_up.cancel();
    }

    /// Why the supervisor gave up, if it did.
    pub(super) fn fatal(&self) -> Option<PublishError> {
        self.fatal.get().cloned()
    }

    /// Resolves once the supervisor gave up, with why.
    pub(super) async fn failed(&self) -> PublishError {
        self.gave_up.cancelled().await;
        self.fatal().expect("set before the token is cancelled")
    }
}
