//! Every service answers probes and serves metrics: the probes router of a
//! service without an ingress, `/readyz` of the ingress reporting the
//! consumer beside it, and `warren consume` alone on `metrics.listen`
//! (readiness of its connection and consumers, build info, the blocked flag
//! and process metrics from the start, JSON logs from the environment).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::future::BoxFuture;
use serde_json::Value;
use tower::ServiceExt;
use warren::PublishError;
use warren::event::RawEnvelope;
use warren::http::{AppState, EventSink, probes_router, router};
use warren::readiness::Readiness;

async fn get(app: axum::Router, path: &str) -> (StatusCode, Option<String>, String) {
    let res = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let retry = res
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    (status, retry, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_probes_router_reports_every_part() {
    let handle = warren::metrics::install().unwrap();
    let readiness = Readiness::new();
    readiness.set("consumer", true, "connected");
    readiness.set("queue s.user.login", false, "channel closed");
    let app = || probes_router(readiness.clone(), handle.clone());
    let (status, retry, body) = get(app(), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("5"));
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reason"], "channel closed");
    assert_eq!(json["checks"]["consumer"]["ready"], true);
    readiness.set("queue s.user.login", true, "consuming");
    let (status, _, body) = get(app(), "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(app(), "/healthz").await.0, StatusCode::OK);
    let (status, _, body) = get(app(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("warren_build_info{version="), "{body}");
    assert!(body.contains("\nprocess_resident_memory_bytes "), "{body}");
    assert_eq!(get(app(), "/events").await.0, StatusCode::NOT_FOUND, "no ingress here");
}

/// A sink that is always connected.
struct Up;

impl EventSink for Up {
    fn publish<'a>(&'a self, _: &'a RawEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn the_ingress_is_not_ready_while_the_consumer_beside_it_is_not() {
    let settings = warren::Settings::default();
    let readiness = Readiness::new();
    readiness.set("consumer", false, "connecting");
    let app = || router(AppState::new(Arc::new(Up), &settings.ingress).with_readiness(readiness.clone()));
    let (status, _, body) = get(app(), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["checks"]["publisher"]["ready"], true);
    assert_eq!(json["reason"], "connecting");
    readiness.set("consumer", true, "connected");
    assert_eq!(get(app(), "/readyz").await.0, StatusCode::OK);
}

/// One HTTP/1.0 GET: (status, body).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_default();
    Ok((
        status,
        answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `warren consume` alone, killed when dropped.
struct Consume(Child);

impl Drop for Consume {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn consume(s: &warren::Settings, url: &str, metrics: &str) -> Consume {
    warren_cmd("consume", s, url, metrics)
}

/// `warren <command>` with the settings' names and `url`, answering probes
/// on `listen` (`metrics.listen` for `consume`, the ingress for `run`).
fn warren_cmd(command: &str, s: &warren::Settings, url: &str, listen: &str) -> Consume {
    let setting = if command == "run" {
        "WARREN_INGRESS__LISTEN"
    } else {
        "WARREN_METRICS__LISTEN"
    };
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg(command)
        .env_remove("AMQP_URL")
        .env(setting, listen)
        .env("WARREN_AMQP__URL", url)
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_TOPOLOGY__QUEUE_TYPE", "classic")
        .env("WARREN_LOG_JSON", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start warren {command}: {e}"));
    Consume(child)
}

/// Polls `path` until `until(status, body)`; panics with the last answer after 20 s.
fn poll(addr: &str, path: &str, until: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        if let Ok(answer) = http_get(addr, path) {
            if until(answer.0, &answer.1) {
                return answer;
            }
            last = answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("GET {path} never answered as expected; last: {last:?}");
}

#[tokio::test]
async fn warren_consume_alone_answers_probes_and_serves_metrics_on_metrics_listen() {
    let conn = support::connect().await;
    let s = support::settings("probes", false);
    let _gone = support::Cleanup::topology(&s);
    let metrics = free_addr();
    let mut child = consume(&s, &support::amqp_url(), &metrics);
    let (_, body) = poll(&metrics, "/readyz", |status, _| status == 200);
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["checks"]["consumer"]["ready"], true, "{body}");
    let queue = format!("queue {}.user.login", s.consumer.service);
    assert_eq!(ready["checks"][queue.as_str()]["detail"], "consuming", "{body}");
    assert_eq!(poll(&metrics, "/healthz", |_, _| true).0, 200);
    let (_, text) = poll(&metrics, "/metrics", |status, _| status == 200);
    for line in [
        format!("warren_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "warren_broker_blocked 0".to_owned(),
        "warren_broker_connected{role=\"consumer\"} 1".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "no {name}");
    }
    let _ = child.0.kill();
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let first = stderr.lines().next().expect("log lines");
    let log: Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("WARREN_LOG_JSON=1 logs JSON: {first}: {e}"));
    assert_eq!(log["level"], "INFO", "{first}");
    support::cleanup(&conn, &warren::Topology::from_settings(&s)).await;
}

/// Asserts that a `/readyz` body names no broker address, user or OS error.
fn assert_nothing_leaks(body: &str, broker: &str) {
    for secret in ["guest", broker, "os error", "refused", "amqp://"] {
        assert!(!body.contains(secret), "/readyz shows {secret:?}: {body}");
    }
}

#[test]
fn warren_consume_without_a_broker_is_alive_but_not_ready() {
    let s = support::settings("probes-down", false);
    let metrics = free_addr();
    // Nothing listens on a free port: the consumer keeps reconnecting.
    let broker = free_addr();
    let _child = consume(&s, &format!("amqp://guest:guest@{broker}/%2f"), &metrics);
    let (_, body) = poll(&metrics, "/readyz", |status, body| {
        status == 503 && body.contains(r#""detail":"reconnecting"#)
    });
    assert_nothing_leaks(&body, &broker);
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["checks"]["consumer"]["ready"], false, "{body}");
    let queue = format!("queue {}.user.login", s.consumer.service);
    assert_eq!(
        json["checks"][queue.as_str()]["ready"],
        false,
        "each queue is a part from the start: {body}"
    );
    assert_eq!(poll(&metrics, "/healthz", |_, _| true).0, 200, "alive all the same");
    let (_, text) = poll(&metrics, "/metrics", |status, _| status == 200);
    assert!(
        text.lines()
            .any(|l| l == "warren_broker_connected{role=\"consumer\"} 0"),
        "{text}"
    );
}

#[test]
fn warren_run_without_a_broker_names_the_failing_parts_and_nothing_else() {
    let s = support::settings("probes-run-down", false);
    let ingress = free_addr();
    let broker = free_addr();
    let _child = warren_cmd("run", &s, &format!("amqp://guest:guest@{broker}/%2f"), &ingress);
    let (_, body) = poll(&ingress, "/readyz", |status, body| {
        status == 503 && body.contains(r#""detail":"reconnecting"#)
    });
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["checks"]["publisher"]["ready"], false, "{body}");
    assert_eq!(json["checks"]["consumer"]["detail"], "reconnecting", "{body}");
    assert_nothing_leaks(&body, &broker);
}
