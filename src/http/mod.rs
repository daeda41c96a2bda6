//! The HTTP side of warren: the event ingress (`POST /events`,
//! `POST /events/batch`), health probes and Prometheus metrics.
//!
//! Build an [`AppState`] from an [`EventSink`] (a [`crate::Publisher`], or a
//! fake in tests) and the ingress settings, then serve [`router`] (testable
//! without a socket with `tower::ServiceExt::oneshot`) or call [`serve`],
//! which stops gracefully when its token is cancelled. The library never reads
//! the environment or signals: the caller supplies the listener and the token.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tokio_util::sync::CancellationToken;
//! use warren::http::{AppState, serve};
//! use warren::{Publisher, Settings};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::default();
//! let publisher = Publisher::connect(&settings, "ingress").await?;
//! let state = AppState::new(Arc::new(publisher), &settings.ingress)
//!     .with_metrics(warren::metrics::install()?);
//! let listener = tokio::net::TcpListener::bind(settings.ingress.listen).await?;
//! serve(listener, state, CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
//!
//! Status codes and bodies are documented in `docs/HTTP.md`.

mod body;
mod connections;
#[cfg(feature = "dead")]
mod dead;
mod error;
mod guard;
mod health;
mod ingress;
mod middleware;
mod probes;
mod server;
mod sink;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::IngressSettings;
use crate::readiness::Readiness;
pub use error::RETRY_AFTER_SECS;
pub use probes::{probes_router, serve_probes};
pub use sink::EventSink;

/// What the handlers share: the sink, the ingress settings and, when this
/// router serves `/metrics`, the Prometheus handle. Cloning it is one
/// reference count.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    sink: Arc<dyn EventSink>,
    settings: IngressSettings,
    metrics: Option<PrometheusHandle>,
    requests: Arc<middleware::RequestMetrics>,
    readiness: Readiness,
    /// The `Host` names of `settings`, checked on `/events` and `/dead`.
    hosts: guard::Hosts,
    /// Set by `AppState::with_dead_letters`: the settings the `/dead` routes connect with.
    #[cfg_attr(not(feature = "dead"), allow(dead_code))]
    dead: Option<Arc<crate::config::Settings>>,
}

impl AppState {
    /// State for a router that publishes to `sink` under `settings`
    /// (`max_body`, `max_batch`, `allowed_hosts`, `token`, `request_timeout`). Without
    /// [`AppState::with_metrics`] the router has no `/metrics`.
    #[must_use]
    pub fn new(sink: Arc<dyn EventSink>, settings: &IngressSettings) -> Self {
        Self {
            inner: Arc::new(Shared {
                sink,
                settings: settings.clone(),
                metrics: None,
                requests: Arc::default(),
                readiness: Readiness::new(),
                hosts: guard::Hosts::new(settings),
                dead: None,
            }),
        }
    }

    /// Serves `/metrics` from `handle` (see [`crate::metrics::install`]).
    #[must_use]
    pub fn with_metrics(self, handle: PrometheusHandle) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.inner);
        shared.metrics = Some(handle);
        Self {
            inner: Arc::new(shared),
        }
    }

    /// `/readyz` also reports the parts of `readiness` (the consumer that
    /// runs beside the ingress in `warren run`).
    #[must_use]
    pub fn with_readiness(self, readiness: Readiness) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.inner);
        shared.readiness = readiness;
        Self {
            inner: Arc::new(shared),
        }
    }

    /// Serves the `/dead` routes over the `.dead` queues of
    /// `settings.consumer.service` (docs/HTTP.md#dead-letters).
    #[cfg(feature = "dead")]
    #[must_use]
    pub fn with_dead_letters(self, settings: &crate::config::Settings) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.inner);
        shared.dead = Some(Arc::new(settings.clone()));
        Self {
            inner: Arc::new(shared),
        }
    }

    fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    #[cfg(feature = "dead")]
    fn dead_settings(&self) -> Option<Arc<crate::config::Settings>> {
        self.inner.dead.clone()
    }

    fn hosts(&self) -> &guard::Hosts {
        &self.inner.hosts
    }

    fn sink(&self) -> &dyn EventSink {
        &*self.inner.sink
    }

    fn settings(&self) -> &IngressSettings {
        &self.inner.settings
    }

    fn metrics_handle(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    fn request_metrics(&self) -> &middleware::RequestMetrics {
        &self.inner.requests
    }
}

/// The ingress: `POST /events`, `POST /events/batch` (bearer token when
/// `ingress.token` is set), `GET /healthz`, `GET /readyz` and, when the state
/// has a metrics handle, `GET /metrics`.
pub fn router(state: AppState) -> Router {
    let events = Router::new()
        .route("/events", post(ingress::publish_one))
        .layer(DefaultBodyLimit::max(state.settings().max_body))
        .route(
            "/events/batch",
            post(ingress::publish_batch).layer(DefaultBodyLimit::max(body::batch_limit(state.settings()))),
        );
    let mut app = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if state.metrics_handle().is_some() {
        app = app.route("/metrics", get(health::metrics));
    }
    #[cfg(feature = "dead")]
    if state.inner.dead.is_some() {
        app = app.merge(dead::routes(state.settings().max_body));
    }
    app.merge(events)
        .fallback(|| async { error::ApiError::not_found().into_response() })
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed().into_response() })
        .layer(middleware::ObserveLayer::new(state.clone()))
        .with_state(state)
}

/// `GET /metrics`, `GET /healthz` and `GET /readyz` alone, for
/// `metrics.listen` (no token, no ingress). The state needs a metrics handle.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { error::ApiError::not_found().into_response() })
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled, then
/// stops accepting connections, closes those that are not busy and lets
/// requests in flight finish (each is bounded by `ingress.request_timeout`).
/// Connections get `ingress.header_timeout` to send a request head and
/// `ingress.idle_timeout` between requests; at most
/// `ingress.max_connections` are open (docs/HTTP.md, "Connections").
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    let settings = state.settings().clone();
    serve_router(listener, router(state), &settings, shutdown, "ingress").await
}

/// Serves [`metrics_router`] on `listener` (for `metrics.listen`) until
/// `shutdown` is cancelled, with the connection limits of [`serve`].
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn serve_metrics(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    let settings = state.settings().clone();
    serve_router(listener, metrics_router(state), &settings, shutdown, "metrics").await
}

async fn serve_router(
    listener: TcpListener,
    app: Router,
    settings: &IngressSettings,
    shutdown: CancellationToken,
    what: &'static str,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, what, "HTTP listening");
    server::serve(listener, app, settings, shutdown).await;
    tracing::info!(%addr, what, "HTTP stopped");
    Ok(())
}
