//! Faults of the whole broker: the application stops and starts mid-stream
//! (`rabbitmqctl stop_app` / `start_app`), and a memory alarm blocks
//! publishers. In a test binary of their own because they take the broker
//! away from every other test (cargo runs test binaries one after another),
//! and serialized with each other by `BROKER`.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use support::faults::{self, Handled, N, Report};
use tokio_util::sync::CancellationToken;
use warren::Publisher;
use warren::consumer::Consumer;

/// Held by each test here: they must not overlap.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the broker app again even when the test fails half way.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stop_app_and_start_app_mid_stream() {
    let _serial = BROKER.lock().await;
    let conn = support::connect().await;
    let mut s = support::settings("f-restart", true);
    s.consumer.event_types = vec!["user.registered".into()];
    s.publisher.confirm_timeout = Duration::from_secs(90);
    let handled = Handled::default();
    let consumer = Consumer::new(s.clone()).on(handled.handler());
    let topology = consumer.topology();
    support::declare(&conn, &s).await;
    drop(conn);
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move { consumer.run(t).await.expect("consumer") });
    let publisher = Publisher::connect(&s, "faults-restart").await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(faults::publish_all(
        publisher,
        (0..N as i64).map(support::registered).collect(),
        4,
        100,
        sent.clone(),
    ));
    faults::wait_for_count(&sent, N / 3, Duration::from_secs(60)).await;

    let _guard = RestartGuard;
    faults::rabbitmqctl(&["-q", "stop_app"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    faults::rabbitmqctl(&["-q", "start_app"]);

    let (confirmed, failed) = publishing.await.unwrap();
    if !failed.is_empty() {
        eprintln!("{} publishes failed (not confirmed), e.g. {}", failed.len(), failed[0]);
    }
    support::eventually(Duration::from_secs(120), "every confirmed event handled", || {
        handled.covers(&confirmed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.unwrap();
    let conn = support::connect().await;
    support::cleanup(&conn, &topology).await;
    let report = Report::new("broker stop_app / start_app", N, &confirmed, &handled.snapshot());
    report.check(usize::from(s.consumer.prefetch) + 4 * 100);
}

/// Lifts the memory alarm even when the test fails half way.
struct WatermarkGuard;

impl Drop for WatermarkGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "set_vm_memory_high_watermark", "0.4"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_makes_publishes_time_out_then_recover() {
    let _serial = BROKER.lock().await;
    let conn = support::connect().await;
    let mut s = support::settings("f-blocked", false);
    s.consumer.event_types = vec!["user.registered".into()];
    s.publisher.confirm_timeout = Duration::from_secs(2);
    let topology = support::declare(&conn, &s).await;
    let publisher = Publisher::connect(&s, "faults-blocked").await.unwrap();
    publisher
        .publish(&support::registered(1))
        .await
        .expect("before the alarm");

    let guard = WatermarkGuard;
    faults::rabbitmqctl(&["-q", "set_vm_memory_high_watermark", "absolute", "1"]);
    tokio::time::sleep(Duration::from_secs(2)).await; // the alarm is raised on the broker's next memory check
    let started = std::time::Instant::now();
    let err = publisher
        .publish(&support::registered(2))
        .await
        .expect_err("no confirm while blocked");
    let waited = started.elapsed();
    assert!(matches!(err, warren::PublishError::Timeout(_)), "{err:?}");
    assert!(
        waited < Duration::from_secs(5),
        "the publish gave up after its timeout, not later: {waited:?}"
    );
    drop(guard);

    // Unblocked: the same publisher works again.
    let mut ok = false;
    for _ in 0..40 {
        if publisher.publish(&support::registered(3)).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok, "publishing resumes once the alarm clears");
    let conn = support::connect().await;
    support::cleanup(&conn, &topology).await;
}
