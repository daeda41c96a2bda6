//! `warren consume` as a process: JSON lines on stdout, garbage parked,
//! SIGTERM mid-burst loses nothing.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use warren::Publisher;

fn consume(s: &warren::Settings) -> (Child, mpsc::Receiver<serde_json::Value>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("consume")
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_TOPOLOGY__QUEUE_TYPE", "classic")
        .env("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "10s")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren consume");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("utf-8 line");
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

fn wait_exit(child: &mut Child) -> i32 {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exited, not killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("warren consume did not exit within 30 s of SIGTERM");
}

async fn wait_consuming(conn: &lapin::Connection, s: &warren::Settings) {
    // The consumer declares the topology; wait for its work queue to exist with a consumer.
    let q = format!("{}.user.registered", s.consumer.service);
    for _ in 0..100 {
        let ch2 = conn.create_channel().await.unwrap();
        let opts = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Ok(info) = ch2.queue_declare(q.as_str().into(), opts, Default::default()).await
            && info.consumer_count() > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("warren consume never started consuming {q}");
}

#[tokio::test]
async fn consume_prints_one_json_line_per_event_published_with_the_cli() {
    let conn = support::connect().await;
    let s = support::settings("shell", false);
    let _gone = support::Cleanup::topology(&s);
    let (mut child, lines) = consume(&s);
    wait_consuming(&conn, &s).await;
    let mut published = HashSet::new();
    for i in 0..100 {
        let data = format!(
            r#"{{"user_id":{i},"username":"u{i}","email":"u{i}@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}}"#
        );
        let out = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["publish", "user.registered", "--data", &data])
            .env_remove("AMQP_URL")
            .env("WARREN_AMQP__URL", support::amqp_url())
            .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        published.insert(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }

    // Garbage straight from a non-warren client: parked, and the consumer goes on.
    let status = Command::new("amqp-publish")
        .args([
            "-u",
            &support::amqp_url(),
            "-e",
            &s.topology.exchange,
            "-r",
            "user.registered",
            "-p",
            "-b",
            "{{garbage",
        ])
        .status()
        .expect("amqp-publish (Debian's amqp-tools) is installed");
    assert!(status.success());
    let ch = conn.create_channel().await.unwrap();
    let dead = format!("{}.user.registered.dead", s.consumer.service);
    support::wait_ready(&ch, &dead, 1, Duration::from_secs(10)).await;

    let mut printed = HashSet::new();
    while printed.len() < 100 {
        let v = lines
            .recv_timeout(Duration::from_secs(15))
            .expect("a JSON line per event");
        for key in [
            "event_id",
            "event_type",
            "timestamp",
            "source",
            "user_id",
            "attempt",
            "data",
        ] {
            assert!(v.get(key).is_some(), "line lacks {key}: {v}");
        }
        printed.insert(v["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(printed, published, "100 distinct event_ids, the ones publish printed");
    assert!(child.try_wait().unwrap().is_none(), "still running after the garbage");
    sigterm(&child);
    assert_eq!(wait_exit(&mut child), 0);
    let topology = warren::Topology::from_settings(&s);
    support::cleanup(&conn, &topology).await;
}

// Blocking reads of the child's stdout below: the burst needs another worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_exits_zero_and_every_event_is_handled_or_back_in_the_queue() {
    let conn = support::connect().await;
    let s = support::settings("sigterm", false);
    let _gone = support::Cleanup::topology(&s);
    let (mut child, lines) = consume(&s);
    wait_consuming(&conn, &s).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let events: Vec<_> = (0..3000).map(support::registered).collect();
    let burst = {
        let publisher = publisher.clone();
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(100) {
                for r in publisher.publish_batch(chunk).await {
                    r.unwrap();
                }
            }
        })
    };
    // Signal once the consumer is visibly in the middle of the burst.
    let mut handled = HashSet::new();
    while handled.len() < 500 {
        let v = lines.recv_timeout(Duration::from_secs(15)).expect("events flowing");
        handled.insert(v["event_id"].as_str().unwrap().to_owned());
    }
    sigterm(&child);
    let code = wait_exit(&mut child);
    burst.await.unwrap();
    while let Ok(v) = lines.recv_timeout(Duration::from_millis(500)) {
        handled.insert(v["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(code, 0, "clean exit on SIGTERM");

    let ch = conn.create_channel().await.unwrap();
    let queue = format!("{}.user.registered", s.consumer.service);
    let rest: HashSet<String> = support::drain(&ch, &queue)
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    let all: HashSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let lost: Vec<_> = all
        .iter()
        .filter(|id| !handled.contains(*id) && !rest.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} events neither handled nor in the queue",
        lost.len()
    );
    assert!(
        handled.len() < all.len(),
        "the signal came mid-burst ({} handled)",
        handled.len()
    );
    eprintln!(
        "handled {} before SIGTERM drained; {} back in the queue",
        handled.len(),
        rest.len()
    );
    let topology = warren::Topology::from_settings(&s);
    support::cleanup(&conn, &topology).await;
}
