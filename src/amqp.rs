//! Connecting to RabbitMQ: URI handling (and redaction), named connections,
//! heartbeats, and the backoff between attempts.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpSettings;
use crate::uri;
pub use crate::uri::{check_url, redact_url, vhost_of};

/// A connection that could not be made. Its message never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid AMQP URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Options of one connection. Its `Debug` output hides the password.
#[derive(Clone)]
pub struct ConnectOptions {
    pub url: String,
    /// Shown in the management console's connection list.
    pub name: String,
    pub heartbeat: Duration,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl ConnectOptions {
    /// The options of one connection of warren's, doing `role` (`publish`,
    /// `consumer go-backend`, …): the console shows it as
    /// `<amqp.connection_name> <role>`.
    #[must_use]
    pub fn new(amqp: &AmqpSettings, role: &str) -> Self {
        Self {
            url: amqp.url.clone(),
            name: format!("{} {role}", amqp.connection_name),
            heartbeat: amqp.heartbeat,
        }
    }
}

/// Opens a named connection with heartbeats.
///
/// # Errors
///
/// [`ConnectError`] with the URL redacted.
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ConnectError> {
    let mut uri = uri::parse(&opts.url).map_err(|reason| ConnectError::InvalidUrl {
        url: redact_url(&opts.url),
        reason,
    })?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(u16::try_from(opts.heartbeat.as_secs()).unwrap_or(u16::MAX));
    }
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = Some(10_000);
    }
    let props = ConnectionProperties::default().with_connection_name(opts.name.as_str().into());
    Connection::connect_uri(uri, props)
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: redact_url(&opts.url),
            reason: describe(&e),
        })
}

/// A short, password-free description of a lapin error.
#[must_use]
pub fn describe(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::IOError(io) => io.to_string(),
        lapin::ErrorKind::ProtocolError(amqp) => amqp.to_string(),
        _ => e.to_string(),
    }
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles, never above `cap`.
    #[must_use]
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The next delay: uniform in `[ceiling/2, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1 << self.attempt.min(16)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = f64::from(uuid::Uuid::now_v7().as_u128() as u16) / f64::from(u16::MAX);
        ceiling.mul_f64(0.5 + jitter / 2.0)
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_options_debug_hides_the_password() {
        let mut amqp = crate::Settings::default().amqp;
        amqp.url = "amqp://u:Qz9Kw@h:5672/%2f".into();
        let out = format!("{:?}", ConnectOptions::new(&amqp, "publish"));
        assert!(!out.contains("Qz9Kw") && out.contains("u:***@h"), "{out}");
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(
            late >= Duration::from_millis(500) && late <= Duration::from_secs(1),
            "{late:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
