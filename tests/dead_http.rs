//! The `/dead` routes of the ingress against the local broker, through the
//! router (no socket): list, stats, show, replay, purge, and who may call them.

mod support;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use tower::ServiceExt;
use warren::event::RawEnvelope;
use warren::event::headers;
use warren::http::{AppState, EventSink, router};
use warren::{PublishError, Settings};

/// The ingress's own publishing is not under test here.
struct NoSink;

impl EventSink for NoSink {
    fn publish<'a>(&'a self, _: &'a RawEnvelope) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }

    fn is_ready(&self) -> bool {
        true
    }
}

fn app(s: &Settings) -> Router {
    router(AppState::new(Arc::new(NoSink), &s.ingress).with_dead_letters(s))
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
    (status, body)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn park(conn: &lapin::Connection, queue: &str, n: usize, reason: &str) -> Vec<String> {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let e = support::registered(i as i64);
        let mut h = FieldTable::default();
        h.insert(headers::REASON.into(), AMQPValue::LongString(reason.into()));
        h.insert(
            headers::ERROR.into(),
            AMQPValue::LongString(format!("{reason} {i}").into()),
        );
        h.insert(
            headers::FIRST_FAILURE.into(),
            AMQPValue::LongString("2025-01-20T10:30:00Z".into()),
        );
        let props = BasicProperties::default()
            .with_message_id(e.event_id.to_string().into())
            .with_type("user.registered".into())
            .with_headers(h);
        let body = serde_json::to_vec(&e).unwrap();
        let c = ch
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, props)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
        ids.push(e.event_id.to_string());
    }
    ids
}

/// A fresh directory for purge exports, removed by [`remove_exports`].
fn export_dir(s: &mut Settings) -> PathBuf {
    let dir = std::env::temp_dir().join(support::unique("dead-exports"));
    s.dead.export_dir = dir.clone();
    dir
}

fn remove_exports(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The event ids of every record in the export files of `dir`.
fn exported_ids(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        for r in warren::dead::read_export(&path).unwrap() {
            ids.push(r.properties.message_id.unwrap());
        }
    }
    ids
}

#[tokio::test]
async fn list_stats_show_replay_and_purge_over_http() {
    let conn = support::connect().await;
    let mut s = support::settings("dead-http", false);
    let exports = export_dir(&mut s);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let work = topology.work_queue("user.registered");
    let exhausted = park(&conn, &dead, 4, "exhausted").await;
    let permanent = park(&conn, &dead, 2, "permanent").await;
    let app = app(&s);

    let (status, body) = call(&app, get("/dead?reason=permanent&limit=1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    assert_eq!(body["events"][0]["event_id"], permanent[0].as_str());

    let (status, body) = call(&app, get("/dead?limit=lots")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"), "{body}");
    // Values are URL-decoded as a form's are: %XX escapes and `+`.
    let encoded = "/dead?reason=perm%61nent&since=2025-01-20T10%3A30%3A00%2B00%3A00&until=2025-01-20T10:31:00Z";
    let (status, body) = call(&app, get(encoded)).await;
    assert_eq!((status, &body["count"]), (StatusCode::OK, &json!(2)), "{body}");
    let (status, body) = call(&app, get("/dead/stats?reason=no+such")).await;
    assert_eq!((status, &body["groups"]), (StatusCode::OK, &json!([])), "{body}");
    // An unknown parameter is refused, never ignored: a typo must not select everything.
    let (status, body) = call(&app, get("/dead?reasons=permanent")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown field `reasons`") && message.contains("`reason`"),
        "{message}"
    );

    let (status, body) = call(&app, get("/dead/stats")).await;
    assert_eq!(status, StatusCode::OK);
    let counts: Vec<(u64, &str)> = body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["count"].as_u64().unwrap(), g["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(counts, [(4, "exhausted"), (2, "permanent")]);

    let (status, body) = call(&app, get(&format!("/dead/{}", exhausted[1]))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"][0]["headers"]["x-warren-reason"], "exhausted");
    assert_eq!(body["messages"][0]["body"]["event_id"], exhausted[1].as_str());
    let (status, _) = call(&app, get("/dead/no-such-event")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let replay = json!({"filter": {"reason": "exhausted"}, "dry_run": true});
    let (status, body) = call(&app, post("/dead/replay", &replay)).await;
    assert_eq!((status, body["moved"].as_array().unwrap().len()), (StatusCode::OK, 4));
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(support::ready(&ch, &work).await, 0, "a dry run moves nothing");
    let replay = json!({"filter": {"reason": "exhausted", "limit": 3}});
    let (status, body) = call(&app, post("/dead/replay", &replay)).await;
    assert_eq!(
        (status, body["moved"].as_array().unwrap().len()),
        (StatusCode::OK, 3),
        "{body}"
    );
    support::wait_ready(&ch, &work, 3, Duration::from_secs(5)).await;

    let (status, body) = call(&app, post("/dead/purge", &json!({"filter": {"reason": "permanent"}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("confirm"));
    let purge = json!({"filter": {"reason": "permanent"}, "confirm": true});
    let (status, body) = call(&app, post("/dead/purge", &purge)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["purged"].as_array().unwrap().len(), 2);
    assert_eq!(body["exported"][0]["properties"]["message_id"], permanent[0].as_str());
    // The same records are in the file the answer names, readable by its owner only.
    let file = PathBuf::from(body["export"].as_str().unwrap());
    assert!(file.starts_with(exports.canonicalize().unwrap()), "{}", file.display());
    assert_eq!(exported_ids(&exports), permanent);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    support::wait_ready(&ch, &dead, 1, Duration::from_secs(5)).await;
    // A purge that selects nothing leaves no file.
    let none = json!({"filter": {"reason": "none-such"}, "confirm": true});
    let (status, body) = call(&app, post("/dead/purge", &none)).await;
    assert_eq!((status, &body["export"]), (StatusCode::OK, &Value::Null), "{body}");
    assert_eq!(std::fs::read_dir(&exports).unwrap().count(), 1);
    remove_exports(&exports);
    support::cleanup(&conn, &topology).await;
}

/// Parks `n` events (settings changed by `tune`), starts a purge of all of
/// them, and hangs up once it is under way, as a client that goes away
/// does (with `expect_answer`, waits for the request timeout's 503); once
/// the purge has run its course, every event is still parked or in the
/// export file.
async fn purge_cut_short(prefix: &str, n: usize, tune: impl FnOnce(&mut Settings), expect_answer: bool) {
    let conn = support::connect().await;
    let mut s = support::settings(prefix, true);
    tune(&mut s);
    let exports = export_dir(&mut s);
    let topology = support::declare(&conn, &s).await;
    let checked = AssertUnwindSafe(async {
        let dead = topology.dead_queue("user.registered");
        let mut parked = park(&conn, &dead, n, "exhausted").await;
        let app = app(&s);
        let purge = post("/dead/purge", &json!({"confirm": true}));
        // Without an expected answer, the client hangs up (drops the request)
        // as soon as the purge has written its first event; otherwise it
        // waits 5 s at most for the request timeout's answer.
        let under_way = async {
            while exported_ids(&exports).is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let answer = tokio::select! {
            answer = call(&app, purge) => Some(answer),
            () = under_way, if !expect_answer => None,
            () = tokio::time::sleep(Duration::from_secs(5)) => None,
        };
        match answer {
            Some((status, body)) => {
                let text = body.to_string();
                let head = &text[..text.len().min(300)];
                assert!(
                    expect_answer,
                    "the purge answered before it was under way: {status} {head}"
                );
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{head}");
            }
            None => assert!(!expect_answer, "no answer within 5 s"),
        }
        // The purge goes on without its client: wait until it has gone round.
        let ch = conn.create_channel().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (mut left, mut exported) = (Vec::new(), Vec::new());
        while tokio::time::Instant::now() < deadline {
            exported = exported_ids(&exports);
            if support::ready(&ch, &dead).await == 0 && exported.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        left.extend(
            support::drain(&ch, &dead)
                .await
                .iter()
                .map(|d| headers::message_id(&d.properties).unwrap().to_owned()),
        );
        let mut found: Vec<String> = [left.clone(), exported.clone()].concat();
        found.sort();
        found.dedup();
        parked.sort();
        assert_eq!(
            found.len(),
            parked.len(),
            "{} parked, {} left in .dead, {} in the export: events lost",
            parked.len(),
            left.len(),
            exported.len()
        );
        assert_eq!(found, parked);
    })
    .catch_unwind()
    .await;
    remove_exports(&exports);
    support::cleanup(&conn, &topology).await;
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn a_purge_whose_client_hangs_up_loses_no_event() {
    purge_cut_short("dead-hangup", 1000, |_| {}, false).await;
}

#[tokio::test]
async fn a_purge_past_the_request_timeout_loses_no_event() {
    let tiny = |s: &mut Settings| s.ingress.request_timeout = Duration::from_millis(50);
    purge_cut_short("dead-timeout", 1000, tiny, true).await;
}

#[tokio::test]
async fn the_routes_need_the_token_and_a_token_off_loopback() {
    let mut s = support::settings("dead-auth", false);
    s.ingress.token = Some("s3cret".into());
    let app = app(&s);
    let (status, _) = call(&app, get("/dead")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let req = Request::get("/dead/stats")
        .header(header::AUTHORIZATION, "Bearer wrong")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::UNAUTHORIZED);
    // With the token, the route runs: no queues for this service yet, so nothing parked.
    let req = Request::get("/dead")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, req).await;
    assert_eq!((status, &body["count"]), (StatusCode::OK, &json!(0)), "{body}");

    s.ingress.token = None;
    s.ingress.listen = "0.0.0.0:8080".parse().unwrap();
    let (status, body) = call(&self::app(&s), post("/dead/purge", &json!({"confirm": true}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("ingress.token"),
        "{body}"
    );

    // Without with_dead_letters there are no /dead routes at all.
    let plain = router(AppState::new(Arc::new(NoSink), &s.ingress));
    assert_eq!(call(&plain, get("/dead")).await.0, StatusCode::NOT_FOUND);
}

/// A request as a browser sends it to the ingress on 127.0.0.1:8597: `Host`
/// always, `Origin` on a POST, and the `Content-Type` a page may send
/// without asking the server first.
fn from_page(uri: &str, origin: &str, content_type: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header(header::HOST, "127.0.0.1:8597")
        .header(header::ORIGIN, origin)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn pages_of_other_sites_and_rebound_names_cannot_drive_the_routes() {
    let conn = support::connect().await;
    let s = support::settings("dead-csrf", false);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    let work = topology.work_queue("user.registered");
    park(&conn, &dead, 2, "exhausted").await;
    let app = app(&s);
    let ch = conn.create_channel().await.unwrap();
    support::wait_ready(&ch, &dead, 2, Duration::from_secs(5)).await;

    let purge = json!({"confirm": true});
    let replay = json!({});
    for (uri, body) in [("/dead/purge", &purge), ("/dead/replay", &replay)] {
        let (status, answer) = call(&app, from_page(uri, "http://evil.example", "text/plain", body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {answer}");
        assert_eq!(answer["error"]["code"], "foreign_origin", "{answer}");
        let (status, answer) = call(&app, from_page(uri, "http://evil.example", "application/json", body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {answer}");
        let (status, answer) = call(&app, from_page(uri, "null", "application/json", body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {answer}");
        // The ingress's own origin still needs a JSON body.
        let (status, answer) = call(&app, from_page(uri, "http://127.0.0.1:8597", "text/plain", body)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{uri}: {answer}");
        assert_eq!(answer["error"]["code"], "unsupported_media_type", "{answer}");
    }
    assert_eq!(support::ready(&ch, &dead).await, 2, "nothing purged or replayed");
    assert_eq!(support::ready(&ch, &work).await, 0, "nothing replayed");

    // DNS rebinding: a page on attacker.example, now resolving to 127.0.0.1.
    let rebound = Request::get("/dead")
        .header(header::HOST, "attacker.example")
        .body(Body::empty())
        .unwrap();
    let (status, answer) = call(&app, rebound).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "unknown_host", "{answer}");
    assert!(answer.get("events").is_none(), "{answer}");
    let own = Request::get("/dead")
        .header(header::HOST, "localhost:8597")
        .body(Body::empty())
        .unwrap();
    let (status, answer) = call(&app, own).await;
    assert_eq!((status, &answer["count"]), (StatusCode::OK, &json!(2)), "{answer}");

    // The same page may own the ingress's origin, so a purge it sends from there is refused too.
    let rebound = Request::post("/dead/purge")
        .header(header::HOST, "attacker.example:8597")
        .header(header::ORIGIN, "http://attacker.example:8597")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(purge.to_string()))
        .unwrap();
    assert_eq!(call(&app, rebound).await.0, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(support::ready(&ch, &dead).await, 2, "nothing purged");
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn bodies_over_max_body_get_the_json_413() {
    let s = support::settings("dead-limit", false);
    let app = app(&s);
    let big = format!(r#"{{"confirm":true,"pad":"{}"}}"#, "x".repeat(1 << 20));
    for uri in ["/dead/purge", "/dead/replay"] {
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(big.clone()))
            .unwrap();
        let (status, answer) = call(&app, req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}: {answer}");
        assert_eq!(answer["error"]["code"], "body_too_large", "{answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains("65536"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_mistyped_type_filter_is_400_naming_the_types() {
    let conn = support::connect().await;
    let s = support::settings("dead-http-type", false);
    let topology = support::declare(&conn, &s).await;
    let dead = topology.dead_queue("user.registered");
    park(&conn, &dead, 1, "exhausted").await;
    let app = app(&s);
    for req in [
        get("/dead?type=user.registerd"),
        get("/dead/stats?type=user.registerd"),
        post("/dead/replay", &json!({"filter": {"type": "user.registerd"}})),
        post(
            "/dead/purge",
            &json!({"filter": {"type": "user.registerd"}, "confirm": true}),
        ),
    ] {
        let uri = req.uri().to_string();
        let (status, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "unknown_event_type", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("\"user.registerd\"") && message.contains("user.registered, user.login"),
            "{message}"
        );
    }
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(support::ready(&ch, &dead).await, 1, "nothing moved or removed");
    support::cleanup(&conn, &topology).await;
}

#[test]
fn the_documented_curls_use_the_ingress_port() {
    let port = Settings::default().ingress.listen.port().to_string();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/HTTP.md")).unwrap();
    let ports: Vec<&str> = doc
        .split("http://127.0.0.1:")
        .skip(1)
        .map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
        .collect();
    assert!(ports.len() >= 6, "the /dead examples are there: {ports:?}");
    assert!(
        ports.iter().all(|p| *p == port),
        "docs/HTTP.md examples must use port {port}: {ports:?}"
    );
}
