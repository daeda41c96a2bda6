//! Connecting to RabbitMQ: URI handling (and redaction), named connections,
//! heartbeats, and the backoff between attempts.

use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpSettings;

/// A connection that could not be made. Its message never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid AMQP URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Options of one connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    /// Shown in the management console's connection list.
    pub name: String,
    pub heartbeat: Duration,
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
    let mut uri = parse_url(&opts.url)?;
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

fn parse_url(url: &str) -> Result<AMQPUri, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    let mut uri: AMQPUri = url.parse().map_err(invalid)?;
    // amq-protocol-uri only takes DNS names as host and falls back to
    // "localhost" for an IP literal: take the host from the URL ourselves.
    if let Some(host) = host_of(url) {
        uri.authority.host = host;
    }
    Ok(uri)
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        hostport.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// Checks that `url` is a usable AMQP URI.
///
/// # Errors
///
/// What is wrong with it, without the password.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ()).map_err(|e| match e {
        ConnectError::InvalidUrl { reason, .. } | ConnectError::Unreachable { reason, .. } => reason,
    })
}

/// The URL with its password replaced by `***`, safe to log or print.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The virtual host a URL names (`/` for `%2f` or none).
#[must_use]
pub fn vhost_of(url: &str) -> String {
    url.parse::<AMQPUri>().map_or_else(
        |_| "/".to_owned(),
        |u| {
            if u.vhost.is_empty() { "/".to_owned() } else { u.vhost }
        },
    )
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
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://u:p%40ss@h/v?heartbeat=5"),
            "amqps://u:***@h/v?heartbeat=5"
        );
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("amqp://user@h"), "amqp://user@h");
    }

    #[test]
    fn ip_hosts_are_kept() {
        assert_eq!(
            parse_url("amqp://a:b@10.1.2.3:5673/%2f").unwrap().authority.host,
            "10.1.2.3"
        );
        assert_eq!(parse_url("amqp://[::1]:5672").unwrap().authority.host, "::1");
        assert_eq!(parse_url("amqp://rabbit/v").unwrap().authority.host, "rabbit");
    }

    #[test]
    fn vhosts() {
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://h/prod"), "prod");
    }

    #[test]
    fn invalid_url_error_has_no_password() {
        let err = check_url("amqp://u:hunter2@host:notaport/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(check_url("http://x").is_err());
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
