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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

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
    health: RelayHealth,
}

/// Whether the relay reaches its database, for readiness probes: read here,
/// and reported as the `database` part of a [`Readiness`] once given one.
#[derive(Clone, Default)]
pub struct RelayHealth {
    up: Arc<AtomicBool>,
    readiness: Arc<OnceLock<Readiness>>,
}

/// The relay's part in a service's [`Readiness`].
const READINESS_PART: &str = "database";

impl RelayHealth {
    /// `true` once a query succeeded and until one fails to reach the server.
    #[must_use]
    pub fn database_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records whether the last query reached the database.
    fn set(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if let Some(readiness) = self.readiness.get()
            && was != up
        {
            readiness.set(READINESS_PART, up, if up { "reachable" } else { "not reachable" });
        }
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
                health: RelayHealth::default(),
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
        self.inner.health.clone()
    }

    /// Reports the database as the `database` part of `readiness` (not
    /// ready until a first query succeeds). Only the first call counts.
    pub fn report_to(&self, readiness: &Readiness) {
        let health = &self.inner.health;
        if health.readiness.set(readiness.clone()).is_ok() {
            let up = health.database_up();
            readiness.set(READINESS_PART, up, if up { "reachable" } else { "connecting" });
        }
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
    /// [`RelayError::Database`], or [`RelayError::MissingTable`] saying how
    /// to create it.
    pub async fn stats(&self) -> Result<OutboxStats, RelayError> {
        admin::stats(&self.inner.pool, &self.inner.table)
            .await
            .map_err(|e| self.explain(e))
    }

    /// The first `limit` rows marked failed, oldest first.
    ///
    /// # Errors
    ///
    /// [`RelayError::Database`], or [`RelayError::MissingTable`] saying how
    /// to create it.
    pub async fn failed(&self, limit: i64) -> Result<Vec<FailedRow>, RelayError> {
        admin::failed(&self.inner.pool, &self.inner.table, limit)
            .await
            .map_err(|e| self.explain(e))
    }

    /// Puts failed rows back to pending; returns how many. A retried row
    /// keeps its place in commit order, so it goes out after the events of
    /// its user that were published while it was failed.
    ///
    /// # Errors
    ///
    /// [`RelayError::Database`], or [`RelayError::MissingTable`] saying how
    /// to create it.
    pub async fn retry(&self, which: &RetrySelection) -> Result<u64, RelayError> {
        admin::retry(&self.inner.pool, &self.inner.table, which)
            .await
            .map_err(|e| self.explain(e))
    }

    /// A missing table's error with how to create it; others unchanged.
    fn explain(&self, e: RelayError) -> RelayError {
        match e {
            RelayError::MissingTable(detail) => RelayError::MissingTable(format!(
                "the outbox table {} does not exist: create it with `warren relay schema --apply`, \
                 or `warren relay schema | psql \"$DATABASE_URL\"` ({detail})",
                self.inner.table.qualified()
            )),
            other => other,
        }
    }

    /// Relays until `shutdown` is cancelled, then finishes the cycle in
    /// flight. Database and broker failures are retried with backoff, never
    /// returned.
    ///
    /// # Errors
    ///
    /// [`RelayError::MissingTable`] when the outbox table does not exist.
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
            inner.health.clone(),
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
                inner.health.set(true);
                metrics::gauge!(RELAY_ACTIVE, "table" => self.label.clone()).set(0.0);
                Ok(Some(poll))
            }
            Ok(Cycle::Done(tally)) => {
                inner.health.set(true);
                self.db_backoff.reset();
                metrics::gauge!(RELAY_ACTIVE, "table" => self.label.clone()).set(1.0);
                Ok(self.after(&tally, poll))
            }
            Err(e @ RelayError::MissingTable(_)) => Err(self.relay.explain(e)),
            Err(e) => {
                inner.health.set(false);
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
            tracing::warn!(rows = tally.failed, "{}", failed_warning(tally));
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

/// The warning for a cycle that marked rows failed: how many, the first
/// one's id and reason (shortened), and where to see them all.
fn failed_warning(tally: &Tally) -> String {
    let first = tally.first_failed.as_ref().map_or_else(String::new, |(id, reason)| {
        let short = crate::event::truncate(reason, 200);
        let more = if short.len() < reason.len() { "…" } else { "" };
        format!(" (first: row {id}: {short}{more})")
    });
    format!(
        "{} outbox row(s) marked failed{first}: see `warren relay failed`",
        tally.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_rows_warning_names_the_first_rows_reason() {
        let tally = Tally {
            failed: 2,
            first_failed: Some((41, "invalid field `data.email`: is not an e-mail address".into())),
            ..Tally::default()
        };
        assert_eq!(
            failed_warning(&tally),
            "2 outbox row(s) marked failed (first: row 41: invalid field `data.email`: \
             is not an e-mail address): see `warren relay failed`"
        );
    }

    #[test]
    fn a_long_reason_is_shortened_in_the_warning() {
        let tally = Tally {
            failed: 1,
            first_failed: Some((1, "x".repeat(5000))),
            ..Tally::default()
        };
        let warning = failed_warning(&tally);
        assert!(warning.len() < 300, "{warning}");
        assert!(warning.contains("x…): see `warren relay failed`"), "{warning}");
    }
}
