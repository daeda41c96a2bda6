//! Confirmed publishing and topology declaration against a real broker.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use warren::topology::TopologyError;
use warren::{Envelope, PublishError, Publisher, UserLogin, UserRegistered};

use support::registered;

#[tokio::test]
async fn confirmed_publish_lands_in_the_work_queue_with_amqp_properties() {
    let conn = support::connect().await;
    let s = support::settings("props", true);
    let topology = support::declare(&conn, &s).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let env = registered(7);
    publisher.publish(&env).await.expect("confirmed");

    let ch = conn.create_channel().await.unwrap();
    let got = support::drain(&ch, &topology.work_queue("user.registered")).await;
    assert_eq!(got.len(), 1);
    let p = &got[0].properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str().to_owned()),
        Some(env.event_id.to_string())
    );
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("user.registered"));
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("tests"));
    assert_eq!(p.timestamp(), &Some(env.timestamp.timestamp() as u64));
    assert_eq!(got[0].routing_key.as_str(), "user.registered");
    let back = Envelope::<UserRegistered>::from_slice(&got[0].data).unwrap();
    assert_eq!(back, env);
    assert!(
        support::drain(&ch, &topology.work_queue("user.login")).await.is_empty(),
        "routed by type"
    );
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn unroutable_publish_is_an_error() {
    let conn = support::connect().await;
    let mut s = support::settings("noroute", false);
    s.consumer.event_types = vec!["user.registered".into()];
    let topology = support::declare(&conn, &s).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let login = Envelope::new(
        "tests",
        UserLogin {
            user_id: 1,
            username: "a".into(),
            email: "a@b.co".into(),
            login_timestamp: Utc::now(),
            ip_address: "::1".parse().unwrap(),
        },
    );
    match publisher.publish(&login).await {
        Err(PublishError::Unroutable { routing_key, .. }) => assert_eq!(routing_key, "user.login"),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // The channel is still usable afterwards.
    publisher
        .publish(&registered(2))
        .await
        .expect("routable publish after an unroutable one");
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn concurrent_publishers_share_one_channel_and_every_event_lands_once() {
    let conn = support::connect().await;
    let s = support::settings("concurrent", false);
    let topology = support::declare(&conn, &s).await;
    let publisher = Publisher::connect(&s, "tests").await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let p = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..125 {
                let env = registered(t * 1000 + i);
                p.publish(&env).await.expect("confirmed");
                ids.push(env.event_id);
            }
            ids
        }));
    }
    let mut sent = HashSet::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    let batch: Vec<_> = (0..200).map(registered).collect();
    for r in publisher.publish_batch(&batch).await {
        r.expect("batch item confirmed");
    }
    sent.extend(batch.iter().map(|e| e.event_id));
    assert_eq!(sent.len(), 1200);

    let ch = conn.create_channel().await.unwrap();
    let got = support::drain(&ch, &topology.work_queue("user.registered")).await;
    let ids: HashSet<_> = got
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str()
                .parse::<uuid::Uuid>()
                .unwrap()
        })
        .collect();
    assert_eq!(got.len(), 1200, "each event exactly once");
    assert_eq!(ids, sent);
    support::cleanup(&conn, &topology).await;
}

#[tokio::test]
async fn declare_is_idempotent_and_a_conflict_names_queue_and_argument() {
    let conn = support::connect().await;
    let s = support::settings("declare", true);
    let topology = support::declare(&conn, &s).await;
    let _again = support::declare(&conn, &s).await; // twice: fine

    // Same queue as a retry tier would be, but with another delay.
    let mut changed = topology.clone();
    changed.retry_delays[0] = Duration::from_secs(2);
    let mut changed_queue = topology.clone();
    changed_queue.delivery_limit = 3;
    let ch = conn.create_channel().await.unwrap();
    match changed_queue.declare(&ch).await {
        Err(e @ TopologyError::Mismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&topology.work_queue("user.registered")), "{msg}");
            assert!(msg.contains("x-delivery-limit"), "{msg}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    support::cleanup(&conn, &topology).await;
    support::cleanup(&conn, &changed).await;
}

#[tokio::test]
async fn unreachable_broker_is_a_setup_error_without_the_password() {
    let mut s = warren::Settings::default();
    s.amqp.url = "amqp://guest:sup3rsecret@127.0.0.1:1/%2f".into();
    let err = match Publisher::connect(&s, "tests").await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("sup3rsecret"), "password leaked: {err}");
}

#[tokio::test]
async fn the_cli_publishes_data_with_its_keys_in_the_order_given() {
    let conn = support::connect().await;
    let s = support::settings("cli-order", false);
    let topology = support::declare(&conn, &s).await;
    // Not alphabetical, and an extra key last: all kept where they were.
    let data = r#"{"username":"ann","user_id":7,"registration_timestamp":"2025-01-20T10:30:00Z","email":"ann@example.com","zeta":{"b":1,"a":2}}"#;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["publish", "user.registered", "--data", data])
        .current_dir(std::env::temp_dir())
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .output()
        .expect("run warren publish");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let ch = conn.create_channel().await.unwrap();
    let got = support::drain(&ch, &topology.work_queue("user.registered")).await;
    support::cleanup(&conn, &topology).await;
    assert_eq!(got.len(), 1);
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    let body: Body = serde_json::from_slice(&got[0].data).unwrap();
    assert_eq!(body.data.get(), data);
}
