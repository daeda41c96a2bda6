//! One relay cycle, in one transaction: take the relays' lock, claim a batch
//! in commit order, publish it, mark what was confirmed, commit.
//!
//! Nothing is marked before its confirm, so a crash, a lost broker or a lost
//! database at any point leaves the batch's rows pending (the transaction
//! rolls back and releases its locks): they are published again, with the
//! same `event_id`, by the next cycle of this relay or another one.

use deadpool_postgres::Pool;

use super::batch::{self, Outcome};
use super::error::RelayError;
use super::job::{self, Claimed};
use super::schema::Table;
use crate::publisher::Publisher;

/// Publishes that fail as unroutable (no queue bound for the event type)
/// this many times mark the row failed, so it cannot hold the table forever;
/// failures of the broker itself never do.
pub const MAX_UNROUTABLE: i32 = 5;

/// The cycle's SQL, made once from the table name.
pub(super) struct Statements {
    lock_key: i64,
    claim: String,
    mark_published: String,
    mark_failed: String,
    note_retry: String,
}

impl Statements {
    /// `delete`: delete published rows instead of marking them (retention 0).
    pub(super) fn new(table: &Table, delete: bool) -> Self {
        let t = table.qualified();
        let cols = job::COLUMNS;
        Self {
            lock_key: table.lock_key(),
            // Only rows of transactions older than every running one: a
            // transaction that started earlier but commits later cannot
            // add a row before these any more.
            claim: format!(
                "SELECT {cols} FROM {t} \
                 WHERE status = 'pending' AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY txid, id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            mark_published: if delete {
                format!("DELETE FROM {t} WHERE id = ANY($1)")
            } else {
                format!(
                    "UPDATE {t} SET status = 'published', published_at = now(), \
                     attempts = attempts + 1, error = NULL WHERE id = ANY($1)"
                )
            },
            mark_failed: format!(
                "UPDATE {t} AS o SET status = 'failed', error = f.error, attempts = o.attempts + 1 \
                 FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id"
            ),
            note_retry: format!(
                "UPDATE {t} AS o SET error = f.error, attempts = o.attempts + 1 \
                 FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id"
            ),
        }
    }
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) claimed: usize,
    pub(super) published: usize,
    pub(super) failed: usize,
    /// The first row marked failed this cycle, and why: what the log names.
    pub(super) first_failed: Option<(i64, String)>,
    /// Not confirmed this time (or held behind one that was not).
    pub(super) retried: usize,
    /// The first publish error of the cycle, for the log.
    pub(super) error: Option<String>,
}

/// What a cycle found.
pub(super) enum Cycle {
    /// Another relay holds the lock: this one is the standby.
    Standby,
    Done(Tally),
}

/// Runs one cycle on a pooled connection.
pub(super) async fn run(
    pool: &Pool,
    sql: &Statements,
    batch_size: usize,
    publisher: &Publisher,
) -> Result<Cycle, RelayError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // One relay at a time per table, for the whole claim-publish-mark cycle:
    // the lock goes with the transaction, so a relay that dies releases it.
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&sql.lock_key])
        .await?
        .get(0);
    if !locked {
        tx.rollback().await?;
        return Ok(Cycle::Standby);
    }
    let claim = tx.prepare_cached(&sql.claim).await?;
    let limit = i64::try_from(batch_size).unwrap_or(i64::MAX);
    let rows = tx.query(&claim, &[&limit]).await?;
    let mut tally = Tally {
        claimed: rows.len(),
        ..Tally::default()
    };
    let mut marks = Marks::default();
    let mut jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        match job::decode(row) {
            Claimed::Valid(job) => jobs.push(job),
            Claimed::Invalid { id, error } => marks.failed(id, error),
        }
    }
    let outcomes = batch::publish(publisher, &jobs).await;
    for (job, outcome) in jobs.iter().zip(outcomes) {
        match outcome {
            Outcome::Published => marks.published.push(job.id),
            Outcome::Retry { error, unroutable } => {
                tally.error.get_or_insert_with(|| error.clone());
                if unroutable && job.attempts + 1 >= MAX_UNROUTABLE {
                    marks.failed(job.id, error);
                } else {
                    marks.retry_ids.push(job.id);
                    marks.retry_errors.push(error);
                }
            }
            Outcome::Held => tally.retried += 1,
        }
    }
    tally.published = marks.published.len();
    tally.failed = marks.failed_ids.len();
    tally.first_failed = marks
        .failed_ids
        .first()
        .copied()
        .zip(marks.failed_errors.first().cloned());
    tally.retried += marks.retry_ids.len();
    marks.write(&tx, sql).await?;
    tx.commit().await?;
    Ok(Cycle::Done(tally))
}

/// The updates a cycle makes before it commits.
#[derive(Default)]
struct Marks {
    published: Vec<i64>,
    failed_ids: Vec<i64>,
    failed_errors: Vec<String>,
    retry_ids: Vec<i64>,
    retry_errors: Vec<String>,
}

impl Marks {
    fn failed(&mut self, id: i64, error: String) {
        self.failed_ids.push(id);
        self.failed_errors.push(error);
    }

    async fn write(&self, tx: &deadpool_postgres::Transaction<'_>, sql: &Statements) -> Result<(), RelayError> {
        if !self.published.is_empty() {
            let st = tx.prepare_cached(&sql.mark_published).await?;
            tx.execute(&st, &[&self.published]).await?;
        }
        if !self.failed_ids.is_empty() {
            let st = tx.prepare_cached(&sql.mark_failed).await?;
            tx.execute(&st, &[&self.failed_ids, &self.failed_errors]).await?;
        }
        if !self.retry_ids.is_empty() {
            let st = tx.prepare_cached(&sql.note_retry).await?;
            tx.execute(&st, &[&self.retry_ids, &self.retry_errors]).await?;
        }
        Ok(())
    }
}
