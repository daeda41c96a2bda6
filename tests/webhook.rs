//! The webhook handler against a local HTTP receiver, then end to end through
//! a real broker: retries on 503, dead letters on 400.

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use warren::config::WebhookSettings;
use warren::consumer::{AnyEventHandler, Consumer, Context, HandlerError};
use warren::event::headers;
use warren::http::{AppState, EventSink};
use warren::webhook::WebhookHandler;
use warren::{Envelope, Publisher, UserRegistered};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver answers, in order; the last answer repeats.
#[derive(Clone)]
enum Reply {
    Status(u16, &'static str),
    Redirect(&'static str),
    Never,
}

#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

#[derive(Clone)]
struct Receiver {
    base: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone)]
struct ServerState {
    seen: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

async fn answer(State(st): State<ServerState>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    st.seen.lock().unwrap().push(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = {
        let mut script = st.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().expect("a script")
        }
    };
    match reply {
        Reply::Status(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Reply::Redirect(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        Reply::Never => std::future::pending().await,
    }
}

impl Receiver {
    /// A receiver on 127.0.0.1:0 that answers `script` and records every request.
    async fn start(script: impl IntoIterator<Item = Reply>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = ServerState {
            seen: seen.clone(),
            script: Arc::new(Mutex::new(script.into_iter().collect())),
        };
        let app = Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, seen }
    }

    fn requests(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "expected {n} requests, got {}", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn webhook_settings(base: &str, timeout: Duration) -> WebhookSettings {
    WebhookSettings {
        url: Some(base.to_owned()),
        path: "/events".into(),
        secret: Some(SECRET.into()),
        timeout,
    }
}

use support::registered;

fn ctx() -> Context {
    Context {
        attempt: 1,
        queue: "q".into(),
        redelivered: false,
    }
}

fn header_str<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// Checks a request the way a receiver does: the HMAC of the exact received
/// bytes, recomputed here with the secret's decoded key.
fn assert_signed(r: &Received) {
    let id = header_str(r, "webhook-id");
    let ts = header_str(r, "webhook-timestamp");
    let ts_num: i64 = ts.parse().unwrap();
    assert!(
        (Utc::now().timestamp() - ts_num).abs() < 30,
        "timestamp {ts} is not now"
    );
    let key = STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header_str(r, "webhook-signature"), expected);
}

async fn deliver_once(reply: Reply, timeout: Duration) -> (Receiver, Result<(), HandlerError>) {
    let receiver = Receiver::start([reply]).await;
    let handler = WebhookHandler::new(&webhook_settings(&receiver.base, timeout)).unwrap();
    let result = handler.handle_any(registered(7), ctx()).await;
    (receiver, result)
}

#[tokio::test]
async fn success_posts_the_signed_envelope() {
    let receiver = Receiver::start([Reply::Status(204, "")]).await;
    let handler = WebhookHandler::new(&webhook_settings(&receiver.base, Duration::from_secs(5))).unwrap();
    let event = registered(7);
    handler.handle_any(event.clone(), ctx()).await.expect("2xx is Ok");
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/events");
    assert_eq!(header_str(r, "content-type"), "application/json");
    assert_eq!(header_str(r, "webhook-id"), event.event_id.to_string());
    assert_eq!(header_str(r, "x-warren-attempt"), "1");
    assert_eq!(r.body, serde_json::to_vec(&event).unwrap());
    assert_eq!(Envelope::<UserRegistered>::from_slice(&r.body).unwrap(), event);
    assert_signed(r);
}

#[tokio::test]
async fn unavailable_and_rate_limited_are_transient() {
    for code in [503, 429] {
        let (receiver, result) = deliver_once(Reply::Status(code, "busy"), Duration::from_secs(5)).await;
        match result {
            Err(HandlerError::Transient(msg)) => {
                assert!(msg.contains(&code.to_string()), "{msg}");
                assert!(msg.contains("busy"), "{msg}");
            }
            other => panic!("{code}: expected Transient, got {other:?}"),
        }
        assert_eq!(receiver.requests().len(), 1);
    }
}

#[tokio::test]
async fn bad_request_is_permanent_with_the_body_snippet() {
    let (_receiver, result) = deliver_once(
        Reply::Status(400, "{\"error\": \"unknown field\"}"),
        Duration::from_secs(5),
    )
    .await;
    match result {
        Err(HandlerError::Permanent(msg)) => {
            assert!(msg.contains("400"), "{msg}");
            assert!(msg.contains("{\"error\": \"unknown field\"}"), "{msg}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
}

#[tokio::test]
async fn long_error_bodies_are_cut_to_200_bytes() {
    let body: &'static str = "é".repeat(1000).leak();
    let (_receiver, result) = deliver_once(Reply::Status(422, body), Duration::from_secs(5)).await;
    let Err(HandlerError::Permanent(msg)) = result else {
        panic!("expected Permanent, got {result:?}");
    };
    let snippet = msg.rsplit(": ").next().unwrap();
    assert!(snippet.starts_with('é') && snippet.len() == 200, "{msg}");
}

#[tokio::test]
async fn redirects_are_permanent_and_never_followed() {
    let (receiver, result) = deliver_once(Reply::Redirect("/elsewhere"), Duration::from_secs(5)).await;
    match result {
        Err(HandlerError::Permanent(msg)) => {
            assert!(msg.contains("302"), "{msg}");
            assert!(msg.contains("/elsewhere"), "{msg}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paths: Vec<_> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/events"], "the redirect target was requested");
}

#[tokio::test]
async fn a_silent_receiver_times_out_as_transient() {
    let started = Instant::now();
    let (receiver, result) = deliver_once(Reply::Never, Duration::from_millis(300)).await;
    let elapsed = started.elapsed();
    match result {
        Err(HandlerError::Transient(msg)) => assert!(msg.contains("within 300ms"), "{msg}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(receiver.requests().len(), 1, "the request did arrive");
    assert!(
        elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let handler = WebhookHandler::new(&webhook_settings(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_secs(5),
    ))
    .unwrap();
    match handler.handle_any(registered(7), ctx()).await {
        Err(HandlerError::Transient(msg)) => {
            assert!(msg.contains("cannot connect"), "{msg}");
            assert!(msg.contains(&format!("127.0.0.1:{port}/events")), "{msg}");
        }
        other => panic!("expected Transient, got {other:?}"),
    }
}

/// A sink that counts what the ingress publishes, then publishes it.
struct Counting<S> {
    inner: S,
    published: std::sync::atomic::AtomicUsize,
}

impl<S: EventSink> EventSink for Counting<S> {
    fn publish<'a>(
        &'a self,
        env: &'a warren::event::RawEnvelope,
    ) -> futures_util::future::BoxFuture<'a, Result<(), warren::PublishError>> {
        self.published.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.publish(env)
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
}

/// A sink that stores nothing and is always ready.
struct Nowhere;

impl EventSink for Nowhere {
    fn publish<'a>(
        &'a self,
        _: &'a warren::event::RawEnvelope,
    ) -> futures_util::future::BoxFuture<'a, Result<(), warren::PublishError>> {
        Box::pin(async { Ok(()) })
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// Serves a warren ingress publishing to `sink` on 127.0.0.1:0; its base URL.
async fn ingress(sink: Arc<dyn EventSink>, shutdown: CancellationToken) -> String {
    let state = AppState::new(sink, &warren::Settings::default().ingress);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warren::http::serve(listener, state, shutdown));
    base
}

/// `POST /events` of `body` over a fresh connection; the whole answer.
async fn post_event(addr: std::net::SocketAddr, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn a_delivery_into_a_warren_ingress_is_refused_there_and_not_retried() {
    let sink = Arc::new(Counting {
        inner: Nowhere,
        published: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let base = ingress(sink.clone(), shutdown.clone()).await;
    let handler = WebhookHandler::new(&webhook_settings(&base, Duration::from_secs(5))).unwrap();
    let result = handler.handle_any(registered(9), ctx()).await;
    shutdown.cancel();
    match result {
        Err(HandlerError::Permanent(msg)) => {
            assert!(msg.contains("508") && msg.contains("forwarding_loop"), "{msg}");
            assert!(msg.contains("leads back into warren"), "{msg}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    assert_eq!(sink.published.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn end_to_end_a_loop_through_a_proxy_forwards_once_then_dead_letters() {
    let conn = support::connect().await;
    let mut s = support::settings("wh-loop", false);
    s.consumer.event_types = vec!["user.login".into()];
    s.consumer.retry.delays = vec![Duration::from_millis(200)];
    s.consumer.shutdown_timeout = Duration::from_secs(5);
    let topology = support::declare(&conn, &s).await;
    let publisher = Publisher::connect(&s, "tests-ingress").await.unwrap();
    let sink = Arc::new(Counting {
        inner: publisher,
        published: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let base = ingress(sink.clone(), shutdown.clone()).await;
    // The webhook reaches the ingress through another port, so the start-up
    // check cannot see the loop: only the marker header can.
    let upstream: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let proxy = support::proxy::Proxy::start(upstream).await;
    s.webhook = webhook_settings(&format!("http://{}", proxy.addr()), Duration::from_secs(5));
    let (stop_consumer, task) = start_consumer(&s);

    let answer = post_event(upstream, include_str!("fixtures/seed_user_login.json")).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    let ch = conn.create_channel().await.unwrap();
    let dead = topology.dead_queue("user.login");
    support::wait_ready(&ch, &dead, 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(stop_consumer, task).await;
    shutdown.cancel();

    assert_eq!(
        sink.published.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the client's POST was published; the forwarded copy was refused"
    );
    let parked = support::drain(&ch, &dead).await;
    assert_eq!(parked.len(), 1);
    let p = &parked[0].properties;
    assert_eq!(headers::text(p, headers::REASON).as_deref(), Some("permanent"));
    let error = headers::text(p, headers::ERROR).unwrap();
    assert!(
        error.contains("508") && error.contains("leads back into warren"),
        "{error}"
    );
    assert_eq!(support::ready(&ch, &topology.work_queue("user.login")).await, 0);
    support::cleanup(&conn, &topology).await;
}

/// Settings with their own names, fast retry tiers and the receiver's URL.
fn consumer_settings(prefix: &str, receiver: &Receiver) -> warren::Settings {
    let mut s = support::settings(prefix, false);
    s.consumer.retry.delays = vec![Duration::from_millis(200), Duration::from_millis(400)];
    s.consumer.shutdown_timeout = Duration::from_secs(5);
    s.webhook = webhook_settings(&receiver.base, Duration::from_secs(5));
    s
}

/// Starts a consumer forwarding every type to the webhook.
fn start_consumer(
    s: &warren::Settings,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), warren::consumer::ConsumerError>>,
) {
    let handler = WebhookHandler::new(&s.webhook).unwrap();
    let shutdown = CancellationToken::new();
    let consumer = Consumer::new(s.clone()).on_all(handler);
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    (shutdown, task)
}

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<Result<(), warren::consumer::ConsumerError>>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consumer stops")
        .unwrap()
        .expect("consumer ran cleanly");
}

#[tokio::test]
async fn end_to_end_retries_503_until_the_receiver_takes_it() {
    let receiver = Receiver::start([
        Reply::Status(503, "warming up"),
        Reply::Status(503, "warming up"),
        Reply::Status(200, "ok"),
    ])
    .await;
    let conn = support::connect().await;
    let s = consumer_settings("wh-retry", &receiver);
    let topology = support::declare(&conn, &s).await;
    let (shutdown, task) = start_consumer(&s);
    let event = registered(42);
    Publisher::connect(&s, "tests")
        .await
        .unwrap()
        .publish(&event)
        .await
        .expect("confirmed");

    let got = receiver.wait_for(3, Duration::from_secs(15)).await;
    // Let the consumer settle the third delivery, then stop it: an unacked
    // message would go back to the work queue when its channel closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(shutdown, task).await;

    assert_eq!(receiver.requests().len(), 3, "no delivery after the 200");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(header_str(r, "webhook-id"), event.event_id.to_string());
        assert_eq!(header_str(r, "x-warren-attempt"), (i + 1).to_string());
        assert_signed(r);
        assert_eq!(Envelope::<UserRegistered>::from_slice(&r.body).unwrap(), event);
    }
    assert!(got[1].at - got[0].at >= Duration::from_millis(150), "tier 1 waited");
    assert!(got[2].at - got[1].at >= Duration::from_millis(350), "tier 2 waited");
    let ch = conn.create_channel().await.unwrap();
    let t = "user.registered";
    assert_eq!(support::ready(&ch, &topology.work_queue(t)).await, 0);
    assert_eq!(support::ready(&ch, &topology.dead_queue(t)).await, 0);
    for tier in 0..2 {
        let q = topology.retry_queue(t, tier).unwrap();
        assert_eq!(support::ready(&ch, &q).await, 0, "{q}");
    }
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn end_to_end_400_is_dead_lettered_as_permanent() {
    let receiver = Receiver::start([Reply::Status(400, "user 43 is unknown here")]).await;
    let conn = support::connect().await;
    let s = consumer_settings("wh-dead", &receiver);
    let topology = support::declare(&conn, &s).await;
    let (shutdown, task) = start_consumer(&s);
    let event = registered(43);
    Publisher::connect(&s, "tests")
        .await
        .unwrap()
        .publish(&event)
        .await
        .expect("confirmed");

    let ch = conn.create_channel().await.unwrap();
    let dead = topology.dead_queue("user.registered");
    support::wait_ready(&ch, &dead, 1, Duration::from_secs(15)).await;
    stop(shutdown, task).await;

    assert_eq!(receiver.requests().len(), 1, "a permanent failure is not retried");
    let parked = support::drain(&ch, &dead).await;
    assert_eq!(parked.len(), 1);
    let p = &parked[0].properties;
    assert_eq!(headers::text(p, headers::REASON).as_deref(), Some("permanent"));
    let error = headers::text(p, headers::ERROR).unwrap();
    assert!(
        error.contains("400") && error.contains("user 43 is unknown here"),
        "{error}"
    );
    assert_eq!(Envelope::<UserRegistered>::from_slice(&parked[0].data).unwrap(), event);
    assert_eq!(support::ready(&ch, &topology.work_queue("user.registered")).await, 0);
    support::cleanup(&conn, &topology).await;
}
