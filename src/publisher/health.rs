//! What a publisher's supervisor knows besides its link: whether it gave up
//! for good, and why.

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use super::error::PublishError;

/// Shared by the supervisor (which writes it) and every clone of the publisher.
#[derive(Default)]
pub(super) struct Health {
    /// Cancelled when the supervisor gave up; `fatal` then holds why.
    gave_up: CancellationToken,
    fatal: OnceLock<PublishError>,
}

impl Health {
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
