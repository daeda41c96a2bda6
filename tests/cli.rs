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
