//! `amqps://` against a RabbitMQ node of the tests' own with a TLS listener
//! (started by `scripts/cluster --tls`, base port 5741, AMQPS on 5811),
//! whose certificates come from a CA this test makes with openssl. The
//! node asks every client for a certificate signed by that CA.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren::consumer::{Consumer, ConsumerError};
use warren::{Publisher, Settings};

const BASE: u16 = 5741;
const TLS_PORT: u16 = BASE + 70;
const MANAGEMENT_PORT: u16 = BASE + 10_000;

/// The test's certificates, and its node (started once per run, with them).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`name.pem`, `name.key`), self-signed.
fn make_ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-subj",
            &format!("/CN=warren test {name}"),
        ],
    );
}

/// A certificate `name.pem` / `name.key` signed by `ca`, with `extensions`.
fn make_leaf(dir: &Path, ca: &str, name: &str, extensions: &str) {
    let (pem, key, csr, ext) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    );
}

/// Makes the certificates and (re)starts the TLS node with them, once.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("warren-tls-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        // The server certificate names 127.0.0.1 only: "localhost" is a wrong host name.
        make_leaf(
            &dir,
            "ca",
            "server",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        make_leaf(
            &dir,
            "ca",
            "client",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster");
        let base = BASE.to_string();
        // A node left by an earlier run holds that run's certificates.
        let _ = Command::new(script).args(["stop", "--base", &base]).output();
        let dir_arg = dir.to_str().unwrap();
        let out = Command::new(script)
            .args(["start", "--nodes", "1", "--base", &base, "--tls", dir_arg])
            .output()
            .expect("running scripts/cluster");
        assert!(
            out.status.success(),
            "the TLS tests need a node of their own, and `scripts/cluster start --nodes 1 --base {BASE} --tls` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    })
}

/// Settings for the TLS node at `host`, trusting `ca` (system roots only
/// when `None`), with the client certificate when `client`.
fn tls_settings(pki: &Pki, host: &str, ca: Option<&str>, client: bool) -> Settings {
    let mut s = support::settings("tls", false);
    s.amqp.url = format!("amqps://guest:guest@{host}:{TLS_PORT}/%2f");
    s.amqp.tls_ca_file = ca.map(|name| pki.file(&format!("{name}.pem")));
    if client {
        s.amqp.tls_cert_file = Some(pki.file("client.pem"));
        s.amqp.tls_key_file = Some(pki.file("client.key"));
    }
    s.consumer.event_types = vec!["user.registered".into()];
    s
}

/// The error of a `Publisher::connect` that must fail.
async fn connect_error(s: &Settings) -> String {
    match Publisher::connect(s, "tls-test").await {
        Ok(_) => panic!("connected to {} although TLS is set up wrong", s.amqp.url),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn amqps_with_the_ca_file_and_a_client_certificate_carries_events() {
    let pki = pki();
    let s = tls_settings(pki, "127.0.0.1", Some("ca"), true);
    let handled = support::faults::Handled::default();
    let consumer = Consumer::new(s.clone()).on(handled.handler());
    let topology = consumer.topology();
    let token = CancellationToken::new();
    let t = token.clone();
    let consuming = tokio::spawn(async move { consumer.run(t).await });
    let publisher = Publisher::connect(&s, "tls-test").await.expect("connects over TLS");
    let mut event = support::registered(7);
    // The consumer declares the queues: until then the publish is unroutable.
    let mut published = false;
    for _ in 0..100 {
        event = support::registered(7);
        if publisher.publish(&event).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "a publish over TLS is confirmed");
    support::eventually(Duration::from_secs(20), "the event handled over TLS", || {
        handled.covers(&[event.event_id].into())
    })
    .await;
    let connections = tls_connections().await;
    assert!(
        connections
            .iter()
            .any(|(name, ssl)| name.contains("tls-test @ 127.0.0.1") && *ssl),
        "the publisher's connection is TLS: {connections:?}"
    );
    token.cancel();
    consuming.await.unwrap().expect("consumer stops cleanly");
    // Cleanup over a plain connection to the same node.
    let conn = support::connect_to(&format!("amqp://guest:guest@127.0.0.1:{BASE}/%2f")).await;
    support::cleanup(&conn, &topology).await;
}

/// (connection name, over TLS) of the node's connections, once listed.
async fn tls_connections() -> Vec<(String, bool)> {
    for _ in 0..100 {
        let (status, body) =
            support::management::request(MANAGEMENT_PORT, "GET", "/api/connections?columns=ssl,client_properties");
        assert_eq!(status, 200, "{body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let out: Vec<_> = list
            .iter()
            .map(|c| {
                (
                    c["client_properties"]["connection_name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    c["ssl"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        if out.iter().any(|(n, _)| n.contains("tls-test")) {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the management API never listed the test's connection");
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_broker_is_a_clear_error() {
    let err = connect_error(&tls_settings(pki(), "127.0.0.1", Some("other-ca"), true)).await;
    assert!(
        err.contains("not signed by a trusted CA") && err.contains("amqp.tls_ca_file"),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "no password in {err}");
}

#[tokio::test]
async fn the_system_roots_alone_do_not_trust_a_private_ca() {
    let err = connect_error(&tls_settings(pki(), "127.0.0.1", None, true)).await;
    assert!(err.contains("not signed by a trusted CA"), "{err}");
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_list_is_a_clear_error() {
    let err = connect_error(&tls_settings(pki(), "localhost", Some("ca"), true)).await;
    assert!(err.contains("does not name the host"), "{err}");
}

#[tokio::test]
async fn without_a_client_certificate_the_broker_refuses() {
    let err = connect_error(&tls_settings(pki(), "127.0.0.1", Some("ca"), false)).await;
    // The broker's alert, or (TLS 1.3) a hang-up after the handshake: either way, the hint.
    assert!(err.contains("amqp.tls_cert_file"), "{err}");
}

#[tokio::test]
async fn a_consumer_with_a_wrong_ca_stops_at_start_instead_of_retrying() {
    let s = tls_settings(pki(), "127.0.0.1", Some("other-ca"), true);
    let consumer = Consumer::new(s).on(support::faults::Handled::default().handler());
    let result = tokio::time::timeout(Duration::from_secs(30), consumer.run(CancellationToken::new()))
        .await
        .expect("the consumer gives up at once");
    match result {
        Err(ConsumerError::Tls(e)) => assert!(e.to_string().contains("amqp.tls_ca_file"), "{e}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[test]
fn warren_consume_with_a_wrong_ca_exits_saying_so() {
    let pki = pki();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("consume")
        .env_remove("AMQP_URL")
        .env(
            "WARREN_AMQP__URL",
            format!("amqps://guest:s3cret@127.0.0.1:{TLS_PORT}/%2f"),
        )
        .env("WARREN_AMQP__TLS_CA_FILE", pki.file("other-ca.pem"))
        .env("WARREN_AMQP__TLS_CERT_FILE", pki.file("client.pem"))
        .env("WARREN_AMQP__TLS_KEY_FILE", pki.file("client.key"))
        .env("WARREN_CONSUMER__SERVICE", support::unique("tls-cli"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run warren consume");
    // It must stop by itself; a consumer retrying for ever is the failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren consume kept running with a wrong CA");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exits non-zero:\n{stderr}");
    assert!(stderr.contains("not signed by a trusted CA"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "no password in\n{stderr}");
}
