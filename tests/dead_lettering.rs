//! The queue arguments that keep dead letters, against the broker at
//! `AMQP_URL` (fresh names, nothing else touched): `.dead` survives any
//! amount of browsing, what `x-delivery-limit: -1` means on this broker,
//! the work queue's limit moving a message to `.dead`, and queues declared
//! with the old arguments reported at start, with the way out tested.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;
use warren::consumer::{Consumer, ConsumerError};
use warren::topology::TopologyError;
use warren::{Publisher, Topology};

/// Publishes `body` straight to `queue` (default exchange), confirmed.
async fn put(ch: &Channel, queue: &str, body: &[u8]) {
    ch.confirm_select(Default::default()).await.ok();
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "publish to {queue} confirmed");
}

/// Takes one message from `queue` and puts it back (what the console's
/// "Get messages" with requeue does); `None` when the queue is empty.
async fn browse_once(ch: &Channel, queue: &str) -> Option<i64> {
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()?;
    let count = got
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    got.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    Some(match count {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(n),
        _ => 0,
    })
}

#[tokio::test]
async fn a_dead_queue_keeps_its_messages_however_often_they_are_browsed() {
    let conn = support::connect().await;
    let s = support::settings("dead-browse", true);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let ch = conn.create_channel().await.unwrap();
    put(&ch, &dead, b"parked event").await;
    // 25 browses: past RabbitMQ 4.x's default limit of 20.
    let mut last = 0;
    for i in 0..25 {
        last = browse_once(&ch, &dead)
            .await
            .unwrap_or_else(|| panic!("the parked message vanished after {i} browses"));
    }
    assert!(last >= 20, "the broker counted the browses: x-delivery-count {last}");
    support::wait_ready(&ch, &dead, 1, Duration::from_secs(5)).await;
    support::cleanup(&conn, &topology).await;
}

/// The broker's version, from the server properties of the AMQP handshake
/// (lapin does not expose them).
fn broker_version() -> String {
    let url = support::amqp_url();
    let node = warren::uri::node_of(warren::uri::split_list(&url)[0]);
    let mut s = std::net::TcpStream::connect(node.as_str()).expect("the broker at AMQP_URL");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let frame = &buf[..n];
    let at = frame
        .windows(8)
        // The field "version", a long string ('S'), then its length and bytes.
        .position(|w| w == b"versionS")
        .expect("connection.start names the version");
    let len = u32::from_be_bytes(frame[at + 8..at + 12].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&frame[at + 12..at + 12 + len]).into_owned()
}

/// Declares a quorum queue with `x-delivery-limit: limit`, puts a message in
/// it, browses it once, and says whether the message is still there.
async fn survives_one_requeue(ch: &Channel, limit: i64) -> bool {
    let name = support::unique("limit");
    let _gone = support::Cleanup::broker().queue(&name);
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.as_str().into(), opts, args).await.unwrap();
    put(ch, &name, b"m").await;
    assert!(browse_once(ch, &name).await.is_some(), "the message was there");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept = browse_once(ch, &name).await.is_some();
    ch.queue_delete(name.as_str().into(), Default::default()).await.unwrap();
    kept
}

#[tokio::test]
async fn what_a_delivery_limit_of_minus_one_means_on_this_broker() {
    let version = broker_version();
    let conn = support::connect().await;
    let ch = conn.create_channel().await.unwrap();
    let minus_one = survives_one_requeue(&ch, -1).await;
    let zero = survives_one_requeue(&ch, 0).await;
    let largest = survives_one_requeue(&ch, warren::topology::DEAD_DELIVERY_LIMIT).await;
    eprintln!("RabbitMQ {version}: x-delivery-limit -1 keeps: {minus_one}, 0 keeps: {zero}, 2^31-1 keeps: {largest}");
    assert!(largest, "RabbitMQ {version}: 2^31-1 is no limit in practice");
    if version.starts_with("3.") {
        // 3.x: any limit is a limit, and -1 is "drop at the first requeue".
        assert!(
            !minus_one && !zero,
            "RabbitMQ {version}: -1 and 0 drop at the first requeue"
        );
    } else {
        // 4.x: -1 turns the limit off.
        assert!(minus_one, "RabbitMQ {version}: -1 means no limit");
    }
}

#[tokio::test]
async fn a_work_queue_moves_a_message_past_its_delivery_limit_to_dead() {
    let conn = support::connect().await;
    let mut s = support::settings("limit-dead", true);
    s.topology.delivery_limit = 2;
    let topology = support::declare(&conn, &s).await;
    let (work, dead) = (
        topology.work_queue("user.registered"),
        topology.dead_queue("user.registered"),
    );
    let ch = conn.create_channel().await.unwrap();
    put(&ch, &work, b"crashes its consumer").await;
    let mut browses = 0;
    while browse_once(&ch, &work).await.is_some() {
        browses += 1;
        assert!(browses <= 5, "still in {work} after {browses} deliveries");
    }
    support::wait_ready(&ch, &dead, 1, Duration::from_secs(10)).await;
    let parked = support::drain(&ch, &dead).await;
    assert_eq!(parked[0].data, b"crashes its consumer");
    support::cleanup(&conn, &topology).await;
}

/// Declares `topology`'s queues the way warren did before at-least-once
/// dead-lettering (and before `.dead` had a delivery limit).
async fn declare_old_style(ch: &Channel, topology: &Topology) {
    for q in topology.queues() {
        let mut args = FieldTable::default();
        for (k, v) in &q.arguments {
            if matches!(*k, "x-dead-letter-strategy" | "x-overflow")
                || (q.name.ends_with(".dead") && *k == "x-delivery-limit")
            {
                continue;
            }
            let v = match v {
                warren::topology::Arg::Str(s) => AMQPValue::LongString(s.as_str().into()),
                warren::topology::Arg::Int(i) => AMQPValue::LongLongInt(*i),
            };
            args.insert((*k).into(), v);
        }
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(q.name.as_str().into(), opts, args).await.unwrap();
    }
    for b in topology.bindings() {
        ch.queue_bind(
            b.queue.as_str().into(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn queues_declared_with_the_old_arguments_are_reported_with_the_way_out() {
    let conn = support::connect().await;
    let mut s = support::settings("old-args", true);
    s.consumer.event_types = vec!["user.registered".into()];
    let topology = Topology::from_settings(&s);
    let _gone = support::Cleanup::of(&topology);
    let ch = conn.create_channel().await.unwrap();
    topology.declare_exchange(&ch).await.unwrap();
    declare_old_style(&ch, &topology).await;
    let consumer = Consumer::new(s.clone()).on(support::faults::Handled::default().handler());
    let result = tokio::time::timeout(Duration::from_secs(20), consumer.run(CancellationToken::new()))
        .await
        .expect("the consumer stops at start");
    match result {
        Err(ConsumerError::Topology(e @ TopologyError::Mismatch { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains(&topology.work_queue("user.registered")), "{msg}");
            assert!(
                msg.contains("x-dead-letter-strategy") || msg.contains("x-overflow"),
                "{msg}"
            );
            assert!(msg.contains("docs/CLUSTER.md"), "{msg}");
        }
        other => panic!("expected a mismatch naming the old queue, got {other:?}"),
    }
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn moving_to_new_queues_beside_the_old_ones_loses_nothing() {
    let conn = support::connect().await;
    let ch = conn.create_channel().await.unwrap();
    // The running version's queues, old-style, holding events not yet handled.
    let mut old = support::settings("migrate", true);
    old.consumer.event_types = vec!["user.registered".into()];
    let old_topology = Topology::from_settings(&old);
    let _gone = support::Cleanup::of(&old_topology);
    old_topology.declare_exchange(&ch).await.unwrap();
    declare_old_style(&ch, &old_topology).await;
    let publisher = Publisher::connect(&old, "tests").await.unwrap();
    let before: Vec<_> = (0..20).map(support::registered).collect();
    for r in publisher.publish_batch(&before).await {
        r.unwrap();
    }

    // Step 1: the new version under a new service name: its queues are
    // declared with the new arguments and bound beside the old ones.
    let mut new = old.clone();
    new.consumer.service = format!("{}-v2", old.consumer.service);
    let handled = support::faults::Handled::default();
    let consumer = Consumer::new(new.clone()).on(handled.handler());
    let new_topology = consumer.topology();
    let _new = support::declare(&conn, &new).await;
    let token = CancellationToken::new();
    let t = token.clone();
    let consuming = tokio::spawn(async move { consumer.run(t).await });
    let after: Vec<_> = (20..40).map(support::registered).collect();
    for r in publisher.publish_batch(&after).await {
        r.unwrap();
    }
    let after_ids: HashSet<_> = after.iter().map(|e| e.event_id).collect();
    support::eventually(Duration::from_secs(20), "the new version handles new events", || {
        handled.covers(&after_ids)
    })
    .await;

    // Step 2: the old version drains its queues (here by hand): it holds
    // everything published before the switch, and the overlap.
    let old_work = old_topology.work_queue("user.registered");
    let drained: HashSet<uuid::Uuid> = support::drain(&ch, &old_work)
        .await
        .iter()
        .filter_map(support::faults::event_id_of)
        .collect();
    for e in before.iter().chain(&after) {
        assert!(drained.contains(&e.event_id), "event {} in the old queue", e.user_id);
    }
    // Step 3: once empty (tiers and .dead too), the old queues are deleted.
    token.cancel();
    consuming.await.unwrap().expect("new consumer stops cleanly");
    support::cleanup(&conn, &old_topology).await;
    support::cleanup(&conn, &new_topology).await;
}
