//! definitions/rabbitmq.conf and the boot definitions against the local broker.
//!
//! The local broker is RabbitMQ 3.10, the compose one 4.x. What is checked
//! here, and how far it carries:
//!
//! - Each key of rabbitmq.conf is one of [`KNOWN_KEYS`], whose entries were
//!   looked up in rabbit.schema of both 3.10 and 4.x; the keys that 3.10 has
//!   too are run through the local broker's own config schema (cuttlefish,
//!   the parser the broker runs at boot), values included.
//! - The definition files the broker would import at boot are imported into
//!   the local broker through the same code path as a boot-time directory
//!   import (`rabbit_definitions_import_local_filesystem:load/2`), in a
//!   scratch vhost and with a scratch user, deleted afterwards.
//! - The user's password hash is checked twice: by the broker
//!   (`rabbitmqctl authenticate_user`) and by recomputing it here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::common::{self, compose, environment, service};
use super::support;

/// The rabbitmq.conf keys this repository may use: (key, present in 3.10's
/// schema, where it is documented). Both key forms appear in rabbit.schema of
/// 3.10.8 and of 4.x (`deps/rabbit/priv/schema/rabbit.schema`).
pub(crate) const KNOWN_KEYS: &[(&str, bool, &str)] = &[
    // "Original key for definition loading from a JSON file or directory of files."
    (
        "load_definitions",
        true,
        "https://www.rabbitmq.com/docs/definitions#import-on-boot",
    ),
    // Reads a directory only after 3.10 (3.10 answers eisdir): load_definitions does in both.
    (
        "definitions.local.path",
        true,
        "https://www.rabbitmq.com/docs/definitions#import-on-boot",
    ),
    (
        "definitions.import_backend",
        true,
        "https://www.rabbitmq.com/docs/definitions#import-on-boot",
    ),
    (
        "definitions.skip_if_unchanged",
        true,
        "https://www.rabbitmq.com/docs/definitions",
    ),
    // `none`, or loopback_users.<user> = true|false.
    (
        "loopback_users",
        true,
        "https://www.rabbitmq.com/docs/access-control#loopback-users",
    ),
];

/// A directory (mode 755) the broker's OS user can read, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(support::unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rabbitmqctl(args: &[&str]) -> (bool, String) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (these tests need it, as root, next to the local broker)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Erlang string literal of a path (no quotes or backslashes in temp paths).
fn erl_string(path: &Path) -> String {
    let s = path.display().to_string();
    assert!(!s.contains(['"', '\\']), "{s}");
    format!("\"{s}\"")
}

#[test]
fn every_conf_key_is_known_and_the_local_broker_schema_accepts_it() {
    let conf = common::rabbitmq_conf();
    assert!(!conf.is_empty());
    for (key, _) in &conf {
        assert!(
            KNOWN_KEYS.iter().any(|(k, _, _)| k == key),
            "rabbitmq.conf sets {key}, which is not in KNOWN_KEYS (look it up in rabbit.schema and add it)"
        );
    }
    // Run the keys 3.10 has through its schema. `load_definitions` must name a
    // readable path (the schema's file_accessible validator), so it points at
    // a local copy of the definitions directory here.
    let scratch = Scratch::new("compose-conf");
    let defs = Scratch::new("compose-conf-defs");
    let mut text = String::new();
    for (key, value) in &conf {
        if !KNOWN_KEYS.iter().any(|(k, in_3_10, _)| k == key && *in_3_10) {
            eprintln!("note: {key} is not in RabbitMQ 3.10: only its presence in KNOWN_KEYS is checked");
            continue;
        }
        let value = if key == "load_definitions" || key == "definitions.local.path" {
            defs.0.display().to_string()
        } else {
            value.clone()
        };
        text.push_str(&format!("{key} = {value}\n"));
    }
    let file = scratch.write("rabbitmq.conf", &text);
    let expr = format!(
        r#"Schemas = filelib:wildcard(filename:join([code:lib_dir(rabbit), "..", "*", "priv", "schema", "*.schema"])),
        Conf = cuttlefish_conf:file({file}),
        case cuttlefish_generator:map(cuttlefish_schema:files(Schemas), Conf) of
            {{error, Phase, Errors}} -> {{invalid, Phase, Errors}};
            Config ->
                Rabbit = proplists:get_value(rabbit, Config),
                {{valid, proplists:get_value(load_definitions, Rabbit), proplists:get_value(loopback_users, Rabbit)}}
        end."#,
        file = erl_string(&file)
    );
    let (ok, out) = rabbitmqctl(&["eval", &expr]);
    assert!(ok, "{out}");
    assert!(
        out.contains("{valid,"),
        "the broker's schema refuses rabbitmq.conf:\n{text}\n{out}"
    );
    // And the values mean what the comments say: load this directory, no loopback-only users.
    assert!(out.contains(&format!("{{valid,{},[]}}", erl_string(&defs.0))), "{out}");
}

#[test]
fn the_schema_check_catches_a_misspelt_key() {
    // The check above can fail: a key the schema does not know is refused.
    let scratch = Scratch::new("compose-conf-bad");
    let file = scratch.write("bad.conf", "loopback_userz = none\n");
    let expr = format!(
        r#"Schemas = filelib:wildcard(filename:join([code:lib_dir(rabbit), "..", "*", "priv", "schema", "*.schema"])),
        case cuttlefish_generator:map(cuttlefish_schema:files(Schemas), cuttlefish_conf:file({})) of
            {{error, _, _}} -> refused;
            _ -> accepted
        end."#,
        erl_string(&file)
    );
    let (ok, out) = rabbitmqctl(&["eval", &expr]);
    assert!(ok && out.contains("refused"), "{out}");
}

/// The array `doc[key]`, if there is one (indexing with `[]` would insert a null).
fn items<'a>(doc: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    doc.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}

/// Rewrites the vhost `/` and the user `user` of a definitions document to scratch names.
fn rename(doc: &mut Value, vhost: &str, user: &str, scratch_user: &str) {
    for key in [
        "queues",
        "exchanges",
        "bindings",
        "permissions",
        "policies",
        "parameters",
    ] {
        for item in items(doc, key) {
            if item["vhost"] == "/" {
                item["vhost"] = vhost.into();
            }
            if item["user"] == user {
                item["user"] = scratch_user.into();
            }
        }
    }
    for v in items(doc, "vhosts") {
        if v["name"] == "/" {
            v["name"] = vhost.into();
        }
    }
    for u in items(doc, "users") {
        if u["name"] == user {
            u["name"] = scratch_user.into();
        }
    }
}

/// Deletes the scratch user and vhost, however the test ends.
struct Cleanup {
    vhost: String,
    user: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["-q", "delete_user", &self.user]);
        let _ = rabbitmqctl(&["-q", "delete_vhost", &self.vhost]);
    }
}

#[test]
fn the_boot_definitions_import_as_a_directory_and_their_user_logs_in() {
    let c = compose();
    let url = common::amqp_url(&environment(service(&c, "warren"))["WARREN_AMQP__URL"]);
    assert_eq!(url.vhost, "/", "the scratch vhost stands in for /");
    let cleanup = Cleanup {
        vhost: support::unique("compose-vhost"),
        user: support::unique("compose-user"),
    };
    let dir = Scratch::new("compose-defs");
    let mut queues = Vec::new();
    for (name, source) in common::boot_definitions(&c) {
        let mut doc: Value = serde_json::from_str(&common::read(&source)).unwrap();
        rename(&mut doc, &cleanup.vhost, &url.user, &cleanup.user);
        for q in doc["queues"].as_array().into_iter().flatten() {
            queues.push(q["name"].as_str().unwrap().to_owned());
        }
        dir.write(&name, &serde_json::to_string_pretty(&doc).unwrap());
    }
    assert!(queues.len() >= 10, "{queues:?}");

    let expr = format!(
        "rabbit_definitions_import_local_filesystem:load(true, {}).",
        erl_string(&dir.0)
    );
    let (ok, out) = rabbitmqctl(&["eval", &expr]);
    assert!(ok && out.trim() == "ok", "directory import failed: {out}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed) = rabbitmqctl(&["-q", "list_queues", "-p", &cleanup.vhost, "name"]);
        let missing: Vec<&String> = queues.iter().filter(|q| !listed.lines().any(|l| l == *q)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "queues not declared: {missing:?}\n{listed}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, out) = rabbitmqctl(&["authenticate_user", &cleanup.user, &url.password]);
    assert!(ok, "the URL's password does not log in: {out}");
    let (ok, _) = rabbitmqctl(&["authenticate_user", &cleanup.user, "not-the-password"]);
    assert!(!ok, "a wrong password logged in");
    let (_, perms) = rabbitmqctl(&["-q", "list_user_permissions", &cleanup.user]);
    assert!(
        perms
            .lines()
            .any(|l| l.split('\t').collect::<Vec<_>>() == [cleanup.vhost.as_str(), ".*", ".*", ".*"]),
        "{perms}"
    );
    let (_, users) = rabbitmqctl(&["-q", "list_users"]);
    assert!(
        users
            .lines()
            .any(|l| l.starts_with(&cleanup.user) && l.contains("administrator")),
        "the user can log in to the console: {users}"
    );
}

#[test]
fn users_json_holds_the_user_of_warrens_url_with_its_password() {
    let c = compose();
    let url = common::amqp_url(&environment(service(&c, "warren"))["WARREN_AMQP__URL"]);
    let doc: Value = serde_json::from_str(&common::read("definitions/users.json")).unwrap();
    let user = doc["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == url.user.as_str())
        .unwrap_or_else(|| panic!("users.json has no user {:?}", url.user));
    assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
    // rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password)), 4-byte salt.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(user["password_hash"].as_str().unwrap())
        .unwrap();
    let (salt, hash) = raw.split_at(4);
    let mut sha = Sha256::new();
    sha.update(salt);
    sha.update(url.password.as_bytes());
    assert_eq!(hash, sha.finalize().as_slice(), "the hash is not of the URL's password");
    // Self-contained: the vhost its permissions name is created by the same file.
    assert!(doc["vhosts"].as_array().unwrap().iter().any(|v| v["name"] == "/"));
    assert!(
        doc["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user"] == url.user.as_str() && p["vhost"] == "/")
    );
}
