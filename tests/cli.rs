//! The `warren` binary from the shell: publish, topology, config.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn warren(args: &[&str], env: &[(&str, &str)]) -> Output {
    warren_in(&temp_dir(), args, env)
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(support::unique("cli"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs warren in `dir`, where it reads warren.toml and .env.
fn warren_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run warren")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const DATA: &str =
    r#"{"user_id":7,"username":"ann","email":"ann@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}"#;

#[tokio::test]
async fn publish_prints_the_event_id_of_a_message_in_the_work_queue() {
    let conn = support::connect().await;
    let s = support::settings("cli", false);
    let topology = support::declare(&conn, &s).await;
    let env = [("WARREN_TOPOLOGY__EXCHANGE", s.topology.exchange.as_str())];
    let out = warren(
        &["publish", "user.registered", "--data", DATA, "--source", "cli-test"],
        &env,
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let id: uuid::Uuid = text(&out.stdout).trim().parse().expect("a UUID on stdout");
    assert_eq!(id.get_version_num(), 7);

    let ch = conn.create_channel().await.unwrap();
    let got = support::drain(&ch, &topology.work_queue("user.registered")).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].properties.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(got[0].properties.delivery_mode(), &Some(2));
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn invalid_input_fails_with_one_line_naming_the_cause_and_publishes_nothing() {
    let conn = support::connect().await;
    let s = support::settings("cli-bad", false);
    let topology = support::declare(&conn, &s).await;
    let env = [("WARREN_TOPOLOGY__EXCHANGE", s.topology.exchange.as_str())];
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "publish",
                "user.registered",
                "--data",
                &DATA.replace("ann@example.com", "nope"),
            ],
            "data.email",
        ),
        (&["publish", "user.deleted", "--data", DATA], "unknown event type"),
        (&["publish", "user.registered", "--data", "{oops"], "not valid JSON"),
        (&["publish", "user.login", "--data", DATA], "data.login_timestamp"),
        // What the ingress refuses, the CLI refuses too.
        (
            &[
                "publish",
                "user.registered",
                "--data",
                &DATA.replace("ann\"", "ann\\ud800\""),
            ],
            "lone surrogate",
        ),
        (
            &[
                "publish",
                "user.registered",
                "--data",
                &DATA.replace("}", &format!(r#","x":{}{}}}"#, "[".repeat(40), "]".repeat(40))),
            ],
            "nested deeper than 32",
        ),
        (
            &["publish", "user.registered", "--data", &DATA.replace("Z\"", "\"")],
            "an offset (`Z` or `+hh:mm`) is required",
        ),
        (
            &["publish", "user.registered", "--user-id", "7", "--data", "[7]"],
            "must be a JSON object",
        ),
    ];
    for (args, needle) in cases {
        let out = warren(args, &env);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: stderr {err:?} lacks {needle:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        assert!(out.stdout.is_empty());
    }
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(support::ready(&ch, &topology.work_queue("user.registered")).await, 0);
    support::cleanup(&conn, &topology).await;
}

#[test]
fn unroutable_and_unreachable_are_errors() {
    let exchange = support::unique("cli-unbound");
    let _gone = support::Cleanup::broker().exchange(&exchange); // the publish declares it
    let out = warren(
        &["publish", "user.registered", "--data", DATA],
        &[("WARREN_TOPOLOGY__EXCHANGE", &exchange)],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unroutable"), "{}", text(&out.stderr));

    let out = warren(
        &["publish", "user.registered", "--data", DATA],
        &[("WARREN_AMQP__URL", "amqp://guest:hunter22@127.0.0.1:1/%2f")],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot connect to RabbitMQ"), "{err}");
    assert!(!err.contains("hunter22"), "password leaked: {err}");
}

#[test]
fn config_redacts_and_export_matches_the_committed_definitions() {
    let out = warren(
        &["config"],
        &[
            ("WARREN_AMQP__URL", "amqp://admin:pa55word@rabbit:5672/%2f"),
            ("WARREN_NOPE", "1"),
        ],
    );
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("amqp://admin:***@rabbit:5672/%2f"), "{stdout}");
    assert!(!stdout.contains("pa55word"));
    assert!(
        text(&out.stderr).contains("WARREN_NOPE"),
        "unknown variable is warned about"
    );

    let out = warren(&["topology", "export"], &[]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), include_str!("../definitions/definitions.json"));
}

/// Runs warren like [`warren`], but kills it after `within`: `None` when it
/// was still running then.
fn warren_within(args: &[&str], env: &[(&str, &str)], within: std::time::Duration) -> Option<Output> {
    let dir = std::env::temp_dir().join(support::unique("cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .current_dir(&dir)
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run warren");
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

#[tokio::test]
async fn a_webhook_url_into_the_own_ingress_is_refused_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Names of its own, in case warren did start and declare its topology.
    let s = support::settings("cli-loop", false);
    let _gone = support::Cleanup::topology(&s);
    let cases = [
        ("run", format!("127.0.0.1:{port}"), format!("http://localhost:{port}")),
        (
            "consume",
            format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}/"),
        ),
        ("run", format!("0.0.0.0:{port}"), format!("http://127.0.0.1:{port}")),
    ];
    let outputs: Vec<_> = cases
        .iter()
        .map(|(command, listen, url)| {
            let env = [
                ("WARREN_TOPOLOGY__EXCHANGE", s.topology.exchange.as_str()),
                ("WARREN_CONSUMER__SERVICE", s.consumer.service.as_str()),
                ("WARREN_INGRESS__LISTEN", listen.as_str()),
                ("GO_BACKEND_URL", url.as_str()),
            ];
            warren_within(
                &[command, "--handler", "webhook"],
                &env,
                std::time::Duration::from_secs(10),
            )
        })
        .collect();
    let conn = support::connect().await;
    support::cleanup(&conn, &warren::Topology::from_settings(&s)).await;
    for ((command, listen, url), out) in cases.iter().zip(outputs) {
        let out = out.unwrap_or_else(|| panic!("warren {command} with {url} into {listen} started"));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{command} with {url} started");
        for needle in ["webhook.url", "GO_BACKEND_URL", "ingress.listen", listen.as_str()] {
            assert!(err.contains(needle), "{command} {url}: {err:?} lacks {needle:?}");
        }
    }
}

#[test]
fn config_json_says_where_each_value_came_from_and_what_is_derived() {
    let dir = temp_dir();
    std::fs::write(dir.join("warren.toml"), "[consumer]\nservice = \"from-file\"\n").unwrap();
    std::fs::write(dir.join(".env"), "WARREN_TOPOLOGY__EXCHANGE=from-dotenv\n").unwrap();
    let env = [
        ("WARREN_CONSUMER__PREFETCH", "32"),
        ("EVENT_RETRY_ATTEMPTS", "2"),
        ("WARREN_INGRESS__TOKEN", "tok-cli-s3cret"),
    ];
    let out = warren_in(&dir, &["config", "--json"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("tok-cli-s3cret"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    let sources = &json["sources"];
    assert_eq!(
        sources["consumer.prefetch"],
        serde_json::json!({"from": "environment", "variable": "WARREN_CONSUMER__PREFETCH"})
    );
    assert_eq!(
        sources["consumer.retry.attempts"],
        serde_json::json!({"from": "environment", "variable": "EVENT_RETRY_ATTEMPTS"})
    );
    assert_eq!(sources["consumer.service"]["from"], "file");
    assert_eq!(sources["consumer.service"]["key"], "consumer.service");
    assert!(
        sources["consumer.service"]["path"]
            .as_str()
            .unwrap()
            .ends_with("warren.toml")
    );
    assert_eq!(sources["topology.exchange"]["from"], ".env");
    assert_eq!(sources["topology.exchange"]["variable"], "WARREN_TOPOLOGY__EXCHANGE");
    assert_eq!(sources["amqp.heartbeat"], serde_json::json!({"from": "default"}));
    assert_eq!(json["derived"]["retry_delays"], serde_json::json!(["1s", "10s"]));
    let queues = json["derived"]["queues"].as_array().unwrap();
    assert!(queues.contains(&"from-file.user.login.retry.10s".into()), "{queues:?}");
    assert_eq!(json["settings"]["consumer"]["prefetch"], 32);
    assert_eq!(json["settings"]["ingress"]["token"], "***");

    let out = warren_in(&dir, &["config"], &env);
    let stdout = text(&out.stdout);
    assert!(out.status.success() && !stdout.contains("tok-cli-s3cret"), "{stdout}");
    assert!(
        stdout.contains("prefetch = 32  # environment WARREN_CONSUMER__PREFETCH"),
        "{stdout}"
    );
    assert!(
        stdout.contains("exchange = \"from-dotenv\"  # .env WARREN_TOPOLOGY__EXCHANGE"),
        "{stdout}"
    );
    assert!(
        stdout.contains("# retry delays: 1s, 10s (from consumer.retry.attempts)"),
        "{stdout}"
    );
}

#[test]
fn a_bad_setting_is_one_line_naming_the_variable_and_a_typo_gets_a_suggestion() {
    let out = warren(&["config"], &[("WARREN_CONSUMER__PREFETCH", "abc")]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert_eq!(
        err.trim_end(),
        "error: environment variable WARREN_CONSUMER__PREFETCH=abc: must be a whole number from 1 to 65535"
    );
    let out = warren(&["config"], &[("WARREN_CONSUMER__PREFECH", "3")]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("did you mean WARREN_CONSUMER__PREFETCH?"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs warren until it exits, or kills it after `within` (then `None`).
fn exit_within(args: &[&str], env: &[(&str, &str)], within: std::time::Duration) -> Option<Output> {
    exit_within_in(&temp_dir(), args, env, within)
}

/// [`exit_within`] in `dir`, where it reads warren.toml and .env.
fn exit_within_in(dir: &Path, args: &[&str], env: &[(&str, &str)], within: std::time::Duration) -> Option<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("AMQP_URL")
        .env("WARREN_INGRESS__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start warren");
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test]
async fn a_refused_login_or_a_missing_vhost_stops_each_service_at_start() {
    // A broker is there (the refusal is its answer, not a missing broker).
    drop(support::connect().await);
    let user = support::unique("nobody");
    let vhost = support::unique("novhost");
    let wrong_password = format!("amqp://{user}:hunter22@127.0.0.1:5672/%2f");
    let missing_vhost = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let cases = [
        (&wrong_password, user.as_str(), "wrong username or password"),
        (&missing_vhost, vhost.as_str(), "does not exist"),
    ];
    for command in ["run", "consume", "ingress"] {
        for (url, named, why) in &cases {
            let out = exit_within(
                &[command],
                &[("WARREN_AMQP__URL", url.as_str())],
                std::time::Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("warren {command} kept retrying {why:?} instead of stopping"));
            let err = text(&out.stderr);
            assert!(!out.status.success(), "warren {command}: {err}");
            assert!(err.contains(named) && err.contains(why), "warren {command}: {err}");
            assert!(err.contains("on vhost"), "names the vhost: {err}");
            assert!(!err.contains("hunter22"), "password leaked: {err}");
        }
    }
}

/// Settings that can never work stop every command at once, with exit code
/// 1 and one short line naming the setting: never a panic (101), a retry
/// loop, or the value echoed whole.
#[test]
fn settings_that_can_never_work_stop_at_once_with_one_line() {
    let long_service = "s".repeat(276);
    let huge = "x".repeat(120 * 1024);
    let cases: &[(&[&str], (&str, &str), &str)] = &[
        (
            &["topology", "apply"],
            ("WARREN_CONSUMER__SERVICE", &long_service),
            "at most 255",
        ),
        (
            &["config"],
            ("WARREN_CONSUMER__SERVICE", "svc\n\u{1b}[31mforged"),
            "control character U+000A",
        ),
        (
            &["config"],
            ("WARREN_CONSUMER__PREFETCH", &huge),
            "(cut: 122880 bytes in all)",
        ),
        (
            &["ingress"],
            ("WARREN_INGRESS__MAX_BODY", "0"),
            "whole number of 1 or more",
        ),
        (&["ingress"], ("WARREN_INGRESS__REQUEST_TIMEOUT", "0s"), "above zero"),
        (
            &["publish", "user.login", "--data", "{}"],
            ("WARREN_PUBLISHER__CONFIRM_TIMEOUT", "0s"),
            "above zero",
        ),
        (
            &["run"],
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f?channel_max=1"),
            "channel_max=1",
        ),
        (
            &["consume"],
            ("WARREN_CONSUMER__EVENT_TYPES", ""),
            "consumer.event_types is empty",
        ),
        (
            &["run"],
            ("WARREN_CONSUMER__EVENT_TYPES", " "),
            "consumer.event_types is empty",
        ),
    ];
    for (args, (name, value), why) in cases {
        let out = exit_within(args, &[(name, value)], std::time::Duration::from_secs(10))
            .unwrap_or_else(|| panic!("warren {args:?} with {name} kept running"));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "warren {args:?} with {name}: {err}");
        assert!(
            err.contains(why) && err.len() < 1000,
            "warren {args:?} with {name}: {}",
            &err[..err.len().min(2000)]
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains('\u{1b}') && !err.contains("panicked"), "{err:?}");
    }
}

/// A settings file or `.env` that is a device, a FIFO or a directory is
/// refused at once, without reading it (`/dev/zero` would never end).
#[test]
fn a_settings_file_that_is_not_a_regular_file_is_refused_at_once() {
    for (file, target) in [
        ("warren.toml", "/dev/zero"),
        (".env", "/dev/zero"),
        ("warren.toml", "fifo"),
    ] {
        let dir = temp_dir();
        if target == "fifo" {
            let made = Command::new("mkfifo").arg(dir.join(file)).status().expect("mkfifo");
            assert!(made.success());
        } else {
            std::os::unix::fs::symlink(target, dir.join(file)).unwrap();
        }
        let out = exit_within_in(&dir, &["config"], &[], std::time::Duration::from_secs(10))
            .unwrap_or_else(|| panic!("warren config hung on {file} -> {target}"));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(file) && err.contains("not a regular file"), "{err}");
    }
}

#[test]
fn config_says_no_retries_resolves_host_names_and_names_the_celery_broker() {
    let dir = temp_dir();
    std::fs::write(dir.join(".env"), "CELERY_BROKER_URL=redis://:Qz9pw@localhost:6379/0\n").unwrap();
    let out = warren_in(
        &dir,
        &["config"],
        &[
            ("EVENT_RETRY_ATTEMPTS", "0"),
            ("WARREN_INGRESS__LISTEN", "localhost:8597"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("# retry delays: none: no retries"), "{stdout}");
    assert!(stdout.contains("listen = \"127.0.0.1:8597\""), "{stdout}");
    assert!(
        stderr.contains("CELERY_BROKER_URL") && stderr.contains("Redis"),
        "{stderr}"
    );
    assert!(!stderr.contains("Qz9pw") && !stdout.contains("Qz9pw"), "{stderr}");
}

/// Whether `queue` exists on the broker (a passive declare, on a channel of its own).
async fn queue_exists(conn: &lapin::Connection, queue: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, Default::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn run_with_a_listen_port_taken_stops_before_it_declares_or_consumes_anything() {
    let conn = support::connect().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for (setting, variable) in [
        ("ingress.listen", "WARREN_INGRESS__LISTEN"),
        ("metrics.listen", "WARREN_METRICS__LISTEN"),
    ] {
        let s = support::settings("cli-port", false);
        let env = [
            ("WARREN_TOPOLOGY__EXCHANGE", s.topology.exchange.as_str()),
            ("WARREN_CONSUMER__SERVICE", s.consumer.service.as_str()),
            ("WARREN_TOPOLOGY__QUEUE_TYPE", "classic"),
            (variable, taken_addr.as_str()),
        ];
        let out = exit_within(
            &["run"],
            &[&env[..], &[("WARREN_AMQP__URL", support::amqp_url().as_str())]].concat(),
            std::time::Duration::from_secs(20),
        );
        let topology = warren::Topology::from_settings(&s);
        let declared = queue_exists(&conn, &topology.work_queue("user.registered")).await;
        support::cleanup(&conn, &topology).await;
        let out = out.unwrap_or_else(|| panic!("warren run with {setting} taken kept running"));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{setting}: {err}");
        assert!(
            err.contains(&format!("cannot listen on {taken_addr} ({setting})")),
            "{setting}: {err}"
        );
        assert!(
            !declared,
            "{setting} taken: warren run declared (and consumed) before failing: {err}"
        );
    }
}

/// Whether `exchange` exists on the broker (a passive declare, on a channel of its own).
async fn exchange_exists(conn: &lapin::Connection, exchange: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, passive, Default::default())
        .await
        .is_ok()
}

/// Whether every queue of `topology` exists (`true`) or none does (`false`).
async fn all_queues_exist(conn: &lapin::Connection, topology: &warren::Topology) -> bool {
    let mut found = Vec::new();
    for q in topology.queues() {
        found.push(queue_exists(conn, &q.name).await);
    }
    assert!(
        found.iter().all(|f| *f) || found.iter().all(|f| !*f),
        "some queues of {} deleted, not all: {found:?}",
        topology.service
    );
    found[0]
}

#[tokio::test]
async fn topology_delete_asks_refuses_queues_with_messages_and_keeps_a_shared_exchange() {
    let conn = support::connect().await;
    let s = support::settings("cli-del", false);
    let mut other = support::settings("cli-del-other", false);
    other.topology.exchange = s.topology.exchange.clone();
    let topology = support::declare(&conn, &s).await;
    let other_topology = support::declare(&conn, &other).await;
    let dead = topology.dead_queue("user.registered");
    support::publish_raw(&conn, "", &dead, b"{}").await;
    let env = [
        ("WARREN_TOPOLOGY__EXCHANGE", s.topology.exchange.as_str()),
        ("WARREN_CONSUMER__SERVICE", s.consumer.service.as_str()),
    ];
    let delete = |args: &[&str]| warren(&[&["topology", "delete"], args].concat(), &env);

    let full = delete(&["--yes"]);
    let not_asked = delete(&["--force"]); // stdin is not a terminal, and no --yes
    let kept_all = all_queues_exist(&conn, &topology).await;
    support::drain(&conn.create_channel().await.unwrap(), &dead).await;
    let emptied = delete(&["--yes", "--exchange"]);
    let deleted_all = !all_queues_exist(&conn, &topology).await;
    let exchange_kept = exchange_exists(&conn, &s.topology.exchange).await;
    let other_kept = all_queues_exist(&conn, &other_topology).await;
    support::cleanup(&conn, &topology).await;
    support::cleanup(&conn, &other_topology).await;

    assert!(!full.status.success(), "deleted queues holding messages");
    assert!(
        text(&full.stderr).contains(&format!("{dead} (1 message)")) && text(&full.stderr).contains("--force"),
        "{}",
        text(&full.stderr)
    );
    assert!(!not_asked.status.success());
    assert!(text(&not_asked.stderr).contains("--yes"), "{}", text(&not_asked.stderr));
    assert!(kept_all, "a refused delete deleted nothing");
    assert!(deleted_all, "{}", text(&emptied.stderr));
    assert_eq!(
        text(&emptied.stdout).lines().count(),
        topology.queues().len(),
        "one line per deleted queue: {}",
        text(&emptied.stdout)
    );
    assert!(
        !emptied.status.success() && text(&emptied.stderr).contains("other queues are bound"),
        "the exchange another service uses is kept, and said so: {}",
        text(&emptied.stderr)
    );
    assert!(exchange_kept && other_kept, "another service's objects untouched");
}

#[tokio::test]
async fn topology_delete_with_force_deletes_queues_with_their_messages_and_the_exchange() {
    let conn = support::connect().await;
    let s = support::settings("cli-del-force", false);
    let topology = support::declare(&conn, &s).await;
    support::publish_raw(&conn, "", &topology.dead_queue("user.login"), b"{}").await;
    let env = [
        ("WARREN_TOPOLOGY__EXCHANGE", s.topology.exchange.as_str()),
        ("WARREN_CONSUMER__SERVICE", s.consumer.service.as_str()),
    ];
    let out = warren(&["topology", "delete", "--yes", "--force", "--exchange"], &env);
    let deleted_all = !all_queues_exist(&conn, &topology).await;
    let exchange_gone = !exchange_exists(&conn, &s.topology.exchange).await;
    support::cleanup(&conn, &topology).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(deleted_all && exchange_gone, "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "deleted queue {} (1 messages)",
            topology.dead_queue("user.login")
        )),
        "{stdout}"
    );
    let again = warren(&["topology", "delete", "--yes"], &env);
    assert!(again.status.success(), "nothing left is not an error");
    assert!(
        text(&again.stderr).contains("nothing to delete"),
        "{}",
        text(&again.stderr)
    );
}

/// Runs `warren topology delete` on a terminal (util-linux's `script` gives
/// it one) and types `answer` there.
fn delete_on_a_terminal(env: &[(&str, &str)], answer: &str) -> Output {
    use std::io::Write;
    let line = format!("{} topology delete", env!("CARGO_BIN_EXE_warren"));
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(temp_dir())
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn topology_delete_on_a_terminal_deletes_only_after_a_typed_yes() {
    let conn = support::connect().await;
    let s = support::settings("cli-del-ask", false);
    let topology = support::declare(&conn, &s).await;
    let env = [
        ("WARREN_TOPOLOGY__EXCHANGE", s.topology.exchange.as_str()),
        ("WARREN_CONSUMER__SERVICE", s.consumer.service.as_str()),
    ];
    let no = delete_on_a_terminal(&env, "no\n");
    let kept = all_queues_exist(&conn, &topology).await;
    let yes = delete_on_a_terminal(&env, "yes\n");
    let deleted = !all_queues_exist(&conn, &topology).await;
    support::cleanup(&conn, &topology).await;
    let asked = text(&no.stdout);
    assert!(!no.status.success(), "{asked}");
    assert!(
        asked.contains("Type yes to continue") && asked.contains(&topology.dead_queue("user.login")),
        "lists the queues and asks: {asked}"
    );
    assert!(asked.contains("nothing deleted"), "{asked}");
    assert!(kept, "a no deletes nothing");
    assert!(yes.status.success(), "{}", text(&yes.stdout));
    assert!(deleted, "a yes deletes: {}", text(&yes.stdout));
}

#[test]
fn the_load_generator_is_not_a_warren_command() {
    let help = warren(&["--help"], &[]);
    let listed = text(&help.stdout);
    assert!(help.status.success() && listed.contains("publish"), "{help:?}");
    // It is the warren-bench binary now, not part of the product.
    assert!(!listed.contains("bench"), "{listed}");
    let out = warren(&["bench", "--events", "1"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("unrecognized subcommand 'bench'"), "{out:?}");
}
