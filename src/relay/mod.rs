//! The transactional outbox relay: events written to a PostgreSQL table in
//! the application's own transaction, published to RabbitMQ from there.
//!
//! The application inserts one envelope per row (`INSERT INTO warren_outbox
//! (envelope) VALUES ($1)`) in the transaction that writes its own data, so
//! the event exists if and only if the data does. A [`Relay`] claims
//! committed rows in commit order, validates each as the ingress does,
//! publishes it with a confirm and marks it published only after the
//! confirm; invalid rows are marked failed and never block the table.
//!
//! - `schema`: the table name, the DDL, the relays' lock key.
//! - `db`: the connection string, TLS (rustls), the pool.
//! - `cycle`: one claim → publish → mark transaction; `batch`: per-user order;
//!   `job`: decoding and validating a row.
//! - `listen`: NOTIFY as a hint to poll now; `upkeep`: gauges and retention;
//!   `admin`: stats, failed rows, retry.
//!
//! `docs/OUTBOX.md` has the design (ordering, faults, several relays).

mod admin;
mod batch;
mod cycle;
mod db;
mod error;
mod job;
mod listen;
mod schema;
mod upkeep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use admin::{FailedRow, OutboxStats, RetrySelection};
pub use cycle::MAX_UNROUTABLE;
pub use db::Database;
pub use error::RelayError;
pub use schema::Table;

use crate::amqp::Backoff;
use crate::config::RelaySettings;
use crate::metrics::{RELAY_ACTIVE, RELAY_FAILED_TOTAL, RELAY_PUBLISHED_TOTAL};
use crate::publisher::Publisher;
use cycle::{Cycle, Statements, Tally};

/// The relay of one outbox table. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RelaySettings,
    table: Table,
    db: Database,
    pool: Pool,
    statements: Statements,
    database_up: Arc<AtomicBool>,
}

/// Whether the relay reaches its database, for readiness probes.
#[derive(Clone)]
pub struct RelayHealth(Arc<AtomicBool>);

impl RelayHealth {
    /// `true` once a query succeeded and until one fails to reach the server.
    #[must_use]
    pub fn database_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Relay {
    /// A relay for `settings` (`relay.database_url` must be set). Connects
    /// lazily: nothing is opened before the first query.
    ///
    /// # Errors
    ///
    /// [`RelayError::Config`]: no database URL, one that does not parse, or
    /// a bad `relay.table`.
    pub fn new(settings: &RelaySettings) -> Result<Self, RelayError> {
        let url = settings.database_url.as_deref().ok_or_else(|| {
            RelayError::Config("relay.database_url is not set (WARREN_RELAY__DATABASE_URL, or DATABASE_URL)".into())
        })?;
        let table = Table::parse(&settings.table)?;
        let db = Database::new(url, "warren relay")?;
        let pool = db.pool(settings.pool_size)?;
        Ok(Self {
            inner: Arc::new(Inner {
                statements: Statements::new(&table, settings.retention.is_zero()),
                settings: settings.clone(),
                table,
                db,
                pool,
                database_up: Arc::new(AtomicBool::new(false)),
            }),
        })
    }

    /// The outbox table.
    #[must_use]
    pub fn table(&self) -> &Table {
        &self.inner.table
    }

    /// A handle on the relay's database health (for `/readyz`).
    #[must_use]
    pub fn health(&self) -> RelayHealth {
        RelayHealth(self.inner.database_up.clone())
    }

    /// Creates the table, its indexes and trigger (the DDL of [`Table::ddl`]).
    ///
    /// # Errors
    ///
    /// [`RelayError::Database`] when the DDL cannot run.
    pub async fn apply_schema(&self) -> Result<(), RelayError> {
        let client = self.inner.pool.get().await?;
        client.batch_execute(&self.inner.table.ddl()).await?;
        Ok(())
    }

    /// Pending and failed rows, and the age of the oldest pending one.
    ///
    /// # Errors
    ///
    /// [`RelayError::Database`].
    pub async fn stats(&self) -> Result<OutboxStats, RelayError> {
        admin::stats(&self.inner.pool, &self.inner.table).await
    }

    /// The first `limit` rows marked failed, oldest first.
    ///
    /// # Errors
    ///
    /// [`RelayError::Database`].
    pub async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>, RelayError> {
        admin::failed(&self.inner.pool, &self.inner.table, limit).await
    }

    /// Puts failed rows back to pending; returns how many. A retried row
    /// keeps its place in commit order, so it goes out after the events of
    /// its user that were published while it was failed.
    ///
    /// # Errors
    ///
    /// [`RelayError::Database`].
    pub async fn retry(&self, which: &RetrySelection) -> Result<u64, RelayError> {
        admin::retry(&self.inner.pool, &self.inner.table, which).await
    }

    /// Relays until `shutdown` is cancelled, then finishes the cycle in
    /// flight. Database and broker failures are retried with backoff, never
    /// returned.
    ///
    /// # Errors
    ///
    /// [`RelayError::Config`] when the outbox table does not exist.
    pub async fn run(&self, publisher: &Publisher, shutdown: CancellationToken) -> Result<(), RelayError> {
        let inner = &self.inner;
        let wake = Arc::new(Notify::new());
        let stop = shutdown.child_token();
        let _stop_helpers = stop.clone().drop_guard();
        tokio::spawn(listen::listen(
            inner.db.clone(),
            inner.table.channel(),
            wake.clone(),
            stop.clone(),
        ));
        tokio::spawn(upkeep::run(
            inner.pool.clone(),
            inner.table.clone(),
            inner.settings.retention,
            inner.database_up.clone(),
            stop.clone(),
        ));
        tracing::info!(table = %inner.table.qualified(), "relay started");
        let mut runner = Runner::new(self, publisher);
        while !shutdown.is_cancelled() {
            let pause = runner.step().await?;
            if let Some(pause) = pause {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = wake.notified() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        metrics::gauge!(RELAY_ACTIVE, "table" => inner.table.qualified()).set(0.0);
        tracing::info!("relay stopped");
        Ok(())
    }
}

/// The relay loop's state between cycles.
struct Runner<'a> {
    relay: &'a Relay,
    publisher: &'a Publisher,
    label: String,
    /// After a cycle that could not publish everything.
    broker_backoff: Backoff,
    /// After a cycle that failed in the database.
    db_backoff: Backoff,
}

impl<'a> Runner<'a> {
    fn new(relay: &'a Relay, publisher: &'a Publisher) -> Self {
        Self {
            relay,
            publisher,
            label: relay.inner.table.qualified(),
            broker_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            db_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }

    /// One cycle; returns how long to wait before the next (`None`: at once,
    /// there is more to do). A NOTIFY ends the wait early.
    async fn step(&mut self) -> Result<Option<Duration>, RelayError> {
        let inner = &self.relay.inner;
        let poll = inner.settings.poll_interval;
        match cycle::run(
            &inner.pool,
            &inner.statements,
            inner.settings.batch_size,
            self.publisher,
        )
        .await
        {
            Ok(Cycle::Standby) => {
                inner.database_up.store(true, Ordering::Relaxed);
                metrics::gauge!(RELAY_ACTIVE, "table" => self.label.clone()).set(0.0);
                Ok(Some(poll))
            }
            Ok(Cycle::Done(tally)) => {
                inner.database_up.store(true, Ordering::Relaxed);
                self.db_backoff.reset();
                metrics::gauge!(RELAY_ACTIVE, "table" => self.label.clone()).set(1.0);
                Ok(self.after(&tally, poll))
            }
            Err(e) if is_missing_table(&e) => Err(RelayError::Config(format!(
                "the outbox table {} does not exist: create it with `warren relay schema | psql` ({e})",
                self.label
            ))),
            Err(e) => {
                inner.database_up.store(false, Ordering::Relaxed);
                let wait = self.db_backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "relay cycle failed in the database: its rows stay pending");
                Ok(Some(wait))
            }
        }
    }

    fn after(&mut self, tally: &Tally, poll: Duration) -> Option<Duration> {
        let label = self.label.clone();
        metrics::counter!(RELAY_PUBLISHED_TOTAL, "table" => label.clone()).increment(tally.published as u64);
        metrics::counter!(RELAY_FAILED_TOTAL, "table" => label).increment(tally.failed as u64);
        if tally.failed > 0 {
            tracing::warn!(
                rows = tally.failed,
                "outbox rows marked failed: see `warren relay failed`"
            );
        }
        if let Some(error) = &tally.error {
            let wait = self.broker_backoff.next_delay();
            tracing::warn!(%error, not_published = tally.retried, retry_in = ?wait, "relay could not publish every row: they stay pending");
            return Some(wait);
        }
        self.broker_backoff.reset();
        if tally.claimed >= self.relay.inner.settings.batch_size {
            None
        } else if tally.claimed > 0 {
            // A short batch: rows may still be arriving; look again soon.
            Some(Duration::from_millis(5).min(poll))
        } else {
            Some(poll)
        }
    }
}

fn is_missing_table(e: &RelayError) -> bool {
    matches!(e, RelayError::Database(m) if m.contains("does not exist") && m.contains("relation"))
}
