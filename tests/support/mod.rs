//! Helpers for broker tests: the broker URL, unique names, guards that
//! delete what a test declared however it ends ([`cleanup`]), and loud
//! failure when there is no broker (a broker test never skips). Tests that
//! stop nodes, raise alarms or close connections use [`cluster`], nodes of
//! their own, never the broker at `AMQP_URL`.
#![allow(dead_code)]

pub mod admin;
pub mod cleanup;
pub mod cluster;
pub mod faults;
pub mod logs;
pub mod management;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use warren::config::QueueType;
use warren::{Settings, Topology};

// Each test crate compiles this module anew, and not every one uses both.
#[allow(unused_imports)]
pub use cleanup::{Cleanup, Declared};

/// `AMQP_URL`, or the local broker.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A connection to the test broker; panics with a clear message when there is none.
pub async fn connect() -> Arc<Connection> {
    connect_to(&amqp_url()).await
}

/// A connection to the broker at `url`; panics with a clear message when there is none.
pub async fn connect_to(url: &str) -> Arc<Connection> {
    match Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("warren-tests".into()),
    )
    .await
    {
        Ok(c) => Arc::new(c),
        Err(e) => panic!(
            "these tests need RabbitMQ at {} (set AMQP_URL, or start it with `rabbitmq-server -detached`): {e}",
            warren::amqp::redact_url(url)
        ),
    }
}

/// `rabbitmqctl` of the broker at `AMQP_URL` (read-only uses: these tests
/// never stop it); panics with its output when it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (these tests need it, as root, on the broker's machine)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("t-{prefix}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Settings with their own exchange and service name, classic queues
/// (fast to declare) unless `quorum`.
pub fn settings(prefix: &str, quorum: bool) -> Settings {
    let mut s = Settings::default();
    s.amqp.url = amqp_url();
    s.topology.exchange = unique(&format!("{prefix}-x"));
    s.consumer.service = unique(prefix);
    s.topology.queue_type = if quorum { QueueType::Quorum } else { QueueType::Classic };
    s
}

/// Declares the topology of `s` on a fresh channel; its queues and exchange
/// are deleted when the returned guard is dropped (keep it until the test's
/// end: dropped at once, it deletes what it just declared).
#[must_use = "dropping the guard deletes the topology"]
pub async fn declare(conn: &Connection, s: &Settings) -> Declared {
    let topology = Topology::from_settings(s);
    let declared = Declared::new(topology.clone(), &s.amqp);
    let ch = conn.create_channel().await.unwrap();
    topology.declare(&ch).await.expect("declare topology");
    declared
}

/// Deletes every queue and the exchange of a topology now (the [`Declared`]
/// guard does it again when dropped, which is harmless).
pub async fn cleanup(conn: &Connection, topology: &Topology) {
    let ch = conn.create_channel().await.unwrap();
    for q in topology.queues() {
        let _ = ch
            .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .exchange_delete(topology.exchange.as_str().into(), Default::default())
        .await;
}

/// Messages ready in a queue (passive declare).
pub async fn ready(ch: &Channel, queue: &str) -> u32 {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    q.message_count()
}

/// Polls until each of `queues` has a consumer (the consumer service has
/// declared them and started consuming), or panics after `within`.
pub async fn wait_consuming(queues: &[String], within: Duration) {
    let conn = connect().await;
    let deadline = tokio::time::Instant::now() + within;
    for queue in queues {
        loop {
            // A channel per try: a passive declare of a queue not declared yet closes it.
            let ch = conn.create_channel().await.expect("opening a channel");
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let consumers = ch
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .map_or(0, |q| q.consumer_count());
            if consumers > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue}: nobody consumes it after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Polls until `queue` has `n` ready messages, or panics after `within`.
pub async fn wait_ready(ch: &Channel, queue: &str, n: u32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = ready(ch, queue).await;
        if got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue}: expected {n} ready messages, have {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes every message out of a queue (acking them).
pub async fn drain(ch: &Channel, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m.delivery);
    }
    out
}

/// A `user.registered` envelope for `user_id`.
pub fn registered(user_id: i64) -> warren::Envelope<warren::UserRegistered> {
    warren::Envelope::new(
        "tests",
        warren::UserRegistered {
            user_id,
            username: format!("user{user_id}"),
            email: format!("user{user_id}@example.com"),
            registration_timestamp: chrono::Utc::now(),
        },
    )
}

/// Polls `cond` every 20 ms until it holds, or panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes raw bytes to an exchange with a routing key (no confirm needed
/// for test garbage, but waits for it anyway).
pub async fn publish_raw(conn: &Connection, exchange: &str, routing_key: &str, body: &[u8]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        confirm.is_ack() && confirm.take_message().is_none(),
        "raw publish not routed"
    );
}
