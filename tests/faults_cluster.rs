//! Node faults on a 3-node cluster the suite starts itself
//! (`support::cluster`), counted like Jepsen: N events are published (at a
//! steady rate, so the fault happens mid-stream) while a node is killed or
//! restarted; one event in ten fails its first attempt and one in ten its
//! first two, so some sit in the retry tiers when the fault strikes. Every
//! confirmed event must end up handled (or parked in `.dead`): lost = 0,
//! including those that were in a tier at that moment.
//!
//! Each test prints a `RELIABILITY|…` row; `scripts/reliability-table`
//! collects them into docs/RELIABILITY.md. The tests take the cluster in
//! turn (`NODES_IN_USE`): each kills nodes the others would use.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use support::cluster::{Cluster, NODES};
use support::faults::{self, Handled, N, Plan, Report};
use tokio_util::sync::CancellationToken;
use warren::consumer::{Consumer, Context, HandlerError};
use warren::{Envelope, Publisher, Settings, Topology, UserRegistered};

/// Held by each test: one fault at a time on the cluster.
static NODES_IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publisher tasks × batch: the most publishes in flight at once.
const TASKS: usize = 4;
const BATCH: usize = 25;

/// Where a scenario's pieces live: the node its queues are declared through
/// (their leaders: RabbitMQ places a new quorum queue's leader on the
/// declaring client's node), and the node order of each `amqp.url`.
struct Placement {
    leaders_on: usize,
    consumer: &'static [usize],
    publisher: &'static [usize],
}

/// Starts every node again if a test fails half way, for the next test.
struct Restore(&'static Cluster);

impl Drop for Restore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(|| self.0.start());
        }
    }
}

fn settings(prefix: &str, cluster: &Cluster, nodes: &[usize]) -> Settings {
    let mut s = support::settings(prefix, true);
    s.amqp.url = cluster.urls(nodes);
    s.amqp.shuffle_urls = false;
    s.amqp.heartbeat = Duration::from_secs(5);
    s.topology.quorum_initial_group_size = Some(NODES as u32);
    s.consumer.event_types = vec!["user.registered".into()];
    s.consumer.retry.delays = vec![Duration::from_secs(2), Duration::from_secs(4)];
    s.consumer.shutdown_timeout = Duration::from_secs(5);
    s.publisher.confirm_timeout = Duration::from_secs(90);
    s
}

/// Fails an event's first attempt (user_id ending in 1) or first two
/// (ending in 2), transiently; records the rest as handled.
fn flaky(
    handled: &Handled,
) -> impl Fn(Envelope<UserRegistered>, Context) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
{
    let handled = handled.clone();
    move |e, ctx| {
        std::future::ready(match (e.user_id % 10, ctx.attempt) {
            (1, 1) | (2, 1 | 2) => Err(HandlerError::transient("dependency unavailable")),
            _ => {
                handled.record(e.event_id);
                Ok(())
            }
        })
    }
}

/// Messages ready in the retry tiers of `topology`, asked of node `ask`.
async fn retrying(cluster: &Cluster, ask: usize, topology: &Topology) -> u32 {
    let conn = support::connect_to(&cluster.url(ask)).await;
    let ch = conn.create_channel().await.unwrap();
    let mut n = 0;
    for tier in 0..topology.retry_delays.len() {
        n += support::ready(&ch, &topology.retry_queue("user.registered", tier).unwrap()).await;
    }
    let _ = conn.close(200, "counted".into()).await;
    n
}

/// What a fault gets: the cluster, and the node to ask about queues before
/// it strikes. It returns the moments its faults took effect.
type Fault = Box<dyn FnOnce(&'static Cluster) -> Vec<Instant> + Send>;

/// Runs one scenario and returns its row: queues declared through
/// `placement.leaders_on`, consumer and publisher on their node lists,
/// `fault` run (on a blocking thread) once a third of the events are sent.
async fn scenario(
    name: &'static str,
    prefix: &str,
    placement: Placement,
    rate: f64,
    fault: Fault,
) -> (Report, Settings) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = Cluster::get();
    let _turn = NODES_IN_USE.lock().await;
    let _restore = Restore(cluster);
    tokio::task::spawn_blocking(|| cluster.start()).await.unwrap();
    let consumer_s = settings(prefix, cluster, placement.consumer);
    let mut publisher_s = consumer_s.clone();
    publisher_s.amqp.url = cluster.urls(placement.publisher);

    let declaring = support::connect_to(&cluster.url(placement.leaders_on)).await;
    let topology = support::declare(&declaring, &consumer_s).await;
    let _ = declaring.close(200, "declared".into()).await;
    let work = topology.work_queue("user.registered");
    let other = (1..=NODES).find(|i| *i != placement.leaders_on).unwrap();
    assert_eq!(
        cluster.leader_of(&work, other).await,
        placement.leaders_on,
        "the leader of {work} is on the node that declared it"
    );

    let handled = Handled::default();
    let consumer = Consumer::new(consumer_s.clone()).on(flaky(&handled));
    let token = CancellationToken::new();
    let t = token.clone();
    let consuming = tokio::spawn(async move { consumer.run(t).await.expect("consumer") });
    let publisher = Publisher::connect(
        &publisher_s,
        &format!("faults-publisher {}", consumer_s.consumer.service),
    )
    .await
    .expect("publisher connects");
    let sent = Arc::new(AtomicUsize::new(0));
    let plan = Plan {
        tasks: TASKS,
        batch: BATCH,
        rate: Some(rate),
    };
    let events: Vec<_> = (0..N as i64).map(support::registered).collect();
    let user_of: std::collections::HashMap<uuid::Uuid, i64> = events.iter().map(|e| (e.event_id, e.user_id)).collect();
    let publishing = tokio::spawn(faults::publish_all(publisher, events, plan, sent.clone()));
    faults::wait_for_count(&sent, N / 3, Duration::from_secs(120)).await;

    let in_tiers = retrying(cluster, other, &topology).await;
    let fault_times = tokio::task::spawn_blocking(move || fault(cluster)).await.unwrap();
    let published = publishing.await.unwrap();
    if !published.failed.is_empty() {
        eprintln!(
            "{name}: {} publishes failed (not confirmed), e.g. {}",
            published.failed.len(),
            published.failed[0]
        );
    }
    // Not `eventually`: on a timeout the row still says what was lost.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !handled.covers(&published.confirmed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conn = support::connect_to(&cluster.url(other)).await;
    if !handled.covers(&published.confirmed) {
        let counts = handled.counts();
        let mut missing: Vec<i64> = published
            .confirmed
            .iter()
            .filter(|id| !counts.contains_key(id))
            .map(|id| user_of[id])
            .collect();
        missing.sort_unstable();
        eprintln!(
            "{name}: still missing events of users {missing:?}; queues: {}",
            depths(&conn, &topology).await
        );
    }
    token.cancel();
    consuming.await.unwrap();

    let dead = drain_dead(&conn, &topology).await;
    support::cleanup(&conn, &topology).await;
    let mut report = Report::new(name, N, &published, &handled)
        .parked(&published, &handled, &dead)
        .resumed(&fault_times, &published, &handled);
    report.retrying_at_fault = Some(in_tiers);
    report.retries_drained = retries_drained(fault_times[0], &published, &handled, &user_of);
    (report, consumer_s)
}

/// Ready messages of each queue of `topology`, for a failure message.
async fn depths(conn: &Connection, topology: &Topology) -> String {
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    for q in topology.queues() {
        out.push(format!("{} {}", q.name, support::ready(&ch, &q.name).await));
    }
    out.join(", ")
}

/// From `fault` until the last event that failed an attempt before it was
/// handled: how long the retry tiers took to deliver what they held.
fn retries_drained(
    fault: Instant,
    sent: &faults::Sent,
    handled: &Handled,
    user_of: &std::collections::HashMap<uuid::Uuid, i64>,
) -> Option<Duration> {
    let first = handled.first_handled();
    sent.sent_at
        .iter()
        .filter(|(id, at)| **at < fault && matches!(user_of[*id] % 10, 1 | 2))
        .filter_map(|(id, _)| first.get(id))
        .filter(|at| **at > fault)
        .map(|at| at.duration_since(fault))
        .max()
}

async fn drain_dead(conn: &Connection, topology: &Topology) -> Vec<lapin::message::Delivery> {
    let ch = conn.create_channel().await.unwrap();
    support::drain(&ch, &topology.dead_queue("user.registered")).await
}

/// Kills node `victim` and brings it back 5 s later (it rejoins with its data).
fn kill_then_restart(victim: usize) -> Fault {
    Box::new(move |cluster: &'static Cluster| {
        let at = Instant::now();
        cluster.kill(victim);
        std::thread::sleep(Duration::from_secs(5));
        cluster.start();
        vec![at]
    })
}

/// Duplicates allowed: per fault, what the consumer had unacked, what the
/// publisher had in flight, and what sat in the tiers (a republish whose
/// ack died with its connection).
fn dup_bound(s: &Settings, faults: usize, in_tiers: u32) -> usize {
    faults * (usize::from(s.consumer.prefetch) + TASKS * BATCH + in_tiers as usize)
}

fn check(report: &Report, s: &Settings, faults: usize) {
    assert!(
        report.retrying_at_fault.unwrap_or(0) > 0,
        "{}: some events sit in a retry tier when the fault strikes",
        report.scenario
    );
    report.check(dup_bound(s, faults, report.retrying_at_fault.unwrap_or(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_node_publisher_and_consumer_are_connected_to() {
    let placement = Placement {
        leaders_on: 2,
        consumer: &[1, 2, 3],
        publisher: &[1, 2, 3],
    };
    let (report, s) = scenario(
        "cluster: kill -9 the node publisher and consumer use",
        "c-kill-conn",
        placement,
        300.0,
        kill_then_restart(1),
    )
    .await;
    check(&report, &s, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_node_holding_the_queue_leaders() {
    let placement = Placement {
        leaders_on: 1,
        consumer: &[2, 3],
        publisher: &[2, 3],
    };
    let (report, s) = scenario(
        "cluster: kill -9 the node holding the queue leaders",
        "c-kill-leader",
        placement,
        300.0,
        kill_then_restart(1),
    )
    .await;
    check(&report, &s, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_consumers_node_while_the_publisher_is_elsewhere() {
    let placement = Placement {
        leaders_on: 3,
        consumer: &[3, 2, 1],
        publisher: &[1, 2, 3],
    };
    let (report, s) = scenario(
        "cluster: publisher on n1, consumer (and leaders) on n3; kill -9 n3",
        "c-kill-split",
        placement,
        300.0,
        kill_then_restart(3),
    )
    .await;
    check(&report, &s, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node() {
    let placement = Placement {
        leaders_on: 1,
        consumer: &[1, 2, 3],
        publisher: &[1, 2, 3],
    };
    let restart_each = Box::new(|cluster: &'static Cluster| {
        (1..=NODES)
            .map(|i| {
                // A graceful stop: leadership moves before the node goes.
                // Timed from when the node is down (the CLI takes a second to start).
                cluster.ctl(i, &["-q", "stop"]);
                let at = Instant::now();
                cluster.start();
                wait_for_every_replica(cluster, i);
                at
            })
            .collect()
    });
    let (report, s) = scenario(
        "cluster: rolling restart of all three nodes",
        "c-rolling",
        placement,
        70.0,
        restart_each,
    )
    .await;
    check(&report, &s, NODES);
}

/// Waits until node `restarted` runs its quorum queue replicas again
/// (`rabbitmq-queues` would say the same), so that the next stop keeps a
/// majority of every queue.
fn wait_for_every_replica(cluster: &Cluster, restarted: usize) {
    let node = cluster.node_name(restarted);
    for _ in 0..120 {
        let listing = cluster.ctl(
            restarted,
            &["-q", "list_queues", "name", "online", "--no-table-headers"],
        );
        let lagging = listing
            .lines()
            .filter(|l| !l.contains(&node) && l.contains("t-c-"))
            .count();
        if lagging == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{node}'s quorum queue replicas did not come back online");
}

/// Every node killed at once, as a host crash does (or a machine that kept
/// the cluster's data from an earlier run): `scripts/cluster start` brings
/// all three back as one cluster, holding the quorum queue declared before.
/// Each node waits at boot for the one that stopped last, so they have to
/// start together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_at_once_comes_back_as_one_cluster() {
    let cluster = Cluster::get();
    let _turn = NODES_IN_USE.lock().await;
    let _restore = Restore(cluster);
    tokio::task::spawn_blocking(|| cluster.start()).await.unwrap();
    let queue = support::unique("t-c-all-killed");
    let quorum = FieldTable::from(BTreeMap::from([(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    )]));
    let conn = support::connect_to(&cluster.url(1)).await;
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, quorum).await.unwrap();
    let _ = conn.close(200, "declared".into()).await;

    tokio::task::spawn_blocking(|| {
        for i in 1..=NODES {
            cluster.kill(i);
        }
        // Asserts that every node is a running member again.
        cluster.start();
    })
    .await
    .unwrap();

    for i in 1..=NODES {
        let conn = support::connect_to(&cluster.url(i)).await;
        let ch = conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let found = ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await;
        assert!(
            found.is_ok(),
            "node {i} does not know {queue} after the restart: {found:?}"
        );
        if i == NODES {
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
        let _ = conn.close(200, "checked".into()).await;
    }
}

/// A node keeps the working directory it was started in. Started from a
/// directory that is deleted afterwards (a clone the tests ran in), it
/// failed every file-name lookup and its management API answered 500; the
/// nodes now run from their own directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_from_a_deleted_directory_keeps_its_management_api() {
    let cluster = Cluster::get();
    let _turn = NODES_IN_USE.lock().await;
    let _restore = Restore(cluster);
    let gone = std::env::temp_dir().join(support::unique("warren-started-here"));
    std::fs::create_dir_all(&gone).unwrap();
    let dir = gone.clone();
    tokio::task::spawn_blocking(move || {
        cluster.start();
        cluster.kill(NODES);
        cluster.start_from(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
    .unwrap();
    // The management plugin reads its file names every 5 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let port = cluster.management_port(NODES);
    let (status, body) = support::management::request(port, "GET", "/api/overview");
    assert_eq!(status, 200, "node {NODES} started from the deleted {gone:?}: {body}");
}
