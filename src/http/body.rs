//! The request bodies of the routes that take one (`/events`,
//! `/events/batch`, `POST /dead/…`): their head is checked before a byte of
//! the body is read, so a refused request never gets `100 Continue` and is
//! never buffered, then the body is read within its route's limit.
//!
//! Limits: `ingress.max_body` for one event and for a `/dead` request; a
//! batch may be `ingress.max_batch` events of `ingress.max_body` each.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::error::ApiError;
use crate::config::IngressSettings;

/// The body limit of a batch: `max_batch` events of `max_body` bytes each.
pub(crate) fn batch_limit(s: &IngressSettings) -> usize {
    s.max_batch.max(1).saturating_mul(s.max_body)
}

/// The body limit of the route matched as `route`.
fn limit_of(s: &IngressSettings, route: Option<&str>) -> usize {
    if route == Some("/events/batch") {
        batch_limit(s)
    } else {
        s.max_body
    }
}

/// Extracting it checks the head of a request with a JSON body, in this
/// order: its transfer coding (501 for any but `chunked`, RFC 9112 §6.1),
/// `Content-Type` (415 unless JSON), `Content-Encoding` (415: none is
/// decoded), and a `Content-Length` over the route's limit (413). It holds
/// the limit for [`JsonHead::body`].
pub(crate) struct JsonHead {
    limit: usize,
}

impl FromRequestParts<AppState> for JsonHead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let route = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str);
        let limit = limit_of(state.settings(), route);
        check_head(&parts.headers, limit)?;
        Ok(Self { limit })
    }
}

impl JsonHead {
    /// The body, or 413 (over the limit while it was read) or 400 (the
    /// client went away mid-body).
    pub(crate) fn body(&self, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
        body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(self.limit)
            } else {
                tracing::debug!(error = %rejection, "cannot read request body");
                ApiError::unreadable_body()
            }
        })
    }
}

fn check_head(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    for coding in headers.get_all(header::TRANSFER_ENCODING) {
        let coding = String::from_utf8_lossy(coding.as_bytes());
        if coding.split(',').any(|c| !c.trim().eq_ignore_ascii_case("chunked")) {
            return Err(ApiError::unsupported_transfer_coding(&coding));
        }
    }
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    if !content_type.is_some_and(is_json) {
        let shown = content_type.map(String::from_utf8_lossy);
        return Err(ApiError::unsupported_media_type(shown.as_deref()));
    }
    // Compressed bytes would fail as "malformed JSON"; say what is wrong.
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::unsupported_encoding(&encoding));
        }
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    Ok(())
}

/// `application/json` or `application/<something>+json`, any parameters.
fn is_json(content_type: &[u8]) -> bool {
    let Ok(ct) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.warren+json",
        ] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        for bad in ["text/plain", "application/jsonx", "text/json", "", "json"] {
            assert!(!is_json(bad.as_bytes()), "{bad}");
        }
    }

    fn head(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn heads_are_refused_before_the_body() {
        let status = |h: HeaderMap| check_head(&h, 100).err().map(|e| e.status);
        assert_eq!(status(head(&[])), None);
        assert_eq!(status(head(&[(header::TRANSFER_ENCODING, "chunked")])), None);
        assert_eq!(
            status(head(&[(header::TRANSFER_ENCODING, "gzip, chunked")])),
            Some(StatusCode::NOT_IMPLEMENTED)
        );
        assert_eq!(
            status(head(&[(header::CONTENT_LENGTH, "101")])),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(status(head(&[(header::CONTENT_LENGTH, "100")])), None);
    }

    #[test]
    fn a_batch_may_hold_max_batch_events_of_max_body() {
        let s = crate::config::Settings::default().ingress;
        assert_eq!(limit_of(&s, Some("/events")), 64 * 1024);
        assert_eq!(limit_of(&s, Some("/dead/purge")), 64 * 1024);
        assert_eq!(limit_of(&s, Some("/events/batch")), 500 * 64 * 1024);
    }
}
