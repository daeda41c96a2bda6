//! What operators ask of the outbox: how far behind it is, which rows
//! failed and why, and putting failed rows back in line.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use super::error::RelayError;
use super::schema::Table;

/// How far behind the outbox is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStats {
    /// Rows not yet published.
    pub pending: i64,
    /// Seconds since the oldest pending row was inserted (0 with none
    /// pending): the lag to alert on.
    pub oldest_pending_age_seconds: f64,
    /// Rows marked failed (listed by `warren relay failed`).
    pub failed: i64,
}

/// A row the relay could not publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedRow {
    pub id: i64,
    /// The row's own `event_id` column (the envelope's wins when it has one).
    pub event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    pub error: Option<String>,
    /// The envelope as stored.
    pub envelope: serde_json::Value,
}

/// Which failed rows to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySelection {
    All,
    Ids(Vec<i64>),
}

pub(super) async fn stats(pool: &Pool, table: &Table) -> Result<OutboxStats, RelayError> {
    let t = table.qualified();
    // Each count reads one partial index: published rows (a day of them
    // by default) are never scanned.
    let sql = format!(
        "SELECT (SELECT count(*) FROM {t} WHERE status = 'pending'), \
                (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) \
                   FROM {t} WHERE status = 'pending'), \
                (SELECT count(*) FROM {t} WHERE status = 'failed')"
    );
    let row = pool.get().await?.query_one(&sql, &[]).await?;
    Ok(OutboxStats {
        pending: row.get(0),
        oldest_pending_age_seconds: row.get::<_, f64>(1).max(0.0),
        failed: row.get(2),
    })
}

pub(super) async fn failed(pool: &Pool, table: &Table, limit: i64) -> Result<Vec<FailedRow>, RelayError> {
    let sql = format!(
        "SELECT id, event_id, created_at, attempts, error, envelope::text FROM {} \
         WHERE status = 'failed' ORDER BY id LIMIT $1",
        table.qualified()
    );
    let rows = pool.get().await?.query(&sql, &[&limit]).await?;
    Ok(rows
        .iter()
        .map(|r| FailedRow {
            id: r.get(0),
            event_id: r.get(1),
            created_at: r.get(2),
            attempts: r.get(3),
            error: r.get(4),
            envelope: serde_json::from_str(r.get(5)).unwrap_or(serde_json::Value::Null),
        })
        .collect())
}

pub(super) async fn retry(pool: &Pool, table: &Table, which: &RetrySelection) -> Result<u64, RelayError> {
    let t = table.qualified();
    let client = pool.get().await?;
    // Attempts start again, so an unroutable row gets its full allowance.
    let set = "SET status = 'pending', error = NULL, attempts = 0";
    let n = match which {
        RetrySelection::All => {
            client
                .execute(&format!("UPDATE {t} {set} WHERE status = 'failed'"), &[])
                .await?
        }
        RetrySelection::Ids(ids) => {
            client
                .execute(
                    &format!("UPDATE {t} {set} WHERE status = 'failed' AND id = ANY($1)"),
                    &[ids],
                )
                .await?
        }
    };
    Ok(n)
}

/// Deletes published rows older than `retention`, `batch` at a time (short
/// transactions that never hold many row locks), until none are left.
pub(super) async fn delete_expired(
    pool: &Pool,
    table: &Table,
    retention: std::time::Duration,
    batch: i64,
) -> Result<u64, RelayError> {
    let t = table.qualified();
    let sql = format!(
        "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'published' \
         AND published_at < now() - make_interval(secs => $1) LIMIT $2)"
    );
    let client = pool.get().await?;
    let st = client.prepare_cached(&sql).await?;
    let mut total = 0;
    loop {
        let n = client.execute(&st, &[&retention.as_secs_f64(), &batch]).await?;
        total += n;
        if n < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(total);
        }
        // Room for the relay's own cycles between batches.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
