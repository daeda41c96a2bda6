//! The `warren_dead_letters` gauge: how many messages each `.dead` queue
//! holds, refreshed by `warren run` with a passive declare per queue.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::DeadLetters;
use crate::amqp::Backoff;
use crate::config::Settings;
use crate::metrics::DEAD_LETTERS;

/// How often [`watch`] refreshes the gauge.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15);

/// Sets `warren_dead_letters{queue}` for every `.dead` queue of the service
/// every `every`, on a connection of its own (reconnecting with backoff),
/// until `shutdown` is cancelled. A queue that does not exist is not reported.
pub async fn watch(settings: Settings, every: Duration, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    while !shutdown.is_cancelled() {
        let dead = match DeadLetters::connect(&settings, "dead-letter gauge").await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "dead-letter gauge: cannot connect");
                let delay = backoff.next_delay();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        backoff.reset();
        refresh_until_error(&dead, every, &shutdown).await;
        dead.close().await;
    }
}

async fn refresh_until_error(dead: &DeadLetters, every: Duration, shutdown: &CancellationToken) {
    loop {
        match dead.counts().await {
            Ok(counts) => {
                for (queue, n) in counts {
                    if let Some(n) = n {
                        metrics::gauge!(DEAD_LETTERS, "queue" => queue).set(f64::from(n));
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "dead-letter gauge: reconnecting");
                return;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
