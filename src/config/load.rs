//! Loading: the layers (defaults < `warren.toml` < `.env` < environment)
//! merged into [`Settings`], each value checked where the user set it, and
//! where each setting's value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::errors::{SECRET_KEYS, setting};
use super::layers::{self, Entry};
use super::{ConfigError, Settings, names, values};

/// Settings given as lists (comma separated in the environment).
const LIST_KEYS: &[&str] = &["consumer.retry.delays", "consumer.event_types", "ingress.allowed_hosts"];

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
    /// Where the value of every setting (`consumer.prefetch`) came from.
    pub origins: BTreeMap<String, Origin>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A key of the settings file.
    File { path: PathBuf, key: String },
    /// A variable of the `.env` file (an alias such as `EVENT_TIMEOUT` too).
    #[serde(rename = ".env")]
    DotEnv { path: PathBuf, variable: String },
    /// An environment variable (an alias such as `AMQP_URL` too).
    Environment { variable: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, .. } => write!(f, "file {}", path.display()),
            Origin::DotEnv { variable, .. } => write!(f, ".env {variable}"),
            Origin::Environment { variable } => write!(f, "environment {variable}"),
        }
    }
}

impl Settings {
    /// Loads the layers in order of precedence.
    ///
    /// # Errors
    ///
    /// A config file given but missing, unreadable or not TOML, a key in it
    /// that names no setting, a bad `.env`, or a value its setting does not
    /// accept: the message names the variable or file key as the user set
    /// it, and says what is accepted ([`ConfigError::Value`]).
    pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
        let file = layers::read_file(sources)?;
        let mut entries = match &file {
            Some((path, text)) => layers::file_entries(path, text)?,
            None => Vec::new(),
        };
        let dotenv_path = sources.dir.join(".env");
        let dotenv = layers::read_dotenv(&dotenv_path)?;
        let (variables, warnings) = layers::variables(&dotenv_path, &dotenv, &sources.env);
        entries.extend(variables);
        for entry in &entries {
            values::check(&entry.key, &entry.value).map_err(|detail| ConfigError::value(entry, detail))?;
        }
        let settings = merge(file.as_ref().map(|(_, text)| text.as_str()), &entries)?;
        check_together(&settings, &entries)?;
        let mut origins: BTreeMap<String, Origin> =
            Settings::keys().into_iter().map(|k| (k, Origin::Default)).collect();
        // File entries come first, so a variable's origin wins over the file's.
        for entry in entries {
            origins.insert(entry.key, entry.origin);
        }
        Ok(Loaded {
            settings,
            warnings,
            origins,
        })
    }
}

/// The rules that span settings (each value was checked on its own).
fn check_together(s: &Settings, entries: &[Entry]) -> Result<(), ConfigError> {
    if s.amqp.tls_cert_file.is_some() != s.amqp.tls_key_file.is_some() {
        return Err(ConfigError::Invalid(
            "amqp.tls_cert_file and amqp.tls_key_file go together: set both or neither".into(),
        ));
    }
    check_name_lengths(s, entries)?;
    // The consumer's connection holds one channel to republish and one per
    // work queue (the one that declares is closed before they open).
    let channels = u16::try_from(s.consumer.event_types.len() + 1).unwrap_or(u16::MAX);
    crate::uri::check_limits(&s.amqp.url, channels).map_err(|e| setting(entries, "amqp.url", &e))
}

/// Refuses names the broker would refuse: a queue or exchange name is at
/// most 255 bytes, and the longest queue name is the service's with an
/// event type and a suffix (`.retry.10s`, `.dead`).
fn check_name_lengths(s: &Settings, entries: &[Entry]) -> Result<(), ConfigError> {
    let max = names::MAX_NAME;
    if s.topology.exchange.len() > max {
        let problem = format!(
            "the broker takes names of at most {max} bytes; this one is {}",
            s.topology.exchange.len()
        );
        return Err(setting(entries, "topology.exchange", &problem));
    }
    match names::longest_queue(s) {
        Some(longest) if longest.len() > max => {
            let room = (max + s.consumer.service.len()).saturating_sub(longest.len());
            let problem = format!(
                "makes queue names of up to {} bytes (such as {}), and the broker takes at most {max}: \
                 with these event types and retry tiers, a service name may be {} bytes long at most",
                longest.len(),
                super::errors::quote(&longest),
                room,
            );
            Err(setting(entries, "consumer.service", &problem))
        }
        _ => Ok(()),
    }
}

/// Merges the defaults, the file and the variables (already checked) into settings.
fn merge(file: Option<&str>, entries: &[Entry]) -> Result<Settings, ConfigError> {
    let defaults = config::Config::try_from(&Settings::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(text) = file {
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    let mut variables = BTreeMap::new();
    for entry in entries {
        let (Origin::DotEnv { .. } | Origin::Environment { .. }, values::Raw::Text(value)) =
            (&entry.origin, &entry.value)
        else {
            continue;
        };
        if LIST_KEYS.contains(&entry.key.as_str()) && value.is_empty() {
            // The environment source reads "" as one empty item, not as no items.
            builder = builder
                .set_override(entry.key.as_str(), Vec::<String>::new())
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        } else {
            variables.insert(layers::variable_of(&entry.key), value.clone());
        }
    }
    let mut env = config::Environment::with_prefix("WARREN")
        .separator("__")
        .prefix_separator("_")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(variables.into_iter().collect()));
    for key in LIST_KEYS {
        env = env.with_list_parse_key(key);
    }
    builder
        .add_source(env)
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| unexpected(&e, entries))
}

/// A value that passed its check but not serde: named by the entry that set
/// it when the error says which setting, else the message with secrets masked.
fn unexpected(e: &config::ConfigError, entries: &[Entry]) -> ConfigError {
    let key = match e {
        config::ConfigError::Type { key, .. } | config::ConfigError::At { key, .. } => key.as_deref(),
        _ => None,
    };
    let key = key.map(|k| k.split('[').next().unwrap_or(k));
    if let Some(entry) = entries.iter().rev().find(|entry| Some(entry.key.as_str()) == key) {
        return ConfigError::value(entry, None);
    }
    // Masked where a secret sits, as in the log: a short token replaced
    // everywhere would garble the message and show itself by the gap.
    let secrets = entries
        .iter()
        .filter(|e| SECRET_KEYS.contains(&e.key.as_str()))
        .filter_map(|e| match &e.value {
            values::Raw::Text(secret) => Some(secret.as_bytes()),
            values::Raw::Toml(_) => None,
        });
    let message = e.to_string();
    let message = crate::secrets::Scrubber::new(secrets).scrub(&message).into_owned();
    // It may quote a value (`invalid type: string "…"`): cut, as values are.
    ConfigError::Invalid(super::errors::quote_at_most(&message, 4 * super::errors::QUOTED))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::QueueType;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn vars(env: &[(&str, &str)]) -> Vec<(String, String)> {
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn try_load(dir: &Path, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        Settings::load(&Sources {
            file: None,
            dir: dir.to_owned(),
            env: vars(env),
        })
    }

    fn load(env: &[(&str, &str)]) -> Loaded {
        try_load(&temp_dir(), env).unwrap()
    }

    fn error(env: &[(&str, &str)]) -> String {
        try_load(&temp_dir(), env).unwrap_err().to_string()
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
    fn unknown_warren_variable_is_a_warning_naming_it() {
        let loaded = load(&[("WARREN_CONSUMER__PREFECH", "3")]);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("WARREN_CONSUMER__PREFECH"));
        assert_eq!(loaded.settings.consumer.prefetch, 512);
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
        assert!(err.contains("WARREN_CONSUMER__PREFETCH=many"), "{err}");
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
    fn a_bad_variable_is_named_as_set_with_its_limits() {
        assert_eq!(
            error(&[("WARREN_CONSUMER__PREFETCH", "abc")]),
            "environment variable WARREN_CONSUMER__PREFETCH=abc: must be a whole number from 1 to 65535"
        );
        assert_eq!(
            error(&[("WARREN_CONSUMER__PREFETCH", "70000")]),
            "environment variable WARREN_CONSUMER__PREFETCH=70000: must be a whole number from 1 to 65535"
        );
        assert_eq!(
            error(&[("EVENT_TIMEOUT", "-1")]),
            "environment variable EVENT_TIMEOUT=-1: must be a duration above zero, like 500ms, 30s or 2m (a bare number is seconds)"
        );
        let err = error(&[("WARREN_CONSUMER__CONCURRENCY", "1.5")]);
        assert!(err.contains("=1.5: must be a whole number of 1 or more"), "{err}");
        let err = error(&[("WARREN_CONSUMER__EVENT_TYPES", "user.registered,user.deleted")]);
        assert!(err.contains("(\"user.deleted\" is not one)"), "{err}");
    }

    #[test]
    fn a_bad_secret_is_named_but_not_shown() {
        for (name, value) in [
            ("WARREN_AMQP__URL", "amqp://u:Qz9/Kw@h/%2f"),
            ("AMQP_URL", "amqp://u:Qz9/Kw@h/%2f"),
        ] {
            let err = error(&[(name, value)]);
            assert!(
                err.starts_with(&format!("environment variable {name}: must be an AMQP URL")),
                "{err}"
            );
            assert!(err.contains("%2F") && !err.contains("Qz9"), "{err}");
        }
    }

    #[test]
    fn a_bad_value_in_a_file_names_the_file_and_key() {
        let dir = temp_dir();
        let file = dir.join("warren.toml");
        std::fs::write(&file, "[consumer]\nprefetch = \"abc\"\n").unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "consumer.prefetch = \"abc\" in {}: must be a whole number from 1 to 65535",
                file.display()
            )
        );
        std::fs::write(&file, "[consumer]\nprefech = 3\n").unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(
            err.contains("unknown key consumer.prefech; did you mean consumer.prefetch?"),
            "{err}"
        );
        std::fs::write(&file, "[amqp]\nurl = \"amqp://u:Qz9@h\n").unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("Qz9"), "{err}");
    }

    #[test]
    fn a_bad_value_in_dotenv_names_the_file_and_variable() {
        let dir = temp_dir();
        std::fs::write(dir.join(".env"), "WARREN_TOPOLOGY__QUEUE_TYPE=stream\n").unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        let expected = format!(
            "WARREN_TOPOLOGY__QUEUE_TYPE=stream in {}: must be quorum or classic",
            dir.join(".env").display()
        );
        assert_eq!(err, expected);
    }

    #[test]
    fn an_unknown_variable_suggests_the_nearest_name() {
        let loaded = load(&[("WARREN_CONSUMER__PREFECH", "3"), ("WARREN_NOPE", "1")]);
        assert_eq!(
            loaded.warnings,
            [
                "environment variable WARREN_CONSUMER__PREFECH matches no setting and is ignored; \
                 did you mean WARREN_CONSUMER__PREFETCH?",
                "environment variable WARREN_NOPE matches no setting and is ignored",
            ]
        );
    }

    #[test]
    fn origins_say_which_layer_set_each_value() {
        let dir = temp_dir();
        std::fs::write(dir.join("warren.toml"), "[consumer]\nprefetch = 10\nservice = \"f\"\n").unwrap();
        std::fs::write(dir.join(".env"), "WARREN_CONSUMER__PREFETCH=20\nEVENT_TIMEOUT=3\n").unwrap();
        let loaded = try_load(
            &dir,
            &[("EVENT_RETRY_ATTEMPTS", "2"), ("WARREN_WEBHOOK__TIMEOUT", "4s")],
        )
        .unwrap();
        let origin = |key: &str| loaded.origins[key].clone();
        assert_eq!(origin("amqp.url"), Origin::Default);
        assert_eq!(
            origin("consumer.service"),
            Origin::File {
                path: dir.join("warren.toml"),
                key: "consumer.service".into()
            }
        );
        let dotenv = |variable: &str| Origin::DotEnv {
            path: dir.join(".env"),
            variable: variable.into(),
        };
        assert_eq!(origin("consumer.prefetch"), dotenv("WARREN_CONSUMER__PREFETCH"));
        assert_eq!(origin("publisher.confirm_timeout"), dotenv("EVENT_TIMEOUT"));
        let env = |variable: &str| Origin::Environment {
            variable: variable.into(),
        };
        assert_eq!(origin("webhook.timeout"), env("WARREN_WEBHOOK__TIMEOUT"));
        assert_eq!(origin("consumer.retry.attempts"), env("EVENT_RETRY_ATTEMPTS"));
        assert_eq!(loaded.origins.len(), Settings::keys().len());
        assert_eq!(
            origin("consumer.prefetch").to_string(),
            ".env WARREN_CONSUMER__PREFETCH"
        );
    }

    #[test]
    fn list_variables_are_trimmed_and_may_be_empty() {
        let s = load(&[
            ("WARREN_CONSUMER__EVENT_TYPES", "user.login, user.registered"),
            ("WARREN_CONSUMER__RETRY__DELAYS", ""),
            ("WARREN_CONSUMER__PREFETCH", " 5 "),
        ])
        .settings;
        assert_eq!(s.consumer.event_types, ["user.login", "user.registered"]);
        assert!(s.consumer.retry.delays.is_empty());
        assert_eq!(s.consumer.prefetch, 5);
        // The environment source of the config crate read "" as one empty item.
        let s = load(&[("WARREN_CONSUMER__EVENT_TYPES", " ")]).settings;
        assert!(s.consumer.event_types.is_empty(), "{:?}", s.consumer.event_types);
    }

    #[test]
    fn a_dotenv_line_that_does_not_parse_is_named_not_quoted() {
        for line in [
            "WARREN_AMQP__URL=\"amqp://u:Qz9Kw@h",
            "WARREN_AMQP__URL=amqp://u:Qz9 Kw@h",
        ] {
            let dir = temp_dir();
            std::fs::write(dir.join(".env"), format!("EVENT_TIMEOUT=3\n{line}\n")).unwrap();
            let err = try_load(&dir, &[]).unwrap_err().to_string();
            assert!(err.contains("line 2 (WARREN_AMQP__URL) does not parse"), "{err}");
            assert!(!err.contains("Qz9"), "{err}");
        }
    }
    #[test]
    fn names_with_control_characters_are_refused_where_set() {
        for (name, value) in [
            ("WARREN_CONSUMER__SERVICE", "svc\nINFO forged"),
            ("WARREN_TOPOLOGY__EXCHANGE", "ev\u{1b}[2Jents"),
            ("WARREN_PUBLISHER__SOURCE", "src\r"),
            ("WARREN_AMQP__CONNECTION_NAME", "conn\u{1b}"),
        ] {
            let err = error(&[(name, value)]);
            assert!(err.starts_with(&format!("environment variable {name}=")), "{err}");
            assert!(err.contains("control character U+"), "{err}");
            assert!(
                !err.contains('\n') && !err.contains('\u{1b}') && !err.contains('\r'),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_service_name_too_long_for_its_queue_names_is_refused() {
        let long = "s".repeat(276);
        let err = error(&[("WARREN_CONSUMER__SERVICE", &long)]);
        assert!(err.contains("environment variable WARREN_CONSUMER__SERVICE="), "{err}");
        assert!(
            err.contains("at most 255") && err.contains("may be 229 bytes long at most"),
            "{err}"
        );
        // The longest name counts, not the service alone: 240 + ".user.registered.dead".
        let dir = temp_dir();
        std::fs::write(
            dir.join("warren.toml"),
            format!("[consumer]\nservice = \"{}\"\nretry.attempts = 0\n", "s".repeat(240)),
        )
        .unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert!(
            err.contains("consumer.service = \"sss") && err.contains("warren.toml"),
            "{err}"
        );
        assert!(
            load(&[("WARREN_CONSUMER__SERVICE", &"s".repeat(229))])
                .settings
                .consumer
                .service
                .len()
                == 229
        );
        assert!(error(&[("WARREN_CONSUMER__SERVICE", &"s".repeat(230))]).contains("255"));
        let err = error(&[("WARREN_PUBLISHER__SOURCE", &"p".repeat(256))]);
        assert!(err.contains("(it is 256 bytes long)"), "{err}");
        load(&[("WARREN_AMQP__CONNECTION_NAME", &"c".repeat(300))]);
        let err = error(&[("WARREN_TOPOLOGY__EXCHANGE", &"x".repeat(256))]);
        assert!(
            err.contains("WARREN_TOPOLOGY__EXCHANGE") && err.contains("256"),
            "{err}"
        );
    }

    #[test]
    fn quoted_values_are_cut() {
        let huge = "x".repeat(120 * 1024);
        for err in [
            error(&[("WARREN_CONSUMER__PREFETCH", &huge)]),
            error(&[("WARREN_CONSUMER__EVENT_TYPES", &huge)]),
            error(&[("WARREN_INGRESS__LISTEN", &huge)]),
        ] {
            assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..200]);
            assert!(err.contains("(cut: 122880 bytes in all)"), "{err}");
        }
        let dir = temp_dir();
        std::fs::write(dir.join("warren.toml"), format!("[consumer]\n{huge} = 1\n")).unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert!(err.len() < 1000 && err.contains("cut:"), "{}", &err[..200]);
        let warnings = load(&[(&format!("WARREN_{huge}"), "1")]).warnings;
        assert!(
            warnings[0].len() < 1000 && warnings[0].contains("cut:"),
            "{}",
            &warnings[0][..200]
        );
    }

    #[test]
    fn a_settings_file_that_is_not_a_regular_file_is_refused() {
        let dir = temp_dir();
        std::os::unix::fs::symlink("/dev/zero", dir.join("warren.toml")).unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert!(
            err.contains("warren.toml") && err.contains("not a regular file"),
            "{err}"
        );
        let dir = temp_dir();
        std::os::unix::fs::symlink("/dev/zero", dir.join(".env")).unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains(".env") && err.contains("not a regular file"), "{err}");
        let dir = temp_dir();
        std::fs::create_dir(dir.join("warren.toml")).unwrap();
        assert!(try_load(&dir, &[]).unwrap_err().to_string().contains("a directory"));
        let dir = temp_dir();
        let value = "x".repeat(2 * 1024 * 1024);
        std::fs::write(dir.join(".env"), format!("WARREN_CONSUMER__PREFETCH={value}\n")).unwrap();
        let err = try_load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains("larger than 1024 KiB") && err.len() < 1000, "{err}");
    }

    #[test]
    fn settings_that_can_never_work_are_refused() {
        for (name, value) in [
            ("WARREN_INGRESS__REQUEST_TIMEOUT", "0s"),
            ("WARREN_INGRESS__MAX_BODY", "0"),
            ("WARREN_INGRESS__MAX_BATCH", "0"),
            ("WARREN_PUBLISHER__CONFIRM_TIMEOUT", "0s"),
            ("EVENT_TIMEOUT", "0"),
            ("WARREN_WEBHOOK__TIMEOUT", "0ms"),
        ] {
            let err = error(&[(name, value)]);
            assert!(
                err.starts_with(&format!("environment variable {name}={value}: must be")),
                "{err}"
            );
        }
        // Zero means something for these: no heartbeats, no drain.
        load(&[
            ("WARREN_AMQP__HEARTBEAT", "0s"),
            ("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "0s"),
        ]);
    }

    #[test]
    fn amqp_url_limits_below_what_warren_needs_are_refused() {
        let err = error(&[("AMQP_URL", "amqp://u:Qz9@h:5672/%2f?channel_max=1")]);
        assert!(err.contains("environment variable AMQP_URL: channel_max=1"), "{err}");
        assert!(!err.contains("Qz9"), "{err}");
        // Two event types by default: three channels.
        load(&[("AMQP_URL", "amqp://h:5672/%2f?channel_max=3")]);
        assert!(error(&[("AMQP_URL", "amqp://h:5672/%2f?channel_max=2")]).contains("(3:"));
    }

    #[test]
    fn the_token_is_trimmed_and_a_blank_one_refused() {
        let s = load(&[("WARREN_INGRESS__TOKEN", "s3cret-token\n")]).settings;
        assert_eq!(s.ingress.token.as_deref(), Some("s3cret-token"));
        let dir = temp_dir();
        std::fs::write(dir.join("warren.toml"), "[ingress]\ntoken = \"  tok \\n\"\n").unwrap();
        assert_eq!(
            try_load(&dir, &[]).unwrap().settings.ingress.token.as_deref(),
            Some("tok")
        );
        for bad in [" \n", "Qz\nKw", "Qz\u{7f}Kw"] {
            let err = error(&[("WARREN_INGRESS__TOKEN", bad)]);
            assert!(
                err.starts_with("environment variable WARREN_INGRESS__TOKEN: must be"),
                "{err}"
            );
            assert!(!err.contains("Qz") && !err.contains("Kw"), "{err}");
        }
    }

    #[test]
    fn a_listen_address_may_name_a_host() {
        let s = load(&[
            ("WARREN_INGRESS__LISTEN", "localhost:8597"),
            ("WARREN_METRICS__LISTEN", "localhost:9090"),
        ])
        .settings;
        assert_eq!(s.ingress.listen.to_string(), "127.0.0.1:8597");
        assert_eq!(
            s.metrics.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9090")
        );
        let dir = temp_dir();
        std::fs::write(dir.join("warren.toml"), "[ingress]\nlisten = \"localhost:8600\"\n").unwrap();
        assert_eq!(try_load(&dir, &[]).unwrap().settings.ingress.listen.port(), 8600);
        let err = error(&[("WARREN_INGRESS__LISTEN", "no-such-host.invalid:8597")]);
        assert!(err.contains("does not resolve"), "{err}");
    }
    #[test]
    fn celery_broker_url_is_named_and_not_adopted() {
        let dir = temp_dir();
        std::fs::write(dir.join(".env"), "CELERY_BROKER_URL=redis://:Qz9pw@localhost:6379/0\n").unwrap();
        let loaded = try_load(&dir, &[]).unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        let w = &loaded.warnings[0];
        assert!(
            w.starts_with(".env CELERY_BROKER_URL (redis://:***@localhost:6379/0) is ignored"),
            "{w}"
        );
        assert!(w.contains("Redis") && !w.contains("Qz9"), "{w}");
        let loaded = load(&[("CELERY_BROKER_URL", "amqp://app:Qz9pw@rabbit:5672//")]);
        let w = &loaded.warnings[0];
        assert!(
            w.contains("environment CELERY_BROKER_URL (amqp://app:***@rabbit:5672//)"),
            "{w}"
        );
        assert!(w.contains("set AMQP_URL") && !w.contains("Qz9"), "{w}");
        assert_eq!(loaded.settings.amqp.url, Settings::default().amqp.url);
    }
}
