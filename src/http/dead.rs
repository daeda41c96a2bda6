//! The dead-letter routes of the ingress: `GET /dead`, `GET /dead/stats`,
//! `GET /dead/{event_id}`, `POST /dead/replay`, `POST /dead/purge`, the
//! `warren dead` commands over HTTP (docs/HTTP.md#dead-letters).
//!
//! They need `Authorization: Bearer <ingress.token>` when a token is set,
//! and are refused (403) without a token unless the ingress listens on a
//! loopback address: replaying and purging are operator actions. Every one
//! checks `Host` (421, see `guard.rs`); the `POST`s take only JSON bodies
//! within `ingress.max_body` and refuse a foreign `Origin` (403), so no web
//! page the operator opens can drive them. Each
//! request opens its own AMQP connection (operator traffic is rare), and
//! runs its operation in a task of its own, so a request that times out or
//! a client that goes away never stops a replay or purge half-way.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::body::JsonHead;
use super::error::ApiError;
use super::guard::{KnownHost, SameOrigin};
use super::middleware::Authorized;
use crate::config::Settings;
use crate::dead::{DEFAULT_MAX_REPLAYS, DeadLetters, FileSink, Filter, PurgeReport, ReplayOptions, read_export};

/// The `/dead` routes; request bodies up to `max_body` bytes.
pub(crate) fn routes(max_body: usize) -> Router<AppState> {
    Router::new()
        .route("/dead", get(list))
        .route("/dead/stats", get(stats))
        .route("/dead/replay", post(replay))
        .route("/dead/purge", post(purge))
        .route("/dead/{event_id}", get(show))
        .layer(DefaultBodyLimit::max(max_body))
}

/// An error answer: `{"error": {"code": …, "message": …}}`.
struct DeadError(StatusCode, &'static str, String);

impl IntoResponse for DeadError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": {"code": self.1, "message": self.2}}))).into_response()
    }
}

impl From<ApiError> for DeadError {
    fn from(e: ApiError) -> Self {
        Self(e.status, e.body.code, e.body.message)
    }
}

fn bad_request(message: impl Into<String>) -> DeadError {
    DeadError(StatusCode::BAD_REQUEST, "invalid_request", message.into())
}

/// Extracting it checks `Host` and the token, and refuses to serve without
/// a token on a non-loopback address.
struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        KnownHost::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let s = state.settings();
        if s.token.is_none() && !s.listen.ip().is_loopback() {
            let message = "the /dead routes need ingress.token when ingress.listen is not a loopback address";
            return Err(DeadError(StatusCode::FORBIDDEN, "token_required", message.into()).into_response());
        }
        Authorized::from_request_parts(parts, state)
            .await
            .map(|_| Self)
            .map_err(IntoResponse::into_response)
    }
}

/// What a route does with the `.dead` queues.
type Op<T> = Box<dyn FnOnce(Arc<DeadLetters>) -> BoxFuture<'static, Result<T, crate::dead::DeadError>> + Send>;

/// Runs `op` on a fresh connection in a task of its own; 503 when the
/// broker cannot be reached (the reason is logged, not answered).
async fn with_dead<T: Send + 'static>(settings: Arc<Settings>, op: Op<T>) -> Result<T, DeadError> {
    let task = tokio::spawn(async move {
        let dead = Arc::new(DeadLetters::connect(&settings, "dead-letters http").await?);
        let out = op(dead.clone()).await;
        if let Ok(dead) = Arc::try_unwrap(dead) {
            dead.close().await;
        }
        out
    });
    match task.await {
        Ok(Ok(v)) => Ok(v),
        // A mistake in the request, not the broker's: say which types there are.
        Ok(Err(e @ crate::dead::DeadError::UnknownType { .. })) => {
            Err(DeadError(StatusCode::BAD_REQUEST, "unknown_event_type", e.to_string()))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "dead-letter request failed");
            Err(DeadError(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "the dead-letter queues could not be read: retry later".into(),
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "dead-letter task failed");
            Err(DeadError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".into(),
            ))
        }
    }
}

fn dead_settings(state: &AppState) -> Result<Arc<Settings>, DeadError> {
    state
        .dead_settings()
        .ok_or_else(|| DeadError(StatusCode::NOT_FOUND, "not_found", "no dead-letter routes here".into()))
}

async fn list(
    _: Operator,
    State(state): State<AppState>,
    QueryFilter(filter): QueryFilter,
) -> Result<Json<Value>, DeadError> {
    let events = with_dead(
        dead_settings(&state)?,
        Box::new(move |d| Box::pin(async move { d.list(&filter, &mut |_, _| {}).await })),
    )
    .await?;
    Ok(Json(json!({ "count": events.len(), "events": events })))
}

async fn stats(
    _: Operator,
    State(state): State<AppState>,
    QueryFilter(filter): QueryFilter,
) -> Result<Json<Value>, DeadError> {
    let groups = with_dead(
        dead_settings(&state)?,
        Box::new(move |d| Box::pin(async move { d.stats(&filter, &mut |_, _| {}).await })),
    )
    .await?;
    Ok(Json(json!({ "groups": groups })))
}

async fn show(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, DeadError> {
    let wanted = id.clone();
    let found = with_dead(
        dead_settings(&state)?,
        Box::new(move |d| Box::pin(async move { d.show(&wanted, &mut |_, _| {}).await })),
    )
    .await?;
    if found.is_empty() {
        let message = format!("no parked event with event_id {:?}", crate::event::truncate(&id, 100));
        return Err(DeadError(StatusCode::NOT_FOUND, "not_found", message));
    }
    Ok(Json(json!({ "messages": found })))
}

/// `POST /dead/replay`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    #[serde(default)]
    filter: Filter,
    #[serde(default)]
    max_replays: Option<i64>,
    #[serde(default)]
    dry_run: bool,
}

async fn replay(
    _: Operator,
    _: SameOrigin,
    head: JsonHead,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DeadError> {
    let req: ReplayRequest = json_body(&head.body(body)?)?;
    let options = ReplayOptions {
        filter: req.filter,
        max_replays: req.max_replays.unwrap_or(DEFAULT_MAX_REPLAYS),
        dry_run: req.dry_run,
    };
    let report = with_dead(
        dead_settings(&state)?,
        Box::new(move |d| Box::pin(async move { d.replay(&options, &CancellationToken::new(), &mut |_, _| {}).await })),
    )
    .await?;
    // A replay that stopped half-way still says what it moved.
    let status = if report.error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(report)).into_response())
}

/// `POST /dead/purge`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    filter: Filter,
    /// Must be `true`: the HTTP form of `--yes`.
    #[serde(default)]
    confirm: bool,
}

/// `POST /dead/purge`: each selected event is written to a new file in
/// `dead.export_dir` (synced) before it leaves `.dead`, so a purge cut
/// short at any point (the request timed out, the client went away, warren
/// was killed) leaves every event parked or in that file. The file is
/// created before anything is read; the log names it, and so does the answer.
async fn purge(
    _: Operator,
    _: SameOrigin,
    head: JsonHead,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, DeadError> {
    let req: PurgeRequest = json_body(&head.body(body)?)?;
    if !req.confirm {
        return Err(bad_request(
            "a purge removes events: send \"confirm\": true (each removed message is written to a file in dead.export_dir first, and comes back in \"exported\")",
        ));
    }
    let settings = dead_settings(&state)?;
    let sink = FileSink::create_in(&settings.dead.export_dir).map_err(|e| {
        tracing::error!(error = %e, "cannot create a purge export file: nothing purged");
        DeadError(
            StatusCode::SERVICE_UNAVAILABLE,
            "export_unavailable",
            "the export file cannot be created in dead.export_dir (see the log): nothing was purged".into(),
        )
    })?;
    tracing::info!(export = %sink.path().display(), "purging parked events, each written here first");
    let filter = req.filter;
    let (report, export) = with_dead(
        settings,
        Box::new(move |d| Box::pin(async move { purge_to(&d, &filter, sink).await })),
    )
    .await?;
    // The file is the record of what left `.dead`: answer with what it holds.
    let exported = match &export {
        Some(path) => read_export(path).map_err(|e| {
            tracing::error!(error = %e, "cannot read back a purge export");
            DeadError(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into())
        })?,
        None => Vec::new(),
    };
    let status = if report.error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "purged": report.purged,
        "possible_duplicates": report.possible_duplicates,
        "error": report.error,
        "export": export,
        "exported": exported,
    });
    Ok((status, Json(body)).into_response())
}

/// Purges into `sink`, then closes it (removed when it holds nothing);
/// runs to its end even when nobody waits for the answer.
async fn purge_to(
    d: &DeadLetters,
    filter: &Filter,
    mut sink: FileSink,
) -> Result<(PurgeReport, Option<PathBuf>), crate::dead::DeadError> {
    let purged = d
        .purge(filter, &mut sink, &CancellationToken::new(), &mut |_, _| {})
        .await;
    let path = sink.path().to_owned();
    let export = sink.finish().map_err(crate::dead::DeadError::Export)?;
    let report = purged?;
    tracing::info!(
        purged = report.purged.len(),
        export = %path.display(),
        error = report.error.as_deref().unwrap_or(""),
        "purge done"
    );
    Ok((report, export))
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DeadError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request body: {e}")))
}

/// The filter of a query string: `type`, `reason`, `since`, `until`
/// (RFC 3339), `event_id`, `group`, `limit`, URL-encoded as a form is.
struct QueryFilter(Filter);

impl<S: Send + Sync> FromRequestParts<S> for QueryFilter {
    type Rejection = DeadError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        query_filter(&parts.uri).map(Self)
    }
}

fn query_filter(uri: &Uri) -> Result<Filter, DeadError> {
    Query::try_from_uri(uri).map(|Query(f)| f).map_err(|e| {
        // The cause names the parameter (`limit: invalid digit found in
        // string`) without axum's "Failed to deserialize query string".
        let cause = std::error::Error::source(&e).map_or_else(|| e.body_text(), ToString::to_string);
        bad_request(format!("invalid query: {cause}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(query: &str) -> Result<Filter, DeadError> {
        query_filter(&format!("/dead{query}").parse().unwrap())
    }

    #[test]
    fn query_strings_become_filters() {
        let f = filter("?type=user.login&reason=exhausted&since=2025-01-20T10%3A30%3A00%2B01%3A00&limit=3")
            .unwrap_or_else(|e| panic!("{}", e.2));
        assert_eq!(f.event_type.as_deref(), Some("user.login"));
        assert_eq!(f.reason.as_deref(), Some("exhausted"));
        assert_eq!(f.since.unwrap().to_rfc3339(), "2025-01-20T09:30:00+00:00");
        assert_eq!(f.limit, Some(3));
        assert_eq!(filter("").unwrap_or_else(|e| panic!("{}", e.2)), Filter::default());
        let f = filter("?group=no+such%20group").unwrap_or_else(|e| panic!("{}", e.2));
        assert_eq!(f.group.as_deref(), Some("no such group"), "+ and %20 are spaces");
    }

    #[test]
    fn bad_queries_are_400_naming_the_parameter() {
        for (bad, named) in [
            ("?limit=x", "limit"),
            ("?typo=1", "unknown field `typo`"),
            ("?since=yesterday", "since"),
            ("?limit=-1", "limit"),
        ] {
            let e = filter(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!((e.0, e.1), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}");
            assert!(
                e.2.starts_with("invalid query: ") && e.2.contains(named),
                "{bad}: {}",
                e.2
            );
        }
    }

    #[test]
    fn bodies_are_checked() {
        let r: ReplayRequest = json_body(b"").unwrap_or_else(|e| panic!("{}", e.2));
        assert!(!r.dry_run && r.max_replays.is_none());
        let r: ReplayRequest =
            json_body(br#"{"filter":{"reason":"exhausted"},"dry_run":true}"#).unwrap_or_else(|e| panic!("{}", e.2));
        assert!(r.dry_run);
        assert!(
            json_body::<ReplayRequest>(br#"{"reason":"exhausted"}"#).is_err(),
            "filters go in `filter`"
        );
        assert!(json_body::<PurgeRequest>(b"{").is_err());
    }
}
