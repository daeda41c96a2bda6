//! `POST /events`: every status, with a recording fake sink.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use warren::PublishError;
use warren::config::IngressSettings;

use super::common::*;

#[tokio::test]
async fn seed_payloads_are_accepted_as_they_are() {
    for seed in [SEED_REGISTERED, SEED_LOGIN] {
        let fake = Arc::new(Fake::default());
        let a = call(app(&fake), post("/events", seed)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        assert_eq!(a.body["status"], "accepted");
        let id: uuid::Uuid = a.body["event_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id.get_version_num(), 7, "a missing event_id is made (v7)");
        let published = fake.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].event_id, id);
        assert_eq!(published[0].source, "django-backend");
        let seed: Value = serde_json::from_str(seed).unwrap();
        assert_eq!(
            published[0]
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            seed["timestamp"].as_str().unwrap(),
            "the given timestamp is kept"
        );
        let data: Value = serde_json::from_str(published[0].data.get()).unwrap();
        assert_eq!(data, seed["data"]);
    }
}

#[tokio::test]
async fn a_given_event_id_is_kept_and_charset_is_fine() {
    let fake = Arc::new(Fake::default());
    let id = "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a";
    let body = SEED_LOGIN.replacen('{', &format!(r#"{{"event_id":"{id}","#), 1);
    let mut req = post("/events", body);
    req.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
    let a = call(app(&fake), req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.body["event_id"], id);
    assert_eq!(fake.published()[0].event_id.to_string(), id);
}

#[tokio::test]
async fn malformed_json_is_400_saying_where() {
    let fake = Arc::new(Fake::default());
    let body = SEED_REGISTERED.replace(r#""source": "django-backend","#, r#""source": "django-backend""#);
    let a = call(app(&fake), post("/events", body)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "malformed_json", &fake);
    assert_eq!(a.body["error"]["line"], 5, "{}", a.body);
    assert!(a.body["error"]["column"].as_u64().unwrap() > 0);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 5 column"), "{msg}");

    let trailing = format!("{SEED_REGISTERED} {{");
    let a = call(app(&fake), post("/events", trailing)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "malformed_json", &fake);
    let a = call(app(&fake), post("/events", "")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "malformed_json", &fake);
    // A mistyped field before the syntax error: still malformed, not invalid.
    let a = call(app(&fake), post("/events", r#"{"user_id": "x", "source": oops}"#)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "malformed_json", &fake);
}

#[tokio::test]
async fn missing_or_wrong_content_type_is_415() {
    let fake = Arc::new(Fake::default());
    let no_type = Request::post("/events").body(Body::from(SEED_REGISTERED)).unwrap();
    let a = call(app(&fake), no_type).await;
    assert_error(&a, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", &fake);
    let text = Request::post("/events/batch")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(format!("[{SEED_REGISTERED}]")))
        .unwrap();
    let a = call(app(&fake), text).await;
    assert_error(&a, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", &fake);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("text/plain"));
}

#[tokio::test]
async fn body_over_max_body_is_413() {
    let fake = Arc::new(Fake::default());
    let small = |s: &mut IngressSettings| s.max_body = 128;
    let a = call(app_with(&fake, small), post("/events", SEED_REGISTERED)).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &fake);
    assert_eq!(a.body["error"]["limit"], 128);
    // A batch may be max_batch events of max_body bytes each.
    let one_small = |s: &mut IngressSettings| {
        s.max_body = 128;
        s.max_batch = 1;
    };
    let a = call(
        app_with(&fake, one_small),
        post("/events/batch", format!("[{SEED_REGISTERED}]")),
    )
    .await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &fake);
    assert_eq!(a.body["error"]["limit"], 128);
}

#[tokio::test]
async fn bearer_token_is_required_when_set() {
    let fake = Arc::new(Fake::default());
    let with_token = |s: &mut IngressSettings| s.token = Some("s3cret-token".into());
    let a = call(app_with(&fake, with_token), post("/events", SEED_REGISTERED)).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized", &fake);
    assert!(
        a.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
    );
    for wrong in ["Bearer s3cret-tokeN", "Bearer s3cret", "Basic s3cret-token"] {
        let mut req = post("/events", SEED_REGISTERED);
        req.headers_mut().insert(header::AUTHORIZATION, wrong.parse().unwrap());
        let a = call(app_with(&fake, with_token), req).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized", &fake);
        assert!(a.headers.contains_key(header::WWW_AUTHENTICATE), "{wrong}");
    }
    let mut req = post("/events/batch", format!("[{SEED_REGISTERED}]"));
    req.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer s3cret-token".parse().unwrap());
    let a = call(app_with(&fake, with_token), req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(fake.published().len(), 1);
    // Probes need no token.
    let a = call(
        app_with(&fake, with_token),
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_event_type_is_422_listing_the_known_ones() {
    let fake = Arc::new(Fake::default());
    let body = SEED_LOGIN.replace("\"user.login\"", "\"user.deleted\"");
    let a = call(app(&fake), post("/events", body)).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "unknown_event_type", &fake);
    assert_eq!(a.body["error"]["field"], "event_type");
    assert_eq!(a.body["error"]["known_types"], json!(["user.registered", "user.login"]));
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("user.deleted") && msg.contains("user.registered, user.login"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_invalid_field_is_422_naming_it() {
    let fake = Arc::new(Fake::default());
    for (body, field, quoted) in [
        (
            SEED_REGISTERED.replace("john@example.com", "john"),
            "data.email",
            "\"john\"",
        ),
        (
            SEED_LOGIN.replace("192.168.1.100", "300.1.1.1"),
            "data.ip_address",
            "\"300.1.1.1\"",
        ),
        (
            SEED_REGISTERED.replace("\"source\": \"django-backend\",", ""),
            "source",
            "",
        ),
    ] {
        let a = call(app(&fake), post("/events", body)).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &fake);
        assert_eq!(a.body["error"]["field"], field, "{}", a.body);
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(quoted), "the message quotes the value: {message}");
    }
    let a = call(app(&fake), post("/events", "[1, 2]")).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &fake);
}

#[tokio::test]
async fn sink_unavailable_is_503_with_retry_after() {
    let fake = Arc::new(Fake {
        down: true,
        ..Fake::default()
    });
    let a = call(app(&fake), post("/events", SEED_REGISTERED)).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", &fake);
    assert_eq!(a.headers[header::RETRY_AFTER], "5");
    let a = call(app(&fake), post("/events/batch", format!("[{SEED_LOGIN}]"))).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", &fake);
    let a = call(app(&fake), Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    let up = Arc::new(Fake::default());
    let a = call(app(&up), Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.body["status"].as_str()), (StatusCode::OK, Some("ready")));
}

#[tokio::test]
async fn publish_failures_map_to_statuses_without_leaking_internals() {
    let cases: [(FailWith, StatusCode, &str, bool); 4] = [
        (
            |e| {
                Some(PublishError::Unroutable {
                    exchange: "user.events".into(),
                    routing_key: e.event_type.clone(),
                })
            },
            StatusCode::INTERNAL_SERVER_ERROR,
            "unroutable",
            false,
        ),
        (
            |e| {
                Some(PublishError::Nacked {
                    routing_key: e.event_type.clone(),
                })
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "nacked",
            true,
        ),
        (
            |_| Some(PublishError::Timeout(Duration::from_secs(10))),
            StatusCode::SERVICE_UNAVAILABLE,
            "confirm_timeout",
            true,
        ),
        (
            |_| {
                Some(PublishError::ConnectionLost(
                    "amqp://admin:hunter2@rabbit.internal:5672 reset".into(),
                ))
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            true,
        ),
    ];
    for (fail, status, code, retry_after) in cases {
        let fake = Arc::new(Fake::failing(fail));
        let a = call(app(&fake), post("/events", SEED_LOGIN)).await;
        assert_error(&a, status, code, &fake);
        assert_eq!(a.headers.contains_key(header::RETRY_AFTER), retry_after, "{code}");
        assert!(
            a.body["error"]["event_id"].is_string(),
            "re-send with this id: {}",
            a.body
        );
        let text = a.body.to_string();
        for secret in ["hunter2", "rabbit.internal", "amqp://", "user.events"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}

#[tokio::test]
async fn a_stuck_sink_gets_503_after_request_timeout() {
    let fake = Arc::new(Fake {
        hang: true,
        ..Fake::default()
    });
    let short = |s: &mut IngressSettings| s.request_timeout = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let a = call(app_with(&fake, short), post("/events", SEED_REGISTERED)).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "timeout", &fake);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let fake = Arc::new(Fake::default());
    let a = call(app(&fake), Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found", &fake);
    let a = call(app(&fake), Request::get("/events").body(Body::empty()).unwrap()).await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &fake);
    let a = call(app(&fake), Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.body.clone()), (StatusCode::OK, json!({"status": "ok"})));
}

#[tokio::test]
async fn a_request_warren_forwarded_is_508_and_not_published() {
    let fake = Arc::new(Fake::default());
    let with_token = |s: &mut IngressSettings| s.token = Some("s3cret-token".into());
    for (path, body) in [
        ("/events", SEED_LOGIN.to_owned()),
        ("/events/batch", format!("[{SEED_LOGIN}]")),
    ] {
        let mut req = post(path, body);
        req.headers_mut().insert(
            warren::event::FORWARDED_HEADER,
            "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a".parse().unwrap(),
        );
        let a = call(app_with(&fake, with_token), req).await;
        assert_error(&a, StatusCode::LOOP_DETECTED, "forwarding_loop", &fake);
        let msg = a.body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a") && msg.contains("webhook.url"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn a_rebound_host_is_421_and_not_published() {
    let fake = Arc::new(Fake::default());
    for (path, body) in [
        ("/events", SEED_LOGIN.to_owned()),
        ("/events/batch", format!("[{SEED_LOGIN}]")),
    ] {
        let mut req = post(path, body.clone());
        req.headers_mut()
            .insert(header::HOST, "attacker.example:8597".parse().unwrap());
        let a = call(app(&fake), req).await;
        assert_error(&a, StatusCode::MISDIRECTED_REQUEST, "unknown_host", &fake);
        assert!(
            a.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("ingress.allowed_hosts"),
            "{}",
            a.body
        );
        // A configured name is let in; the loopback names are not then.
        let other = Arc::new(Fake::default());
        let named = |s: &mut IngressSettings| s.allowed_hosts = vec!["attacker.example".into()];
        let mut req = post(path, body.clone());
        req.headers_mut()
            .insert(header::HOST, "localhost:8597".parse().unwrap());
        assert_eq!(
            call(app_with(&other, named), req).await.status,
            StatusCode::MISDIRECTED_REQUEST
        );
        let mut req = post(path, body);
        req.headers_mut()
            .insert(header::HOST, "attacker.example:8597".parse().unwrap());
        assert!(call(app_with(&other, named), req).await.status.is_success());
    }
    // Probes answer whatever the name: an orchestrator's probe names the pod's address.
    let probe = Request::get("/healthz")
        .header(header::HOST, "10.1.2.3:8597")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(app(&fake), probe).await.status, StatusCode::OK);
}
