//! `warren-bench --relay`: the outbox relay's throughput and lag, next to
//! the library publisher's rate in the same invocation.
//!
//! First a publisher run (as `warren-bench` does), then a relay run: rows
//! are inserted into a scratch outbox table (schema `warren_bench_<id>`,
//! dropped afterwards) from 4 connections in transactions of 100 rows, as
//! fast as the database takes them, while an in-process [`Relay`] publishes
//! them and a [`Consumer`] handles them. Lag is commit → handler, per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::arena::{Arena, within};
use super::drive::consumer_ready;
use super::{BenchError, Kind, Plan, run_one, stats};
use warren::config::Settings;
use warren::consumer::{Consumer, Context, HandlerError, Limits};
use warren::event::{Envelope, UserRegistered};
use warren::publisher::Publisher;
use warren::relay::{Database, Relay};

/// Inserting connections, and rows per insert transaction.
const INSERTERS: usize = 4;
const PER_TX: usize = 100;

/// Runs the publisher run and the relay run; prints both.
///
/// # Errors
///
/// [`BenchError`]: no `relay.database_url`, the database or the broker unreachable.
pub async fn run(settings: &Settings, plan: &Plan, shutdown: &CancellationToken) -> Result<(), BenchError> {
    let events = plan.events.unwrap_or(50_000) as usize;
    println!(
        "warren-bench --relay: {events} events per run, batch {}",
        settings.relay.batch_size
    );
    let direct = run_one(settings, plan, Kind::Warren, 0, shutdown).await?;
    println!(
        "library publisher: {:.0} events/s published, {:.0} events/s end to end (publish → handler), p50 {:.1} ms, p99 {:.1} ms",
        direct.publish_rate, direct.end_to_end_rate, direct.latency_p50_ms, direct.latency_p99_ms
    );
    let base = settings.clone();
    let arena = Arena::new(&base, "relay", false);
    let result = tokio::select! {
        r = relay_run(&arena, plan, events) => r,
        () = shutdown.cancelled() => Err(BenchError::Interrupted),
    };
    arena.cleanup().await;
    let relayed = result?;
    println!(
        "outbox relay:      {:.0} rows/s inserted, {:.0} events/s relayed and handled (first commit → last handled), \
         lag commit → handler p50 {:.1} ms, p99 {:.1} ms",
        relayed.insert_rate, relayed.rate, relayed.p50_ms, relayed.p99_ms
    );
    println!(
        "relay ÷ library publisher (end to end): {:.2}×",
        relayed.rate / direct.end_to_end_rate.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// What the relay run measured.
struct Relayed {
    insert_rate: f64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn relay_run(arena: &Arena, plan: &Plan, events: usize) -> Result<Relayed, BenchError> {
    let db_err = |e: warren::relay::RelayError| BenchError::Broker(format!("relay: {e}"));
    let mut settings = arena.settings.clone();
    let schema = format!("warren_bench_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    settings.relay.table = format!("{schema}.warren_outbox");
    let relay = Relay::new(&settings.relay).map_err(db_err)?;
    relay.apply_schema().await.map_err(db_err)?;
    arena.declare().await?;
    let clock = Clock::new(events);
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let handled = clock.clone();
    let handler = move |e: Envelope<UserRegistered>, _ctx: Context| {
        handled.handled(&e.data.username);
        std::future::ready(Ok::<(), HandlerError>(()))
    };
    let limits = Limits {
        prefetch: plan.prefetch,
        concurrency: plan.concurrency,
    };
    let consumer = Consumer::new(settings.clone()).on_with(handler, limits);
    let mut consumer = tokio::spawn(consumer.run(stop.clone()));
    consumer_ready(arena, &mut consumer).await?;
    let publisher = within("connecting the publisher", async {
        Ok(Publisher::connect(&settings, "bench relay").await?)
    })
    .await?;
    let relaying = {
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move { relay.run(&publisher, stop).await })
    };
    let db = Database::new(
        settings.relay.database_url.as_deref().unwrap_or_default(),
        "warren-bench",
    )
    .map_err(db_err)?;
    let started = Instant::now();
    let inserted = insert_all(&db, &settings.relay.table, events, &clock).await;
    let insert_elapsed = started.elapsed();
    let outcome = match inserted {
        Ok(()) => clock.wait_all(Duration::from_secs(60)).await,
        Err(e) => Err(e),
    };
    stop.cancel();
    let _ = relaying.await;
    // The scratch schema goes whatever happened.
    if let Ok((client, connection)) = db.connect().await {
        tokio::spawn(connection);
        let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await;
    }
    outcome?;
    Ok(clock.figures(events, insert_elapsed))
}

/// Inserts `events` rows from [`INSERTERS`] connections, recording each
/// row's commit time.
async fn insert_all(db: &Database, table: &str, events: usize, clock: &Clock) -> Result<(), BenchError> {
    let mut tasks = Vec::new();
    for k in 0..INSERTERS {
        let (client, connection) = db
            .connect()
            .await
            .map_err(|e| BenchError::Broker(format!("database: {e}")))?;
        tokio::spawn(connection);
        let (table, clock) = (table.to_owned(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let sql = format!("INSERT INTO {table} (envelope) SELECT e::jsonb FROM unnest($1::text[]) AS e");
            let mine: Vec<usize> = (k..events).step_by(INSERTERS).collect();
            for chunk in mine.chunks(PER_TX) {
                let rows: Vec<String> = chunk.iter().map(|&seq| envelope(seq)).collect();
                client
                    .execute(&sql, &[&rows])
                    .await
                    .map_err(|e| BenchError::Broker(format!("database insert: {e}")))?;
                clock.committed(chunk);
            }
            Ok::<(), BenchError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| BenchError::Broker(e.to_string()))??;
    }
    Ok(())
}

/// A `user.registered` envelope for row `seq` (500 users); the username names the row.
fn envelope(seq: usize) -> String {
    let user = seq % 500;
    format!(
        r#"{{"event_type":"user.registered","source":"bench","user_id":{user},"data":{{"user_id":{user},"username":"row-{seq}","email":"u{user}@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}}}}"#
    )
}

/// Commit and handling times per row (nanoseconds since the run began).
#[derive(Clone)]
struct Clock {
    start: Instant,
    committed: Arc<Vec<AtomicU64>>,
    handled: Arc<Vec<AtomicU64>>,
    count: Arc<AtomicU64>,
}

impl Clock {
    fn new(events: usize) -> Self {
        let zeros = || Arc::new((0..events).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        Self {
            start: Instant::now(),
            committed: zeros(),
            handled: zeros(),
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn committed(&self, rows: &[usize]) {
        let now = self.now();
        for &seq in rows {
            self.committed[seq].store(now, Ordering::Relaxed);
        }
    }

    fn handled(&self, username: &str) {
        let Some(seq) = username.strip_prefix("row-").and_then(|s| s.parse::<usize>().ok()) else {
            return;
        };
        if let Some(slot) = self.handled.get(seq)
            && slot
                .compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn wait_all(&self, idle_limit: Duration) -> Result<(), BenchError> {
        let expected = self.handled.len() as u64;
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let n = self.count.load(Ordering::Relaxed);
            if n >= expected {
                return Ok(());
            }
            if n != last {
                (last, since) = (n, Instant::now());
            } else if since.elapsed() > idle_limit {
                return Err(BenchError::Stalled {
                    handled: n,
                    expected,
                    idle: idle_limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn figures(&self, events: usize, insert_elapsed: Duration) -> Relayed {
        let load = |v: &Vec<AtomicU64>| v.iter().map(|a| a.load(Ordering::Relaxed)).collect::<Vec<_>>();
        let (committed, handled) = (load(&self.committed), load(&self.handled));
        let first_commit = committed.iter().copied().min().unwrap_or(0);
        let last_handled = handled.iter().copied().max().unwrap_or(0);
        let mut lags: Vec<u64> = committed
            .iter()
            .zip(&handled)
            .map(|(c, h)| h.saturating_sub(*c))
            .collect();
        let p = stats::percentiles(&mut lags).unwrap_or_default();
        let count = events as u64;
        Relayed {
            insert_rate: stats::rate(count, insert_elapsed),
            rate: stats::rate(count, Duration::from_nanos(last_handled.saturating_sub(first_commit))),
            p50_ms: p.p50 as f64 / 1e6,
            p99_ms: p.p99 as f64 / 1e6,
        }
    }
}
