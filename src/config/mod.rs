//! Layered settings: built-in defaults < `warren.toml` < `.env` < environment.
//!
//! Environment keys are `WARREN_` plus the setting's path with `__` between
//! levels (`WARREN_AMQP__URL`, `WARREN_CONSUMER__PREFETCH`). The names the
//! Django/Go setup used before warren work as aliases: `AMQP_URL`,
//! `GO_BACKEND_URL`, `EVENT_TIMEOUT` (seconds) and `EVENT_RETRY_ATTEMPTS`.
//! A `WARREN_*` variable naming no setting is returned as a warning that
//! suggests the nearest valid name; a bad value is an error in the words the
//! user set it with ([`ConfigError::Value`]).
//!
//! The loader never reads the process environment itself: callers pass the
//! variables in, so tests (and embedders) control exactly what is seen.

mod address;
pub mod duration;
mod errors;
mod layers;
mod load;
pub mod names;
mod roles;
mod secret;
mod token;
mod values;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use errors::ConfigError;
pub use load::{Loaded, Origin, Sources};

/// Every setting of warren. `Settings::default()` is the built-in layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub topology: TopologySettings,
    pub publisher: PublisherSettings,
    pub consumer: ConsumerSettings,
    pub ingress: IngressSettings,
    pub webhook: WebhookSettings,
    pub metrics: MetricsSettings,
    pub relay: RelaySettings,
    pub dead: DeadSettings,
}

/// The broker connection.
/// Its `Debug` output hides the secrets (see `secret.rs`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// AMQP URI, or several separated by commas (the nodes of a cluster:
    /// every (re)connect tries the next); holds passwords, so it is redacted
    /// wherever it is shown.
    pub url: String,
    /// Shuffle the nodes of `url` once at start, so that instances spread
    /// over the cluster; `false` keeps the order written.
    pub shuffle_urls: bool,
    /// PEM file of CA certificates trusted for `amqps://` nodes, in addition
    /// to the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to `amqps://` nodes.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Connection name shown in the management console (`connection_name`).
    pub connection_name: String,
    /// Heartbeat timeout requested from the broker, in seconds.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
}

/// The broker objects warren declares (see [`crate::topology`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySettings {
    /// Topic exchange events are published to.
    pub exchange: String,
    /// `quorum` (default) or `classic`, for every queue warren declares.
    pub queue_type: QueueType,
    /// Redeliveries after which a quorum queue dead-letters a message itself
    /// (`x-delivery-limit`): the guard against a consumer that crashes on it.
    pub delivery_limit: u32,
    /// Declare the exchange and queues at start (needs the configure
    /// permission). `false` only checks that they exist (passive declares,
    /// which need no permission), so that a least-privilege user can run
    /// warren once the topology is applied (docs/PERMISSIONS.md).
    pub declare: bool,
    /// Replicas of each new quorum queue (`x-quorum-initial-group-size`);
    /// unset, the broker's default applies (up to three, one per node).
    pub quorum_initial_group_size: Option<u32>,
}

/// Queue type of every queue warren declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, durable, with delivery limits: the production choice.
    Quorum,
    /// RabbitMQ's classic queue.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument's value (and the settings' spelling).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [QueueType::Quorum, QueueType::Classic]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown queue type {s:?} (known: quorum, classic)"))
    }
}

/// Publishing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherSettings {
    /// How long to wait for the broker's confirm (`EVENT_TIMEOUT`); a publish
    /// gives up at most a sixteenth of it (250 ms at most) later, since
    /// publishes that start that close together share one timer.
    #[serde(with = "duration")]
    pub confirm_timeout: Duration,
    /// `source` (and AMQP `app_id`) of events warren builds itself.
    pub source: String,
    /// Send a publish again (same `event_id`) when the connection died
    /// before its confirm; otherwise fail it with a "connection lost" error.
    pub resend_on_reconnect: bool,
}

/// The consumer service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Service name: queues are `<service>.<event_type>`.
    pub service: String,
    /// Event types this service consumes.
    pub event_types: Vec<String>,
    /// Unacknowledged deliveries the broker may push per queue (`basic.qos`).
    pub prefetch: u16,
    /// Handlers running at once per queue.
    pub concurrency: usize,
    /// How long in-flight handlers may run after a shutdown signal.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    pub retry: RetrySettings,
}

/// Retries of failed handlers, through TTL'd delay queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Retries after the first attempt (`EVENT_RETRY_ATTEMPTS`); ignored when
    /// `delays` is set.
    pub attempts: u32,
    /// Delay of each retry tier, e.g. `["1s", "10s", "60s"]`; empty means
    /// derived from `attempts`.
    #[serde(with = "duration::list", default)]
    pub delays: Vec<Duration>,
}

impl RetrySettings {
    /// The delay of each tier: `delays` when given, else the first `attempts`
    /// steps of 1 s, 10 s, 1 min, 5 min, 30 min, then hourly.
    #[must_use]
    pub fn tiers(&self) -> Vec<Duration> {
        if !self.delays.is_empty() {
            return self.delays.clone();
        }
        const LADDER: [u64; 5] = [1, 10, 60, 300, 1800];
        (0..self.attempts as usize)
            .map(|i| Duration::from_secs(LADDER.get(i).copied().unwrap_or(3600)))
            .collect()
    }
}

/// The HTTP ingress.
/// Its `Debug` output hides the secrets (see `secret.rs`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// Where the ingress listens: port 8597 by default, away from the ports
    /// of the services warren sits between (Go on 8080, Django on 8000).
    /// A host name (`localhost:8597`) is resolved when the settings are read.
    #[serde(deserialize_with = "address::deserialize")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// Largest number of events in one `POST /events/batch`.
    pub max_batch: usize,
    /// The `Host` names (`name` or `name:port`) the ingress answers to on
    /// `/events` and `/dead`, against DNS rebinding. Empty: the listen
    /// address's own forms on a loopback address, any name elsewhere.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Bearer token required when set; blanks around it are dropped.
    #[serde(deserialize_with = "token::deserialize", default)]
    pub token: Option<String>,
    /// Time limit of one request.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Time a client has to send a complete request head, from the
    /// connection's start or from its first byte after an idle spell.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Connections open at once; at the cap, the one slowest to send its
    /// request head (else the one idle the longest) is closed for a new one.
    pub max_connections: usize,
}

/// The webhook handler that forwards events over HTTP.
/// Its `Debug` output hides the secrets (see `secret.rs`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Base URL of the receiver (`GO_BACKEND_URL`).
    pub url: Option<String>,
    /// Path appended to `url`.
    pub path: String,
    /// `whsec_…` signing secret (Standard Webhooks).
    pub secret: Option<String>,
    /// Time limit of one delivery (`EVENT_TIMEOUT`).
    #[serde(with = "duration")]
    pub timeout: Duration,
}

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Separate listen address for `/metrics`; the ingress port serves it
    /// otherwise. A host name is resolved when the settings are read.
    #[serde(deserialize_with = "address::option::deserialize", default)]
    pub listen: Option<SocketAddr>,
}

/// The PostgreSQL outbox relay (`warren relay`, `warren run --relay`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// `postgres://user:password@host/db` (`DATABASE_URL`); holds the
    /// password, so it is redacted wherever it is shown.
    pub database_url: Option<String>,
    /// The outbox table, optionally schema-qualified (`app.warren_outbox`).
    pub table: String,
    /// Rows claimed, published and marked per transaction.
    pub batch_size: usize,
    /// The longest wait between two polls; a NOTIFY ends it early.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// How long published rows are kept; `0s` deletes a row when its event
    /// is confirmed instead of marking it.
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Database connections in the relay's pool.
    pub pool_size: usize,
}

/// The dead-letter operations (`warren dead`, the `/dead` routes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadSettings {
    /// Where `POST /dead/purge` writes each removed message before it
    /// removes it (made, mode 0700, at the first purge; relative to the
    /// working directory).
    pub export_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            amqp: AmqpSettings {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                connection_name: "warren".into(),
                heartbeat: Duration::from_secs(30),
                shuffle_urls: true,
                tls_ca_file: None,
                tls_cert_file: None,
                tls_key_file: None,
            },
            topology: TopologySettings {
                exchange: "user.events".into(),
                queue_type: QueueType::Quorum,
                delivery_limit: 10,
                declare: true,
                quorum_initial_group_size: None,
            },
            publisher: PublisherSettings {
                confirm_timeout: Duration::from_secs(10),
                source: "warren".into(),
                resend_on_reconnect: true,
            },
            consumer: ConsumerSettings {
                service: "warren".into(),
                event_types: crate::event::EVENT_TYPES.iter().map(|t| t.name.to_owned()).collect(),
                prefetch: 512,
                concurrency: 64,
                shutdown_timeout: Duration::from_secs(30),
                retry: RetrySettings {
                    attempts: 3,
                    delays: Vec::new(),
                },
            },
            ingress: IngressSettings {
                listen: "127.0.0.1:8597".parse().expect("literal address"),
                max_body: 64 * 1024,
                max_batch: 500,
                allowed_hosts: Vec::new(),
                token: None,
                request_timeout: Duration::from_secs(30),
                header_timeout: Duration::from_secs(10),
                // Longer than the 90 s that Go's and reqwest's pools keep an
                // idle connection: the client closes first, so it never
                // sends a request into a connection the ingress is closing.
                idle_timeout: Duration::from_secs(120),
                max_connections: 1024,
            },
            webhook: WebhookSettings {
                url: None,
                path: "/events".into(),
                secret: None,
                timeout: Duration::from_secs(10),
            },
            metrics: MetricsSettings { listen: None },
            relay: RelaySettings {
                database_url: None,
                table: "warren_outbox".into(),
                batch_size: 500,
                poll_interval: Duration::from_secs(1),
                retention: Duration::from_secs(24 * 3600),
                pool_size: 4,
            },
            dead: DeadSettings {
                export_dir: "dead-exports".into(),
            },
        }
    }
}

/// Environment names from before warren, and the settings they set.
pub const ALIASES: &[(&str, &[&str])] = &[
    ("AMQP_URL", &["amqp.url"]),
    ("GO_BACKEND_URL", &["webhook.url"]),
    ("EVENT_TIMEOUT", &["publisher.confirm_timeout", "webhook.timeout"]),
    ("EVENT_RETRY_ATTEMPTS", &["consumer.retry.attempts"]),
    ("DATABASE_URL", &["relay.database_url"]),
];

impl Settings {
    /// The settings as TOML, with every secret replaced by `***`.
    #[must_use]
    pub fn redacted_toml(&self) -> String {
        toml::to_string(&self.redacted()).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// Every setting's path (`consumer.retry.delays`), for `.env.example` and typo checks.
    #[must_use]
    pub fn keys() -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let value = serde_json::to_value(Settings::default()).expect("settings serialize");
        collect_keys("", &value, &mut out);
        // Optional settings are absent from the serialized defaults.
        for k in [
            "ingress.token",
            "webhook.url",
            "webhook.secret",
            "metrics.listen",
            "relay.database_url",
            "amqp.tls_ca_file",
            "amqp.tls_cert_file",
            "amqp.tls_key_file",
            "topology.quorum_initial_group_size",
        ] {
            out.insert(k.to_owned());
        }
        out
    }
}

fn collect_keys(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_keys(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingress_listens_off_the_seed_services_ports() {
        // The Go server (GO_BACKEND_URL) is on 8080 and Django's runserver on
        // 8000: an ingress there would take their place, or receive what the
        // webhook forwards to them.
        let listen = Settings::default().ingress.listen;
        assert_eq!(listen.to_string(), "127.0.0.1:8597");
        assert!(![8000, 8080].contains(&listen.port()));
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let mut s = Settings::default();
        s.amqp.url = "amqp://admin:s3cret@broker:5672/%2f".into();
        s.ingress.token = Some("tok3n".into());
        s.webhook.secret = Some("whsec_abc".into());
        let out = s.redacted_toml();
        for secret in ["s3cret", "tok3n", "whsec_abc"] {
            assert!(!out.contains(secret), "{secret} leaked in\n{out}");
        }
        assert!(out.contains("amqp://admin:***@broker:5672/%2f"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration::parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration::parse("7").unwrap(), Duration::from_secs(7));
        assert!(duration::parse("soon").is_err());
        assert_eq!(duration::format(Duration::from_secs(3600)), "1h");
        assert_eq!(duration::format(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn env_example_lists_every_setting() {
        let example = include_str!("../../.env.example");
        for key in Settings::keys() {
            let var = format!("WARREN_{}", key.to_uppercase().replace('.', "__"));
            assert!(example.contains(&var), ".env.example lacks {var}");
        }
    }
}
