//! Fault injection: N events published while something breaks; every event
//! the producer saw confirmed must be handled at least once. The connection
//! faults are made on node 1 of the test cluster (`support::cluster`), never
//! on the broker at 127.0.0.1:5672.
//!
//! Each test prints a `RELIABILITY|…` row; `scripts/reliability-table`
//! collects them into docs/RELIABILITY.md.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::faults::{self, Handled, N, Plan, Report};
use support::management;
use support::proxy::Proxy;
use tokio_util::sync::CancellationToken;
use warren::consumer::{Consumer, Context, HandlerError};
use warren::{Envelope, Publisher, Settings, UserRegistered};

/// Publisher tasks × batch: the most publishes in flight at once.
const TASKS: usize = 4;
const BATCH: usize = 100;
const PLAN: Plan = Plan {
    tasks: TASKS,
    batch: BATCH,
    rate: None,
};

fn events() -> Vec<Envelope<UserRegistered>> {
    (0..N as i64).map(support::registered).collect()
}

/// Settings on node 1 of the test cluster.
fn scenario_settings(prefix: &str) -> Settings {
    let mut s = support::settings(prefix, true);
    s.amqp.url = Cluster::get().url(1);
    s.consumer.event_types = vec!["user.registered".into()];
    s.consumer.shutdown_timeout = Duration::from_secs(5);
    s
}

fn start(consumer: Consumer) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    (
        token,
        tokio::spawn(async move { consumer.run(t).await.expect("consumer") }),
    )
}

/// Runs one scenario: consumer and publisher on `consumer_s` / `publisher_s`,
/// `fault` called once a third of the events are sent, with the broker's name
/// of the connection whose client name contains `victim`.
async fn scenario<F, Fut>(
    name: &'static str,
    consumer_s: Settings,
    publisher_s: Settings,
    victim: Option<String>,
    fault: F,
) -> Report
where
    F: FnOnce(Option<String>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let conn = support::connect_to(&Cluster::get().url(1)).await;
    let handled = Handled::default();
    let consumer = Consumer::new(consumer_s.clone()).on(handled.handler());
    let topology = consumer.topology();
    let _declared = support::declare(&conn, &consumer_s).await;
    let (token, handle) = start(consumer);
    let publisher = Publisher::connect(
        &publisher_s,
        &format!("faults-publisher {}", consumer_s.consumer.service),
    )
    .await
    .expect("publisher connects");
    let management_port = Cluster::get().management_port(1);
    let victim = match victim {
        Some(v) => Some(management::connection_named(management_port, &v).await),
        None => None,
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(faults::publish_all(publisher, events(), PLAN, sent.clone()));
    faults::wait_for_count(&sent, N / 3, Duration::from_secs(60)).await;
    let fault_at = Instant::now();
    fault(victim).await;
    let published = publishing.await.unwrap();
    if !published.failed.is_empty() {
        eprintln!(
            "{name}: {} publishes failed (not confirmed), e.g. {}",
            published.failed.len(),
            published.failed[0]
        );
    }
    support::eventually(
        Duration::from_secs(90),
        &format!("{name}: every confirmed event handled"),
        || handled.covers(&published.confirmed),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.unwrap();
    support::cleanup(&conn, &topology).await;
    Report::new(name, N, &published, &handled).resumed(&[fault_at], &published, &handled)
}

fn dup_bound(s: &Settings, faults: usize) -> usize {
    faults * (usize::from(s.consumer.prefetch) + TASKS * BATCH)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_connection_closed_by_the_broker() {
    let s = scenario_settings("f-pubclose");
    let victim = format!("faults-publisher {}", s.consumer.service);
    let report = scenario(
        "publisher connection closed by broker",
        s.clone(),
        s.clone(),
        Some(victim),
        |c| async move {
            management::force_close(Cluster::get().management_port(1), &c.unwrap());
        },
    )
    .await;
    report.check(dup_bound(&s, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_connection_closed_by_the_broker() {
    let s = scenario_settings("f-conclose");
    let victim = format!("consumer {}", s.consumer.service);
    let report = scenario(
        "consumer connection closed by broker",
        s.clone(),
        s.clone(),
        Some(victim),
        |c| async move {
            management::force_close(Cluster::get().management_port(1), &c.unwrap());
        },
    )
    .await;
    report.check(dup_bound(&s, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_cut() {
    let proxy = Arc::new(Proxy::start(Cluster::get().addr(1)).await);
    let mut s = scenario_settings("f-cut");
    s.amqp.url = proxy.url();
    let p = proxy.clone();
    let report = scenario(
        "TCP cut (publisher and consumer)",
        s.clone(),
        s.clone(),
        None,
        |_| async move { p.cut() },
    )
    .await;
    report.check(dup_bound(&s, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_black_hole_noticed_by_heartbeats() {
    let proxy = Arc::new(Proxy::start(Cluster::get().addr(1)).await);
    let mut s = scenario_settings("f-stall");
    s.amqp.url = proxy.url();
    s.amqp.heartbeat = Duration::from_secs(2);
    s.publisher.confirm_timeout = Duration::from_secs(40);
    let p = proxy.clone();
    let report = scenario(
        "TCP stall 8 s (heartbeat 2 s)",
        s.clone(),
        s.clone(),
        None,
        |_| async move {
            p.stall();
            tokio::time::sleep(Duration::from_secs(8)).await;
            // The broker gave up on the silent connections as well: drop them, let new ones through.
            p.cut();
            p.resume();
        },
    )
    .await;
    report.check(dup_bound(&s, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_panic_or_fail_transiently() {
    let mut s = scenario_settings("f-flaky");
    let conn = support::connect_to(&s.amqp.url).await;
    s.consumer.retry.delays = vec![Duration::from_millis(100), Duration::from_millis(200)];
    let handled = Handled::default();
    let h = handled.clone();
    let consumer = Consumer::new(s.clone()).on(move |e: Envelope<UserRegistered>, ctx: Context| {
        let h = h.clone();
        async move {
            match (e.user_id % 10, ctx.attempt) {
                (0, 1) => panic!("handler bug on {}", e.user_id),
                (1, 1 | 2) => Err(HandlerError::transient("dependency timed out")),
                _ => {
                    h.record(e.event_id);
                    Ok(())
                }
            }
        }
    });
    let topology = consumer.topology();
    // Declared here, not left to the consumer: quorum queues on three nodes
    // can take longer than a fixed pause, and publishes before them are unroutable.
    let _declared = support::declare(&conn, &s).await;
    let (token, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = Publisher::connect(&s, "faults-flaky").await.unwrap();
    let published = faults::publish_all(publisher, events(), PLAN, Arc::new(AtomicUsize::new(0))).await;
    assert!(published.failed.is_empty(), "{:?}", published.failed);
    support::eventually(Duration::from_secs(60), "every event handled", || {
        handled.covers(&published.confirmed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(
        support::ready(&ch, &topology.dead_queue("user.registered")).await,
        0,
        "nothing exhausted"
    );
    support::cleanup(&conn, &topology).await;
    let report = Report::new("handlers panic (10%) or fail twice (10%)", N, &published, &handled);
    report.check(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_bodies_mixed_into_the_stream() {
    let s = scenario_settings("f-poison");
    let conn = support::connect_to(&s.amqp.url).await;
    let handled = Handled::default();
    let consumer = Consumer::new(s.clone()).on(handled.handler());
    let topology = consumer.topology();
    // Declared here, not left to the consumer: quorum queues on three nodes
    // can take longer than a fixed pause, and publishes before them are unroutable.
    let _declared = support::declare(&conn, &s).await;
    let (token, handle) = start(consumer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = Publisher::connect(&s, "faults-poison").await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(faults::publish_all(publisher, events(), PLAN, sent.clone()));
    let poison: Vec<Vec<u8>> = (0..100)
        .map(|i| match i % 4 {
            0 => format!("not json {i}").into_bytes(),
            1 => vec![0xff, 0xfe, i as u8],
            2 => format!(r#"{{"event_type":"user.registered","source":"x","user_id":{i},"data":{{"user_id":{i}}}}}"#)
                .into_bytes(),
            _ => format!(r#"{{"event_type":"user.deleted","source":"x","user_id":{i},"data":{{}}}}"#).into_bytes(),
        })
        .collect();
    for body in &poison {
        support::publish_raw(&conn, &s.topology.exchange, "user.registered", body).await;
    }
    let published = publishing.await.unwrap();
    assert!(published.failed.is_empty(), "{:?}", published.failed);
    support::eventually(Duration::from_secs(60), "every event handled", || {
        handled.covers(&published.confirmed)
    })
    .await;
    let ch = conn.create_channel().await.unwrap();
    let dead = topology.dead_queue("user.registered");
    support::wait_ready(&ch, &dead, poison.len() as u32, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.unwrap();
    let dead_messages = support::drain(&ch, &dead).await;
    let parked: HashSet<Vec<u8>> = dead_messages.iter().map(|d| d.data.clone()).collect();
    assert_eq!(
        parked,
        poison.iter().cloned().collect::<HashSet<_>>(),
        "each poison body parked once, unchanged"
    );
    support::wait_ready(&ch, &topology.work_queue("user.registered"), 0, Duration::from_secs(5)).await;
    support::cleanup(&conn, &topology).await;
    let mut report = Report::new("poison bodies mixed in (100)", N, &published, &handled).parked(
        &published,
        &handled,
        &dead_messages,
    );
    report.poison_dead = Some((poison.len(), parked.len()));
    assert_eq!(
        report.handled_unique,
        published.confirmed.len(),
        "no poison body reached a handler"
    );
    report.check(0);
}

fn spawn_consume(s: &Settings) -> (Child, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("consume")
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", &s.amqp.url)
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_CONSUMER__EVENT_TYPES", "user.registered")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren consume");
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).collect::<Vec<_>>());
    (child, reader)
}

fn ids_of(lines: &[String]) -> Vec<uuid::Uuid> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_process_killed_and_restarted() {
    let s = scenario_settings("f-sigkill");
    let conn = support::connect_to(&s.amqp.url).await;
    let topology = support::declare(&conn, &s).await;
    let (mut first, first_lines) = spawn_consume(&s);
    let publisher = Publisher::connect(&s, "faults-sigkill").await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(faults::publish_all(publisher, events(), PLAN, sent.clone()));
    faults::wait_for_count(&sent, N / 3, Duration::from_secs(60)).await;
    first.kill().expect("SIGKILL"); // no drain, no acks of in-flight work
    first.wait().unwrap();
    let (mut second, second_lines) = spawn_consume(&s);
    let published = publishing.await.unwrap();
    assert!(published.failed.is_empty(), "{:?}", published.failed);
    let ch = conn.create_channel().await.unwrap();
    support::wait_ready(&ch, &topology.work_queue("user.registered"), 0, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(second.wait().unwrap().success(), "clean exit after SIGTERM");
    let handled = Handled::default();
    for id in ids_of(&first_lines.join().unwrap())
        .into_iter()
        .chain(ids_of(&second_lines.join().unwrap()))
    {
        handled.record(id);
    }
    support::cleanup(&conn, &topology).await;
    let report = Report::new("consumer SIGKILL, then restarted", N, &published, &handled);
    report.check(dup_bound(&s, 1));
    assert!(sent.load(Ordering::Relaxed) == N);
}
