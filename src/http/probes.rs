//! Probes for a service without an ingress (`warren consume`): `/healthz`,
//! `/readyz` from a [`Readiness`] and `/metrics`; and the readiness and
//! metrics answers the ingress's probes share.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, RETRY_AFTER_SECS};
use crate::config::IngressSettings;
use crate::readiness::Readiness;

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Probes {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// `GET /healthz`, `GET /readyz` (200 when every part of `readiness` is
/// ready, else 503 naming the parts) and `GET /metrics`.
pub fn probes_router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(super::health::healthz))
        .route("/readyz", get(ready))
        .route("/metrics", get(exposition))
        .fallback(|| async { ApiError::not_found().into_response() })
        .with_state(Probes { readiness, metrics })
}

/// Serves [`probes_router`] on `listener` until `shutdown` is cancelled,
/// with the connection limits of `limits` (the ingress's timeouts and cap).
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn serve_probes(
    listener: TcpListener,
    readiness: Readiness,
    metrics: PrometheusHandle,
    limits: &IngressSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    super::serve_router(listener, probes_router(readiness, metrics), limits, shutdown, "probes").await
}

async fn ready(State(p): State<Probes>) -> Response {
    readiness_answer(Map::new(), &p.readiness)
}

async fn exposition(State(p): State<Probes>) -> Response {
    metrics_answer(&p.metrics)
}

/// 200 `{"status":"ready","checks":{…}}` when `checks` (each `{"ready", "detail"}`)
/// and every part of `readiness` are ready; else 503 with `Retry-After` and
/// the first reason.
pub(crate) fn readiness_answer(mut checks: Map<String, Value>, readiness: &Readiness) -> Response {
    for (name, part) in readiness.snapshot() {
        checks.insert(name, json!(part));
    }
    let not_ready = checks.values().find(|c| c["ready"] != true);
    let Some(first) = not_ready else {
        return (StatusCode::OK, Json(json!({"status": "ready", "checks": checks}))).into_response();
    };
    let reason = first["detail"].clone();
    let body = json!({"status": "unavailable", "reason": reason, "checks": checks});
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    res.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
    res
}

/// The recorder's metrics and the process's, as Prometheus text.
pub(crate) fn metrics_answer(handle: &PrometheusHandle) -> Response {
    crate::process_metrics::collect();
    let text = handle.render();
    let mut res = text.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
    res
}
