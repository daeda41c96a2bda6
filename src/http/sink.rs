//! Where the ingress sends accepted events: the [`EventSink`] trait, and its
//! implementation for the confirmed [`Publisher`].

use futures_util::future::BoxFuture;

use crate::event::RawEnvelope;
use crate::publisher::{PublishError, Publisher};
use crate::refusal::Refusal;

/// A destination for validated events. The ingress answers 202 only after
/// [`EventSink::publish`] returned `Ok`.
///
/// Implemented for [`Publisher`]; tests use a recording fake.
pub trait EventSink: Send + Sync + 'static {
    /// Publishes one validated envelope and resolves once it is stored (for
    /// the broker: confirmed and routed).
    ///
    /// # Errors
    ///
    /// A [`PublishError`] saying why it is not stored.
    fn publish<'a>(&'a self, env: &'a RawEnvelope) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Whether publishing can currently succeed (`/readyz`; a request gets 503
    /// without trying when it is `false`).
    fn is_ready(&self) -> bool;

    /// The permission the broker refused, when that is why publishing
    /// fails: the 503 then names it instead of blaming the network.
    fn refusal(&self) -> Option<Refusal> {
        None
    }
}

impl EventSink for Publisher {
    /// [`Publisher::publish_raw`] (which records `warren_published_total`
    /// and `warren_publish_duration_seconds`).
    fn publish<'a>(&'a self, env: &'a RawEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.publish_raw(env))
    }

    fn is_ready(&self) -> bool {
        self.is_connected()
    }

    fn refusal(&self) -> Option<Refusal> {
        Publisher::refusal(self)
    }
}
