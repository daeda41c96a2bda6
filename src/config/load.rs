//! Loading: the layers (defaults, `warren.toml`, `.env`, environment), the
//! aliases, and the warnings about variables that name no setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ALIASES, ConfigError, Settings};

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
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Loaded {
        let dir = std::env::temp_dir().join(format!("warren-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::load(&Sources { file: None, dir, env }).unwrap()
    }
    use crate::config::QueueType;

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
}
