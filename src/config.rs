//! Layered settings: built-in defaults < `warren.toml` < `.env` < environment.
//!
//! Environment keys are `WARREN_` plus the setting's path with `__` between
//! levels (`WARREN_AMQP__URL`, `WARREN_CONSUMER__PREFETCH`). The names the
//! Django/Go setup used before warren work as aliases: `AMQP_URL`,
//! `GO_BACKEND_URL`, `EVENT_TIMEOUT` (seconds) and `EVENT_RETRY_ATTEMPTS`.
//! A `WARREN_*` variable naming no setting is returned as a warning.
//!
//! The loader never reads the process environment itself: callers pass the
//! variables in, so tests (and embedders) control exactly what is seen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

/// The broker connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(with = "duration_list", default)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// Largest number of events in one `POST /events/batch`.
    pub max_batch: usize,
    /// Bearer token required when set.
    pub token: Option<String>,
    /// Time limit of one request.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
}

/// The webhook handler that forwards events over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Separate listen address for `/metrics`; the ingress port serves it otherwise.
    pub listen: Option<SocketAddr>,
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
                prefetch: 256,
                concurrency: 64,
                shutdown_timeout: Duration::from_secs(30),
                retry: RetrySettings {
                    attempts: 3,
                    delays: Vec::new(),
                },
            },
            ingress: IngressSettings {
                listen: "127.0.0.1:8080".parse().expect("literal address"),
                max_body: 64 * 1024,
                max_batch: 500,
                token: None,
                request_timeout: Duration::from_secs(30),
            },
            webhook: WebhookSettings {
                url: None,
                path: "/events".into(),
                secret: None,
                timeout: Duration::from_secs(10),
            },
            metrics: MetricsSettings { listen: None },
        }
    }
}

/// Environment names from before warren, and the settings they set.
pub const ALIASES: &[(&str, &[&str])] = &[
    ("AMQP_URL", &["amqp.url"]),
    ("GO_BACKEND_URL", &["webhook.url"]),
    ("EVENT_TIMEOUT", &["publisher.confirm_timeout", "webhook.timeout"]),
    ("EVENT_RETRY_ATTEMPTS", &["consumer.retry.attempts"]),
];

const LIST_KEYS: &[&str] = &["consumer.retry.delays", "consumer.event_types"];

/// Where settings come from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config PATH`; when `None`, `warren.toml` in `dir` if it exists.
    pub file: Option<PathBuf>,
    /// Directory holding the optional `warren.toml` and `.env`.
    pub dir: PathBuf,
    /// The environment variables to apply (pass `std::env::vars()`).
    pub env: Vec<(String, String)>,
}

/// Settings plus what the loader wants the operator to know.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    /// E.g. an unknown `WARREN_*` variable.
    pub warnings: Vec<String>,
}

/// A setting that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error(".env file {path}: {message}")]
    DotEnv { path: String, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layers in order of precedence.
    ///
    /// # Errors
    ///
    /// A config file given but missing or unreadable, a bad `.env`, or a value
    /// of the wrong type (the message names the setting).
    pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
        let mut builder = config::Config::builder().add_source(
            config::Config::try_from(&Settings::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?,
        );
        match &sources.file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::File {
                        path: path.display().to_string(),
                        message: "not found".into(),
                    });
                }
                if path.extension().is_none_or(|e| e != "toml") {
                    return Err(ConfigError::File {
                        path: path.display().to_string(),
                        message: "settings files are TOML: name it *.toml".into(),
                    });
                }
                builder = builder.add_source(config::File::from(path.as_path()).required(true));
            }
            None => {
                let path = sources.dir.join("warren.toml");
                builder = builder.add_source(config::File::from(path).required(false));
            }
        }
        let mut vars = read_dotenv(&sources.dir.join(".env"))?;
        vars.extend(sources.env.iter().cloned());
        let (env_map, warnings) = warren_variables(&vars);
        let mut env = config::Environment::with_prefix("WARREN")
            .separator("__")
            .prefix_separator("_")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(env_map.into_iter().collect()));
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        let settings: Settings = builder
            .add_source(env)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| match e {
                config::ConfigError::FileParse { uri, cause } => ConfigError::File {
                    path: uri.unwrap_or_default(),
                    message: cause.to_string(),
                },
                other => ConfigError::Invalid(other.to_string()),
            })?;
        settings.check()?;
        Ok(Loaded { settings, warnings })
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.consumer.prefetch == 0 {
            return Err(ConfigError::Invalid("consumer.prefetch must be at least 1".into()));
        }
        if self.consumer.concurrency == 0 {
            return Err(ConfigError::Invalid("consumer.concurrency must be at least 1".into()));
        }
        if self.consumer.service.is_empty() || self.topology.exchange.is_empty() {
            return Err(ConfigError::Invalid(
                "consumer.service and topology.exchange must not be empty".into(),
            ));
        }
        for t in &self.consumer.event_types {
            if crate::event::EventType::find(t).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "consumer.event_types: unknown event type {t:?} (known: {})",
                    crate::event::EventType::known_names()
                )));
            }
        }
        if self.consumer.retry.tiers().iter().any(Duration::is_zero) {
            return Err(ConfigError::Invalid("consumer.retry.delays must be above zero".into()));
        }
        crate::uri::check_url(&self.amqp.url).map_err(|e| ConfigError::Invalid(format!("amqp.url: {e}")))?;
        if self.amqp.tls_cert_file.is_some() != self.amqp.tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "amqp.tls_cert_file and amqp.tls_key_file go together: set both or neither".into(),
            ));
        }
        if self.topology.quorum_initial_group_size == Some(0) {
            return Err(ConfigError::Invalid(
                "topology.quorum_initial_group_size must be at least 1 (or unset)".into(),
            ));
        }
        Ok(())
    }

    /// The settings as TOML, with every secret replaced by `***`.
    #[must_use]
    pub fn redacted_toml(&self) -> String {
        let mut s = self.clone();
        s.amqp.url = crate::uri::redact_url(&s.amqp.url);
        if let Some(u) = &s.webhook.url {
            s.webhook.url = Some(crate::uri::redact_url(u));
        }
        for secret in [&mut s.ingress.token, &mut s.webhook.secret] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        toml::to_string(&s).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
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

fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let err = |e: dotenvy::Error| ConfigError::DotEnv {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    dotenvy::from_path_iter(path)
        .map_err(err)?
        .map(|r| r.map_err(err))
        .collect()
}

/// Picks the `WARREN_*` variables, applies the aliases (a `WARREN_*` variable
/// wins over its alias) and reports the ones that match no setting.
fn warren_variables(vars: &[(String, String)]) -> (BTreeMap<String, String>, Vec<String>) {
    let keys = Settings::keys();
    let mut map = BTreeMap::new();
    let mut warnings = Vec::new();
    for (name, value) in vars {
        if let Some(path) = name.strip_prefix("WARREN_") {
            let path = path.to_lowercase().replace("__", ".");
            if keys.contains(&path) {
                map.insert(name.clone(), value.clone());
            } else if !warnings.iter().any(|w: &String| w.contains(name.as_str())) {
                warnings.push(format!("environment variable {name} matches no setting and is ignored"));
            }
        }
    }
    for (alias, targets) in ALIASES {
        if let Some((_, value)) = vars.iter().rev().find(|(n, _)| n == alias) {
            for target in *targets {
                let name = format!("WARREN_{}", target.to_uppercase().replace('.', "__"));
                map.entry(name).or_insert_with(|| value.clone());
            }
        }
    }
    (map, warnings)
}

/// `Duration` as a number of seconds or a string with a unit: `500ms`, `10s`, `5m`, `1h`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    /// Parses `1.5`, `10s`, `500ms`, `5m` or `1h`; a bare number is seconds.
    ///
    /// # Errors
    ///
    /// A message saying which forms are accepted.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
            (n, 0.001)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60.0)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 3600.0)
        } else {
            (s, 1.0)
        };
        let n: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 10s, 5m, 1h"))?;
        if !n.is_finite() || n < 0.0 {
            return Err(format!("invalid duration {s:?}: must be a positive number"));
        }
        Ok(Duration::from_secs_f64(n * mult))
    }

    /// The shortest exact form: `500ms`, `10s`, `5m`, `1h`.
    #[must_use]
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        if ms == 0 || !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else {
            format!("{}s", ms / 1000)
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Raw {
        Int(u64),
        Float(f64),
        Str(String),
    }

    impl Raw {
        pub(super) fn into_duration(self) -> Result<Duration, String> {
            match self {
                Raw::Int(n) => Ok(Duration::from_secs(n)),
                Raw::Float(f) => parse(&f.to_string()),
                Raw::Str(s) => parse(&s),
            }
        }
    }

    /// Serde `with` support.
    ///
    /// # Errors
    ///
    /// Never for a well-formed serializer.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Serde `with` support.
    ///
    /// # Errors
    ///
    /// A value that is not a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Raw::deserialize(d)?.into_duration().map_err(de::Error::custom)
    }
}

mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&super::duration::format(*d))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<super::duration::Raw>::deserialize(d)?
            .into_iter()
            .map(|r| r.into_duration().map_err(de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Loaded {
        let dir = std::env::temp_dir().join(format!("warren-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::load(&Sources { file: None, dir, env }).unwrap()
    }

    #[test]
    fn defaults_connect_to_local_broker() {
        let s = load(&[]).settings;
        assert_eq!(s.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.consumer.service, "warren");
        assert_eq!(s.consumer.retry.tiers(), [1, 10, 60].map(Duration::from_secs));
    }

    #[test]
    fn environment_overrides_with_nesting() {
        let s = load(&[
            ("WARREN_CONSUMER__PREFETCH", "32"),
            ("WARREN_AMQP__URL", "amqp://u:p@h:5672/v"),
            ("WARREN_CONSUMER__RETRY__DELAYS", "2s,30s"),
            ("WARREN_TOPOLOGY__QUEUE_TYPE", "classic"),
        ])
        .settings;
        assert_eq!(s.consumer.prefetch, 32);
        assert_eq!(s.amqp.url, "amqp://u:p@h:5672/v");
        assert_eq!(s.consumer.retry.tiers(), [2, 30].map(Duration::from_secs));
        assert_eq!(s.topology.queue_type, QueueType::Classic);
    }

    #[test]
    fn seed_aliases_apply_and_lose_to_warren_names() {
        let s = load(&[
            ("AMQP_URL", "amqp://a:b@alias:5672/%2f"),
            ("GO_BACKEND_URL", "http://go:8081"),
            ("EVENT_TIMEOUT", "7"),
            ("EVENT_RETRY_ATTEMPTS", "5"),
        ])
        .settings;
        assert_eq!(s.amqp.url, "amqp://a:b@alias:5672/%2f");
        assert_eq!(s.webhook.url.as_deref(), Some("http://go:8081"));
        assert_eq!(s.publisher.confirm_timeout, Duration::from_secs(7));
        assert_eq!(s.webhook.timeout, Duration::from_secs(7));
        assert_eq!(s.consumer.retry.tiers().len(), 5);
        let s = load(&[("AMQP_URL", "amqp://alias"), ("WARREN_AMQP__URL", "amqp://explicit")]).settings;
        assert_eq!(s.amqp.url, "amqp://explicit");
    }

    #[test]
    fn a_list_of_nodes_stays_one_string_and_tls_files_go_together() {
        let list = "amqp://u:p@127.0.0.1:5999,amqp://u:p@127.0.0.1:5672";
        let s = load(&[
            ("WARREN_AMQP__URL", list),
            ("WARREN_AMQP__SHUFFLE_URLS", "false"),
            ("WARREN_TOPOLOGY__QUORUM_INITIAL_GROUP_SIZE", "3"),
        ])
        .settings;
        assert_eq!(s.amqp.url, list);
        assert!(!s.amqp.shuffle_urls);
        assert_eq!(s.topology.quorum_initial_group_size, Some(3));
        let dir = std::env::temp_dir();
        let refused = |env: &[(&str, &str)]| {
            let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            Settings::load(&Sources {
                file: None,
                dir: dir.clone(),
                env,
            })
            .unwrap_err()
            .to_string()
        };
        let err = refused(&[("WARREN_AMQP__TLS_CERT_FILE", "/etc/warren/client.pem")]);
        assert!(err.contains("amqp.tls_key_file"), "{err}");
        let err = refused(&[("WARREN_TOPOLOGY__QUORUM_INITIAL_GROUP_SIZE", "0")]);
        assert!(err.contains("quorum_initial_group_size"), "{err}");
        let err = refused(&[("WARREN_AMQP__URL", "amqp://u:secret@a:1/x,amqp://u:secret@b:2/y")]);
        assert!(err.contains("virtual hosts") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn unknown_warren_variable_is_a_warning_naming_it() {
        let loaded = load(&[("WARREN_CONSUMER__PREFECH", "3")]);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("WARREN_CONSUMER__PREFECH"));
        assert_eq!(loaded.settings.consumer.prefetch, 256);
    }

    #[test]
    fn file_then_dotenv_then_environment() {
        let dir = std::env::temp_dir().join(format!("warren-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("warren.toml"),
            "[consumer]\nprefetch = 10\nservice = \"from-file\"\n[amqp]\nheartbeat = \"15s\"\n",
        )
        .unwrap();
        std::fs::write(dir.join(".env"), "WARREN_CONSUMER__PREFETCH=20\nEVENT_TIMEOUT=3\n").unwrap();
        let env = |v: &[(&str, &str)]| v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let s = Settings::load(&Sources {
            file: None,
            dir: dir.clone(),
            env: env(&[]),
        })
        .unwrap()
        .settings;
        assert_eq!((s.consumer.prefetch, s.consumer.service.as_str()), (20, "from-file"));
        assert_eq!(s.amqp.heartbeat, Duration::from_secs(15));
        assert_eq!(s.publisher.confirm_timeout, Duration::from_secs(3));
        let s = Settings::load(&Sources {
            file: None,
            dir,
            env: env(&[("WARREN_CONSUMER__PREFETCH", "30")]),
        })
        .unwrap()
        .settings;
        assert_eq!(s.consumer.prefetch, 30);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let dir = std::env::temp_dir();
        let env = vec![("WARREN_CONSUMER__PREFETCH".to_owned(), "many".to_owned())];
        let err = Settings::load(&Sources {
            file: None,
            dir: dir.clone(),
            env,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("prefetch"), "{err}");
        let missing = Settings::load(&Sources {
            file: Some("/nonexistent/w.toml".into()),
            dir,
            env: vec![],
        });
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/w.toml"));
    }

    #[test]
    fn a_settings_file_that_is_not_toml_is_refused() {
        let dir = std::env::temp_dir().join(format!("warren-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = dir.join("warren.yaml");
        std::fs::write(&yaml, "consumer:\n  prefetch: 10\n").unwrap();
        let err = Settings::load(&Sources {
            file: Some(yaml),
            dir,
            env: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("warren.yaml") && err.contains("TOML"), "{err}");
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let mut s = Settings::default();
        s.amqp.url = "amqp://admin:s3cret@broker:5672/%2f,amqp://admin:s3cret2@broker-2:5672/%2f".into();
        s.ingress.token = Some("tok3n".into());
        s.webhook.secret = Some("whsec_abc".into());
        let out = s.redacted_toml();
        for secret in ["s3cret", "s3cret2", "tok3n", "whsec_abc"] {
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
        let example = include_str!("../.env.example");
        for key in Settings::keys() {
            let var = format!("WARREN_{}", key.to_uppercase().replace('.', "__"));
            assert!(example.contains(&var), ".env.example lacks {var}");
        }
    }
}
