//! A per-message `expiration` never makes a copy warren publishes expire,
//! against the broker at `AMQP_URL` (fresh names, deleted at the end): the
//! parked copy stays in `.dead`, a retry waits its tier's whole delay, an
//! imported record stays, and a listed or replayed one carries no
//! `expiration`. The original value is kept in `x-warren-original-expiration`.

mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection};
use tokio_util::sync::CancellationToken;
use warren::consumer::{Consumer, Context, HandlerError};
use warren::dead::{DeadLetters, Filter, Record, ReplayOptions};
use warren::event::headers;
use warren::{Envelope, Settings, Topology, UserRegistered};

/// Runs `body`, then deletes the topology whether it passed or not: a
/// failing test leaves nothing on the broker either.
async fn cleaned(conn: &Connection, topology: &Topology, body: impl Future<Output = ()>) {
    let result = AssertUnwindSafe(body).catch_unwind().await;
    support::cleanup(conn, topology).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Publishes a `user.registered` event to `exchange` (routing key
/// `user.registered`) or, with `exchange` empty, straight to the queue
/// `key`, with `expiration`; returns its event id.
async fn publish_expiring(conn: &Connection, exchange: &str, key: &str, expiration: &str) -> String {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let event = support::registered(7);
    let id = event.event_id.to_string();
    let props = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_type("user.registered".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_expiration(expiration.into());
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let body = serde_json::to_vec(&event).unwrap();
    let c = ch
        .basic_publish(exchange.into(), key.into(), opts, &body, props)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        c.is_ack() && c.take_message().is_none(),
        "published to {exchange:?}/{key}"
    );
    let _ = ch.close(200, "published".into()).await;
    id
}

async fn dead_letters(s: &Settings) -> DeadLetters {
    DeadLetters::connect(s, "tests dead-expiration")
        .await
        .unwrap_or_else(|e| panic!("these tests need RabbitMQ at {}: {e}", support::amqp_url()))
}

/// Runs `consumer` in a task until the returned token is cancelled, once it
/// consumes from its work queue.
async fn start(consumer: Consumer, work: &str) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move { consumer.run(t).await.expect("consumer ran") });
    support::wait_consuming(&[work.to_owned()], Duration::from_secs(20)).await;
    (token, handle)
}

async fn stop(token: CancellationToken, handle: tokio::task::JoinHandle<()>) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("consumer stops")
        .expect("no panic");
}

/// The original expiration header of a message.
fn original(p: &BasicProperties) -> Option<String> {
    headers::text(p, headers::ORIGINAL_EXPIRATION)
}

#[tokio::test]
async fn an_expiring_event_parked_by_the_consumer_stays_in_dead() {
    let conn = support::connect().await;
    let s = support::settings("exp-park", true);
    let topology = support::declare(&conn, &s).await;
    cleaned(&conn, &topology, async {
        let (work, dead) = (
            topology.work_queue("user.registered"),
            topology.dead_queue("user.registered"),
        );
        let consumer = Consumer::new(s.clone()).on(|_: Envelope<UserRegistered>, _: Context| async {
            Err::<(), _>(HandlerError::permanent("no such account"))
        });
        let (token, handle) = start(consumer, &work).await;
        let id = publish_expiring(&conn, &topology.exchange, "user.registered", "4000").await;
        let ch = conn.create_channel().await.unwrap();
        support::wait_ready(&ch, &dead, 1, Duration::from_secs(10)).await;
        stop(token, handle).await;
        // Past the 4 s the event was published with: a copy carrying it is gone by now.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let parked = support::drain(&ch, &dead).await;
        assert_eq!(parked.len(), 1, "the parked event expired from {dead}");
        let p = &parked[0].properties;
        assert_eq!(headers::message_id(p), Some(id.as_str()));
        assert_eq!(p.expiration(), &None);
        assert_eq!(original(p).as_deref(), Some("4000"));
    })
    .await;
}

#[tokio::test]
async fn an_expiring_event_waits_its_whole_retry_tier() {
    let conn = support::connect().await;
    let mut s = support::settings("exp-retry", true);
    s.consumer.retry.delays = vec![Duration::from_millis(2500)];
    let topology = support::declare(&conn, &s).await;
    cleaned(&conn, &topology, async {
        let work = topology.work_queue("user.registered");
        let seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
        let log = seen.clone();
        let consumer = Consumer::new(s.clone()).on(move |_: Envelope<UserRegistered>, ctx: Context| {
            log.lock().unwrap().push((ctx.attempt, Instant::now()));
            let result = if ctx.attempt == 1 {
                Err(HandlerError::transient("smtp down"))
            } else {
                Ok(())
            };
            std::future::ready(result)
        });
        let (token, handle) = start(consumer, &work).await;
        // Far shorter than the tier: a retry carrying it would come back early.
        publish_expiring(&conn, &topology.exchange, "user.registered", "300").await;
        support::eventually(Duration::from_secs(15), "the retry", || seen.lock().unwrap().len() >= 2).await;
        stop(token, handle).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
        let gap = seen[1].1 - seen[0].1;
        assert!(
            gap >= Duration::from_millis(2500),
            "the 2.5 s tier returned it after {gap:?}"
        );
        let ch = conn.create_channel().await.unwrap();
        assert_eq!(support::ready(&ch, &topology.dead_queue("user.registered")).await, 0);
    })
    .await;
}

#[tokio::test]
async fn an_imported_record_with_an_expiration_stays() {
    let conn = support::connect().await;
    let s = support::settings("exp-import", false);
    let topology = support::declare(&conn, &s).await;
    cleaned(&conn, &topology, async {
        let dead_queue = topology.dead_queue("user.registered");
        let line = format!(
            r#"{{"queue":"{dead_queue}","properties":{{"message_id":"imported","expiration":"500","delivery_mode":2}},"body":{{"a":1}}}}"#
        );
        let record: Record = serde_json::from_str(&line).unwrap();
        let dead = dead_letters(&s).await;
        assert_eq!(dead.import(&[record]).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ch = conn.create_channel().await.unwrap();
        let parked = support::drain(&ch, &dead_queue).await;
        assert_eq!(parked.len(), 1, "the imported record expired");
        assert_eq!(parked[0].properties.expiration(), &None);
        assert_eq!(original(&parked[0].properties).as_deref(), Some("500"));
        dead.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_listed_or_replayed_event_carries_no_expiration() {
    let conn = support::connect().await;
    let s = support::settings("exp-replay", false);
    let topology = support::declare(&conn, &s).await;
    cleaned(&conn, &topology, async {
        let (work, dead_queue) = (
            topology.work_queue("user.registered"),
            topology.dead_queue("user.registered"),
        );
        // Parked with the property (by an older warren, or moved by hand).
        let id = publish_expiring(&conn, "", &dead_queue, "60000").await;
        let dead = dead_letters(&s).await;
        // A listing copies each message to the tail of its queue.
        assert_eq!(dead.list(&Filter::default(), &mut |_, _| {}).await.unwrap().len(), 1);
        let shown = dead.show(&id, &mut |_, _| {}).await.unwrap();
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].properties.expiration, None, "the listed copy");
        assert_eq!(
            shown[0].headers.get(headers::ORIGINAL_EXPIRATION),
            Some(&serde_json::json!("60000"))
        );
        let report = dead
            .replay(&ReplayOptions::default(), &CancellationToken::new(), &mut |_, _| {})
            .await
            .unwrap();
        assert_eq!(report.moved.len(), 1);
        let ch = conn.create_channel().await.unwrap();
        let moved = support::drain(&ch, &work).await;
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].properties.expiration(), &None, "the replayed copy");
        assert_eq!(original(&moved[0].properties).as_deref(), Some("60000"));
        dead.close().await;
    })
    .await;
}
