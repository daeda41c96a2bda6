//! What the compose tests share: the repository's files, the parsed
//! docker-compose.yml and rabbitmq.conf, and small readers for their values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

/// A path inside the repository.
pub(crate) fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub(crate) fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// docker-compose.yml, parsed (anchors resolved).
pub(crate) fn compose() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    assert_eq!(docs.len(), 1, "docker-compose.yml holds one document");
    docs.remove(0)
}

pub(crate) fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(s.as_hash().is_some(), "docker-compose.yml has no service {name:?}");
    s
}

/// A scalar as text (`PORT: 8081` and `PORT: "8081"` alike).
pub(crate) fn scalar(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// The strings of a sequence (`command`, `ports`, `volumes`, a healthcheck's `test`).
pub(crate) fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("expected a sequence, found {y:?}"))
        .iter()
        .map(scalar)
        .collect()
}

/// A service's `environment`, in map or `KEY=value` list form.
pub(crate) fn environment(service: &Yaml) -> BTreeMap<String, String> {
    let env = &service["environment"];
    if let Some(map) = env.as_hash() {
        map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect()
    } else {
        strings(env)
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect()
    }
}

/// A short-syntax bind mount or volume: `source:target[:mode]`.
#[derive(Debug)]
pub(crate) struct Mount {
    pub source: String,
    pub target: String,
}

impl Mount {
    /// A bind mount names a path (`./x`, `/x`); anything else is a named volume.
    pub fn is_bind(&self) -> bool {
        self.source.starts_with('.') || self.source.starts_with('/')
    }
}

pub(crate) fn mounts(service: &Yaml) -> Vec<Mount> {
    if service["volumes"].is_badvalue() {
        return Vec::new();
    }
    strings(&service["volumes"])
        .into_iter()
        .map(|v| {
            let mut parts = v.splitn(3, ':');
            let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
                panic!("volume {v:?} is not source:target");
            };
            Mount {
                source: source.to_owned(),
                target: target.to_owned(),
            }
        })
        .collect()
}

/// A short-syntax port: `[host_ip:]published:target[/proto]`, as
/// (host_ip, published, target).
pub(crate) fn ports(service: &Yaml) -> Vec<(Option<String>, u16, u16)> {
    strings(&service["ports"])
        .into_iter()
        .map(|p| {
            let p = p.split('/').next().unwrap_or_default();
            let parts: Vec<&str> = p.split(':').collect();
            let port = |s: &str| s.parse::<u16>().unwrap_or_else(|_| panic!("port {s:?} in {p:?}"));
            match parts.as_slice() {
                [target] => (None, port(target), port(target)),
                [published, target] => (None, port(published), port(target)),
                [ip, published, target] => (Some((*ip).to_owned()), port(published), port(target)),
                _ => panic!("port mapping {p:?} is not [ip:]published:target"),
            }
        })
        .collect()
}

/// `definitions/rabbitmq.conf` as (key, value) pairs, comments and blank lines left out.
pub(crate) fn rabbitmq_conf() -> Vec<(String, String)> {
    read("definitions/rabbitmq.conf")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("rabbitmq.conf line {l:?} is not `key = value`"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

pub(crate) fn conf_value(key: &str) -> String {
    rabbitmq_conf()
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("definitions/rabbitmq.conf does not set {key}"))
        .1
}

/// The definition files the broker imports at boot: the rabbitmq service's
/// bind mounts into the `load_definitions` directory, as (container file
/// name, repository path), in the order the broker reads them (by name).
pub(crate) fn boot_definitions(compose: &Yaml) -> Vec<(String, String)> {
    let dir = conf_value("load_definitions");
    let dir = dir.trim_end_matches('/');
    let mut files: Vec<(String, String)> = mounts(service(compose, "rabbitmq"))
        .into_iter()
        .filter_map(|m| {
            let name = m.target.strip_prefix(dir)?.strip_prefix('/')?;
            Some((name.to_owned(), m.source.trim_start_matches("./").to_owned()))
        })
        .collect();
    files.sort();
    files
}

/// The credentials and vhost of an `amqp://user:pass@host:port/vhost` URL.
pub(crate) struct AmqpUrl {
    pub user: String,
    pub password: String,
    pub host: String,
    pub vhost: String,
}

pub(crate) fn amqp_url(url: &str) -> AmqpUrl {
    let rest = url.strip_prefix("amqp://").expect("an amqp:// URL");
    let (auth, rest) = rest.split_once('@').expect("credentials in the AMQP URL");
    let (user, password) = auth.split_once(':').expect("user:password in the AMQP URL");
    let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let host = hostport.split(':').next().unwrap_or_default();
    AmqpUrl {
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        vhost: vhost.replace("%2f", "/").replace("%2F", "/"),
    }
}
