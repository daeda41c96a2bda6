//! `GET /healthz` (the process answers), `GET /readyz` (events can be
//! published, and every other part of the service is ready) and `GET
//! /metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, json};

use super::AppState;
use super::error::{ApiError, refused_message};
use super::probes::{metrics_answer, readiness_answer};
use crate::metrics::BROKER_CONNECTED;

/// Liveness: 200 whenever the server answers.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 when the sink can publish and every part of the state's
/// readiness (the consumer of `warren run`) is ready, else 503 + `Retry-After`.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let publisher = if state.sink().is_ready() {
        json!({"ready": true, "detail": "connected"})
    } else {
        // A refusal names the permission and the object, not "unreachable".
        let detail = state.sink().refusal().map_or_else(
            || "not connected to the message broker".to_owned(),
            |r| refused_message(&r),
        );
        json!({"ready": false, "detail": detail})
    };
    let checks = Map::from_iter([("publisher".to_owned(), publisher)]);
    readiness_answer(checks, state.readiness())
}

/// Prometheus text; refreshes `warren_broker_connected` from the sink first.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics_handle() else {
        return ApiError::not_found().into_response();
    };
    metrics::gauge!(BROKER_CONNECTED, "role" => "ingress").set(if state.sink().is_ready() { 1.0 } else { 0.0 });
    metrics_answer(handle)
}
