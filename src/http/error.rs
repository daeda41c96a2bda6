//! The ingress's JSON errors: one type that knows its status, code, message
//! and headers, and never carries internal detail (broker errors, URLs).
//!
//! Body: `{"error": {"code": "...", "message": "...", "field": "data.email"}}`,
//! with `field`, `event_id`, `known_types`, `line`, `column` and `limit` only
//! when they apply.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use crate::event::portable::PortableError;
use crate::event::{DecodeError, EVENT_TYPES};
use crate::publisher::PublishError;
use crate::refusal::Refusal;

/// Seconds a client is asked to wait (`Retry-After`) on a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The `WWW-Authenticate` challenge of a 401 without a token.
const CHALLENGE: &str = r#"Bearer realm="warren""#;
/// The challenge of a 401 with a wrong token (RFC 6750 §3.1).
const CHALLENGE_INVALID: &str = r#"Bearer realm="warren", error="invalid_token""#;

/// What goes inside `{"error": ...}`; also used per item of a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_field`.
    pub code: &'static str,
    /// A sentence for humans.
    pub message: String,
    /// JSON path of the offending field (`data.email`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The event's id, when the failure came after it was assigned: re-send
    /// with this id so consumers can deduplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// The known event types (for `unknown_event_type`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_types: Option<Vec<&'static str>>,
    /// Position of a JSON syntax error (1-based line, column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// The limit that was exceeded (bytes or events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl ErrorBody {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            event_id: None,
            known_types: None,
            line: None,
            column: None,
            limit: None,
        }
    }
}

/// An error response of the ingress.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: handlers return `Result<_, ApiError>` and this keeps it small.
    pub body: Box<ErrorBody>,
    retry_after: bool,
    challenge: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Box::new(ErrorBody::new(code, message)),
            retry_after: status == StatusCode::SERVICE_UNAVAILABLE,
            challenge: None,
        }
    }

    /// 401: no bearer token, or not the configured one.
    pub fn unauthorized(token_given: bool) -> Self {
        let (message, challenge) = if token_given {
            ("the bearer token is not valid", CHALLENGE_INVALID)
        } else {
            (
                "this endpoint needs an `Authorization: Bearer <token>` header",
                CHALLENGE,
            )
        };
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.challenge = Some(challenge);
        e
    }

    /// 508: a warren webhook forwarded this request (`warren-forwarded:
    /// <event_id>`) and it came back into an ingress; nothing is published.
    pub fn forwarding_loop(event_id: &str) -> Self {
        Self::new(
            StatusCode::LOOP_DETECTED,
            "forwarding_loop",
            format!(
                "this request was forwarded by a warren webhook (warren-forwarded: {}) and came back into a \
                 warren ingress, so it is not published again: webhook.url leads back into warren; point it at \
                 the receiver",
                crate::event::truncate(event_id, 64)
            ),
        )
    }

    /// 421: a `Host` that is not a name of this ingress (`ingress.allowed_hosts`),
    /// as a page on a rebound DNS name sends.
    pub fn unknown_host(given: &str) -> Self {
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            format!(
                "Host {:?} is not a name of this ingress: if it is one, add it to ingress.allowed_hosts",
                crate::event::truncate(given, 100)
            ),
        )
    }

    /// 403: an `Origin` other than the ingress's own: a page of another site.
    #[cfg(feature = "dead")]
    pub fn foreign_origin(given: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "foreign_origin",
            format!(
                "requests from Origin {:?} are refused: only the ingress's own origin may change parked events",
                crate::event::truncate(given, 100)
            ),
        )
    }

    /// 501: a transfer coding other than `chunked` (RFC 9112 §6.1); nothing is read.
    pub fn unsupported_transfer_coding(given: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_coding",
            format!(
                "Transfer-Encoding {:?} is not supported: send the body as is, or chunked",
                crate::event::truncate(given, 100)
            ),
        )
    }

    /// 415: the body is not declared as JSON.
    pub fn unsupported_media_type(given: Option<&str>) -> Self {
        let message = match given {
            Some(ct) => format!(
                "Content-Type {:?} is not supported: send application/json",
                crate::event::truncate(ct, 100)
            ),
            None => "the Content-Type header is missing: send application/json".to_owned(),
        };
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
    }

    /// 415: a `Content-Encoding` the ingress does not decode (it decodes none).
    pub fn unsupported_encoding(given: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "Content-Encoding {:?} is not supported: send the body uncompressed",
                crate::event::truncate(given, 100)
            ),
        )
    }

    /// 413: the body is over its route's limit (docs/HTTP.md, "Limits").
    pub fn body_too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        );
        e.body.limit = Some(limit);
        e
    }

    /// 413: a batch with more events than `ingress.max_batch`.
    pub fn batch_too_large(count: usize, limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("the batch has {count} events; at most {limit} are accepted at once: split it"),
        );
        e.body.limit = Some(limit);
        e
    }

    /// 400: the body could not be read (the client went away mid-body).
    pub fn unreadable_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            "the request body could not be read",
        )
    }

    /// 400: not JSON; says where it broke.
    pub fn malformed(err: &serde_json::Error) -> Self {
        let text = err.to_string();
        let reason = text.find(" at line ").map_or(text.as_str(), |i| &text[..i]);
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!(
                "malformed JSON at line {} column {}: {reason}",
                err.line(),
                err.column()
            ),
        );
        e.body.line = Some(err.line());
        e.body.column = Some(err.column());
        e
    }

    /// 422: a batch body that is JSON but not an array.
    pub fn not_an_array() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_an_array",
            "the body of /events/batch must be a JSON array of event envelopes",
        )
    }

    /// 400 or 422 for an envelope that is not a valid known event.
    pub fn from_decode(err: DecodeError) -> Self {
        let status = if matches!(err, DecodeError::Malformed(_)) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Self::from_body(status, decode_body(err))
    }

    /// 400: JSON that other languages would not read as warren does.
    pub fn from_portable(err: &PortableError) -> Self {
        Self::from_body(StatusCode::BAD_REQUEST, portable_body(err))
    }

    /// 503: the broker connection is down; nothing was published.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            "the message broker is not reachable; nothing was published: retry later",
        )
    }

    /// 503: the sink is not ready; names the permission the broker refused
    /// when that is why.
    pub fn not_ready(refusal: Option<&Refusal>) -> Self {
        match refusal {
            Some(r) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "broker_refused", refused_message(r)),
            None => Self::unavailable(),
        }
    }

    /// 503: `ingress.request_timeout` passed before an answer.
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; its events may or may not have been stored: retry later \
             (consumers can deduplicate events that carry their own event_id)",
        )
    }

    /// The answer for a publish that was not confirmed (see `docs/HTTP.md`).
    pub fn from_publish(err: &PublishError, event_id: Uuid) -> Self {
        let (status, body) = publish_body(err, event_id);
        Self::from_body(status, body)
    }

    /// 404 for an unknown path.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: events go to POST /events or POST /events/batch",
        )
    }

    /// 405 for a known path with another method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
        )
    }

    fn from_body(status: StatusCode, body: ErrorBody) -> Self {
        Self {
            status,
            body: Box::new(body),
            retry_after: status == StatusCode::SERVICE_UNAVAILABLE,
            challenge: None,
        }
    }
}

/// The error of an envelope that failed to decode.
pub fn decode_body(err: DecodeError) -> ErrorBody {
    match err {
        DecodeError::Malformed(reason) => ErrorBody::new(
            "malformed_json",
            format!("malformed JSON: {}", crate::event::truncate(&reason, 200)),
        ),
        DecodeError::UnknownType(t) => {
            let known: Vec<&'static str> = EVENT_TYPES.iter().map(|t| t.name).collect();
            let mut b = ErrorBody::new(
                "unknown_event_type",
                format!("unknown event_type {t:?}; known types: {}", known.join(", ")),
            );
            b.field = Some("event_type".into());
            b.known_types = Some(known);
            b
        }
        DecodeError::Invalid(v) => {
            let mut b = ErrorBody::new("invalid_field", v.to_string());
            b.field = Some(v.field);
            b
        }
    }
}

/// The error of a body that is not [`crate::event::portable`].
pub fn portable_body(err: &PortableError) -> ErrorBody {
    let code = match err {
        PortableError::NotUtf8 { .. } => "malformed_json",
        PortableError::TooDeep { .. } => "too_deep",
        PortableError::LoneSurrogate { .. } => "lone_surrogate",
        PortableError::Number { .. } => "number_out_of_range",
    };
    let mut body = ErrorBody::new(code, err.to_string());
    body.field = err.field().map(str::to_owned);
    match err {
        PortableError::NotUtf8 { line, column } => {
            body.line = Some(*line);
            body.column = Some(*column);
        }
        PortableError::TooDeep { limit, .. } => body.limit = Some(*limit),
        PortableError::LoneSurrogate { .. } | PortableError::Number { .. } => {}
    }
    body
}

/// Status and body for an unconfirmed publish. Messages are fixed text: the
/// broker's own error (which may name hosts or users) is only logged.
pub fn publish_body(err: &PublishError, event_id: Uuid) -> (StatusCode, ErrorBody) {
    let (status, code, message) = match err {
        PublishError::Unroutable { routing_key, .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "unroutable",
            format!(
                "no queue is bound for event_type {:?}, so the broker could not store the event: \
                 the consumer topology is not applied (warren topology apply)",
                crate::event::truncate(routing_key, 128)
            ),
        ),
        PublishError::Nacked { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "nacked",
            "the message broker refused the event; retry later with the same event_id".to_owned(),
        ),
        PublishError::Timeout(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "confirm_timeout",
            "the message broker did not confirm the event in time; it may or may not be stored: \
             retry later with the same event_id"
                .to_owned(),
        ),
        PublishError::ConnectionLost(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            "the connection to the message broker was lost before it confirmed the event: \
             retry later with the same event_id"
                .to_owned(),
        ),
        PublishError::Refused(r) => (StatusCode::SERVICE_UNAVAILABLE, "broker_refused", refused_message(r)),
        PublishError::Setup(_) | PublishError::Serialize(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the event could not be published because of an internal error".to_owned(),
        ),
    };
    let mut body = ErrorBody::new(code, message);
    body.event_id = Some(event_id);
    (status, body)
}

/// What a client is told of a refused permission: which one, on which
/// object (the broker's user and vhost stay in the logs).
pub fn refused_message(r: &Refusal) -> String {
    format!(
        "the message broker refused warren the {} permission on {}; nothing was published: \
         the broker's administrator must grant it, then retry",
        r.permission(),
        r.object()
    )
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(Envelope { error: &self.body })).into_response();
        let headers = res.headers_mut();
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if let Some(c) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_names_line_and_column_once() {
        let err = serde_json::from_slice::<serde_json::Value>(b"{\n  \"a\": 1,\n  oops\n}").unwrap_err();
        let e = ApiError::malformed(&err);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!((e.body.line, e.body.column), (Some(3), Some(3)));
        assert!(
            e.body
                .message
                .starts_with("malformed JSON at line 3 column 3: key must be a string"),
            "{}",
            e.body.message
        );
        assert_eq!(e.body.message.matches("line").count(), 1);
    }

    #[test]
    fn publish_errors_do_not_echo_broker_text() {
        let secret = "amqp://admin:hunter2@broker.internal:5672";
        for err in [
            PublishError::ConnectionLost(secret.into()),
            PublishError::Setup(secret.into()),
        ] {
            let (status, body) = publish_body(&err, Uuid::nil());
            assert!(status.is_server_error());
            assert!(!body.message.contains("hunter2"), "{}", body.message);
            assert!(!body.message.contains("broker.internal"), "{}", body.message);
            assert_eq!(body.event_id, Some(Uuid::nil()));
        }
    }

    #[test]
    fn only_503_carries_retry_after() {
        let r = ApiError::unavailable().into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        let r = ApiError::from_publish(
            &PublishError::Unroutable {
                exchange: "x".into(),
                routing_key: "user.login".into(),
            },
            Uuid::nil(),
        )
        .into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
