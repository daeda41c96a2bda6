//! The relay's background upkeep: the gauges operators alert on, and the
//! deletion of published rows past `relay.retention`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::admin;
use super::schema::Table;
use crate::metrics::{RELAY_DATABASE_UP, RELAY_FAILED_ROWS, RELAY_OLDEST_PENDING_AGE_SECONDS, RELAY_PENDING_ROWS};

/// How often the gauges are refreshed and expired rows deleted.
const EVERY: Duration = Duration::from_secs(2);
/// Rows per retention delete.
const DELETE_BATCH: i64 = 1000;

/// Runs until `stop`.
pub(super) async fn run(
    pool: Pool,
    table: Table,
    retention: Duration,
    database_up: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let label = table.qualified();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match admin::stats(&pool, &table).await {
            Ok(stats) => {
                database_up.store(true, Ordering::Relaxed);
                metrics::gauge!(RELAY_DATABASE_UP, "table" => label.clone()).set(1.0);
                #[allow(clippy::cast_precision_loss)]
                {
                    metrics::gauge!(RELAY_PENDING_ROWS, "table" => label.clone()).set(stats.pending as f64);
                    metrics::gauge!(RELAY_FAILED_ROWS, "table" => label.clone()).set(stats.failed as f64);
                }
                metrics::gauge!(RELAY_OLDEST_PENDING_AGE_SECONDS, "table" => label.clone())
                    .set(stats.oldest_pending_age_seconds);
            }
            Err(e) => {
                database_up.store(false, Ordering::Relaxed);
                metrics::gauge!(RELAY_DATABASE_UP, "table" => label.clone()).set(0.0);
                tracing::warn!(error = %e, "relay cannot read the outbox's state");
                continue;
            }
        }
        if !retention.is_zero() {
            match admin::delete_expired(&pool, &table, retention, DELETE_BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "deleted published rows past relay.retention"),
                Err(e) => tracing::warn!(error = %e, "deleting published rows past relay.retention"),
            }
        }
    }
}
