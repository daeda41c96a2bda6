//! Faults of the whole broker, made on the test cluster (`support::cluster`),
//! never on the broker at 127.0.0.1:5672: every node's application stops and
//! starts mid-stream (`stop_app` / `start_app` through `Cluster::ctl`, which
//! names the test node, never the default one), and a memory
//! alarm blocks publishers (alarms are cluster-wide). Serialized with each
//! other by `BROKER`: each takes the whole cluster away.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, NODES};
use support::faults::{self, Handled, N, Plan, Report};
use tokio_util::sync::CancellationToken;
use warren::Publisher;
use warren::consumer::Consumer;

/// Held by each test here: they must not overlap.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every node of the cluster, in order.
fn all_nodes() -> Vec<usize> {
    (1..=NODES).collect()
}

/// Runs `rabbitmqctl args` on every node at once (threads: each call boots
/// a CLI, and the nodes wait for each other to start).
fn on_every_node(cluster: &'static Cluster, args: &'static [&'static str]) {
    let calls: Vec<_> = all_nodes()
        .into_iter()
        .map(|i| std::thread::spawn(move || cluster.ctl(i, args)))
        .collect();
    for c in calls {
        c.join().expect("rabbitmqctl thread");
    }
}

/// Starts every node's application again (and any node that went down)
/// even when the test fails half way.
struct RestartGuard(&'static Cluster);

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let calls: Vec<_> = all_nodes()
                .into_iter()
                .map(|i| {
                    let c = self.0;
                    std::thread::spawn(move || {
                        let _ = std::panic::catch_unwind(|| c.ctl(i, &["-q", "start_app"]));
                    })
                })
                .collect();
            for c in calls {
                let _ = c.join();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stop_app_and_start_app_mid_stream() {
    let cluster = Cluster::get();
    let _serial = BROKER.lock().await;
    let mut s = support::settings("f-restart", true);
    s.amqp.url = cluster.urls(&all_nodes());
    s.consumer.event_types = vec!["user.registered".into()];
    s.publisher.confirm_timeout = Duration::from_secs(90);
    let conn = support::connect_to(&cluster.url(1)).await;
    let handled = Handled::default();
    let consumer = Consumer::new(s.clone()).on(handled.handler());
    let topology = consumer.topology();
    let _declared = support::declare(&conn, &s).await;
    drop(conn);
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move { consumer.run(t).await.expect("consumer") });
    let publisher = Publisher::connect(&s, "faults-restart").await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    // Paced, so that publishing spans the outage (unpaced, 5,000 events can
    // be confirmed before the nodes have stopped).
    let plan = Plan {
        tasks: 4,
        batch: 25,
        rate: Some(300.0),
    };
    let publishing = tokio::spawn(faults::publish_all(
        publisher,
        (0..N as i64).map(support::registered).collect(),
        plan,
        sent.clone(),
    ));
    faults::wait_for_count(&sent, N / 3, Duration::from_secs(60)).await;

    let _guard = RestartGuard(cluster);
    // Timed from when every node has stopped (each CLI takes a second to start).
    let fault_at = tokio::task::spawn_blocking(move || {
        on_every_node(cluster, &["-q", "stop_app"]);
        let down = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        on_every_node(cluster, &["-q", "start_app"]);
        down
    })
    .await
    .unwrap();

    let published = publishing.await.unwrap();
    if !published.failed.is_empty() {
        eprintln!(
            "{} publishes failed (not confirmed), e.g. {}",
            published.failed.len(),
            published.failed[0]
        );
    }
    support::eventually(Duration::from_secs(120), "every confirmed event handled", || {
        handled.covers(&published.confirmed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.unwrap();
    let conn = support::connect_to(&cluster.url(1)).await;
    support::cleanup(&conn, &topology).await;
    let report = Report::new("every node stop_app / start_app", N, &published, &handled).resumed(
        &[fault_at],
        &published,
        &handled,
    );
    report.check(usize::from(s.consumer.prefetch) + 4 * 25);
}

/// Lifts the memory alarm even when the test fails half way.
struct WatermarkGuard(&'static Cluster);

impl Drop for WatermarkGuard {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.0.ctl(1, &["-q", "set_vm_memory_high_watermark", "0.4"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_makes_publishes_time_out_then_recover() {
    let cluster = Cluster::get();
    let _serial = BROKER.lock().await;
    let mut s = support::settings("f-blocked", false);
    s.amqp.url = cluster.url(2);
    s.consumer.event_types = vec!["user.registered".into()];
    s.publisher.confirm_timeout = Duration::from_secs(2);
    let conn = support::connect_to(&cluster.url(1)).await;
    let topology = support::declare(&conn, &s).await;
    let publisher = Publisher::connect(&s, "faults-blocked").await.unwrap();
    publisher
        .publish(&support::registered(1))
        .await
        .expect("before the alarm");

    // Raised on node 1, the alarm blocks publishers on node 2 as well.
    let guard = WatermarkGuard(cluster);
    cluster.ctl(1, &["-q", "set_vm_memory_high_watermark", "absolute", "1"]);
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
    support::cleanup(&conn, &topology).await;
}
