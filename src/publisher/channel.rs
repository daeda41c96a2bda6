//! The publisher's confirm channel: opened, and reopened with backoff when
//! the broker closes it while the connection stays up (a refused
//! permission, a precondition), without reconnecting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::ConfirmSelectOptions;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::{PublishError, setup_err};
use super::health::Health;
use super::supervisor::{Link, watch_link};
use crate::amqp::Backoff;

/// A channel that stayed open this long ends an episode of closes: the
/// next one is logged again and reopened after the shortest backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Opens a channel with publisher confirms on `conn`.
pub(super) async fn confirm_channel(conn: &Arc<Connection>) -> Result<Arc<Link>, PublishError> {
    let channel = conn.create_channel().await.map_err(setup_err)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(setup_err)?;
    Ok(Arc::new(Link {
        channel,
        connection: conn.clone(),
    }))
}

/// Reopens closed channels, each after a backoff that grows while they keep
/// being closed soon after they open (each refused publish closes one).
pub(super) struct Reopener {
    backoff: Backoff,
    opened: Instant,
    /// A close of this episode was logged already.
    logged: bool,
}

impl Reopener {
    pub(super) fn new() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            opened: Instant::now(),
            logged: false,
        }
    }

    /// The connection (and its channel) was opened anew.
    pub(super) fn connected(&mut self) {
        self.opened = Instant::now();
        self.logged = false;
    }

    /// After the broker closed the channel (`cause`) of the live `conn`:
    /// waits a backoff and opens another. `None` when the connection is
    /// gone or `stop` is cancelled.
    pub(super) async fn reopen(
        &mut self,
        conn: &Arc<Connection>,
        cause: &str,
        stop: &CancellationToken,
    ) -> Option<Arc<Link>> {
        if !self.logged || self.opened.elapsed() >= STABLE {
            self.backoff.reset();
            self.logged = true;
            tracing::warn!(%cause, "RabbitMQ closed the publisher's channel; reopening it");
        } else {
            // Same episode: the first close was logged.
            tracing::debug!(%cause, "RabbitMQ closed the publisher's channel again");
        }
        while conn.status().connected() {
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(self.backoff.next_delay()) => {}
            }
            match confirm_channel(conn).await {
                Ok(link) => {
                    self.opened = Instant::now();
                    return Some(link);
                }
                Err(e) => tracing::debug!(error = %e, "cannot reopen the publisher's channel yet"),
            }
        }
        None
    }
}

/// Keeps a confirm channel open on a connection someone else owns (the
/// consumer's): reopens it with backoff whenever the broker closes it, and
/// ends when the connection is gone or `stop` is cancelled.
pub(super) async fn supervise_channel(
    mut link: Arc<Link>,
    tx: watch::Sender<Option<Arc<Link>>>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut reopener = Reopener::new();
    loop {
        let cause = tokio::select! {
            () = stop.cancelled() => return,
            cause = watch_link(&link) => cause,
        };
        let _ = tx.send(None);
        match reopener.reopen(&link.connection.clone(), &cause, &stop).await {
            Some(new) => {
                health.connected();
                let _ = tx.send(Some(new.clone()));
                link = new;
            }
            None => return,
        }
    }
}
