//! What wraps the ingress's handlers: the loop and bearer-token checks
//! (extractors of the `/events` routes) and [`ObserveLayer`] (request
//! deadline and request metrics, around every route).
//!
//! Both run on every request, so they avoid per-request work that
//! `axum::middleware::from_fn` would add (a boxed clone of the inner
//! service per layer) and metric look-ups (handles are kept per route and
//! status).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram, counter, histogram};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use super::AppState;
use super::error::ApiError;
use crate::event::{FORWARDED_HEADER, truncate};
use crate::metrics::{INGRESS_REQUEST_DURATION_SECONDS, INGRESS_REQUESTS_TOTAL};

/// Extracting it rejects the request with 508 when it carries
/// [`FORWARDED_HEADER`]: warren's webhook sent it, and it came back into an
/// ingress (`webhook.url` leads back into warren, through a proxy say).
/// Publishing it again would forward it again, without end. Listed first, it
/// runs before the token check and the body.
pub(crate) struct NotForwarded;

impl<S: Sync> FromRequestParts<S> for NotForwarded {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(FORWARDED_HEADER) else {
            return Ok(Self);
        };
        let event_id = String::from_utf8_lossy(value.as_bytes());
        tracing::warn!(
            event_id = truncate(&event_id, 64),
            "refused an event that warren's webhook forwarded: webhook.url leads back into a warren ingress"
        );
        Err(ApiError::forwarding_loop(&event_id))
    }
}

/// Extracting it rejects the request with 401 unless it carries
/// `Authorization: Bearer <ingress.token>` (when a token is configured).
/// Listed before the body, it runs before the body is read.
pub(crate) struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(expected) = state.settings().token.as_deref() else {
            return Ok(Self);
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        match given {
            Some(token) if token_matches(token, expected.as_bytes()) => Ok(Self),
            Some(_) => Err(ApiError::unauthorized(true)),
            None => Err(ApiError::unauthorized(false)),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme
/// case-insensitive, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares in time that depends only on the expected token's length, not on
/// where the given one differs.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let mut same = (given.len() as u64).ct_eq(&(expected.len() as u64));
    for (i, e) in expected.iter().enumerate() {
        same &= given.get(i).copied().unwrap_or(0).ct_eq(e);
    }
    same.into()
}

/// Wraps every route: answers 503 + `Retry-After` when the request is not
/// done within `ingress.request_timeout` (so a stuck broker cannot hold
/// connections), then counts the answer in
/// `warren_ingress_requests_total{route,status}` and times it in
/// `warren_ingress_request_duration_seconds{route}`. `route` is the route's
/// pattern (`/events`), or `unmatched`, never the raw path.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    state: AppState,
}

impl ObserveLayer {
    pub(crate) fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(Route::Unmatched, |p| Route::of(p.as_str()));
        let start = Instant::now();
        let state = self.state.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let limit = state.settings().request_timeout;
            let res = match tokio::time::timeout(limit, answer).await {
                Ok(Ok(res)) => res,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::warn!(route = route.label(), timeout = ?limit, "request timed out");
                    ApiError::timeout().into_response()
                }
            };
            state
                .request_metrics()
                .record(route, res.status(), start.elapsed().as_secs_f64());
            Ok(res)
        })
    }
}

/// The `route` label: the known routes, anything else the router matched,
/// or nothing matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Events,
    EventsBatch,
    Healthz,
    Readyz,
    Metrics,
    Other,
    Unmatched,
}

impl Route {
    const COUNT: usize = 7;

    fn of(pattern: &str) -> Self {
        match pattern {
            "/events" => Self::Events,
            "/events/batch" => Self::EventsBatch,
            "/healthz" => Self::Healthz,
            "/readyz" => Self::Readyz,
            "/metrics" => Self::Metrics,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Events => "/events",
            Self::EventsBatch => "/events/batch",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::Metrics => "/metrics",
            Self::Other => "other",
            Self::Unmatched => "unmatched",
        }
    }
}

/// The statuses the ingress answers with (others are counted too, through
/// a slower look-up).
const STATUSES: [u16; 13] = [200, 202, 207, 400, 401, 404, 405, 413, 415, 422, 500, 503, 508];

/// Handles of the request metrics, registered with the installed recorder
/// on first use.
#[derive(Default)]
pub(crate) struct RequestMetrics {
    counts: [[OnceLock<Counter>; STATUSES.len()]; Route::COUNT],
    durations: [OnceLock<Histogram>; Route::COUNT],
}

impl RequestMetrics {
    fn record(&self, route: Route, status: StatusCode, secs: f64) {
        let label = route.label();
        let r = route as usize;
        match STATUSES.iter().position(|&s| s == status.as_u16()) {
            Some(s) => self.counts[r][s]
                .get_or_init(
                    || counter!(INGRESS_REQUESTS_TOTAL, "route" => label, "status" => status.as_str().to_owned()),
                )
                .increment(1),
            None => {
                counter!(INGRESS_REQUESTS_TOTAL, "route" => label, "status" => status.as_str().to_owned()).increment(1)
            }
        }
        self.durations[r]
            .get_or_init(|| histogram!(INGRESS_REQUEST_DURATION_SECONDS, "route" => label))
            .record(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bear"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cres", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"s3cret!", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
        assert!(!token_matches(b"s3cret\0", b"s3cret"));
    }

    #[test]
    fn routes_and_labels() {
        for (pattern, label) in [
            ("/events", "/events"),
            ("/events/batch", "/events/batch"),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/metrics", "/metrics"),
            ("/{anything}", "other"),
        ] {
            assert_eq!(Route::of(pattern).label(), label);
        }
        assert_eq!(Route::Unmatched.label(), "unmatched");
        assert_eq!(Route::Unmatched as usize + 1, Route::COUNT);
    }
}
