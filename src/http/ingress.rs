//! `POST /events` and `POST /events/batch`: validate, publish with confirm,
//! and answer only once the broker has the event.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::AppState;
use super::body::JsonHead;
use super::error::{ApiError, ErrorBody, RETRY_AFTER_SECS, decode_body, portable_body, publish_body};
use super::guard::KnownHost;
use super::middleware::{Authorized, NotForwarded};
use crate::event::{DecodeError, RawEnvelope, portable};
use crate::publisher::PublishError;

/// The 202 answer of `POST /events`.
#[derive(Debug, Serialize)]
struct Accepted {
    event_id: Uuid,
    status: &'static str,
}

/// `POST /events`: one envelope.
pub(crate) async fn publish_one(
    State(state): State<AppState>,
    _: NotForwarded,
    _: KnownHost,
    _: Authorized,
    head: JsonHead,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = head.body(body)?;
    let (env, _) = RawEnvelope::parse_known(&body).map_err(|e| rejected(&body, e))?;
    if !state.sink().is_ready() {
        return Err(ApiError::not_ready(state.sink().refusal().as_ref()));
    }
    publish(&state, &env)
        .await
        .map_err(|e| ApiError::from_publish(&e, env.event_id))?;
    let accepted = Accepted {
        event_id: env.event_id,
        status: "accepted",
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// Why a body was refused, as precisely as a second look tells; only a
/// refused body pays for it. JSON other languages would not read as warren
/// does is a 400 naming the field; a syntax error anywhere is a 400 with its
/// position, even when the parse into an envelope stopped earlier at a field
/// of the wrong type.
fn rejected(body: &[u8], err: DecodeError) -> ApiError {
    if let Err(e) = portable::check(body) {
        return ApiError::from_portable(&e);
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Err(syntax) => ApiError::malformed(&syntax),
        Ok(_) => ApiError::from_decode(err),
    }
}

async fn publish(state: &AppState, env: &RawEnvelope) -> Result<(), PublishError> {
    let result = state.sink().publish(env).await;
    match &result {
        Ok(()) => {
            tracing::debug!(event_id = %env.event_id, event_type = env.event_type, "event accepted")
        }
        Err(e) => tracing::warn!(
            event_id = %env.event_id,
            event_type = env.event_type,
            error = %e,
            "event not published"
        ),
    }
    result
}

/// One item of a batch answer.
#[derive(Debug, Serialize)]
struct ItemResult {
    index: usize,
    /// `accepted`, `rejected` (invalid: do not re-send as is) or `failed`
    /// (not stored: re-send with the same `event_id`).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// The answer of `POST /events/batch`.
#[derive(Debug, Serialize)]
struct BatchResult {
    accepted: usize,
    rejected: usize,
    failed: usize,
    results: Vec<ItemResult>,
}

/// `POST /events/batch`: a JSON array of envelopes, answered per item. Valid
/// items are published (confirms in flight together) even when others are
/// rejected.
pub(crate) async fn publish_batch(
    State(state): State<AppState>,
    _: NotForwarded,
    _: KnownHost,
    _: Authorized,
    head: JsonHead,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = head.body(body)?;
    let items: Vec<&RawValue> = serde_json::from_slice(&body).map_err(|e| {
        if e.is_data() {
            ApiError::not_an_array()
        } else {
            ApiError::malformed(&e)
        }
    })?;
    if items.len() > state.settings().max_batch {
        return Err(ApiError::batch_too_large(items.len(), state.settings().max_batch));
    }
    let max_body = state.settings().max_body;
    let parsed: Vec<_> = items
        .iter()
        .map(|raw| parse_item(raw.get().as_bytes(), max_body))
        .collect();
    if parsed.iter().any(Result::is_ok) && !state.sink().is_ready() {
        return Err(ApiError::not_ready(state.sink().refusal().as_ref()));
    }
    let results = join_all(
        parsed
            .into_iter()
            .enumerate()
            .map(|(index, p)| item_result(&state, index, p)),
    )
    .await;
    Ok(batch_response(results))
}

/// One item of a batch as an envelope, or why it is refused: each item
/// is held to `max_body`, as the body of `POST /events` is.
fn parse_item(item: &[u8], max_body: usize) -> Result<RawEnvelope, Box<ErrorBody>> {
    if item.len() > max_body {
        return Err(ApiError::body_too_large(max_body).body);
    }
    RawEnvelope::parse_known(item)
        .map(|(env, _)| env)
        .map_err(|e| Box::new(item_error(item, e)))
}

/// The error of a refused batch item (JSON already: it parsed as a value).
fn item_error(item: &[u8], err: DecodeError) -> ErrorBody {
    match portable::check(item) {
        Err(e) => portable_body(&e),
        Ok(()) => decode_body(err),
    }
}

/// Publishes one parsed item (when it is valid) and says how it went.
async fn item_result(state: &AppState, index: usize, parsed: Result<RawEnvelope, Box<ErrorBody>>) -> ItemResult {
    let (status, event_id, error) = match parsed {
        Err(e) => ("rejected", None, Some(*e)),
        Ok(env) => match publish(state, &env).await {
            Ok(()) => ("accepted", Some(env.event_id), None),
            Err(e) => {
                let (_, mut body) = publish_body(&e, env.event_id);
                body.event_id = None; // on the item already
                ("failed", Some(env.event_id), Some(body))
            }
        },
    };
    ItemResult {
        index,
        status,
        event_id,
        error,
    }
}

/// 202 when every item is accepted, 422 when every item is rejected, 207
/// for accepted and rejected ones; when any item failed at the broker, the
/// status of that failure (503 + `Retry-After`, or 500 when no failure is
/// worth retrying soon).
fn batch_response(results: Vec<ItemResult>) -> Response {
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    let (accepted, rejected, failed) = (count("accepted"), count("rejected"), count("failed"));
    let retryable = results.iter().any(|r| {
        r.status == "failed"
            && r.error
                .as_ref()
                .is_some_and(|e| !matches!(e.code, "unroutable" | "internal"))
    });
    let status = if failed > 0 && retryable {
        StatusCode::SERVICE_UNAVAILABLE
    } else if failed > 0 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if rejected == 0 {
        StatusCode::ACCEPTED
    } else if accepted == 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::MULTI_STATUS
    };
    let body = BatchResult {
        accepted,
        rejected,
        failed,
        results,
    };
    let mut res = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: &'static str, code: &'static str) -> ItemResult {
        ItemResult {
            index: 0,
            status,
            event_id: None,
            error: (status != "accepted").then(|| ErrorBody {
                code,
                message: String::new(),
                field: None,
                event_id: None,
                known_types: None,
                line: None,
                column: None,
                limit: None,
            }),
        }
    }

    #[test]
    fn batch_status_rules() {
        let status = |items: Vec<ItemResult>| batch_response(items).status();
        assert_eq!(status(vec![]), StatusCode::ACCEPTED);
        assert_eq!(status(vec![item("accepted", "")]), StatusCode::ACCEPTED);
        assert_eq!(
            status(vec![item("rejected", "invalid_field")]),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(vec![item("accepted", ""), item("rejected", "invalid_field")]),
            StatusCode::MULTI_STATUS
        );
        assert_eq!(
            status(vec![item("accepted", ""), item("failed", "confirm_timeout")]),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(vec![item("failed", "unroutable"), item("rejected", "x")]),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(vec![item("failed", "unroutable"), item("failed", "nacked")]),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
