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
/// `timestamp`, `source`, `user_id`, `attempt`, `data`): `warren consume
/// --handler log`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogHandler;

/// The fields of a [`LogHandler`] line, in this order: the envelope as it
/// travels (its timestamp written as published), plus the attempt.
#[derive(serde::Serialize)]
struct Line<'a, E> {
    event_id: uuid::Uuid,
    event_type: &'a str,
    #[serde(serialize_with = "crate::event::timestamp::serialize")]
    timestamp: chrono::DateTime<chrono::Utc>,
    source: &'a str,
    user_id: i64,
    attempt: u32,
    data: &'a E,
}

impl LogHandler {
    /// The JSON line for an event.
    #[must_use]
    pub fn line<E: Event>(event: &Envelope<E>, ctx: &Context) -> String {
        let line = Line {
            event_id: event.event_id,
            event_type: &event.event_type,
            timestamp: event.timestamp,
            source: &event.source,
            user_id: event.user_id,
            attempt: ctx.attempt,
            data: &event.data,
        };
        serde_json::to_string(&line).expect("an event serializes")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::UserRegistered;

    #[test]
    fn the_log_line_carries_the_whole_envelope_and_the_attempt() {
        let body = br#"{"event_id":"01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a","event_type":"user.registered",
            "timestamp":"2025-01-20T10:30:00Z","source":"django-backend","user_id":123,
            "data":{"user_id":123,"username":"john_doe","email":"john@example.com",
            "registration_timestamp":"2025-01-20T10:30:00Z"}}"#;
        let event: Envelope<UserRegistered> = serde_json::from_slice(body).unwrap();
        let ctx = Context {
            attempt: 2,
            queue: "s.user.registered".into(),
            redelivered: false,
        };
        let line: serde_json::Value = serde_json::from_str(&LogHandler::line(&event, &ctx)).unwrap();
        assert_eq!(line["event_id"], "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a");
        assert_eq!(line["event_type"], "user.registered");
        assert_eq!(line["timestamp"], "2025-01-20T10:30:00Z");
        assert_eq!(line["source"], "django-backend");
        assert_eq!(line["user_id"], 123);
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["data"]["username"], "john_doe");
    }
}
