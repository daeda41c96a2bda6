//! Least privilege: each role of warren runs with the permissions
//! docs/PERMISSIONS.md gives it, on a vhost and with a broker user the test
//! makes; what the broker refuses is reported by permission and object; a
//! consumer whose retries the broker refuses pauses and recovers by itself.

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lapin::{Connection, ConnectionProperties};
use support::admin::{self, User, Vhost};
use support::logs::Logs;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use warren::consumer::{Consumer, Context, HandlerError};
use warren::event::headers;
use warren::http::{AppState, router};
use warren::refusal::Permission;
use warren::topology::TopologyError;
use warren::{Envelope, Publisher, Settings, Topology, UserRegistered};

const SEED_REGISTERED: &str = include_str!("fixtures/seed_user_registered.json");
const DATA: &str =
    r#"{"user_id":7,"username":"ann","email":"ann@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}"#;

/// guest's connection to the test's vhost: it applies the topology.
async fn as_guest(vhost: &Vhost) -> Connection {
    Connection::connect(&vhost.url("guest", "guest"), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need RabbitMQ on 127.0.0.1:5672 (guest/guest): {e}"))
}

/// Settings of a service of the test's own on `vhost`, one event type.
fn service(prefix: &str, vhost: &Vhost) -> Settings {
    let mut s = support::settings(prefix, false);
    s.consumer.event_types = vec!["user.registered".into()];
    s.consumer.retry.delays = vec![Duration::from_millis(200), Duration::from_millis(200)];
    s.amqp.url = vhost.url("guest", "guest");
    s
}

/// [`service`]'s settings with the topology applied by guest.
async fn applied(prefix: &str, vhost: &Vhost) -> (Settings, Connection, Topology) {
    let s = service(prefix, vhost);
    let conn = as_guest(vhost).await;
    let topology = support::declare(&conn, &s).await.in_own_vhost();
    (s, conn, topology)
}

/// `(status, JSON body)` of one request to the ingress router.
async fn call(app: axum::Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let res = app.oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn post_event() -> Request<Body> {
    Request::post("/events")
        .header("content-type", "application/json")
        .body(Body::from(SEED_REGISTERED))
        .unwrap()
}

#[tokio::test]
async fn a_publisher_with_write_on_the_exchange_only_publishes_from_the_library_the_cli_and_the_ingress() {
    let vhost = Vhost::create("perm-pub");
    let user = User::create("publisher");
    let (mut s, guest, topology) = applied("perm-pub", &vhost).await;
    user.grant(&vhost, "^$", &admin::exactly(&s.topology.exchange), "^$");
    s.amqp.url = user.url(&vhost);
    s.topology.declare = false;

    let publisher = Publisher::connect(&s, "tests")
        .await
        .expect("connects without configure");
    publisher.publish(&support::registered(1)).await.expect("published");

    let dir = std::env::temp_dir().join(support::unique("perm-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["publish", "user.registered", "--data", DATA])
        .current_dir(&dir)
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", &s.amqp.url)
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_TOPOLOGY__DECLARE", "false")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let ingress = Publisher::start(&s, "tests-ingress");
    let ready = ingress.clone();
    support::eventually(Duration::from_secs(10), "ingress publisher ready", || {
        ready.is_connected()
    })
    .await;
    let app = router(AppState::new(Arc::new(ingress), &s.ingress));
    let (status, body) = call(app, post_event()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let ch = guest.create_channel().await.unwrap();
    support::wait_ready(&ch, &topology.work_queue("user.registered"), 3, Duration::from_secs(5)).await;

    // Declaring the exchange (topology.declare = true) needs configure on it too.
    let x = admin::exactly(&s.topology.exchange);
    user.grant(&vhost, &x, &x, "^$");
    s.topology.declare = true;
    let declaring = Publisher::connect(&s, "tests")
        .await
        .expect("declares with configure on the exchange");
    declaring.publish(&support::registered(2)).await.expect("published");
}

#[tokio::test]
async fn a_refused_permission_is_named_in_readyz_and_in_the_503() {
    let vhost = Vhost::create("perm-refused");
    let user = User::create("nobody");
    let (mut s, _guest, _) = applied("perm-refused", &vhost).await;
    user.grant(&vhost, "^$", "^$", "^$");
    s.amqp.url = user.url(&vhost);
    let exchange = format!("exchange {:?}", s.topology.exchange);

    // Declaring the exchange needs configure.
    let declaring = Publisher::start(&s, "tests-declaring");
    let refused = declaring.clone();
    support::eventually(Duration::from_secs(10), "a refusal", || refused.refusal().is_some()).await;
    let app = router(AppState::new(Arc::new(declaring), &s.ingress));
    let (status, body) = call(app.clone(), Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("configure permission on {exchange}")),
        "{reason}"
    );
    let (status, body) = call(app, post_event()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "broker_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("configure permission on {exchange}")),
        "{message}"
    );
    assert!(
        !message.contains(&user.name),
        "the broker's user stays in the logs: {message}"
    );

    // Checking it needs nothing; publishing to it needs write.
    s.topology.declare = false;
    let checking = Publisher::start(&s, "tests-checking");
    let ready = checking.clone();
    support::eventually(Duration::from_secs(10), "connected", || ready.is_connected()).await;
    let app = router(AppState::new(Arc::new(checking), &s.ingress));
    let (status, body) = call(app, post_event()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "broker_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("write permission on {exchange}")),
        "{message}"
    );
}

#[tokio::test]
async fn the_topology_is_declared_and_consumed_with_the_deployers_permissions() {
    let vhost = Vhost::create("perm-apply");
    let user = User::create("deployer");
    let mut s = support::settings("perm-apply", false);
    s.consumer.retry.delays = vec![Duration::from_millis(200)];
    s.amqp.url = user.url(&vhost);
    let topology = Topology::from_settings(&s);
    let (x, svc) = (admin::escape(&s.topology.exchange), admin::escape(&s.consumer.service));
    let configure = format!("^({x}|{svc}\\.user\\..*)$");
    let write = format!("^(amq\\.default|{svc}\\.user\\.(registered|login))$");
    let read_queues = format!("{svc}\\.user\\.(registered|login)(\\.retry\\..+)?");
    let user_conn = || async {
        Connection::connect(&s.amqp.url, ConnectionProperties::default())
            .await
            .unwrap()
    };

    // One permission short (read on the exchange, for the bindings): the
    // error names it and the object.
    user.grant(&vhost, &configure, &write, &format!("^{read_queues}$"));
    let err = topology
        .declare(&user_conn().await.create_channel().await.unwrap())
        .await
        .unwrap_err();
    match &err {
        TopologyError::Refused { refusal, .. } => {
            assert_eq!(refusal.permissions, [Permission::Read], "{err}");
            assert_eq!(
                (refusal.kind.as_str(), refusal.name.as_str()),
                ("exchange", s.topology.exchange.as_str())
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("read permission"), "{err}");

    user.grant(&vhost, &configure, &write, &format!("^({x}|{read_queues})$"));
    topology
        .declare(&user_conn().await.create_channel().await.unwrap())
        .await
        .expect("declared with the documented permissions");
    let guest = as_guest(&vhost).await;
    let ch = guest.create_channel().await.unwrap();
    for q in topology.queues() {
        support::ready(&ch, &q.name).await;
    }

    // A consumer that declares its own topology needs these and no more.
    let attempts = Attempts::default();
    let (token, handle) = start(Consumer::new(s.clone()).on(failing_until(&attempts, 2)));
    let mut publish = s.clone();
    publish.amqp.url = vhost.url("guest", "guest");
    let event = support::registered(1);
    Publisher::connect(&publish, "tests")
        .await
        .unwrap()
        .publish(&event)
        .await
        .unwrap();
    let seen = attempts.clone();
    support::eventually(Duration::from_secs(10), "attempt 2", || seen.lock().unwrap().len() >= 2).await;
    stop(token, handle).await;
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![(event.event_id, 1), (event.event_id, 2)]
    );
}

type Attempts = Arc<Mutex<Vec<(uuid::Uuid, u32)>>>;

/// A handler that records each attempt and fails transiently while
/// `attempt < succeed_at`.
fn failing_until(
    attempts: &Attempts,
    succeed_at: u32,
) -> impl Fn(Envelope<UserRegistered>, Context) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
{
    let log = attempts.clone();
    move |e, ctx| {
        log.lock().unwrap().push((e.event_id, ctx.attempt));
        std::future::ready(if ctx.attempt < succeed_at {
            Err(HandlerError::transient("receiver down"))
        } else {
            Ok(())
        })
    }
}

fn start(consumer: Consumer) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    (
        token,
        tokio::spawn(async move { consumer.run(t).await.expect("consumer ran") }),
    )
}

async fn stop(token: CancellationToken, handle: tokio::task::JoinHandle<()>) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("consumer stops")
        .expect("no panic");
}

#[tokio::test]
async fn a_consumer_with_read_on_its_work_queue_and_write_on_the_default_exchange_handles_and_retries() {
    let vhost = Vhost::create("perm-con");
    let user = User::create("consumer");
    let (mut s, _guest, topology) = applied("perm-con", &vhost).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let work = topology.work_queue("user.registered");
    user.grant(&vhost, "^$", "^amq\\.default$", &admin::exactly(&work));
    s.amqp.url = user.url(&vhost);
    s.topology.declare = false;
    let attempts = Attempts::default();
    let (token, handle) = start(Consumer::new(s).on(failing_until(&attempts, 2)));
    let event = support::registered(1);
    publisher.publish(&event).await.unwrap();
    let seen = attempts.clone();
    support::eventually(Duration::from_secs(10), "attempt 2", || seen.lock().unwrap().len() >= 2).await;
    stop(token, handle).await;
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![(event.event_id, 1), (event.event_id, 2)]
    );
    let guest = as_guest(&vhost).await;
    let ch = guest.create_channel().await.unwrap();
    assert_eq!(support::ready(&ch, &work).await, 0);
    assert_eq!(support::ready(&ch, &topology.dead_queue("user.registered")).await, 0);
}

#[tokio::test]
async fn a_consumer_that_was_connected_keeps_retrying_a_refused_login() {
    let vhost = Vhost::create("perm-relogin");
    let user = User::create("relogin");
    user.grant(&vhost, ".*", ".*", ".*");
    let (mut s, _guest, _) = applied("perm-relogin", &vhost).await;
    s.amqp.url = user.url(&vhost);
    let attempts = Attempts::default();
    let (token, handle) = start(Consumer::new(s.clone()).on(failing_until(&attempts, 1)));
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let seen = attempts.clone();
    publisher.publish(&support::registered(1)).await.unwrap();
    support::eventually(Duration::from_secs(10), "first event", || {
        seen.lock().unwrap().len() == 1
    })
    .await;

    user.set_password("changed");
    user.close_connections();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !handle.is_finished(),
        "a consumer that was connected retries a refused login"
    );
    user.set_password(&user.password);
    publisher.publish(&support::registered(2)).await.unwrap();
    support::eventually(
        Duration::from_secs(20),
        "second event after the login works again",
        || seen.lock().unwrap().len() == 2,
    )
    .await;
    stop(token, handle).await;
}

#[tokio::test]
async fn a_consumer_refused_its_retries_pauses_and_recovers_by_itself_once_granted() {
    let metrics = warren::metrics::install().expect("recorder");
    let (logs, _guard) = Logs::capture();
    let vhost = Vhost::create("perm-retry");
    let user = User::create("no-retries");
    let (mut s, guest, topology) = applied("perm-retry", &vhost).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let (work, dead) = (
        topology.work_queue("user.registered"),
        topology.dead_queue("user.registered"),
    );
    // It may consume, but not write to the default exchange its retries go through.
    user.grant(&vhost, "^$", "^$", &admin::exactly(&work));
    s.amqp.url = user.url(&vhost);
    s.topology.declare = false;
    let attempts = Attempts::default();
    let (token, handle) = start(Consumer::new(s).on(failing_until(&attempts, u32::MAX)));
    let (first, second) = (support::registered(1), support::registered(2));
    publisher.publish(&first).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![(first.event_id, 1)],
        "handled once, then held while its retry is refused: never requeued in a loop"
    );
    publisher.publish(&second).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attempts.lock().unwrap().len(), 1, "the paused queue starts no handler");
    let text = metrics.render();
    let paused = format!("warren_queue_paused{{queue=\"{work}\"}} 1");
    assert!(text.contains(&paused), "{text}");
    assert!(
        text.contains(&format!("warren_republish_failures_total{{queue=\"{work}\"}}")),
        "{text}"
    );
    let refused = logs.matching(&["ERROR", &work, "write permission on the default exchange (amq.default)"]);
    assert_eq!(
        refused.len(),
        1,
        "logged once per episode, naming queue and permission: {:#?}",
        logs.lines()
    );

    user.grant(&vhost, "^$", "^amq\\.default$", &admin::exactly(&work));
    let ch = guest.create_channel().await.unwrap();
    support::wait_ready(&ch, &dead, 2, Duration::from_secs(60)).await;
    stop(token, handle).await;

    for event in [&first, &second] {
        let seen: Vec<u32> = attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.0 == event.event_id)
            .map(|a| a.1)
            .collect();
        assert_eq!(seen, [1, 2, 3], "through both retry tiers, each attempt once");
    }
    for parked in support::drain(&ch, &dead).await {
        let p = &parked.properties;
        assert_eq!(headers::text(p, headers::REASON).as_deref(), Some("exhausted"));
        assert_eq!(headers::int(p, headers::ATTEMPTS), Some(3));
        assert_eq!(headers::text(p, headers::QUEUE).as_deref(), Some(work.as_str()));
    }
    assert!(
        !logs.matching(&["the queue resumes", &work]).is_empty(),
        "{:#?}",
        logs.lines()
    );
}
