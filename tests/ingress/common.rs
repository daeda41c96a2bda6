//! What the router tests share: the seed payloads, a recording fake sink,
//! and request helpers.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures_util::future::BoxFuture;
use serde_json::Value;
use tower::ServiceExt;
use warren::config::IngressSettings;
use warren::event::RawEnvelope;
use warren::http::{AppState, EventSink, router};
use warren::{PublishError, Settings};

/// The payloads the Django service sends today, byte for byte (no event_id).
pub(crate) const SEED_REGISTERED: &str = include_str!("../fixtures/seed_user_registered.json");
pub(crate) const SEED_LOGIN: &str = include_str!("../fixtures/seed_user_login.json");

/// Which events a [`Fake`] fails, and how.
pub(crate) type FailWith = fn(&RawEnvelope) -> Option<PublishError>;

/// A sink that records what it published, and can be told to be down, to
/// hang, or to fail some events.
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) published: Mutex<Vec<RawEnvelope>>,
    pub(crate) down: bool,
    pub(crate) hang: bool,
    pub(crate) fail: Option<FailWith>,
}

impl Fake {
    pub(crate) fn published(&self) -> Vec<RawEnvelope> {
        self.published.lock().unwrap().clone()
    }

    pub(crate) fn failing(fail: FailWith) -> Self {
        Self {
            fail: Some(fail),
            ..Self::default()
        }
    }
}

impl EventSink for Fake {
    fn publish<'a>(&'a self, env: &'a RawEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            if self.hang {
                std::future::pending::<()>().await;
            }
            if let Some(err) = self.fail.and_then(|f| f(env)) {
                return Err(err);
            }
            self.published.lock().unwrap().push(env.clone());
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        !self.down
    }
}

pub(crate) fn app_with(fake: &Arc<Fake>, tweak: impl FnOnce(&mut IngressSettings)) -> Router {
    let mut settings = Settings::default().ingress;
    tweak(&mut settings);
    router(AppState::new(fake.clone(), &settings))
}

pub(crate) fn app(fake: &Arc<Fake>) -> Router {
    app_with(fake, |_| {})
}

pub(crate) fn post(path: &str, body: impl Into<String>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.into()))
        .unwrap()
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

pub(crate) async fn call(app: Router, req: Request<Body>) -> Answer {
    let res = app.oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer { status, headers, body }
}

/// Asserts a JSON error with `status` and `code`, and that nothing was published.
pub(crate) fn assert_error(a: &Answer, status: StatusCode, code: &str, fake: &Fake) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["error"]["code"], code, "{}", a.body);
    assert!(
        a.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/json", "errors are JSON");
    assert!(fake.published().is_empty(), "nothing may be published");
}
