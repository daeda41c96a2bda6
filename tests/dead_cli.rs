//! `warren dead …` as a process: list, stats, replay (dry run, real, killed
//! with SIGKILL and rerun), purge with an export, import.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use warren::event::headers;

fn warren(s: &warren::Settings, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.arg("dead")
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_TOPOLOGY__QUEUE_TYPE", "classic");
    cmd
}

fn run(s: &warren::Settings, args: &[&str]) -> Output {
    let out = warren(s, args).stdin(Stdio::null()).output().expect("run warren");
    assert!(
        out.status.success(),
        "warren dead {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Parks `n` events in `queue` with `reason`; returns their ids.
async fn park(conn: &lapin::Connection, queue: &str, n: usize, reason: &str) -> Vec<String> {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut ids = Vec::new();
    let mut pending = Vec::new();
    for i in 0..n {
        let e = support::registered(i as i64);
        let mut h = FieldTable::default();
        h.insert(headers::REASON.into(), AMQPValue::LongString(reason.into()));
        h.insert(
            headers::ERROR.into(),
            AMQPValue::LongString(format!("HTTP 503 after {i} ms").into()),
        );
        h.insert(
            headers::FIRST_FAILURE.into(),
            AMQPValue::LongString("2025-01-20T10:30:00Z".into()),
        );
        let props = BasicProperties::default()
            .with_message_id(e.event_id.to_string().into())
            .with_type("user.registered".into())
            .with_delivery_mode(2)
            .with_headers(h);
        let body = serde_json::to_vec(&e).unwrap();
        let opts = BasicPublishOptions::default();
        pending.push(
            ch.basic_publish("".into(), queue.into(), opts, &body, props)
                .await
                .unwrap(),
        );
        ids.push(e.event_id.to_string());
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
    ids
}

fn ids_of(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| headers::message_id(&d.properties).unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn list_stats_replay_purge_and_import_from_the_shell() {
    let conn = support::connect().await;
    let s = support::settings("dead-cli", false);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let work = topology.work_queue("user.registered");
    let exhausted = park(&conn, &dead, 5, "exhausted").await;
    let permanent = park(&conn, &dead, 3, "permanent").await;

    let listed = json_lines(&run(&s, &["list", "--json"]));
    let ids: Vec<&str> = listed.iter().map(|v| v["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [exhausted.clone(), permanent.clone()].concat());
    assert_eq!(listed[0]["reason"], "exhausted");
    assert_eq!(listed[0]["queue"], dead.as_str());
    let table = String::from_utf8(run(&s, &["list", "--reason", "permanent"]).stdout).unwrap();
    assert_eq!(table.lines().count(), 4, "a header and three rows: {table}");

    let stats = json_lines(&run(&s, &["stats", "--json"]));
    assert_eq!(stats.len(), 2);
    assert_eq!(
        (stats[0]["count"].as_u64(), stats[0]["reason"].as_str()),
        (Some(5), Some("exhausted"))
    );

    let show = json_lines(&run(&s, &["show", &permanent[0], "--json"]));
    assert_eq!(show[0]["properties"]["message_id"], permanent[0].as_str());
    assert_eq!(show[0]["headers"]["x-warren-reason"], "permanent");
    let missing = warren(&s, &["show", "no-such-id"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no parked event"));

    let dry = String::from_utf8(run(&s, &["replay", "--reason", "exhausted", "--dry-run"]).stdout).unwrap();
    assert!(dry.contains("would move 5"), "{dry}");
    assert_eq!(support::ready(&conn.create_channel().await.unwrap(), &work).await, 0);

    let group = stats[0]["group"].as_str().unwrap();
    let moved = json_lines(&run(&s, &["replay", "--group", group, "--json"]));
    assert_eq!(moved[0]["moved"].as_array().unwrap().len(), 5);
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(ids_of(&support::drain(&ch, &work).await), exhausted);

    let file = std::env::temp_dir().join(format!("{}.jsonl", support::unique("export")));
    let path = file.to_str().unwrap();
    let purged = String::from_utf8(run(&s, &["purge", "--export", path, "--yes"]).stdout).unwrap();
    assert!(purged.contains("purged 3"), "{purged}");
    support::wait_ready(&ch, &dead, 0, Duration::from_secs(5)).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
    let again = warren(&s, &["purge", "--export", path, "--yes"]).output().unwrap();
    assert!(!again.status.success(), "an export never overwrites a file");

    run(&s, &["import", path]);
    let back = support::drain(&ch, &dead).await;
    assert_eq!(ids_of(&back), permanent);
    assert_eq!(
        headers::text(&back[0].properties, headers::REASON).as_deref(),
        Some("permanent")
    );
    std::fs::remove_file(&file).unwrap();
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn purge_asks_first_and_a_no_removes_nothing() {
    let conn = support::connect().await;
    let s = support::settings("dead-ask", false);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    park(&conn, &dead, 2, "exhausted").await;
    let mut child = warren(&s, &["purge"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"no\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 parked events") && err.contains("nothing purged"),
        "{err}"
    );
    let ch = conn.create_channel().await.unwrap();
    support::wait_ready(&ch, &dead, 2, Duration::from_secs(5)).await;
    let bad = warren(&s, &["import", "/nonexistent/x.jsonl"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/x.jsonl"));
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn a_replay_killed_at_a_random_point_then_rerun_loses_nothing() {
    let conn = support::connect().await;
    let s = support::settings("dead-kill", false);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let work = topology.work_queue("user.registered");
    let ids = park(&conn, &dead, 3000, "exhausted").await;

    let mut child = warren(&s, &["replay"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Kill once the replay is under way, at a point that differs per run.
    let started = std::time::Instant::now();
    while support::ready(&ch, &work).await < 1 {
        assert!(started.elapsed() < Duration::from_secs(20), "the replay never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_within(&mut child, 300).await;
    let moved_before = support::ready(&ch, &work).await;
    assert!(moved_before < 3000, "killed before the end ({moved_before} moved)");

    let out = json_lines(&run(&s, &["replay", "--json"]));
    assert!(out[0]["error"].is_null(), "{:?}", out[0]);
    let replayed: HashSet<String> = ids_of(&support::drain(&ch, &work).await).into_iter().collect();
    let parked: HashSet<String> = ids_of(&support::drain(&ch, &dead).await).into_iter().collect();
    for id in &ids {
        assert!(replayed.contains(id) || parked.contains(id), "{id} lost");
    }
    assert!(
        parked.is_empty(),
        "the rerun moved what was left (and dropped the dead pass's marker)"
    );
    support::cleanup(&conn, &topology).await;
}

#[test]
fn the_ingress_refuses_an_export_dir_that_is_not_a_directory() {
    let file = std::env::temp_dir().join(format!("{}.txt", support::unique("not-a-dir")));
    std::fs::write(&file, "x").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("ingress")
        .current_dir(std::env::temp_dir())
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .env("WARREN_INGRESS__LISTEN", "127.0.0.1:0")
        .env("WARREN_DEAD__EXPORT_DIR", &file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run warren");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&file);
            panic!("warren ingress started with dead.export_dir = a file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(!status.success());
    assert!(
        stderr.contains("dead.export_dir") && stderr.contains("is not a directory"),
        "{stderr}"
    );
}

/// SIGKILLs `child` after a delay of up to `max_ms` that differs per run,
/// so the kill lands at a different point of its work each time.
async fn kill_within(child: &mut std::process::Child, max_ms: u64) {
    let jitter = uuid::Uuid::now_v7().as_u128() as u64 % max_ms;
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `POST /dead/purge` of everything and does not wait for the answer.
fn send_purge(port: u16) -> std::net::TcpStream {
    let body = r#"{"confirm": true}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the ingress listens");
    write!(
        stream,
        "POST /dead/purge HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

#[tokio::test]
async fn an_http_purge_killed_half_way_leaves_each_event_parked_or_in_its_export() {
    let conn = support::connect().await;
    let s = support::settings("dead-kill-purge", false);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let exports = std::env::temp_dir().join(support::unique("dead-exports"));
    let ids = park(&conn, &dead, 2000, "exhausted").await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("ingress")
        .current_dir(std::env::temp_dir())
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_TOPOLOGY__QUEUE_TYPE", "classic")
        .env("WARREN_INGRESS__LISTEN", format!("127.0.0.1:{port}"))
        .env("WARREN_DEAD__EXPORT_DIR", &exports)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run warren");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the ingress never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _request = send_purge(port);
    // Kill once the purge is under way, at a point that differs per run.
    let ch = conn.create_channel().await.unwrap();
    while support::ready(&ch, &dead).await > 1900 {
        assert!(started.elapsed() < Duration::from_secs(30), "the purge never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_within(&mut child, 200).await;

    let files: Vec<_> = std::fs::read_dir(&exports)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    let mut exported = HashSet::new();
    for file in &files {
        for r in warren::dead::read_export(file).unwrap() {
            exported.insert(r.properties.message_id.unwrap());
        }
    }
    // The unacked originals come back when the broker sees the connection gone.
    let mut parked = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while parked.len() + exported.len() < ids.len() && std::time::Instant::now() < deadline {
        for d in support::drain(&ch, &dead).await {
            // The killed pass's marker carries no message id.
            if let Some(id) = headers::message_id(&d.properties) {
                parked.insert(id.to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&exports);
    support::cleanup(&conn, &topology).await;
    assert_eq!(files.len(), 1, "the purge's export file");
    assert!(
        exported.len() < ids.len(),
        "killed before the end ({} exported)",
        exported.len()
    );
    let lost: Vec<&String> = ids
        .iter()
        .filter(|id| !parked.contains(*id) && !exported.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} lost ({} parked, {} exported)",
        lost.len(),
        parked.len(),
        exported.len()
    );
}

#[tokio::test]
async fn a_mistyped_type_filter_is_an_error_naming_the_types() {
    let conn = support::connect().await;
    let s = support::settings("dead-cli-type", false);
    let topology = support::declare(&conn, &s).await;
    park(&conn, &topology.dead_queue("user.registered"), 1, "exhausted").await;
    for args in [
        &["list", "--type", "user.registerd"][..],
        &["stats", "--type", "user.registerd"][..],
        &["replay", "--type", "user.registerd", "--dry-run"][..],
    ] {
        let out = warren(&s, args).stdin(Stdio::null()).output().expect("run warren");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "warren dead {args:?} succeeded: {stderr}");
        assert!(
            stderr.contains("\"user.registerd\"") && stderr.contains("user.registered, user.login"),
            "warren dead {args:?}: {stderr}"
        );
    }
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(support::ready(&ch, &topology.dead_queue("user.registered")).await, 1);
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn list_and_stats_print_what_a_producer_wrote_escaped_on_one_line() {
    let conn = support::connect().await;
    let s = support::settings("dead-escape", false);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let forged = "a\x1b[2J\nforged";
    let mut h = FieldTable::default();
    h.insert(headers::REASON.into(), AMQPValue::LongString("exhausted".into()));
    h.insert(
        headers::ERROR.into(),
        AMQPValue::LongString("HTTP 500\u{9b}31m \u{202e}evil".into()),
    );
    let props = BasicProperties::default()
        .with_message_id(forged.into())
        .with_type("user.registered\r\x07".into())
        .with_headers(h);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let body = serde_json::to_vec(&support::registered(1)).unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            dead.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());

    let unsafe_char = |c: char| (c.is_control() && c != '\n') || c == '\u{202e}';
    let table = String::from_utf8(run(&s, &["list"]).stdout).unwrap();
    assert!(!table.chars().any(unsafe_char), "{table:?}");
    assert_eq!(table.lines().count(), 2, "a header and one row: {table:?}");
    assert!(table.contains(r"a\u{1b}[2J\nforged"), "{table:?}");
    assert!(table.contains(r"HTTP 500\u{9b}31m \u{202e}evil"), "{table:?}");
    let stats = String::from_utf8(run(&s, &["stats"]).stdout).unwrap();
    assert!(!stats.chars().any(unsafe_char), "{stats:?}");
    assert_eq!(stats.lines().count(), 2, "a header and one group: {stats:?}");
    // JSON stays the same JSON: the value read back is what the producer sent.
    let listed = run(&s, &["list", "--json"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).chars().any(unsafe_char));
    assert_eq!(json_lines(&listed)[0]["event_id"], forged);
    support::cleanup(&conn, &topology).await;
}
