//! Type erasure: a typed handler behind a `dyn Route` that takes raw bodies.

use std::any::Any;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::handler::{AnyEventHandler, Context, ForAll, Handler, HandlerError};
use crate::event::{DeadReason, DecodeError, Envelope, Event};

/// How processing one body ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The handler ran (or panicked, which is a transient error).
    Handled(Result<(), HandlerError>),
    /// The body never reached the handler.
    Undecodable(DeadReason, String),
}

/// A handler for one event type, fed raw bodies.
pub(crate) trait Route: Send + Sync + 'static {
    /// The event type (and routing key) this route handles.
    fn event_type(&self) -> &'static str;
    /// Decodes, validates and handles one body.
    fn process<'a>(&'a self, body: &'a [u8], ctx: Context) -> BoxFuture<'a, Outcome>;
}

/// A typed handler as a [`Route`].
pub(crate) struct Typed<E, H> {
    handler: H,
    _event: PhantomData<fn() -> E>,
}

impl<E, H> Typed<E, H> {
    pub(crate) fn new(handler: H) -> Self {
        Self {
            handler,
            _event: PhantomData,
        }
    }
}

impl<E: Event, H: Handler<E>> Route for Typed<E, H> {
    fn event_type(&self) -> &'static str {
        E::TYPE
    }

    fn process<'a>(&'a self, body: &'a [u8], ctx: Context) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let event = match Envelope::<E>::from_slice(body) {
                Ok(e) => e,
                Err(e) => return undecodable::<E>(body, e),
            };
            match AssertUnwindSafe(self.handler.handle(event, ctx)).catch_unwind().await {
                Ok(result) => Outcome::Handled(result),
                Err(panic) => Outcome::Handled(Err(HandlerError::Transient(format!(
                    "handler panicked: {}",
                    panic_message(panic.as_ref())
                )))),
            }
        })
    }
}

fn undecodable<E: Event>(body: &[u8], e: DecodeError) -> Outcome {
    match e {
        DecodeError::Malformed(m) => Outcome::Undecodable(DeadReason::Malformed, format!("malformed JSON: {m}")),
        DecodeError::UnknownType(t) => Outcome::Undecodable(DeadReason::Unhandled, format!("unknown event_type {t:?}")),
        DecodeError::Invalid(v) => {
            // Another type in this queue is "unhandled", whatever else is wrong with it.
            #[derive(serde::Deserialize)]
            struct TypeOnly {
                event_type: String,
            }
            match serde_json::from_slice::<TypeOnly>(body) {
                Ok(t) if t.event_type != E::TYPE => Outcome::Undecodable(
                    DeadReason::Unhandled,
                    format!(
                        "event_type {:?} is not handled on the {} queue",
                        crate::event::truncate(&t.event_type, 128),
                        E::TYPE
                    ),
                ),
                _ => Outcome::Undecodable(DeadReason::Invalid, v.to_string()),
            }
        }
    }
}

/// The route of `handler` for the event type named `event_type`, if warren knows it.
pub(crate) fn route_for<H: AnyEventHandler>(event_type: &str, handler: H) -> Option<Arc<dyn Route>> {
    macro_rules! pick {
        ($($t:ty),*) => {
            $(
                if event_type == <$t as Event>::TYPE {
                    return Some(Arc::new(Typed::<$t, _>::new(ForAll(handler))));
                }
            )*
        };
    }
    crate::for_each_event_type!(pick);
    None
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::UserRegistered;

    fn ctx() -> Context {
        Context {
            attempt: 1,
            queue: "q".into(),
            redelivered: false,
        }
    }

    const REGISTERED: &str = r#"{"event_type":"user.registered","source":"s","user_id":1,
        "data":{"user_id":1,"username":"a","email":"a@b.co","registration_timestamp":"2025-01-20T10:30:00Z"}}"#;

    fn route<H: Handler<UserRegistered>>(h: H) -> Typed<UserRegistered, H> {
        Typed::new(h)
    }

    #[tokio::test]
    async fn handler_result_passes_through() {
        let ok = route(|_e: Envelope<UserRegistered>, _c: Context| async { Ok(()) });
        assert!(matches!(
            ok.process(REGISTERED.as_bytes(), ctx()).await,
            Outcome::Handled(Ok(()))
        ));
        let fail = route(|_e: Envelope<UserRegistered>, _c: Context| async { Err(HandlerError::permanent("no")) });
        assert!(matches!(
            fail.process(REGISTERED.as_bytes(), ctx()).await,
            Outcome::Handled(Err(HandlerError::Permanent(_)))
        ));
    }

    #[tokio::test]
    async fn a_panic_is_a_transient_error_with_its_message() {
        let r = route(|_e: Envelope<UserRegistered>, _c: Context| async { panic!("kaboom") });
        match r.process(REGISTERED.as_bytes(), ctx()).await {
            Outcome::Handled(Err(HandlerError::Transient(m))) => {
                assert!(m.contains("kaboom"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bodies_that_never_reach_the_handler_are_classified() {
        let r = route(|_e: Envelope<UserRegistered>, _c: Context| async { panic!("must not run") });
        let reason = |body: &'static str| {
            let r = &r;
            async move {
                match r.process(body.as_bytes(), ctx()).await {
                    Outcome::Undecodable(reason, _) => reason,
                    other => panic!("{other:?}"),
                }
            }
        };
        assert_eq!(reason("not json").await, DeadReason::Malformed);
        assert_eq!(reason(r#"{"event_type":"user.registered"}"#).await, DeadReason::Invalid);
        let login = REGISTERED.replace("user.registered", "user.login");
        let login: &'static str = Box::leak(login.into_boxed_str());
        assert_eq!(reason(login).await, DeadReason::Unhandled);
    }
}
