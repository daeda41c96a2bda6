//! Dead-letter operations against the local broker: listing leaves a
//! `.dead` queue as it was, stats groups, replay moves exactly what it
//! selects to the service's own work queue, purge exports before removing,
//! import puts an export back.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use tokio_util::sync::CancellationToken;
use warren::consumer::{Consumer, Context, HandlerError};
use warren::dead::{DeadLetters, Filter, Record, ReplayOptions};
use warren::event::headers;
use warren::{Envelope, Settings, UserRegistered};

/// Parks `body` in `queue` with the headers the consumer would have set.
async fn park(ch: &lapin::Channel, queue: &str, id: &str, reason: &str, error: &str, body: &[u8], replays: i64) {
    let mut h = FieldTable::default();
    for (k, v) in [
        (headers::REASON, reason),
        (headers::ERROR, error),
        (headers::FIRST_FAILURE, "2025-01-20T10:30:00.000Z"),
        (headers::ORIGINAL_EXCHANGE, "user.events"),
        (headers::ORIGINAL_ROUTING_KEY, "user.registered"),
        (headers::QUEUE, queue.trim_end_matches(".dead")),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ] {
        h.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(4));
    if replays > 0 {
        h.insert(headers::REPLAYS.into(), AMQPValue::LongLongInt(replays));
    }
    let props = BasicProperties::default()
        .with_message_id(id.into())
        .with_type("user.registered".into())
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(h);
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let c = ch
        .basic_publish("".into(), queue.into(), opts, body, props)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack() && c.take_message().is_none(), "park {id} in {queue}");
}

async fn confirm_channel(conn: &Connection) -> lapin::Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch
}

/// Parks `n` valid `user.registered` events; returns their ids.
async fn park_events(
    ch: &lapin::Channel,
    queue: &str,
    n: usize,
    reason: &str,
    error: &(dyn Fn(usize) -> String + Sync),
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let e = support::registered(i as i64);
        let id = e.event_id.to_string();
        park(ch, queue, &id, reason, &error(i), &serde_json::to_vec(&e).unwrap(), 0).await;
        ids.push(id);
    }
    ids
}

fn ids_of(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| headers::message_id(&d.properties).unwrap().to_owned())
        .collect()
}

async fn dead_letters(s: &Settings) -> DeadLetters {
    DeadLetters::connect(s, "tests dead")
        .await
        .unwrap_or_else(|e| panic!("these tests need RabbitMQ at {}: {e}", support::amqp_url()))
}

#[tokio::test]
async fn this_broker_counts_a_requeue_as_a_delivery_so_listing_must_not_requeue() {
    // The control of the next test: a get + requeue on a quorum queue
    // shows up in x-delivery-count, so that test would see it.
    let conn = support::connect().await;
    let s = support::settings("dead-ctl", true);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    park(&ch, &dead, "m1", "exhausted", "boom", b"{}", 0).await;
    let got = ch
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    ch.basic_nack(
        got.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .unwrap();
    let again = support::drain(&ch, &dead).await;
    assert_eq!(headers::int(&again[0].properties, "x-delivery-count"), Some(1));
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn listing_fifty_times_leaves_a_quorum_dead_queue_exactly_as_it_was() {
    let conn = support::connect().await;
    let s = support::settings("dead-list", true);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    let mut ids = park_events(&ch, &queue, 40, "exhausted", &|i| format!("HTTP 503 after {i} s")).await;
    park(
        &ch,
        &queue,
        "garbage",
        "malformed",
        "expected value at line 1",
        b"\xffnot json",
        0,
    )
    .await;
    ids.push("garbage".into());
    let dead = dead_letters(&s).await;
    for _ in 0..50 {
        let listed = dead.list(&Filter::default(), &mut |_, _| {}).await.unwrap();
        let listed: Vec<_> = listed.iter().map(|p| p.event_id.clone().unwrap()).collect();
        assert_eq!(listed, ids, "every listing shows every message, in order");
    }
    dead.close().await;
    let after = support::drain(&ch, &queue).await;
    assert_eq!(ids_of(&after), ids, "same messages, same order");
    for d in &after {
        // 3.10 puts x-delivery-count: 0 on a first delivery.
        let count = headers::int(&d.properties, "x-delivery-count").unwrap_or(0);
        assert_eq!(count, 0, "no delivery counted");
        assert!(!d.redelivered);
        assert_eq!(headers::int(&d.properties, headers::ATTEMPTS), Some(4));
        assert_eq!(d.properties.kind().as_ref().unwrap().as_str(), "user.registered");
        assert_eq!(d.properties.delivery_mode(), &Some(2));
        let h = d.properties.headers().as_ref().unwrap().inner();
        let ours = h.keys().filter(|k| k.as_str() != "x-delivery-count").count();
        assert_eq!(ours, 8, "the parked headers and nothing else: {h:?}");
    }
    assert_eq!(after.last().unwrap().data, b"\xffnot json");
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn arrivals_during_a_listing_are_neither_lost_nor_duplicated() {
    let conn = support::connect().await;
    let s = support::settings("dead-arrive", false);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    let mut ids = park_events(&ch, &queue, 300, "exhausted", &|_| "boom".into()).await;
    let dead = dead_letters(&s).await;
    let (q2, conn2) = (queue.clone(), conn.clone());
    let arrivals = tokio::spawn(async move {
        let ch = confirm_channel(&conn2).await;
        park_events(&ch, &q2, 100, "permanent", &|_| "late".into()).await
    });
    let listed = dead.list(&Filter::default(), &mut |_, _| {}).await.unwrap();
    ids.extend(arrivals.await.unwrap());
    assert!(listed.len() >= 300, "at least the messages there at the start");
    dead.close().await;
    let mut after = ids_of(&support::drain(&ch, &queue).await);
    after.sort();
    ids.sort();
    assert_eq!(after, ids, "every message once");
    support::cleanup(&conn, &topology).await;
}

/// Parks 200 events for three reasons: 100 exhausted (one error class),
/// 60 permanent, 40 invalid.
async fn park_three_groups(ch: &lapin::Channel, queue: &str) -> [Vec<String>; 3] {
    let exhausted = park_events(ch, queue, 100, "exhausted", &|i| {
        format!("HTTP 503 from http://go:8080/events after {} s", 10 + i % 7)
    })
    .await;
    let permanent = park_events(ch, queue, 60, "permanent", &|i| format!("HTTP 404 for user {i}")).await;
    let invalid = park_events(ch, queue, 40, "invalid", &|_| "invalid field `data.email`".into()).await;
    [exhausted, permanent, invalid]
}

#[tokio::test]
async fn stats_show_three_groups_with_their_counts() {
    let conn = support::connect().await;
    let s = support::settings("dead-stats", false);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    park_three_groups(&ch, &queue).await;
    let dead = dead_letters(&s).await;
    let groups = dead.stats(&Filter::default(), &mut |_, _| {}).await.unwrap();
    let got: Vec<(u64, &str, &str)> = groups
        .iter()
        .map(|g| (g.count, g.reason.as_str(), g.error_class.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (100, "exhausted", "HTTP <n> from <url> after <n> s"),
            (60, "permanent", "HTTP <n> for user <n>"),
            (40, "invalid", "invalid field `data.email`"),
        ]
    );
    support::wait_ready(&ch, &queue, 200, Duration::from_secs(5)).await;
    dead.close().await;
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn replaying_one_group_moves_exactly_that_group_and_the_consumer_handles_each_once() {
    let conn = support::connect().await;
    let s = support::settings("dead-replay", true);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    let [exhausted, permanent, invalid] = park_three_groups(&ch, &queue).await;
    let dead = dead_letters(&s).await;
    let groups = dead.stats(&Filter::default(), &mut |_, _| {}).await.unwrap();
    let group = groups.iter().find(|g| g.reason == "exhausted").unwrap().group.clone();

    let handled: Arc<Mutex<HashMap<String, (u32, i64)>>> = Arc::default();
    let seen = handled.clone();
    let consumer = Consumer::new(s.clone()).on(move |e: Envelope<UserRegistered>, ctx: Context| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().unwrap();
            let entry = seen.entry(e.event_id.to_string()).or_insert((0, 0));
            entry.0 += 1;
            entry.1 = i64::from(ctx.attempt);
            Ok::<_, HandlerError>(())
        }
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));

    let options = ReplayOptions {
        filter: Filter {
            group: Some(group),
            ..Filter::default()
        },
        ..ReplayOptions::default()
    };
    let report = dead
        .replay(&options, &CancellationToken::new(), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.moved.len(), 100);
    assert_eq!((report.failed, report.possible_duplicates), (0, 0));
    assert!(report.error.is_none());
    support::eventually(Duration::from_secs(20), "100 replayed events handled", || {
        handled.lock().unwrap().len() == 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled = handled.lock().unwrap().clone();
    let mut want = exhausted.clone();
    want.sort();
    let mut got: Vec<String> = handled.keys().cloned().collect();
    got.sort();
    assert_eq!(got, want, "exactly the group");
    assert!(
        handled.values().all(|(n, attempt)| *n == 1 && *attempt == 1),
        "each once, at attempt 1"
    );
    stop.cancel();
    running.await.unwrap().unwrap();

    let left = dead.list(&Filter::default(), &mut |_, _| {}).await.unwrap();
    let left: Vec<String> = left.into_iter().map(|p| p.event_id.unwrap()).collect();
    assert_eq!(left, [permanent, invalid].concat(), "the other groups stay, in order");
    dead.close().await;
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn a_replay_carries_the_origin_counts_itself_and_stops_at_the_cap() {
    let conn = support::connect().await;
    let s = support::settings("dead-cap", false);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let work = topology.work_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    park(&ch, &queue, "fresh", "exhausted", "boom", b"{\"a\":1}", 0).await;
    park(&ch, &queue, "fourth", "exhausted", "boom", b"{\"a\":2}", 4).await;
    park(&ch, &queue, "capped", "exhausted", "boom", b"{\"a\":3}", 5).await;
    let dead = dead_letters(&s).await;

    let dry = ReplayOptions {
        dry_run: true,
        ..ReplayOptions::default()
    };
    let report = dead
        .replay(&dry, &CancellationToken::new(), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.moved.len(), 2);
    assert_eq!(report.skipped_over_cap[0].event_id.as_deref(), Some("capped"));
    assert_eq!(support::ready(&ch, &work).await, 0, "a dry run moves nothing");
    support::wait_ready(&ch, &queue, 3, Duration::from_secs(5)).await;

    let report = dead
        .replay(&ReplayOptions::default(), &CancellationToken::new(), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.moved.len(), 2);
    assert_eq!(report.skipped_over_cap.len(), 1);
    let moved = support::drain(&ch, &work).await;
    assert_eq!(ids_of(&moved), ["fresh", "fourth"]);
    assert_eq!(moved[0].data, b"{\"a\":1}");
    assert_eq!(moved[0].exchange.as_str(), "", "through the default exchange");
    let p = &moved[1].properties;
    assert_eq!(headers::int(p, headers::REPLAYS), Some(5));
    assert_eq!(headers::attempt(p), 1);
    assert_eq!(headers::text(p, headers::REASON), None);
    assert_eq!(
        headers::text(p, headers::ORIGINAL_EXCHANGE).as_deref(),
        Some("user.events")
    );
    assert!(headers::text(p, "traceparent").is_some());
    let left = support::drain(&ch, &queue).await;
    assert_eq!(ids_of(&left), ["capped"]);
    dead.close().await;
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn purge_exports_what_it_removes_and_import_puts_it_back() {
    let conn = support::connect().await;
    let s = support::settings("dead-purge", true);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    let [_, permanent, invalid] = park_three_groups(&ch, &queue).await;
    park(&ch, &queue, "binary", "malformed", "not JSON", b"\x00\xff", 0).await;
    let dead = dead_letters(&s).await;
    let before = dead.show("binary", &mut |_, _| {}).await.unwrap();
    assert_eq!(before.len(), 1);

    let filter = Filter {
        reason: Some("exhausted".into()),
        ..Filter::default()
    };
    let mut export: Vec<Record> = Vec::new();
    let report = dead
        .purge(&filter, &mut export, &CancellationToken::new(), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.purged.len(), 100);
    assert_eq!(export.len(), 100);
    assert!(
        export.iter().all(|r| !r.headers.contains_key("x-delivery-count")),
        "the broker's bookkeeping is not exported"
    );
    support::wait_ready(&ch, &queue, 101, Duration::from_secs(5)).await;
    let left = dead.list(&Filter::default(), &mut |_, _| {}).await.unwrap();
    let left: Vec<String> = left.into_iter().map(|p| p.event_id.unwrap()).collect();
    assert_eq!(left, [permanent, invalid, vec!["binary".into()]].concat());

    // Through JSON lines, as the file would hold them.
    let lines: Vec<Record> = export
        .iter()
        .map(|r| serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap())
        .collect();
    assert_eq!(dead.import(&lines).await.unwrap(), 100);
    let groups = dead.stats(&Filter::default(), &mut |_, _| {}).await.unwrap();
    assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 201);
    assert_eq!(groups[0].count, 100);

    // A record for another service's queue is refused before anything is published.
    let mut foreign = lines[0].clone();
    foreign.queue = "someone-else.user.registered.dead".into();
    let err = dead.import(&[lines[0].clone(), foreign]).await.unwrap_err();
    assert!(err.to_string().contains("record 2"), "{err}");
    support::wait_ready(&ch, &queue, 201, Duration::from_secs(5)).await;

    // The binary body and its headers are whole after all those passes.
    let after = dead.show("binary", &mut |_, _| {}).await.unwrap();
    assert_eq!(after[0].to_message().unwrap(), before[0].to_message().unwrap());
    dead.close().await;
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn a_message_moved_by_the_console_is_handled_as_a_first_attempt() {
    // The shovel's "Move messages" republishes a parked message as it is:
    // body, properties and the x-warren-* dead-letter headers. The consumer
    // reads no attempt number from them (x-warren-attempts is not
    // x-warren-attempt), so the event starts over at attempt 1.
    let conn = support::connect().await;
    let mut s = support::settings("dead-shovel", false);
    s.consumer.retry.delays = vec![Duration::from_millis(100)];
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let work = topology.work_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    let ids = park_events(&ch, &queue, 2, "exhausted", &|_| "HTTP 503".into()).await;
    for d in support::drain(&ch, &queue).await {
        let c = ch
            .basic_publish(
                "".into(),
                work.as_str().into(),
                BasicPublishOptions::default(),
                &d.data,
                d.properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }
    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seen = attempts.clone();
    let fail_first = ids[0].clone();
    let consumer = Consumer::new(s.clone()).on(move |e: Envelope<UserRegistered>, ctx: Context| {
        let seen = seen.clone();
        let fail = e.event_id.to_string() == fail_first;
        async move {
            seen.lock().unwrap().push((e.event_id.to_string(), ctx.attempt));
            if fail {
                return Err(HandlerError::transient("still down"));
            }
            Ok(())
        }
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    support::wait_ready(&ch, &queue, 1, Duration::from_secs(20)).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let mut seen = attempts.lock().unwrap().clone();
    seen.sort();
    let mut want = vec![(ids[0].clone(), 1), (ids[0].clone(), 2), (ids[1].clone(), 1)];
    want.sort();
    assert_eq!(seen, want, "attempt 1, then one retry, then parked again");
    let parked = support::drain(&ch, &queue).await;
    assert_eq!(ids_of(&parked), [ids[0].clone()]);
    assert_eq!(headers::int(&parked[0].properties, headers::ATTEMPTS), Some(2));
    let error = headers::text(&parked[0].properties, headers::ERROR).unwrap();
    assert!(error.contains("still down"), "{error}");
    support::cleanup(&conn, &topology).await;
}

/// Publishes the end-of-pass marker of pass `id` to `queue`.
async fn marker(ch: &lapin::Channel, queue: &str, id: &str) {
    let mut h = FieldTable::default();
    h.insert("warren-dead-pass".into(), AMQPValue::LongString(id.into()));
    let c = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"",
            BasicProperties::default().with_headers(h),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
}

#[tokio::test]
async fn a_killed_pass_leaves_a_marker_the_next_pass_drops_and_a_running_ones_is_kept() {
    let conn = support::connect().await;
    let s = support::settings("dead-marker", true);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    let ids = park_events(&ch, &queue, 3, "exhausted", &|_| "boom".into()).await;
    marker(&ch, &queue, "deadbeef").await; // its pass is gone: no queue of its own
    let live = support::unique("pass");
    let opts = lapin::options::QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare(
        format!("warren.dead-pass.{live}").as_str().into(),
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    marker(&ch, &queue, &live).await;
    let dead = dead_letters(&s).await;
    let listed = dead.list(&Filter::default(), &mut |_, _| {}).await.unwrap();
    let listed: Vec<String> = listed.into_iter().map(|p| p.event_id.unwrap()).collect();
    assert_eq!(listed, ids, "markers are never listed");
    dead.close().await;
    let after = support::drain(&ch, &queue).await;
    assert_eq!(after.len(), 4, "the stale marker is gone, the live one kept");
    assert_eq!(
        headers::text(&after[3].properties, "warren-dead-pass").as_deref(),
        Some(live.as_str())
    );
    support::cleanup(&conn, &topology).await;
}

/// The value of the sample `series` (name with labels) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn the_gauge_counts_parked_messages_and_replays_and_purges_are_counted() {
    let handle = warren::metrics::install().expect("recorder");
    let conn = support::connect().await;
    let s = support::settings("dead-metrics", false);
    let topology = support::declare(&conn, &s).await;
    let queue = topology.dead_queue("user.registered");
    let ch = confirm_channel(&conn).await;
    park_events(&ch, &queue, 3, "exhausted", &|_| "boom".into()).await;
    park_events(&ch, &queue, 2, "permanent", &|_| "no".into()).await;
    let stop = CancellationToken::new();
    let watching = tokio::spawn(warren::dead::watch::watch(
        s.clone(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    let gauge = format!("warren_dead_letters{{queue=\"{queue}\"}}");
    support::eventually(Duration::from_secs(10), "the gauge shows 5", || {
        sample(&handle.render(), &gauge) == Some(5.0)
    })
    .await;

    let dead = dead_letters(&s).await;
    let exhausted = ReplayOptions {
        filter: Filter {
            reason: Some("exhausted".into()),
            ..Filter::default()
        },
        ..ReplayOptions::default()
    };
    dead.replay(&exhausted, &CancellationToken::new(), &mut |_, _| {})
        .await
        .unwrap();
    let permanent = Filter {
        reason: Some("permanent".into()),
        ..Filter::default()
    };
    dead.purge(&permanent, &mut (), &CancellationToken::new(), &mut |_, _| {})
        .await
        .unwrap();
    dead.close().await;
    let text = handle.render();
    assert_eq!(
        sample(&text, &format!("warren_dead_replayed_total{{queue=\"{queue}\"}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("warren_dead_purged_total{{queue=\"{queue}\"}}")),
        Some(2.0)
    );
    support::eventually(Duration::from_secs(10), "the gauge shows 0", || {
        sample(&handle.render(), &gauge) == Some(0.0)
    })
    .await;
    stop.cancel();
    watching.await.unwrap();
    support::cleanup(&conn, &topology).await;
}
