//! docker-compose.yml without Docker: its services, the files it mounts, its
//! images, and warren's environment against warren's real settings; then
//! (in compose/) the broker's rabbitmq.conf and boot definitions against the
//! local RabbitMQ, the example receiver run with python3, and the
//! monitoring stack's Prometheus and Grafana files.

mod support;

#[path = "compose/broker.rs"]
mod broker;
#[path = "compose/common.rs"]
mod common;
#[path = "compose/monitoring.rs"]
mod monitoring;
#[path = "compose/receiver.rs"]
mod receiver;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use common::{compose, environment, mounts, ports, repo, scalar, service, strings};
use warren::Settings;
use warren::config::ALIASES;

#[test]
fn every_service_exists() {
    let c = compose();
    let names: BTreeSet<String> = c["services"]
        .as_hash()
        .expect("a services map")
        .keys()
        .map(scalar)
        .collect();
    for name in ["rabbitmq", "warren", "receiver", "prometheus", "grafana"] {
        assert!(names.contains(name), "no service {name:?} in {names:?}");
    }
}

#[test]
fn every_file_it_references_is_in_the_repository() {
    let c = compose();
    let warren = service(&c, "warren");
    let context = scalar(&warren["build"]["context"]);
    assert!(repo(&context).is_dir(), "build context {context:?}");
    let dockerfile = repo(&context).join(scalar(&warren["build"]["dockerfile"]));
    assert!(dockerfile.is_file(), "{}", dockerfile.display());

    let mut binds = 0;
    for name in ["rabbitmq", "warren", "receiver", "prometheus", "grafana"] {
        for m in mounts(service(&c, name)) {
            if m.is_bind() {
                assert!(
                    m.source.starts_with("./"),
                    "{name}: mount {m:?} should be relative to the repository"
                );
                assert!(
                    repo(&m.source).exists(),
                    "{name}: mounted {} is not in the repository",
                    m.source
                );
                binds += 1;
            } else {
                assert!(
                    !c["volumes"][m.source.as_str()].is_badvalue(),
                    "{name}: volume {} is not declared under `volumes:`",
                    m.source
                );
            }
        }
    }
    assert!(
        binds >= 4,
        "the broker's config and definitions and the receiver script are mounted"
    );

    // The receiver runs the script it mounts.
    let receiver = service(&c, "receiver");
    let script = strings(&receiver["command"])
        .into_iter()
        .find(|a| a.ends_with(".py"))
        .expect("the receiver runs a .py script");
    let mount = mounts(receiver)
        .into_iter()
        .find(|m| m.target == script)
        .unwrap_or_else(|| panic!("{script} is not mounted into the receiver"));
    assert_eq!(mount.source, "./examples/receiver/receiver.py");
    assert!(scalar(&receiver["image"]).starts_with("python:3"));
}

#[test]
fn the_broker_loads_its_config_and_only_json_definitions() {
    let c = compose();
    let rabbitmq = mounts(service(&c, "rabbitmq"));
    let conf = rabbitmq
        .iter()
        .find(|m| m.source == "./definitions/rabbitmq.conf")
        .expect("definitions/rabbitmq.conf is mounted");
    // The official image loads every *.conf of /etc/rabbitmq/conf.d.
    assert!(
        conf.target.starts_with("/etc/rabbitmq/conf.d/") && conf.target.ends_with(".conf"),
        "{conf:?}"
    );
    let defs = common::boot_definitions(&c);
    let names: Vec<&str> = defs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["definitions.json", "users.json"]);
    // A directory import reads every file in it as JSON: nothing else may be mounted there.
    let dir = common::conf_value("load_definitions");
    for m in &rabbitmq {
        if m.target.starts_with(dir.trim_end_matches('/')) {
            assert!(m.target.ends_with(".json") && m.source.ends_with(".json"), "{m:?}");
        }
    }
    assert!(
        rabbitmq.iter().any(|m| !m.is_bind() && m.target == "/var/lib/rabbitmq"),
        "the broker's data lives in a named volume"
    );
}

#[test]
fn the_broker_image_is_rabbitmq_3_13_or_later_with_management() {
    let c = compose();
    let image = scalar(&service(&c, "rabbitmq")["image"]);
    let (name, tag) = image.split_once(':').expect("a tagged image");
    assert!(
        ["rabbitmq", "library/rabbitmq", "docker.io/library/rabbitmq"].contains(&name),
        "{image}"
    );
    assert!(tag.contains("management"), "{image} has no management plugin");
    let version: Vec<u32> = tag
        .split('-')
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{image}: tag without a version")))
        .collect();
    let (major, minor) = (version[0], version.get(1).copied().unwrap_or(0));
    assert!(major >= 4 || (major == 3 && minor >= 13), "{image} is older than 3.13");
}

/// Every `WARREN_*` name of a setting, and the aliases.
fn warren_variable_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = Settings::keys()
        .iter()
        .map(|k| format!("WARREN_{}", k.to_uppercase().replace('.', "__")))
        .collect();
    names.extend(ALIASES.iter().map(|(alias, _)| (*alias).to_owned()));
    names
}

#[test]
fn warren_is_configured_by_real_settings_and_waits_for_a_healthy_broker() {
    let c = compose();
    let warren = service(&c, "warren");
    let env = environment(warren);
    let known = warren_variable_names();
    assert!(known.contains("GO_BACKEND_URL") && known.contains("WARREN_INGRESS__LISTEN"));
    for name in env.keys() {
        assert!(known.contains(name), "{name} is not a warren setting");
    }
    assert_eq!(strings(&warren["command"]), ["run", "--handler", "webhook"]);
    assert_eq!(
        scalar(&warren["depends_on"]["rabbitmq"]["condition"]),
        "service_healthy"
    );

    let url = common::amqp_url(&env["WARREN_AMQP__URL"]);
    assert_eq!(url.host, "rabbitmq", "warren reaches the broker by its service name");
    let receiver = service(&c, "receiver");
    let receiver_port = &environment(receiver)["PORT"];
    assert_eq!(env["GO_BACKEND_URL"], format!("http://receiver:{receiver_port}"));
    let secret = &env["WARREN_WEBHOOK__SECRET"];
    warren::webhook::Secret::parse(secret).expect("the demo secret is a valid whsec_ secret");
    assert_eq!(
        secret,
        &environment(receiver)["WEBHOOK_SECRET"],
        "warren signs with the secret the receiver verifies"
    );
}

#[test]
fn the_ingress_port_is_the_published_one_and_the_healthcheck_probes_it() {
    let c = compose();
    let warren = service(&c, "warren");
    let listen: std::net::SocketAddr = environment(warren)["WARREN_INGRESS__LISTEN"].parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "{listen}: a container must listen beyond its own loopback"
    );
    let published = ports(warren);
    assert!(
        published.iter().any(|(_, _, target)| *target == listen.port()),
        "{published:?} does not publish {}",
        listen.port()
    );
    let test = strings(&warren["healthcheck"]["test"]).join(" ");
    assert!(
        test.contains(&format!("http://127.0.0.1:{}/readyz", listen.port())),
        "{test}"
    );
    let rabbitmq = ports(service(&c, "rabbitmq"));
    for port in [5672, 15672] {
        assert!(rabbitmq.iter().any(|(_, _, t)| *t == port), "{port} is not published");
    }
    // Demo credentials: published ports stay on this machine.
    for (ip, published, _) in published.iter().chain(&rabbitmq) {
        assert_eq!(ip.as_deref(), Some("127.0.0.1"), "port {published}");
    }
}

/// The `warren` binary with exactly the compose service's environment.
fn warren_with_compose_env(args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(support::unique("compose"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env_clear()
        .envs(environment(service(&compose(), "warren")))
        .current_dir(&dir)
        .output()
        .expect("run warren");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn warren_accepts_the_compose_environment_without_warnings() {
    let out = warren_with_compose_env(&["config"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("matches no setting"), "{stderr}");
    assert!(stdout.contains(r#"listen = "0.0.0.0:8597""#), "{stdout}");
    assert!(stdout.contains(r#"url = "http://receiver:8081""#), "{stdout}");
    assert!(stdout.contains(r#"secret = "***""#), "{stdout}");
}

#[test]
fn warren_in_compose_declares_exactly_the_topology_the_broker_loads() {
    // Queues loaded at boot with other arguments would stop warren at start
    // (its declare reports the mismatch): the export under the compose
    // environment must be the committed definitions byte for byte.
    let out = warren_with_compose_env(&["topology", "export"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        common::read("definitions/definitions.json")
    );
}
