//! Connecting to RabbitMQ: URI handling (and redaction), the nodes of a
//! cluster tried in turn, TLS, named connections, heartbeats, and the
//! backoff between attempts.

mod nodes;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpSettings;
pub use crate::uri::{check_url, redact_url, vhost_of};
use crate::{refusal, uri};
use nodes::Nodes;
use tls::TlsFiles;

/// How long one node may take to accept a connection (TCP, TLS and the AMQP
/// handshake) when its URI sets no `connection_timeout`: a silent node must
/// not hold up the others.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that could not be made. Its message never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid AMQP URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// TLS is set up wrong (CA, host name, client certificate, files):
    /// retrying will not help.
    #[error("TLS to RabbitMQ at {url}: {reason}")]
    Tls { url: String, reason: String },
    /// The broker answered and refused: a wrong login, a vhost that does
    /// not exist, a user without access to it. Waiting does not fix these.
    #[error("RabbitMQ at {url} refused user {user:?} on vhost {vhost:?}: {reason}")]
    Refused {
        url: String,
        user: String,
        vhost: String,
        reason: String,
    },
}

impl ConnectError {
    /// The broker refused the login or the vhost: retrying at start only
    /// hides a configuration error (a connection that worked once and fails
    /// later is retried: the broker may be restoring its definitions).
    #[must_use]
    pub fn is_refused(&self) -> bool {
        matches!(self, ConnectError::Refused { .. })
    }
}

/// Options of one connection. Its reconnects share them: each starts with
/// the node after the one last connected to. Its `Debug` output hides the
/// passwords.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `amqp.url`: one URI or several, comma-separated.
    pub url: String,
    /// Shown in the management console's connection list, followed by the
    /// node connected to.
    pub name: String,
    pub heartbeat: Duration,
    nodes: Arc<Nodes>,
    tls: TlsFiles,
}

impl ConnectOptions {
    /// The options of one connection of warren's, doing `role` (`publish`,
    /// `consumer go-backend`, …): the console shows it as
    /// `<amqp.connection_name> <role> @ <host>:<port>`. The nodes of
    /// `amqp.url` are shuffled here when `amqp.shuffle_urls` is set.
    #[must_use]
    pub fn new(amqp: &AmqpSettings, role: &str) -> Self {
        Self {
            url: amqp.url.clone(),
            name: format!("{} {role}", amqp.connection_name),
            heartbeat: amqp.heartbeat,
            nodes: Arc::new(Nodes::new(&amqp.url, amqp.shuffle_urls)),
            tls: TlsFiles::new(amqp),
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("heartbeat", &self.heartbeat)
            .field("nodes", &self.nodes)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Opens a named connection with heartbeats to the first node that takes
/// it, trying each node of `amqp.url` once, starting after the node last
/// connected to.
///
/// # Errors
///
/// [`ConnectError`] with the URLs redacted: `Refused` as soon as a node
/// refuses the login or the vhost (the nodes of a cluster share their
/// users), `Tls` when TLS failed on a node and no node took the connection,
/// `Unreachable` naming each node's failure.
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ConnectError> {
    let tls_error = |reason| ConnectError::Tls {
        url: redact_url(&opts.url),
        reason,
    };
    let tls = opts.tls.load().map_err(tls_error)?;
    let mut failures = Vec::new();
    let mut tls_failure = None;
    for (index, url) in opts.nodes.round() {
        match connect_node(opts, url, &tls).await {
            Ok(conn) => {
                opts.nodes.connected(index);
                return Ok(conn);
            }
            Err(NodeError::InvalidUrl(reason)) => {
                return Err(ConnectError::InvalidUrl {
                    url: redact_url(url),
                    reason,
                });
            }
            Err(NodeError::Refused { user, vhost, reason }) => {
                return Err(ConnectError::Refused {
                    url: redact_url(url),
                    user,
                    vhost,
                    reason: reason.to_owned(),
                });
            }
            Err(NodeError::Tls(reason)) => {
                tls_failure.get_or_insert_with(|| format!("{}: {reason}", uri::node_of(url)));
            }
            Err(NodeError::Failed(reason)) => failures.push(format!("{}: {reason}", uri::node_of(url))),
        }
    }
    if let Some(reason) = tls_failure {
        return Err(tls_error(reason));
    }
    let reason = if opts.nodes.len() == 1 {
        failures
            .pop()
            .and_then(|f| f.split_once(": ").map(|(_, r)| r.to_owned()))
    } else {
        Some(failures.join("; "))
    };
    Err(ConnectError::Unreachable {
        url: redact_url(&opts.url),
        reason: reason.unwrap_or_default(),
    })
}

enum NodeError {
    InvalidUrl(String),
    Refused {
        user: String,
        vhost: String,
        reason: &'static str,
    },
    Tls(String),
    Failed(String),
}

/// One attempt on one node, within its connection timeout.
async fn connect_node(opts: &ConnectOptions, url: &str, tls: &OwnedTLSConfig) -> Result<Connection, NodeError> {
    let mut uri = uri::parse(url).map_err(NodeError::InvalidUrl)?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(u16::try_from(opts.heartbeat.as_secs()).unwrap_or(u16::MAX));
    }
    // lapin's async connect ignores `connection_timeout`: it is applied here.
    let limit = uri.query.connection_timeout.map_or(NODE_TIMEOUT, Duration::from_millis);
    let (user, vhost) = (uri.authority.userinfo.username.clone(), uri.vhost.clone());
    let name = format!("{} @ {}", opts.name, uri::node_of(url));
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| NodeError::Failed(describe(&e)))?;
    let without_client_cert = uri.scheme == lapin::uri::AMQPScheme::AMQPS && tls.identity.is_none();
    let attempt = Connection::connect_uri_with_config(uri, props, tls.clone(), runtime);
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            if let Some(reason) = refused_because(&e) {
                return Err(NodeError::Refused { user, vhost, reason });
            }
            let reason = describe(&e);
            Err(match tls::explain(&reason) {
                Some(explained) => NodeError::Tls(explained),
                None => NodeError::Failed(tls::hang_up_hint(reason, without_client_cert)),
            })
        }
        Err(_) => Err(NodeError::Failed(format!("no answer within {limit:?}"))),
    }
}

/// Why the broker refused a connection it answered, when it did: a login
/// refused (`ACCESS_REFUSED`), a vhost missing or closed to the user
/// (`NOT_ALLOWED`). Other errors (a refused TCP connection, a timeout, a
/// vhost that is down) may pass.
fn refused_because(e: &lapin::Error) -> Option<&'static str> {
    let (code, text) = refusal::reply(e)?;
    match code {
        refusal::ACCESS_REFUSED => Some("login refused: wrong username or password (fix amqp.url)"),
        refusal::NOT_ALLOWED if text.contains("not found") => {
            Some("the vhost does not exist (create it, or fix the vhost in amqp.url)")
        }
        refusal::NOT_ALLOWED if text.contains("refused for user") => {
            Some("the user has no permissions on this vhost (see docs/PERMISSIONS.md)")
        }
        _ => None,
    }
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
        // Full jitter from the thread's generator, so instances that lost the
        // broker together do not come back in step.
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker_error(code: u16, text: &str) -> lapin::Error {
        let amqp = lapin::protocol::AMQPError::from_id(code, text.into()).expect("a known reply code");
        lapin::ErrorKind::ProtocolError(amqp).into()
    }

    #[test]
    fn a_refused_login_or_vhost_is_told_apart_from_an_unreachable_broker() {
        let login = broker_error(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        );
        assert!(refused_because(&login).unwrap().contains("wrong username or password"));
        let vhost = broker_error(530, "NOT_ALLOWED - vhost prod not found");
        assert!(refused_because(&vhost).unwrap().contains("does not exist"));
        let denied = broker_error(530, "NOT_ALLOWED - access to vhost 'prod' refused for user 'u'");
        assert!(refused_because(&denied).unwrap().contains("no permissions"));
        let down = broker_error(530, "NOT_ALLOWED - vhost prod is down");
        assert_eq!(refused_because(&down), None, "a vhost that is down may come back");
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(refused_because(&io), None);
    }

    #[test]
    fn connect_options_debug_hides_the_password() {
        let mut amqp = crate::Settings::default().amqp;
        amqp.url = "amqp://u:Qz9Kw@h:5672/%2f".into();
        let out = format!("{:?}", ConnectOptions::new(&amqp, "publish"));
        assert!(!out.contains("Qz9Kw") && out.contains("u:***@h"), "{out}");
    }

    #[test]
    fn options_never_show_a_password() {
        let mut amqp = crate::Settings::default().amqp;
        amqp.url = "amqp://u:hunter2@h1:5672/%2f,amqp://u:hunter3@h2:5672/%2f".into();
        let shown = format!("{:?}", ConnectOptions::new(&amqp, "publish"));
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
        assert!(shown.contains("h1:5672") && shown.contains("h2:5672"), "{shown}");
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

    #[test]
    fn jitter_spreads_delays_over_the_upper_half_of_the_ceiling() {
        let ceiling = Duration::from_secs(1);
        let delays: Vec<Duration> = (0..2000).map(|_| Backoff::new(ceiling, ceiling).next_delay()).collect();
        for d in &delays {
            assert!(*d >= ceiling / 2 && *d <= ceiling, "{d:?}");
        }
        let (low, high) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        // 2000 uniform draws: both ends of the range are reached within 2 %.
        assert!(*low < Duration::from_millis(510), "lowest {low:?}");
        assert!(*high > Duration::from_millis(990), "highest {high:?}");
        let below_middle = delays.iter().filter(|d| **d < Duration::from_millis(750)).count();
        assert!(
            (800..1200).contains(&below_middle),
            "{below_middle} of 2000 below 750ms"
        );
    }
}
