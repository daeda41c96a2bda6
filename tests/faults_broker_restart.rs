//! Fault injection: the broker application stops and starts mid-stream
//! (`rabbitmqctl stop_app` / `start_app`). Alone in its test binary because
//! it takes the broker away from every other test; cargo runs test binaries
//! one after another.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use support::faults::{self, Handled, N, Report};
use tokio_util::sync::CancellationToken;
use warren::Publisher;
use warren::consumer::Consumer;

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
