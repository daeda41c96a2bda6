//! The consumer service against a real broker: acks, retry tiers, dead
//! letters, panics, fan-out isolation.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren::consumer::{Consumer, Context, HandlerError};
use warren::event::headers;
use warren::{Envelope, Publisher, Settings, UserRegistered};

type Seen = Arc<Mutex<Vec<(Uuid, u32, Instant)>>>;

fn seen() -> Seen {
    Arc::new(Mutex::new(Vec::new()))
}

fn count(seen: &Seen) -> usize {
    seen.lock().unwrap().len()
}

/// Starts `consumer`; returns the token that stops it and its join handle.
/// Runs `consumer` until the token is cancelled; returns once it consumes
/// from every one of its work queues.
async fn start(consumer: Consumer) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let topology = consumer.topology();
    let queues: Vec<_> = topology.event_types.iter().map(|t| topology.work_queue(t)).collect();
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move { consumer.run(t).await.expect("consumer ran") });
    support::wait_consuming(&queues, Duration::from_secs(20)).await;
    (token, handle)
}

async fn stop(token: CancellationToken, handle: tokio::task::JoinHandle<()>) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("consumer stops")
        .expect("no panic");
}

/// A handler that records each event and succeeds.
fn recorder(
    seen: &Seen,
) -> impl Fn(Envelope<UserRegistered>, Context) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
{
    let log = seen.clone();
    move |e, ctx| {
        log.lock().unwrap().push((e.event_id, ctx.attempt, Instant::now()));
        std::future::ready(Ok(()))
    }
}

fn fast_retries(s: &mut Settings, delays_ms: &[u64]) {
    s.consumer.retry.delays = delays_ms.iter().map(|ms| Duration::from_millis(*ms)).collect();
}

#[tokio::test]
async fn a_thousand_events_are_each_handled_once_and_acked() {
    let conn = support::connect().await;
    let s = support::settings("thousand", false);
    let seen = seen();
    let consumer = Consumer::new(s.clone()).on(recorder(&seen));
    let topology = consumer.topology();
    // Every type's queues (the consumer's topology has only the one it handles).
    let declared = support::declare(&conn, &s).await;
    let (token, handle) = start(consumer).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let events: Vec<_> = (0..1000).map(support::registered).collect();
    for r in publisher.publish_batch(&events).await {
        r.unwrap();
    }
    support::eventually(Duration::from_secs(30), "1000 handled", || count(&seen) >= 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(token, handle).await;

    let seen = seen.lock().unwrap().clone();
    let mut per_id: HashMap<Uuid, usize> = HashMap::new();
    for (id, attempt, _) in seen.iter() {
        *per_id.entry(*id).or_default() += 1;
        assert_eq!(*attempt, 1);
    }
    assert_eq!(seen.len(), 1000, "no duplicates");
    assert!(events.iter().all(|e| per_id.get(&e.event_id) == Some(&1)));
    // The consumer's channels are closed: anything unacked would be back in the queue.
    let ch = conn.create_channel().await.unwrap();
    support::wait_ready(&ch, &topology.work_queue("user.registered"), 0, Duration::from_secs(2)).await;
    assert_eq!(support::ready(&ch, &topology.dead_queue("user.registered")).await, 0);
    support::cleanup(&conn, &declared).await;
}

#[tokio::test]
async fn a_handler_failing_twice_succeeds_on_attempt_three_after_the_tier_delays() {
    let conn = support::connect().await;
    // Quorum queues, as in production: TTL and dead-lettering of the tiers are theirs.
    let mut s = support::settings("retry", true);
    fast_retries(&mut s, &[400, 800, 1600]);
    let seen = seen();
    let log = seen.clone();
    let consumer = Consumer::new(s.clone()).on(move |e: Envelope<UserRegistered>, ctx: Context| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push((e.event_id, ctx.attempt, Instant::now()));
            if ctx.attempt < 3 {
                Err(HandlerError::transient("smtp down"))
            } else {
                Ok(())
            }
        }
    });
    let topology = consumer.topology();
    let _gone = support::Cleanup::of(&topology);
    let (token, handle) = start(consumer).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let event = support::registered(1);
    publisher.publish(&event).await.unwrap();
    support::eventually(Duration::from_secs(15), "3 attempts", || count(&seen) >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(token, handle).await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(seen.iter().all(|s| s.0 == event.event_id));
    let first_gap = seen[1].2 - seen[0].2;
    let second_gap = seen[2].2 - seen[1].2;
    assert!(
        first_gap >= Duration::from_millis(400),
        "tier 1 waited only {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(800),
        "tier 2 waited only {second_gap:?}"
    );
    eprintln!("retry delays measured: {first_gap:?} (tier 400ms), {second_gap:?} (tier 800ms)");
    let ch = conn.create_channel().await.unwrap();
    support::wait_ready(&ch, &topology.work_queue("user.registered"), 0, Duration::from_secs(5)).await;
    assert_eq!(support::ready(&ch, &topology.dead_queue("user.registered")).await, 0);
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn always_failing_ends_in_dead_with_headers_and_permanent_goes_straight_there() {
    let conn = support::connect().await;
    let mut s = support::settings("dead", false);
    fast_retries(&mut s, &[100, 200]);
    let seen = seen();
    let log = seen.clone();
    let consumer = Consumer::new(s.clone()).on(move |e: Envelope<UserRegistered>, ctx: Context| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push((e.event_id, ctx.attempt, Instant::now()));
            if e.user_id == 666 {
                Err(HandlerError::permanent("account is banned"))
            } else {
                Err(HandlerError::transient("x".repeat(10_000)))
            }
        }
    });
    let topology = consumer.topology();
    let _gone = support::Cleanup::of(&topology);
    let (token, handle) = start(consumer).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let (failing, banned) = (support::registered(1), support::registered(666));
    publisher.publish(&failing).await.unwrap();
    publisher.publish(&banned).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dead = topology.dead_queue("user.registered");
    support::wait_ready(&ch, &dead, 2, Duration::from_secs(10)).await;
    stop(token, handle).await;

    let attempts = |id: Uuid| seen.lock().unwrap().iter().filter(|s| s.0 == id).count();
    assert_eq!(attempts(failing.event_id), 3, "first attempt + 2 retries");
    assert_eq!(attempts(banned.event_id), 1, "permanent: no retry");
    let mut got = support::drain(&ch, &dead).await;
    got.sort_by_key(|d| headers::text(&d.properties, headers::REASON));
    let (exhausted, permanent) = (&got[0], &got[1]);
    let p = &exhausted.properties;
    assert_eq!(headers::text(p, headers::REASON).as_deref(), Some("exhausted"));
    assert_eq!(headers::int(p, headers::ATTEMPTS), Some(3));
    assert_eq!(
        headers::text(p, headers::ORIGINAL_EXCHANGE).as_deref(),
        Some(s.topology.exchange.as_str())
    );
    assert_eq!(
        headers::text(p, headers::ORIGINAL_ROUTING_KEY).as_deref(),
        Some("user.registered")
    );
    assert!(
        headers::text(p, headers::FIRST_FAILURE)
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .is_ok()
    );
    assert!(
        headers::text(p, headers::ERROR).unwrap().len() <= headers::MAX_ERROR_LEN,
        "error truncated"
    );
    assert_eq!(headers::message_id(p), Some(failing.event_id.to_string().as_str()));
    assert_eq!(
        Envelope::<UserRegistered>::from_slice(&exhausted.data).unwrap(),
        failing,
        "body kept"
    );
    let p = &permanent.properties;
    assert_eq!(headers::text(p, headers::REASON).as_deref(), Some("permanent"));
    assert_eq!(headers::int(p, headers::ATTEMPTS), Some(1));
    assert_eq!(headers::text(p, headers::ERROR).as_deref(), Some("account is banned"));
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn garbage_and_invalid_bodies_go_to_dead_byte_for_byte_and_the_next_event_is_handled() {
    let conn = support::connect().await;
    let s = support::settings("poison", false);
    let seen = seen();
    let consumer = Consumer::new(s.clone()).on(recorder(&seen));
    let topology = consumer.topology();
    let _gone = support::Cleanup::of(&topology);
    let (token, handle) = start(consumer).await;
    let x = &s.topology.exchange;
    let garbage: &[u8] = b"\x00\xffnot json at all";
    let invalid = br#"{"event_type":"user.registered","source":"s","user_id":1,"data":{"user_id":1,"username":"a","email":"nope","registration_timestamp":"2025-01-20T10:30:00Z"}}"#;
    let other_type = br#"{"event_type":"user.login","source":"s","user_id":1,"data":{}}"#;
    support::publish_raw(&conn, x, "user.registered", garbage).await;
    support::publish_raw(&conn, x, "user.registered", invalid).await;
    support::publish_raw(&conn, x, "user.registered", other_type).await;
    let good = support::registered(5);
    Publisher::connect(&s, "tests")
        .await
        .unwrap()
        .publish(&good)
        .await
        .unwrap();
    support::eventually(Duration::from_secs(10), "good event handled", || count(&seen) == 1).await;
    let ch = conn.create_channel().await.unwrap();
    let dead = topology.dead_queue("user.registered");
    support::wait_ready(&ch, &dead, 3, Duration::from_secs(10)).await;
    stop(token, handle).await;

    assert_eq!(seen.lock().unwrap()[0].0, good.event_id);
    let got = support::drain(&ch, &dead).await;
    let by_reason: HashMap<_, _> = got
        .iter()
        .map(|d| (headers::text(&d.properties, headers::REASON).unwrap(), d.data.clone()))
        .collect();
    assert_eq!(by_reason["malformed"], garbage);
    assert_eq!(by_reason["invalid"], invalid);
    assert_eq!(by_reason["unhandled"], other_type);
    let invalid_error = got.iter().find_map(|d| {
        (headers::text(&d.properties, headers::REASON).as_deref() == Some("invalid"))
            .then(|| headers::text(&d.properties, headers::ERROR).unwrap())
    });
    assert!(invalid_error.unwrap().contains("data.email"));
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn a_panicking_handler_is_retried_and_the_service_goes_on() {
    let conn = support::connect().await;
    let mut s = support::settings("panic", false);
    fast_retries(&mut s, &[100]);
    let seen = seen();
    let log = seen.clone();
    let consumer = Consumer::new(s.clone()).on(move |e: Envelope<UserRegistered>, ctx: Context| {
        let log = log.clone();
        async move {
            if e.user_id % 2 == 0 && ctx.attempt == 1 {
                panic!("handler bug on user {}", e.user_id);
            }
            log.lock().unwrap().push((e.event_id, ctx.attempt, Instant::now()));
            Ok::<_, HandlerError>(())
        }
    });
    let topology = consumer.topology();
    let _gone = support::Cleanup::of(&topology);
    let (token, handle) = start(consumer).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let events: Vec<_> = (0..20).map(support::registered).collect();
    for r in publisher.publish_batch(&events).await {
        r.unwrap();
    }
    support::eventually(Duration::from_secs(10), "all 20 handled", || count(&seen) == 20).await;
    stop(token, handle).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|s| s.1 == 2).count(),
        10,
        "the 10 that panicked succeeded on their retry"
    );
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn retries_of_one_service_never_reach_another_bound_to_the_same_key() {
    let conn = support::connect().await;
    let mut failing = support::settings("fanout-a", false);
    fast_retries(&mut failing, &[100, 100]);
    let mut healthy = failing.clone();
    healthy.consumer.service = support::unique("fanout-b");
    let seen_b = seen();
    let a = Consumer::new(failing.clone())
        .on(|_e: Envelope<UserRegistered>, _c: Context| async { Err(HandlerError::transient("down")) });
    let b = Consumer::new(healthy.clone()).on(recorder(&seen_b));
    let (ta, tb) = (a.topology(), b.topology());
    let _gone = (support::Cleanup::of(&ta), support::Cleanup::of(&tb));
    let (token_a, handle_a) = start(a).await;
    let (token_b, handle_b) = start(b).await;
    let publisher = Publisher::connect(&failing, "tests").await.unwrap();
    let events: Vec<_> = (0..10).map(support::registered).collect();
    for r in publisher.publish_batch(&events).await {
        r.unwrap();
    }
    let ch = conn.create_channel().await.unwrap();
    support::wait_ready(&ch, &ta.dead_queue("user.registered"), 10, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(token_a, handle_a).await;
    stop(token_b, handle_b).await;
    let seen_b = seen_b.lock().unwrap().clone();
    assert_eq!(seen_b.len(), 10, "service b saw each event once, none of a's retries");
    for e in &events {
        assert_eq!(seen_b.iter().filter(|s| s.0 == e.event_id).count(), 1);
    }
    support::cleanup(&conn, &ta).await;
    support::cleanup(&conn, &tb).await;
}

/// A handler that waits `pause` and records how many run at once.
struct Slow {
    running: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    started: Arc<std::sync::atomic::AtomicUsize>,
    seen: Seen,
    pause: Duration,
}

impl Slow {
    fn new(pause: Duration) -> Self {
        Self {
            running: Arc::default(),
            most: Arc::default(),
            started: Arc::default(),
            seen: seen(),
            pause,
        }
    }

    fn handler(
        &self,
    ) -> impl Fn(Envelope<UserRegistered>, Context) -> futures_util::future::BoxFuture<'static, Result<(), HandlerError>>
    + Send
    + Sync
    + 'static {
        use std::sync::atomic::Ordering::SeqCst;
        let (running, most, started, seen, pause) = (
            self.running.clone(),
            self.most.clone(),
            self.started.clone(),
            self.seen.clone(),
            self.pause,
        );
        move |e, ctx| {
            let (running, most, seen) = (running.clone(), most.clone(), seen.clone());
            started.fetch_add(1, SeqCst);
            Box::pin(async move {
                most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                tokio::time::sleep(pause).await;
                running.fetch_sub(1, SeqCst);
                seen.lock().unwrap().push((e.event_id, ctx.attempt, Instant::now()));
                Ok(())
            })
        }
    }
}

/// `n` events published, then a consumer with a [`Slow`] handler started on them.
struct SlowRun {
    conn: std::sync::Arc<lapin::Connection>,
    slow: Slow,
    work_queue: String,
    declared: support::Declared,
    events: Vec<Envelope<UserRegistered>>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl SlowRun {
    async fn start(s: &Settings, pause: Duration, limits: warren::consumer::Limits, n: i64) -> Self {
        let conn = support::connect().await;
        let slow = Slow::new(pause);
        let consumer = Consumer::new(s.clone()).on_with(slow.handler(), limits);
        let work_queue = consumer.topology().work_queue("user.registered");
        let declared = support::declare(&conn, s).await;
        let publisher = Publisher::connect(s, "tests").await.unwrap();
        let events: Vec<_> = (0..n).map(support::registered).collect();
        for r in publisher.publish_batch(&events).await {
            r.unwrap();
        }
        Self {
            conn,
            slow,
            work_queue,
            declared,
            events,
            running: Some(start(consumer).await),
        }
    }

    async fn stop(&mut self) {
        let (token, handle) = self.running.take().expect("started once, stopped once");
        stop(token, handle).await;
    }

    /// Nothing went back to the work queue when the consumer's channel closed.
    async fn assert_all_acked(self, why: &str) {
        let ch = self.conn.create_channel().await.unwrap();
        assert_eq!(support::ready(&ch, &self.work_queue).await, 0, "{why}");
        support::cleanup(&self.conn, &self.declared).await;
    }
}

#[tokio::test]
async fn handlers_that_wait_run_at_most_concurrency_at_once_and_each_is_acked() {
    let s = support::settings("slow", false);
    let limits = warren::consumer::Limits {
        prefetch: 20,
        concurrency: 3,
    };
    let mut run = SlowRun::start(&s, Duration::from_millis(30), limits, 30).await;
    let seen = run.slow.seen.clone();
    support::eventually(Duration::from_secs(20), "30 handled", || count(&seen) >= 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.stop().await;

    assert_eq!(
        run.slow.most.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "as many at once as the concurrency allows, never more"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 30, "each handled once");
    for e in &run.events {
        assert_eq!(seen.iter().filter(|s| s.0 == e.event_id).count(), 1);
    }
    run.assert_all_acked("all acked: nothing went back to the queue when the channel closed")
        .await;
}

#[tokio::test]
async fn stopping_waits_for_running_handlers_and_acks_what_they_finish() {
    let mut s = support::settings("drain", false);
    s.consumer.shutdown_timeout = Duration::from_secs(10);
    let limits = warren::consumer::Limits {
        prefetch: 10,
        concurrency: 4,
    };
    let mut run = SlowRun::start(&s, Duration::from_millis(800), limits, 4).await;
    let started = run.slow.started.clone();
    support::eventually(Duration::from_secs(10), "4 started", || {
        started.load(std::sync::atomic::Ordering::SeqCst) == 4
    })
    .await;
    assert_eq!(count(&run.slow.seen), 0, "none finished yet");
    run.stop().await;

    assert_eq!(
        count(&run.slow.seen),
        4,
        "the consumer stopped only after its handlers finished"
    );
    run.assert_all_acked("what finished during the drain was acked").await;
}

#[tokio::test]
async fn retries_are_logged_at_warn_once_per_interval_and_each_dead_letter_with_its_reason() {
    let (logs, _guard) = support::logs::Logs::capture();
    let conn = support::connect().await;
    let mut s = support::settings("retry-logs", false);
    fast_retries(&mut s, &[100, 100]);
    let consumer = Consumer::new(s.clone())
        .on(|_e: Envelope<UserRegistered>, _c: Context| async { Err(HandlerError::transient("receiver down")) });
    let topology = consumer.topology();
    let _gone = support::Cleanup::of(&topology);
    let (token, handle) = start(consumer).await;
    let event = support::registered(1);
    Publisher::connect(&s, "tests")
        .await
        .unwrap()
        .publish(&event)
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dead = topology.dead_queue("user.registered");
    support::wait_ready(&ch, &dead, 1, Duration::from_secs(10)).await;
    stop(token, handle).await;

    let id = event.event_id.to_string();
    let retries = logs.matching(&[" WARN ", "retrying later", &id]);
    assert_eq!(
        retries.len(),
        1,
        "attempt 2's retry falls in the same interval: {:#?}",
        logs.lines()
    );
    let line = &retries[0];
    let tier = format!("to=\"{}\"", topology.retry_queue("user.registered", 0).unwrap());
    for field in ["attempt=1", "tier=1", tier.as_str(), "receiver down"] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let parked = logs.matching(&[" WARN ", "dead-lettering", &id, "attempt=3", "reason=\"exhausted\""]);
    assert_eq!(parked.len(), 1, "{:#?}", logs.lines());
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn what_the_ingress_refuses_the_consumer_dead_letters_naming_the_field() {
    let conn = support::connect().await;
    let s = support::settings("refused", false);
    let seen = seen();
    let consumer = Consumer::new(s.clone()).on(recorder(&seen));
    let topology = consumer.topology();
    let _gone = support::Cleanup::of(&topology);
    let (token, handle) = start(consumer).await;
    let good = br#"{"event_type":"user.registered","timestamp":"2025-01-20T10:30:00Z","source":"s","user_id":1,"data":{"user_id":1,"username":"a","email":"a@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}}"#;
    let body = |from: &str, to: &str| String::from_utf8_lossy(good).replacen(from, to, 1);
    let cases = [
        (
            body("{", r#"{"event_id":"00000000-0000-0000-0000-000000000000","#),
            "invalid",
            "`event_id`",
        ),
        (body("10:30:00Z", "10:30:00.123456"), "invalid", "`timestamp`"),
        (
            body("10:30:00Z\"}", "10:30:00\"}"),
            "invalid",
            "`data.registration_timestamp`",
        ),
        (
            body(
                r#"{"user_id":1,"username":"a","email":"a@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}"#,
                r#"[1,"a","a@example.com","2025-01-20T10:30:00Z"]"#,
            ),
            "invalid",
            "`data`",
        ),
        (format!("[{}]", body("", "")), "invalid", "JSON object"),
        (body("\"s\"", "\"s\\udfff\""), "malformed", "lone surrogate"),
    ];
    let x = &s.topology.exchange;
    for (body, _, _) in &cases {
        support::publish_raw(&conn, x, "user.registered", body.as_bytes()).await;
    }
    let ch = conn.create_channel().await.unwrap();
    let dead = topology.dead_queue("user.registered");
    support::wait_ready(&ch, &dead, cases.len() as u32, Duration::from_secs(10)).await;
    stop(token, handle).await;
    let got = support::drain(&ch, &dead).await;
    support::cleanup(&conn, &topology).await;

    assert_eq!(count(&seen), 0, "no refused body reached the handler");
    for (body, reason, needle) in &cases {
        let parked = got
            .iter()
            .find(|d| d.data == body.as_bytes())
            .unwrap_or_else(|| panic!("not parked: {body}"));
        let p = &parked.properties;
        assert_eq!(headers::text(p, headers::REASON).as_deref(), Some(*reason), "{body}");
        let error = headers::text(p, headers::ERROR).unwrap();
        assert!(error.contains(needle), "{body}: {error}");
    }
}
