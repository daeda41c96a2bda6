//! The webhook handler: forwards every event to an HTTP service as a signed
//! `POST` (Standard Webhooks), and turns the answer into ack, retry or dead letter.
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use warren::Settings;
//! use warren::consumer::Consumer;
//! use warren::webhook::WebhookHandler;
//!
//! # async fn demo(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
//! let handler = WebhookHandler::new(&settings.webhook)?;
//! Consumer::new(settings).on_all(handler).run(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
//!
//! Each delivery is `POST {webhook.url}{webhook.path}` with the envelope as
//! its JSON body and the headers `webhook-id` (the `event_id`, the same on
//! every retry), `webhook-timestamp` (unix seconds of this attempt) and,
//! when `webhook.secret` is set, `webhook-signature`, and `warren-forwarded`
//! (the `event_id` again: a warren ingress refuses such a request with 508,
//! so a URL that leads back into warren cannot loop). A 2xx answer acks the
//! event; 408, 429, 5xx but 508, timeouts and connection errors retry it
//! later; any other answer (3xx included: redirects are not followed)
//! dead-letters it with the status and the start of the response body. `docs/WEBHOOK.md` is
//! the receiver's side.

mod response;
mod self_loop;
mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};
use tracing::{debug, warn};

pub use response::MAX_SNIPPET;
pub use self_loop::{check_not_ingress, reaches_ingress};
pub use signature::{MIN_KEY_LEN, SECRET_PREFIX, Secret};

use crate::config::WebhookSettings;
use crate::consumer::{AnyEventHandler, Context, HandlerError};
use crate::event::{Envelope, Event};
use response::root_cause;

/// Header carrying the attempt number (1 for the first delivery): the same
/// name as the AMQP header the attempt is read from.
pub const ATTEMPT_HEADER: &str = crate::event::headers::ATTEMPT;

/// Why a [`WebhookHandler`] cannot be built. Messages never contain the
/// secret or a URL password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// `webhook.url` is not set.
    #[error(
        "webhook.url is not set: set GO_BACKEND_URL or WARREN_WEBHOOK__URL to the receiver's base URL (e.g. http://127.0.0.1:8081)"
    )]
    MissingUrl,
    /// `webhook.url` (with `webhook.path`) is not an absolute http(s) URL.
    #[error("webhook.url {url} is not usable: {reason}")]
    InvalidUrl {
        /// The URL with its password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `webhook.secret` is not `whsec_` + base64 of at least 24 bytes.
    #[error("webhook.secret {0}")]
    InvalidSecret(String),
    /// `webhook.timeout` is zero.
    #[error("webhook.timeout must be above zero")]
    ZeroTimeout,
    /// `webhook.url` reaches warren's own ingress: every event would be
    /// forwarded into warren and published again.
    #[error(
        "webhook.url (GO_BACKEND_URL) {url} leads back into warren's own ingress (ingress.listen = {listen}): \
         every event would be forwarded into warren and published again. Point webhook.url at the receiver, \
         or move the ingress (WARREN_INGRESS__LISTEN)"
    )]
    LoopsToIngress {
        /// The endpoint, its password replaced by `***`.
        url: String,
        /// `ingress.listen`.
        listen: std::net::SocketAddr,
    },
    /// The HTTP client could not be set up (TLS roots, …).
    #[error("cannot set up the webhook HTTP client: {0}")]
    Client(String),
}

/// Forwards events to an HTTP receiver; an [`AnyEventHandler`], so
/// `Consumer::on_all(handler)` forwards every consumed type. Cheap to clone:
/// clones share one connection pool.
#[derive(Clone)]
pub struct WebhookHandler {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    endpoint: Url,
    /// `endpoint` with its password masked: for logs and errors.
    shown: String,
    secret: Option<Secret>,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookHandler")
            .field("endpoint", &self.inner.shown)
            .field("signed", &self.inner.secret.is_some())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookHandler {
    /// A handler posting to `settings.url` + `settings.path`. An unset or
    /// empty `secret` means unsigned deliveries (logged as a warning).
    ///
    /// # Errors
    ///
    /// [`WebhookError`]: the URL is missing or not http(s), the secret is
    /// malformed, the timeout is zero, or the TLS setup failed.
    pub fn new(settings: &WebhookSettings) -> Result<Self, WebhookError> {
        let endpoint = endpoint(settings.url.as_deref(), &settings.path)?;
        let shown = shown(&endpoint);
        let secret = match settings.secret.as_deref().map(str::trim) {
            None | Some("") => {
                warn!(endpoint = %shown, "webhook.secret is not set: deliveries are not signed");
                None
            }
            Some(s) => Some(Secret::parse(s).map_err(WebhookError::InvalidSecret)?),
        };
        if settings.timeout.is_zero() {
            return Err(WebhookError::ZeroTimeout);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client: client(settings.timeout)?,
                endpoint,
                shown,
                secret,
                timeout: settings.timeout,
            }),
        })
    }

    /// Where events go, with any password masked (safe to log).
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.inner.shown
    }

    /// Whether deliveries carry a `webhook-signature`.
    #[must_use]
    pub fn is_signed(&self) -> bool {
        self.inner.secret.is_some()
    }

    /// Posts one body as the delivery of `id`, attempt `attempt`.
    async fn deliver(&self, id: &str, body: Vec<u8>, attempt: u32) -> Result<(), HandlerError> {
        let started = Instant::now();
        let (status, result) = self.send(id, body, attempt).await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(()) => "ok",
            Err(HandlerError::Transient(_)) => "transient",
            Err(HandlerError::Permanent(_)) => "permanent",
        };
        metrics::histogram!(crate::metrics::WEBHOOK_DURATION_SECONDS).record(elapsed.as_secs_f64());
        metrics::counter!(crate::metrics::WEBHOOK_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
        debug!(
            event_id = id,
            attempt,
            status = status.map(|s| s.as_u16()),
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            outcome,
            "webhook delivery"
        );
        result
    }

    async fn send(&self, id: &str, body: Vec<u8>, attempt: u32) -> (Option<StatusCode>, Result<(), HandlerError>) {
        let inner = &*self.inner;
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = inner
            .client
            .post(inner.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(ATTEMPT_HEADER, attempt.to_string())
            // A warren ingress refuses what carries it: a webhook.url that
            // leads back into warren (through a proxy, say) cannot loop.
            .header(crate::event::FORWARDED_HEADER, id);
        if let Some(secret) = &inner.secret {
            request = request.header("webhook-signature", secret.sign(id, timestamp, &body));
        }
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => return (None, Err(self.request_failed(&e))),
        };
        let (status, result) = response::judge(response).await;
        (Some(status), result)
    }

    fn request_failed(&self, e: &reqwest::Error) -> HandlerError {
        let shown = &self.inner.shown;
        if e.is_timeout() {
            let timeout = crate::config::duration::format(self.inner.timeout);
            HandlerError::Transient(format!("no answer from {shown} within {timeout}"))
        } else if e.is_connect() {
            HandlerError::Transient(format!("cannot connect to {shown}: {}", root_cause(e)))
        } else if e.is_builder() {
            HandlerError::Permanent(format!("cannot build a request to {shown}: {}", root_cause(e)))
        } else {
            HandlerError::Transient(format!("request to {shown} failed: {}", root_cause(e)))
        }
    }
}

impl AnyEventHandler for WebhookHandler {
    async fn handle_any<E: Event>(&self, event: Envelope<E>, ctx: Context) -> Result<(), HandlerError> {
        let body = serde_json::to_vec(&event).map_err(HandlerError::permanent)?;
        self.deliver(&event.event_id.to_string(), body, ctx.attempt).await
    }
}

/// `url` + `path`, checked: absolute, http or https, with a host.
fn endpoint(url: Option<&str>, path: &str) -> Result<Url, WebhookError> {
    let raw = url.map(str::trim).filter(|u| !u.is_empty());
    let raw = raw.ok_or(WebhookError::MissingUrl)?;
    let invalid = |reason: String| WebhookError::InvalidUrl {
        url: crate::amqp::redact_url(raw),
        reason,
    };
    let mut url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme is {:?}; use http:// or https://",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".into()));
    }
    let path = path.trim().trim_start_matches('/');
    if !path.is_empty() {
        let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
    }
    Ok(url)
}

/// The URL with its password masked.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// rustls on ring with the platform's certificate verification: the TLS
/// setup of every HTTP client warren makes (reqwest is built without a
/// crypto provider of its own, so that aws-lc stays out of the build).
pub(crate) fn tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| e.to_string())?;
    // `dangerous()` is only the name of the API for a custom verifier: this
    // one is the platform's own certificate verification.
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// One shared client: rustls on ring with the system's roots (no aws-lc),
/// redirects off, the whole exchange bounded by `timeout`, pooled keep-alive
/// connections.
fn client(timeout: Duration) -> Result<reqwest::Client, WebhookError> {
    let failed = |e: &dyn std::fmt::Display| WebhookError::Client(e.to_string());
    let tls = tls_config().map_err(|e| failed(&e))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(128)
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| failed(&root_cause(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: Option<&str>, secret: Option<&str>) -> WebhookSettings {
        WebhookSettings {
            url: url.map(Into::into),
            path: "/events".into(),
            secret: secret.map(Into::into),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn url_and_path_join() {
        let e = |u: &str, p: &str| endpoint(Some(u), p).unwrap().to_string();
        assert_eq!(e("http://go:8081", "/events"), "http://go:8081/events");
        assert_eq!(e("http://go:8081/", "events"), "http://go:8081/events");
        assert_eq!(e("https://go/api/", "/v1/events"), "https://go/api/v1/events");
        assert_eq!(e("http://go/hook", ""), "http://go/hook");
    }

    #[test]
    fn missing_url_names_the_variables() {
        for url in [None, Some(""), Some("  ")] {
            let err = WebhookHandler::new(&settings(url, None)).unwrap_err();
            assert_eq!(err, WebhookError::MissingUrl);
            let msg = err.to_string();
            assert!(msg.contains("GO_BACKEND_URL") && msg.contains("WARREN_WEBHOOK__URL"));
        }
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        for url in ["ftp://u:hunter2@go/x", "go-backend:8081", "http://u:hunter2@/x"] {
            let err = WebhookHandler::new(&settings(Some(url), None)).unwrap_err().to_string();
            assert!(err.starts_with("webhook.url "), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = WebhookHandler::new(&settings(Some("ftp://go/x"), None)).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn secret_is_optional_but_checked_and_never_shown() {
        let ok = WebhookHandler::new(&settings(Some("http://u:hunter2@go"), None)).unwrap();
        assert!(!ok.is_signed());
        assert_eq!(ok.endpoint(), "http://u:***@go/events");
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signed = WebhookHandler::new(&settings(Some("http://go"), Some(secret))).unwrap();
        assert!(signed.is_signed());
        assert!(!format!("{signed:?}").contains("MfKQ9r8G"));
        let err = WebhookHandler::new(&settings(Some("http://go"), Some("hunter2"))).unwrap_err();
        assert!(matches!(err, WebhookError::InvalidSecret(_)));
        assert!(err.to_string().starts_with("webhook.secret must be `whsec_`"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn zero_timeout_is_refused() {
        let mut s = settings(Some("http://go"), None);
        s.timeout = Duration::ZERO;
        assert_eq!(WebhookHandler::new(&s).unwrap_err(), WebhookError::ZeroTimeout);
    }
}
