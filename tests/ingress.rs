//! The HTTP ingress: every status of the router with a recording fake sink
//! (no socket), then metrics, connection limits over a real socket, and end
//! to end over a real socket and the real broker.

mod support;

#[path = "ingress/bad_input.rs"]
mod bad_input;
#[path = "ingress/batch.rs"]
mod batch;
#[path = "ingress/common.rs"]
mod common;
#[path = "ingress/connections.rs"]
mod connections;
#[path = "ingress/single.rs"]
mod single;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warren::http::{AppState, router, serve};
use warren::{Publisher, Settings};

use common::{Fake, SEED_LOGIN, SEED_REGISTERED, call, post};

/// The value of the sample `series` (name with labels) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let handle = warren::metrics::install().expect("recorder");
    let fake = Arc::new(Fake::default());
    let settings = Settings::default().ingress;
    let app = router(AppState::new(fake.clone(), &settings).with_metrics(handle));
    let series = r#"warren_ingress_requests_total{route="/events/batch",status="415"}"#;
    let scrape = |app: Router| async move {
        let a = call(app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            a.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        a.body.as_str().unwrap().to_owned()
    };
    let before = sample(&scrape(app.clone()).await, series).unwrap_or(0.0);
    for _ in 0..3 {
        let req = Request::post("/events/batch").body(Body::from("[]")).unwrap();
        assert_eq!(call(app.clone(), req).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    assert_eq!(
        call(app.clone(), post("/events", SEED_LOGIN)).await.status,
        StatusCode::ACCEPTED
    );
    call(app.clone(), Request::get("/no/such/path").body(Body::empty()).unwrap()).await;
    let text = scrape(app).await;
    let after = sample(&text, series).unwrap_or(0.0);
    assert!(after - before >= 3.0, "{before} -> {after}\n{text}");
    assert!(
        sample(&text, r#"warren_ingress_requests_total{route="/events",status="202"}"#).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched""#),
        "raw paths never become labels:\n{text}"
    );
    assert!(!text.contains("/no/such/path"));
    assert!(
        text.contains(r#"warren_ingress_request_duration_seconds_bucket{route="/events",le="0.0005"}"#),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"warren_broker_connected{role="ingress"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# HELP warren_ingress_requests_total HTTP requests"),
        "metrics are described:\n{text}"
    );
}

/// One HTTP/1.1 request over a real socket; returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[tokio::test]
async fn end_to_end_post_lands_in_the_work_queue() {
    let conn = support::connect().await;
    let mut s = support::settings("ingress", false);
    s.consumer.event_types = vec!["user.registered".into()];
    let topology = support::declare(&conn, &s).await;
    let publisher = Publisher::connect(&s, "tests-ingress").await.unwrap();
    let handle = warren::metrics::install().unwrap();
    let state = AppState::new(Arc::new(publisher), &s.ingress).with_metrics(handle);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, state, shutdown.clone()));

    let (status, body) = http(addr, "POST", "/events", SEED_REGISTERED).await;
    assert_eq!(status, 202, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let event_id = body["event_id"].as_str().unwrap().to_owned();

    let ch = conn.create_channel().await.unwrap();
    let got = support::drain(&ch, &topology.work_queue("user.registered")).await;
    assert_eq!(got.len(), 1, "the 202 came after the confirm");
    assert_eq!(
        got[0].properties.message_id().as_ref().map(|m| m.as_str().to_owned()),
        Some(event_id.clone())
    );
    let stored: Value = serde_json::from_slice(&got[0].data).unwrap();
    assert_eq!(stored["event_id"], event_id.as_str());
    assert_eq!(stored["data"]["username"], "john_doe");

    // No queue bound for user.login in this topology: not a 202.
    let (status, body) = http(addr, "POST", "/events", SEED_LOGIN).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("\"unroutable\""), "{body}");

    let (status, text) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        sample(
            &text,
            r#"warren_published_total{event_type="user.registered",outcome="confirmed"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"warren_published_total{event_type="user.login",outcome="unroutable"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve stops when the token is cancelled")
        .unwrap()
        .expect("serve returns Ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
    support::cleanup(&conn, &topology).await;
}
