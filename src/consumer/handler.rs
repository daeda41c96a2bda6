//! Typed handlers: what a consumer service runs for each event.

use std::fmt;
use std::future::Future;
use std::io::Write;

use crate::event::{Envelope, Event};

/// Why a handler did not finish. Whether a failure is worth retrying is
/// decided here, once: the retry policy only reads this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (a dependency was down, a timeout): goes to the next retry tier.
    #[error("{0}")]
    Transient(String),
    /// Will never succeed (the event makes no sense to this service): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    /// A transient failure from any error.
    pub fn transient(e: impl fmt::Display) -> Self {
        Self::Transient(e.to_string())
    }

    /// A permanent failure from any error.
    pub fn permanent(e: impl fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

/// What a handler knows about the delivery besides the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// 1 for the first delivery, 2 for the first retry, …
    pub attempt: u32,
    /// The work queue the event came from.
    pub queue: std::sync::Arc<str>,
    /// The broker redelivered it (an earlier consumer died holding it).
    pub redelivered: bool,
}

/// Handles one event type. Closures `Fn(Envelope<E>, Context) -> impl Future`
/// are handlers too.
pub trait Handler<E: Event>: Send + Sync + 'static {
    /// Handles one event; `Ok` acks it.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Transient`] to retry later, [`HandlerError::Permanent`]
    /// to dead-letter it.
    fn handle(&self, event: Envelope<E>, ctx: Context) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<E, F, Fut> Handler<E> for F
where
    E: Event,
    F: Fn(Envelope<E>, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, event: Envelope<E>, ctx: Context) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(event, ctx)
    }
}

/// A handler for every event type at once (logging, forwarding): register
/// it with [`Consumer::on_all`](super::Consumer::on_all).
pub trait AnyEventHandler: Clone + Send + Sync + 'static {
    /// Handles one event of any type.
    ///
    /// # Errors
    ///
    /// As [`Handler::handle`].
    fn handle_any<E: Event>(
        &self,
        event: Envelope<E>,
        ctx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// An [`AnyEventHandler`] as the [`Handler`] of one type.
#[derive(Debug, Clone)]
pub(crate) struct ForAll<H>(pub H);

impl<E: Event, H: AnyEventHandler> Handler<E> for ForAll<H> {
    fn handle(&self, event: Envelope<E>, ctx: Context) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self.0.handle_any(event, ctx)
    }
}

/// Writes each event as one JSON line on stdout (`event_id`, `event_type`,
/// `user_id`, `attempt`, `data`): `warren consume --handler log`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogHandler;

impl LogHandler {
    /// The JSON line for an event.
    #[must_use]
    pub fn line<E: Event>(event: &Envelope<E>, ctx: &Context) -> String {
        serde_json::json!({
            "event_id": event.event_id,
            "event_type": event.event_type,
            "user_id": event.user_id,
            "attempt": ctx.attempt,
            "data": event.data,
        })
        .to_string()
    }
}

impl AnyEventHandler for LogHandler {
    async fn handle_any<E: Event>(&self, event: Envelope<E>, ctx: Context) -> Result<(), HandlerError> {
        let mut line = Self::line(&event, &ctx);
        line.push('\n');
        // A closed stdout is worth a retry, not a lost event.
        std::io::stdout()
            .lock()
            .write_all(line.as_bytes())
            .map_err(HandlerError::transient)
    }
}
