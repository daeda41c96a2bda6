//! The metric names served in practice: `warren run --handler webhook
//! --relay` started on its own queues and outbox table, one event published
//! through its ingress and forwarded to a local receiver, then its
//! `/metrics` on `metrics.listen`; and the RabbitMQ Prometheus plugin's
//! per-queue endpoint.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{outbox, support};

/// The plugin's per-queue families, as the compose Prometheus scrapes them.
const PLUGIN_PATH: &str = "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count";
const PLUGIN_ADDR: &str = "127.0.0.1:15692";

/// One HTTP/1.0 exchange (no chunked answers): (status, body).
pub(crate) fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_default();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The names of the samples in a Prometheus text exposition.
pub(crate) fn names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

pub(crate) fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().unwrap().to_string()
}

/// An HTTP service answering 204 to every request, reporting each on `tx`.
fn receiver(tx: mpsc::Sender<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 65536];
            let mut got = Vec::new();
            // Read the headers and as much body as Content-Length says.
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            let _ = tx.send(());
        }
    });
    addr
}

/// `warren run` killed (SIGTERM, then SIGKILL) when dropped.
struct Warren(Child);

impl Drop for Warren {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every metric name `warren run` and the plugin serve once an event went
/// through publish, consume and webhook.
pub(crate) async fn served_metric_names() -> BTreeSet<String> {
    let conn = support::connect().await;
    let s = support::settings("monitoring", false);
    let _gone = support::Cleanup::topology(&s);
    let outbox = outbox::Scratch::new("monitoring").await;
    let relay = outbox.settings(s.clone()).relay;
    let (ingress, metrics) = (free_addr(), free_addr());
    let (tx, delivered) = mpsc::channel();
    let backend = receiver(tx);
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["run", "--handler", "webhook", "--relay"])
        .env_remove("DATABASE_URL")
        .env(
            "WARREN_RELAY__DATABASE_URL",
            relay.database_url.as_deref().expect("a database URL"),
        )
        .env("WARREN_RELAY__TABLE", &relay.table)
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_TOPOLOGY__QUEUE_TYPE", "classic")
        .env("WARREN_INGRESS__LISTEN", &ingress)
        .env("WARREN_METRICS__LISTEN", &metrics)
        .env("GO_BACKEND_URL", format!("http://{backend}"))
        .env("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "5s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren run");
    let warren = Warren(child);
    wait_for("warren run to be ready", Duration::from_secs(30), || {
        http(&metrics, "GET", "/readyz", "").is_ok_and(|(status, _)| status == 200)
    });
    let event = include_str!("../fixtures/seed_user_registered.json");
    let (status, body) = http(&ingress, "POST", "/events", event).expect("POST /events");
    assert_eq!(status, 202, "{body}");
    delivered
        .recv_timeout(Duration::from_secs(20))
        .expect("the event reaches the webhook receiver");
    let mut served = BTreeSet::new();
    wait_for("the webhook's metrics", Duration::from_secs(10), || {
        served = http(&metrics, "GET", "/metrics", "")
            .map(|(_, b)| names(&b))
            .unwrap_or_default();
        // The relay's gauges come with its first upkeep, a few seconds in.
        served.contains("warren_webhook_requests_total") && served.contains("warren_relay_oldest_pending_age_seconds")
    });
    drop(warren);
    let (_, plugin) = http(PLUGIN_ADDR, "GET", PLUGIN_PATH, "").unwrap_or_else(|e| {
        panic!("RabbitMQ's Prometheus plugin does not answer on {PLUGIN_ADDR} ({e}): `rabbitmq-plugins enable rabbitmq_prometheus` (.ci/run does)")
    });
    let plugin = names(&plugin);
    assert!(plugin.contains("rabbitmq_detailed_queue_messages"), "{plugin:?}");
    support::cleanup(&conn, &warren::Topology::from_settings(&s)).await;
    outbox.drop_all().await;
    served.extend(plugin);
    served
}
