//! Request middleware of the ingress: bearer-token check, request deadline
//! and the request metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{counter, histogram};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::metrics::{INGRESS_REQUEST_DURATION_SECONDS, INGRESS_REQUESTS_TOTAL};

/// Rejects the request with 401 unless it carries `Authorization: Bearer
/// <ingress.token>` (when a token is configured).
pub(crate) async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.settings.token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    match given {
        Some(token) if token_matches(token, expected.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::unauthorized(true).into_response(),
        None => ApiError::unauthorized(false).into_response(),
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

/// Answers 503 + `Retry-After` when the request is not done within
/// `ingress.request_timeout`, so a stuck broker cannot hold connections.
pub(crate) async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.settings.request_timeout;
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(path, timeout = ?limit, "request timed out");
            ApiError::timeout().into_response()
        }
    }
}

/// Counts every answer in `warren_ingress_requests_total{route,status}` and
/// times it in `warren_ingress_request_duration_seconds{route}`. `route` is
/// the route's pattern (`/events`), or `unmatched`, never the raw path.
pub(crate) async fn record(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| route_label(p.as_str()));
    let start = Instant::now();
    let res = next.run(req).await;
    counter!(
        INGRESS_REQUESTS_TOTAL,
        "route" => route,
        "status" => res.status().as_str().to_owned(),
    )
    .increment(1);
    histogram!(INGRESS_REQUEST_DURATION_SECONDS, "route" => route).record(start.elapsed().as_secs_f64());
    res
}

/// The known routes as `'static` labels.
fn route_label(path: &str) -> &'static str {
    match path {
        "/events" => "/events",
        "/events/batch" => "/events/batch",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
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
}
