//! Several node addresses in `amqp.url`: a first node that is down costs
//! nothing, every reconnect tries the next node first, and the console's
//! connection names say role and node.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::faults::Handled;
use support::proxy::Proxy;
use tokio_util::sync::CancellationToken;
use warren::consumer::Consumer;
use warren::{Publisher, Topology};

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The status of `GET /readyz`, or `None` while nothing answers.
fn readyz(port: u16) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn warren_run_is_ready_within_seconds_when_the_first_node_is_down() {
    let s = support::settings("first-down", false);
    let _gone = support::Cleanup::topology(&s);
    let url = format!("amqp://guest:guest@127.0.0.1:{},{}", closed_port(), s.amqp.url);
    let http = closed_port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("run")
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", &url)
        .env("WARREN_AMQP__SHUFFLE_URLS", "false")
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_TOPOLOGY__QUEUE_TYPE", "classic")
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_INGRESS__LISTEN", format!("127.0.0.1:{http}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren run");
    let mut ready = None;
    while started.elapsed() < Duration::from_secs(10) {
        if readyz(http) == Some(200) {
            ready = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let exited = child.wait().unwrap();
    let ready = ready.expect("warren run was not ready within 10 s with its first node down");
    assert!(exited.success(), "clean exit after SIGTERM");
    eprintln!("ready after {ready:?}");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conn = support::connect().await;
        support::cleanup(&conn, &Topology::from_settings(&s)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reconnect_tries_the_next_node_first() {
    let cluster = Cluster::get();
    // Two "nodes" that are node 1: through a proxy the test can cut, and direct.
    let proxy = Proxy::start(cluster.addr(1)).await;
    let mut s = support::settings("next-node", false);
    s.amqp.url = format!("{},{}", proxy.url(), cluster.url(1));
    s.amqp.shuffle_urls = false;
    s.consumer.event_types = vec!["user.registered".into()];
    let direct = support::connect_to(&cluster.url(1)).await;
    let topology = support::declare(&direct, &s).await;
    let handled = Handled::default();
    let consumer = Consumer::new(s.clone()).on(handled.handler());
    let token = CancellationToken::new();
    let t = token.clone();
    let consuming = tokio::spawn(async move { consumer.run(t).await });
    let role = format!("next-node {}", s.consumer.service);
    let publisher = Publisher::connect(&s, &role).await.expect("connects");
    support::eventually(
        Duration::from_secs(20),
        "publisher and consumer on the first node",
        || proxy.accepted() == 2,
    )
    .await;
    let port = cluster.management_port(1);
    support::management::connection_named(port, &format!("{role} @ 127.0.0.1:{}", proxy.port())).await;
    let first = support::registered(1);
    publisher
        .publish(&first)
        .await
        .expect("published through the first node");

    proxy.cut();
    let second = support::registered(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while publisher.publish(&second).await.is_err() {
        assert!(Instant::now() < deadline, "the publisher never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: HashSet<_> = [first.event_id, second.event_id].into();
    support::eventually(Duration::from_secs(20), "both events handled", || handled.covers(&ids)).await;
    assert_eq!(
        proxy.accepted(),
        2,
        "after the cut, publisher and consumer reconnected to the next node, not to the one they lost"
    );
    support::management::connection_named(port, &format!("{role} @ 127.0.0.1:{}", cluster.amqp_port(1))).await;
    token.cancel();
    consuming.await.unwrap().expect("consumer stops cleanly");
    support::cleanup(&direct, &topology).await;
}
