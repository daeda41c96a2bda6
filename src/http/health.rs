//! `GET /healthz` (the process answers), `GET /readyz` (events can be
//! published) and `GET /metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, RETRY_AFTER_SECS};
use crate::metrics::BROKER_CONNECTED;

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Liveness: 200 whenever the server answers.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 when the sink can publish (and every extra check, such as
/// the relay's database, passes), else 503 + `Retry-After`.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let reason = if state.sink().is_ready() {
        state.not_ready().map(|name| format!("the {name} is not reachable"))
    } else {
        Some("not connected to the message broker".to_owned())
    };
    if let Some(reason) = reason {
        let mut res = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
            .into_response();
        res.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        res
    } else {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    }
}

/// Prometheus text; refreshes `warren_broker_connected` from the sink first.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics_handle() else {
        return ApiError::not_found().into_response();
    };
    metrics::gauge!(BROKER_CONNECTED, "role" => "ingress").set(if state.sink().is_ready() { 1.0 } else { 0.0 });
    let mut res = handle.render().into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
    res
}
