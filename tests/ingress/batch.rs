//! `POST /events/batch`: per-item answers and whole-batch errors.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use serde_json::json;
use warren::PublishError;
use warren::config::IngressSettings;

use super::common::*;

#[tokio::test]
async fn batch_publishes_the_valid_items_and_answers_each() {
    let fake = Arc::new(Fake::default());
    let bad_email = SEED_REGISTERED.replace("john@example.com", "nope");
    let unknown = SEED_LOGIN.replace("\"user.login\"", "\"user.deleted\"");
    let body = format!("[{SEED_REGISTERED}, {bad_email}, {SEED_LOGIN}, {unknown}]");
    let a = call(app(&fake), post("/events/batch", body)).await;
    assert_eq!(a.status, StatusCode::MULTI_STATUS, "{}", a.body);
    assert_eq!(
        (&a.body["accepted"], &a.body["rejected"], &a.body["failed"]),
        (&json!(2), &json!(2), &json!(0))
    );
    let results = a.body["results"].as_array().unwrap();
    let statuses: Vec<_> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "rejected", "accepted", "rejected"]);
    assert_eq!(results[1]["index"], 1);
    assert_eq!(results[1]["error"]["field"], "data.email");
    assert_eq!(results[3]["error"]["code"], "unknown_event_type");
    let published: Vec<_> = fake.published().iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(published.len(), 2);
    for i in [0, 2] {
        assert!(published.contains(&results[i]["event_id"].as_str().unwrap().to_owned()));
    }

    let fake = Arc::new(Fake::default());
    let a = call(
        app(&fake),
        post("/events/batch", format!("[{SEED_REGISTERED},{SEED_LOGIN}]")),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(fake.published().len(), 2);
}

#[tokio::test]
async fn batch_errors_publish_nothing() {
    let fake = Arc::new(Fake::default());
    let bad = SEED_REGISTERED.replace("john@example.com", "nope");
    let a = call(app(&fake), post("/events/batch", format!("[{bad}]"))).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert_eq!(a.body["rejected"], 1);
    assert!(fake.published().is_empty());

    let two = |s: &mut IngressSettings| s.max_batch = 2;
    let three = format!("[{SEED_REGISTERED},{SEED_LOGIN},{SEED_LOGIN}]");
    let a = call(app_with(&fake, two), post("/events/batch", three)).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", &fake);
    assert_eq!(a.body["error"]["limit"], 2);

    let a = call(app(&fake), post("/events/batch", SEED_REGISTERED)).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "not_an_array", &fake);
    let a = call(app(&fake), post("/events/batch", "[{\"a\": 1},")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "malformed_json", &fake);
}

#[tokio::test]
async fn batch_with_a_broker_failure_is_503_naming_the_failed_item() {
    let fake = Arc::new(Fake::failing(|e| {
        (e.event_type == "user.login").then(|| PublishError::Timeout(Duration::from_secs(1)))
    }));
    let body = format!("[{SEED_REGISTERED},{SEED_LOGIN}]");
    let a = call(app(&fake), post("/events/batch", body)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(a.body["results"][0]["status"], "accepted");
    assert_eq!(a.body["results"][1]["status"], "failed");
    assert_eq!(a.body["results"][1]["error"]["code"], "confirm_timeout");
    assert!(a.body["results"][1]["event_id"].is_string());
    assert_eq!(fake.published().len(), 1, "only the confirmed one");
}

/// `[item, item, …]` with `n` items.
fn batch_of(n: usize, item: &str) -> String {
    format!("[{}]", vec![item; n].join(","))
}

#[tokio::test]
async fn a_full_batch_of_seed_events_fits_the_default_limits() {
    let fake = Arc::new(Fake::default());
    let defaults = warren::Settings::default().ingress;
    let full = batch_of(defaults.max_batch, SEED_REGISTERED);
    assert!(full.len() > defaults.max_body, "the batch is over one event's limit");
    let a = call(app(&fake), post("/events/batch", full)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.body["accepted"], 500);
    assert_eq!(fake.published().len(), 500);

    let fake = Arc::new(Fake::default());
    let over = batch_of(defaults.max_batch + 1, SEED_REGISTERED);
    let a = call(app(&fake), post("/events/batch", over)).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", &fake);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("501 events") && message.contains("500"), "{message}");
}

#[tokio::test]
async fn each_item_of_a_batch_is_held_to_max_body() {
    let fake = Arc::new(Fake::default());
    let big = SEED_LOGIN.replace("\"john_doe\"", &format!("\"{}\"", "j".repeat(600)));
    let small = |s: &mut IngressSettings| s.max_body = 512;
    let a = call(
        app_with(&fake, small),
        post("/events/batch", format!("[{SEED_LOGIN},{big}]")),
    )
    .await;
    assert_eq!(a.status, StatusCode::MULTI_STATUS, "{}", a.body);
    assert_eq!(a.body["results"][1]["error"]["code"], "body_too_large", "{}", a.body);
    assert_eq!(a.body["results"][1]["error"]["limit"], 512, "{}", a.body);
    assert_eq!(fake.published().len(), 1);
}
