//! The outbox relay against the local PostgreSQL and RabbitMQ: what a row
//! becomes on the wire, invalid rows, commit order, retention, readiness,
//! and the `warren relay` commands. Each test has its own schema, exchange
//! and queues. The fault scenarios are in relay_faults.rs.

#[path = "relay/outbox.rs"]
mod outbox;
mod support;

use std::sync::Arc;
use std::time::Duration;

use outbox::{Recorder, Scratch, envelope};
use tokio_util::sync::CancellationToken;
use warren::relay::{Relay, RetrySelection};
use warren::{Publisher, Settings};

const SEED: &str = include_str!("fixtures/seed_user_registered.json");

/// A scratch table, its own topology, a recorder on the work queue and a
/// running relay (stopped when the returned token is dropped).
struct Setup {
    scratch: Scratch,
    settings: Settings,
    recorder: Recorder,
    relay: Relay,
    stop: CancellationToken,
    /// Deletes the queues and exchange when the test ends, however it ends.
    _topology: support::Declared,
}

impl Setup {
    async fn new(prefix: &str, tweak: impl FnOnce(&mut Settings)) -> Self {
        let scratch = Scratch::new(prefix).await;
        let mut settings = scratch.settings(support::settings(prefix, false));
        tweak(&mut settings);
        let conn = support::connect().await;
        let topology = support::declare(&conn, &settings).await;
        let recorder = Recorder::start(&topology.work_queue("user.registered")).await;
        let relay = Relay::new(&settings.relay).expect("relay settings");
        Self {
            scratch,
            settings,
            recorder,
            relay,
            stop: CancellationToken::new(),
            _topology: topology,
        }
    }

    async fn start(&self) {
        let publisher = Publisher::connect(&self.settings, "relay test")
            .await
            .expect("publisher");
        let (relay, stop) = (self.relay.clone(), self.stop.clone());
        tokio::spawn(async move { relay.run(&publisher, stop).await.expect("relay runs") });
    }

    async fn finish(self) {
        self.stop.cancel();
        self.scratch.drop_all().await;
    }
}

#[tokio::test]
async fn the_seed_envelope_is_published_with_the_event_id_and_timestamp_fixed_at_insert() {
    let s = Setup::new("seed", |_| {}).await;
    let ids = s.scratch.insert(&[SEED.to_owned(), envelope(9, 1)]).await;
    let given = "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a";
    let with_id = SEED.replacen('{', &format!(r#"{{"event_id": "{given}","#), 1);
    s.scratch.insert(&[with_id]).await;
    s.start().await;
    s.recorder.wait_unique(3, Duration::from_secs(20)).await;
    // Marked in the transaction that commits after the confirms.
    outbox_eventually(&s.scratch, "published", 3).await;

    let sql = format!(
        "SELECT event_id, created_at, status, published_at IS NOT NULL FROM {} WHERE id = $1",
        s.scratch.table
    );
    let seed_row = s.scratch.client.query_one(&sql, &[&ids[0]]).await.unwrap();
    let bare_row = s.scratch.client.query_one(&sql, &[&ids[1]]).await.unwrap();
    let seen = s.recorder.all();
    // Different users' events may interleave: find each by its user.
    let by_user = |user: i64| seen.iter().find(|e| e.user_id == user).expect("delivered");
    let (seed, bare) = (by_user(123), by_user(9));
    assert_eq!(
        seed.event_id,
        seed_row.get::<_, uuid::Uuid>(0),
        "the row's event_id is the event's"
    );
    assert_eq!(seed.event_id.get_version_num(), 7, "a UUIDv7, as the ingress makes");
    assert_eq!(
        seed.body["timestamp"], "2025-01-20T10:30:00Z",
        "the envelope's timestamp is kept"
    );
    assert_eq!(seed.body["data"]["username"], "john_doe");
    assert_eq!(bare.event_id, bare_row.get::<_, uuid::Uuid>(0));
    let published: chrono::DateTime<chrono::Utc> = bare.body["timestamp"].as_str().unwrap().parse().unwrap();
    let inserted: chrono::DateTime<chrono::Utc> = bare_row.get(1);
    assert_eq!(
        published,
        chrono::SubsecRound::trunc_subsecs(inserted, 3),
        "no timestamp in the envelope: the insert time (to the millisecond)"
    );
    assert_eq!(
        (seed_row.get::<_, String>(2).as_str(), seed_row.get::<_, bool>(3)),
        ("published", true)
    );
    assert!(
        seen.iter().any(|e| e.event_id.to_string() == given),
        "an event_id in the envelope is kept"
    );
    s.finish().await;
}

#[tokio::test]
async fn invalid_rows_are_marked_failed_with_the_error_and_do_not_block_the_table() {
    let s = Setup::new("invalid", |_| {}).await;
    let bad_email = SEED.replace("john@example.com", "not-an-email");
    let unknown = SEED.replace("user.registered", "user.deleted");
    let mut rows = vec![bad_email, unknown, "[1, 2]".to_owned()];
    rows.extend((0..20).map(|i| envelope(7, i)));
    let ids = s.scratch.insert(&rows).await;
    s.start().await;
    s.recorder.wait_unique(20, Duration::from_secs(20)).await;
    outbox_eventually(&s.scratch, "failed", 3).await;

    let failed = s.relay.failed(10).await.unwrap();
    assert_eq!(failed.iter().map(|f| f.id).collect::<Vec<_>>(), ids[..3].to_vec());
    let errors: Vec<String> = failed.iter().map(|f| f.error.clone().unwrap_or_default()).collect();
    assert!(errors[0].contains("data.email"), "{errors:?}");
    assert!(errors[1].contains("user.deleted"), "{errors:?}");
    assert_eq!(
        failed[0].envelope["data"]["email"], "not-an-email",
        "the row is kept as it was"
    );
    assert_eq!(s.relay.stats().await.unwrap().failed, 3);

    // Fixed in place and retried: published.
    s.scratch
        .client
        .execute(
            &format!(
                "UPDATE {} SET envelope = $1::text::jsonb WHERE id = $2",
                s.scratch.table
            ),
            &[&SEED, &ids[0]],
        )
        .await
        .unwrap();
    assert_eq!(s.relay.retry(&RetrySelection::Ids(vec![ids[0]])).await.unwrap(), 1);
    s.recorder.wait_unique(21, Duration::from_secs(20)).await;
    outbox_eventually(&s.scratch, "failed", 2).await;
    s.finish().await;
}

#[tokio::test]
async fn a_row_of_an_older_transaction_that_commits_later_is_not_skipped_and_keeps_its_place() {
    let s = Setup::new("order", |_| {}).await;
    s.start().await;
    // T1 starts first and stays open; T2 inserts for the same user and commits.
    let mut t1_client = outbox::connect("warren-tests-order-t1").await;
    let t1 = t1_client.transaction().await.unwrap();
    outbox::insert_with(&t1, &s.scratch.table, &[envelope(5, 1)]).await;
    s.scratch.insert(&[envelope(5, 2), envelope(6, 1)]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.recorder.len(),
        0,
        "rows of transactions younger than a running one wait for it (the BIGSERIAL-cursor pitfall)"
    );
    t1.commit().await.unwrap();
    s.recorder.wait_unique(3, Duration::from_secs(20)).await;
    let user5: Vec<u32> = s
        .recorder
        .all()
        .iter()
        .filter(|e| e.user_id == 5)
        .map(|e| e.seq)
        .collect();
    assert_eq!(user5, [1, 2], "transaction-id order, and nothing skipped");
    s.finish().await;
}

#[tokio::test]
async fn published_rows_are_deleted_after_the_retention_and_at_once_with_retention_zero() {
    let s = Setup::new("retain", |st| st.relay.retention = Duration::from_secs(1)).await;
    s.scratch
        .insert(&(0..30).map(|i| envelope(1, i)).collect::<Vec<_>>())
        .await;
    s.start().await;
    s.recorder.wait_unique(30, Duration::from_secs(20)).await;
    outbox_eventually(&s.scratch, "published", 0).await;
    assert_eq!(s.scratch.total().await, 0, "deleted, not marked otherwise");
    s.finish().await;

    let s = Setup::new("retain0", |st| st.relay.retention = Duration::ZERO).await;
    s.start().await;
    s.scratch
        .insert(&(0..30).map(|i| envelope(1, i)).collect::<Vec<_>>())
        .await;
    s.recorder.wait_unique(30, Duration::from_secs(20)).await;
    outbox_eventually(&s.scratch, "pending", 0).await;
    assert_eq!(
        s.scratch.count("published").await,
        0,
        "retention 0 deletes at the confirm"
    );
    s.finish().await;
}

#[tokio::test]
async fn metrics_report_pending_rows_their_age_and_the_published_count() {
    let handle = warren::metrics::install().expect("recorder");
    let s = Setup::new("metrics", |_| {}).await;
    s.scratch
        .insert(&(0..10).map(|i| envelope(3, i)).collect::<Vec<_>>())
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stats = s.relay.stats().await.unwrap();
    assert_eq!(stats.pending, 10);
    assert!(stats.oldest_pending_age_seconds >= 1.0, "{stats:?}");
    s.start().await;
    s.recorder.wait_unique(10, Duration::from_secs(20)).await;
    let label = format!("table=\"{}\"", s.scratch.table);
    let published = format!("warren_relay_published_total{{{label}}} 10");
    let mut text = String::new();
    for _ in 0..50 {
        text = handle.render();
        if text.contains(&published) && text.contains(&format!("warren_relay_pending_rows{{{label}}} 0")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains(&published), "{text}");
    assert!(
        text.contains(&format!("warren_relay_pending_rows{{{label}}} 0")),
        "{text}"
    );
    assert!(text.contains("warren_relay_oldest_pending_age_seconds{"), "{text}");
    s.finish().await;
}

#[tokio::test]
async fn readyz_includes_the_relays_database() {
    use tower::ServiceExt;
    let s = Setup::new("ready", |_| {}).await;
    let publisher = Publisher::connect(&s.settings, "relay test").await.unwrap();
    let readiness = warren::readiness::Readiness::new();
    s.relay.report_to(&readiness);
    let state = warren::http::AppState::new(Arc::new(publisher), &s.settings.ingress).with_readiness(readiness);
    let readyz = || async {
        let req = axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = warren::http::router(state.clone()).oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 10_000).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "no database contact yet: {body}");
    assert!(body.contains("database"), "{body}");
    s.start().await;
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = readyz().await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, 200, "{last:?}");

    // A relay whose database is unreachable is not ready.
    let mut down = s.settings.relay.clone();
    down.database_url = Some("postgres://postgres@127.0.0.1:1/test?connect_timeout=1".into());
    let unreachable = Relay::new(&down).unwrap();
    let publisher = Publisher::connect(&s.settings, "relay test").await.unwrap();
    let stop = CancellationToken::new();
    let running = {
        let (relay, stop) = (unreachable.clone(), stop.clone());
        tokio::spawn(async move { relay.run(&publisher, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!unreachable.health().database_up());
    stop.cancel();
    running
        .await
        .unwrap()
        .expect("a database that is down is waited for, not an error");
    s.finish().await;
}

#[tokio::test]
async fn a_missing_table_or_database_url_is_a_clear_error() {
    let mut settings = Settings::default();
    let err = Relay::new(&settings.relay).err().unwrap().to_string();
    assert!(err.contains("DATABASE_URL"), "{err}");
    settings.relay.database_url = Some(outbox::database_url());
    settings.relay.table = "no_such_schema_x.warren_outbox".into();
    let relay = Relay::new(&settings.relay).unwrap();
    settings.topology.exchange = support::unique("relay-missing-x");
    let _gone = support::Cleanup::broker().exchange(&settings.topology.exchange); // the publisher declares it
    settings.amqp.url = support::amqp_url();
    let publisher = Publisher::connect(&settings, "relay test").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), relay.run(&publisher, CancellationToken::new()))
        .await
        .expect("fails, not waits")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("warren relay schema"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cli_prints_the_schema_and_lists_failed_rows() {
    let out = warren_cli(&["relay", "schema"], &[]);
    assert_eq!(
        out,
        include_str!("../definitions/warren_outbox.sql"),
        "definitions/warren_outbox.sql is what `warren relay schema` prints"
    );
    let s = Setup::new("cli", |_| {}).await;
    let bad = SEED.replace("john@example.com", "john-at-example");
    let ids = s.scratch.insert(&[bad]).await;
    s.start().await;
    outbox_eventually(&s.scratch, "failed", 1).await;
    let url = s.settings.relay.database_url.clone().unwrap();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("WARREN_RELAY__TABLE", s.scratch.table.as_str()),
    ];
    let listed = warren_cli(&["relay", "failed"], &env);
    let row: serde_json::Value = serde_json::from_str(listed.lines().next().expect("one line")).unwrap();
    assert_eq!(row["id"], ids[0]);
    assert!(row["error"].as_str().unwrap().contains("data.email"), "{listed}");
    assert_eq!(warren_cli(&["relay", "retry", "--all"], &env).trim(), "1");
    let stats: serde_json::Value = serde_json::from_str(&warren_cli(&["relay", "stats"], &env)).unwrap();
    assert!(
        stats["pending"].as_i64().unwrap() + stats["failed"].as_i64().unwrap() == 1,
        "{stats}"
    );
    s.finish().await;
}

/// Runs the `warren` binary; returns its stdout, panicking on failure.
fn warren_cli(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("WARREN_RELAY__DATABASE_URL")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("warren runs");
    assert!(
        out.status.success(),
        "warren {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until the outbox has `n` rows of `status`.
async fn outbox_eventually(scratch: &Scratch, status: &str, n: i64) {
    for _ in 0..200 {
        if scratch.count(status).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{}: expected {n} rows {status}, have {}",
        scratch.table,
        scratch.count(status).await
    );
}

#[tokio::test]
async fn every_relay_command_says_how_to_create_a_missing_table() {
    // The database is there: what is missing is only the table.
    drop(outbox::connect("warren-tests-missing").await);
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let tables = [
        format!("t_missing_{suffix}"),
        format!("t_no_schema_{suffix}.warren_outbox"),
    ];
    let url = outbox::database_url();
    for table in &tables {
        for args in [
            &["relay", "stats"][..],
            &["relay", "failed"],
            &["relay", "retry", "--all"],
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(args)
                .env("DATABASE_URL", &url)
                .env("WARREN_RELAY__TABLE", table)
                .env_remove("WARREN_RELAY__DATABASE_URL")
                .current_dir(std::env::temp_dir())
                .output()
                .expect("warren runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "warren {args:?} with {table}: {err}");
            assert!(
                err.contains(&format!("the outbox table {table} does not exist"))
                    && err.contains("warren relay schema --apply"),
                "warren {args:?} with {table}: {err}"
            );
        }
    }
}
