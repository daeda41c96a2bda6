//! Helpers of the relay tests: a scratch schema with its own outbox table,
//! envelopes numbered per user, and a recorder of what reaches the queue.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;
use warren::Settings;
use warren::relay::Table;

/// `DATABASE_URL`, or the local PostgreSQL's `test` database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A plain connection; panics with a clear message when there is no database.
pub async fn connect(application_name: &str) -> Client {
    let url = format!(
        "{} application_name={application_name}",
        url_as_keywords(&database_url())
    );
    match tokio_postgres::connect(&url, NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => panic!(
            "the relay tests need PostgreSQL at {} (set DATABASE_URL, or start it: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): {e}",
            warren::uri::redact_database_url(&database_url())
        ),
    }
}

/// `postgres://user@host:port/db` as libpq keywords (so more can be appended).
fn url_as_keywords(url: &str) -> String {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return url.to_owned();
    };
    let (authority, db) = rest.split_once('/').unwrap_or((rest, "test"));
    let db = db.split('?').next().unwrap_or("test");
    let (user, hostport) = authority.rsplit_once('@').unwrap_or(("postgres", authority));
    let (user, password) = user.split_once(':').map_or((user, None), |(u, p)| (u, Some(p)));
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let mut out = format!("host={host} port={port} user={user} dbname={db} sslmode=disable");
    if let Some(p) = password {
        out.push_str(&format!(" password={p}"));
    }
    out
}

/// A schema of its own holding an outbox table; dropped by [`Scratch::drop_all`].
pub struct Scratch {
    pub schema: String,
    /// `schema.warren_outbox`.
    pub table: String,
    pub client: Client,
}

impl Scratch {
    pub async fn new(prefix: &str) -> Self {
        let schema = format!("t_{prefix}_{}", &Uuid::now_v7().simple().to_string()[20..]);
        let table = format!("{schema}.warren_outbox");
        let client = connect(&format!("warren-tests-{prefix}")).await;
        client
            .batch_execute(&Table::parse(&table).expect("a valid name").ddl())
            .await
            .expect("the outbox DDL runs");
        Self { schema, table, client }
    }

    /// `base` pointed at this table (and an application_name to find its
    /// connections by).
    pub fn settings(&self, mut base: Settings) -> Settings {
        base.relay.database_url = Some(format!(
            "{} application_name=relay-{}",
            url_as_keywords(&database_url()),
            self.schema
        ));
        base.relay.table = self.table.clone();
        base.relay.poll_interval = Duration::from_millis(200);
        base
    }

    /// Inserts `envelopes` in one transaction; returns the rows' ids.
    pub async fn insert(&self, envelopes: &[String]) -> Vec<i64> {
        insert_with(&self.client, &self.table, envelopes).await
    }

    pub async fn count(&self, status: &str) -> i64 {
        self.client
            .query_one(
                &format!("SELECT count(*) FROM {} WHERE status = $1", self.table),
                &[&status],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn total(&self) -> i64 {
        self.client
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn drop_all(&self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await;
    }
}

/// Inserts `envelopes` into `table` in one statement (one transaction).
pub async fn insert_with(client: &impl tokio_postgres::GenericClient, table: &str, envelopes: &[String]) -> Vec<i64> {
    let sql = format!(
        "INSERT INTO {table} (envelope) SELECT e::jsonb FROM unnest($1::text[]) WITH ORDINALITY AS u(e, n) ORDER BY n RETURNING id"
    );
    client
        .query(&sql, &[&envelopes])
        .await
        .expect("insert into the outbox")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A `user.registered` envelope without event_id or timestamp (the seed's
/// shape); the username carries the user's sequence number.
pub fn envelope(user_id: i64, seq: u32) -> String {
    serde_json::json!({
        "event_type": "user.registered",
        "source": "django-backend",
        "user_id": user_id,
        "data": {
            "user_id": user_id,
            "username": format!("u{user_id}-{seq:06}"),
            "email": format!("u{user_id}@example.com"),
            "registration_timestamp": "2025-01-20T10:30:00Z"
        }
    })
    .to_string()
}

/// One delivery as the queue handed it over.
#[derive(Debug, Clone)]
pub struct Seen {
    pub event_id: Uuid,
    pub user_id: i64,
    pub seq: u32,
    pub at: Instant,
    pub body: serde_json::Value,
}

/// Everything consumed from one queue, in delivery order (one consumer,
/// auto-ack: the queue's order is the order recorded).
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    /// Consumes `queue` on its own connection until the test ends.
    pub async fn start(queue: &str) -> Self {
        let rec = Self::default();
        let conn = crate::support::connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.basic_qos(1000, BasicQosOptions::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "relay-test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let list = rec.0.clone();
        tokio::spawn(async move {
            let _keep = (conn, ch);
            while let Some(Ok(d)) = consumer.next().await {
                let body: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON body");
                let username = body["data"]["username"].as_str().unwrap_or("u0-0");
                let seq = username.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                list.lock().unwrap().push(Seen {
                    event_id: body["event_id"].as_str().unwrap().parse().unwrap(),
                    user_id: body["user_id"].as_i64().unwrap(),
                    seq,
                    at: Instant::now(),
                    body,
                });
            }
        });
        rec
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// Distinct event_ids seen.
    pub fn unique(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.event_id)
            .collect::<HashSet<_>>()
            .len()
    }

    /// Waits until `n` distinct events arrived, or panics after `within`.
    pub async fn wait_unique(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.unique() < n {
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?}: {} of {n} events arrived",
                self.unique()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The counts of a fault scenario, from the rows inserted and what arrived.
#[derive(Debug)]
pub struct Tally {
    pub inserted: usize,
    pub confirmed: usize,
    pub unique: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub out_of_order: usize,
}

impl Tally {
    /// `confirmed`: rows the relay marked published.
    pub fn of(inserted: usize, confirmed: usize, seen: &[Seen]) -> Self {
        let mut first = HashSet::new();
        let mut last_seq: HashMap<i64, u32> = HashMap::new();
        let mut out_of_order = 0;
        for s in seen {
            if !first.insert(s.event_id) {
                continue;
            }
            // A user's first-time deliveries must come in insert order.
            if let Some(prev) = last_seq.insert(s.user_id, s.seq)
                && s.seq < prev
            {
                out_of_order += 1;
            }
        }
        Self {
            inserted,
            confirmed,
            unique: first.len(),
            duplicates: seen.len() - first.len(),
            lost: inserted.saturating_sub(first.len()),
            out_of_order,
        }
    }

    /// Prints the docs/RELIABILITY.md row and asserts nothing was lost or reordered.
    pub fn check(&self, scenario: &str) {
        println!(
            "RELAY-RELIABILITY|{scenario}|{}|{}|{}|{}|{}|{}",
            self.inserted, self.confirmed, self.unique, self.duplicates, self.lost, self.out_of_order
        );
        assert_eq!(self.lost, 0, "{scenario}: rows never delivered: {self:?}");
        assert_eq!(
            self.out_of_order, 0,
            "{scenario}: a user's events out of order: {self:?}"
        );
        assert_eq!(
            self.confirmed, self.inserted,
            "{scenario}: rows not marked published: {self:?}"
        );
        assert_eq!(self.unique, self.inserted, "{scenario}: {self:?}");
    }
}
