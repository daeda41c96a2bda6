//! Connection supervision: the publisher's one live link (connection plus
//! confirm channel), watched, and replaced with backoff when it dies.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::channel::{Reopener, confirm_channel};
use super::error::{PublishError, setup_err};
use super::health::Health;
use crate::amqp::{self, Backoff, ConnectOptions};
use crate::config::Settings;
use crate::refusal::Refusal;
use crate::topology::{Topology, TopologyError};

/// One live connection and its confirm channel.
pub(super) struct Link {
    pub(super) channel: Channel,
    pub(super) connection: Arc<Connection>,
}

/// Where the supervisor connects, and what it declares (or checks) there.
pub(super) struct Target {
    opts: ConnectOptions,
    topology: Topology,
    /// `topology.declare`: declare the exchange, or only check that it exists.
    declare: bool,
}

impl Target {
    pub(super) fn new(settings: &Settings, role: &str) -> Self {
        Self {
            opts: ConnectOptions::new(&settings.amqp, role),
            topology: Topology::from_settings(settings),
            declare: settings.topology.declare,
        }
    }

    pub(super) async fn open(&self) -> Result<Arc<Link>, OpenError> {
        let conn = Arc::new(amqp::connect(&self.opts).await.map_err(|e| OpenError {
            login_refused: e.is_refused(),
            ..PublishError::Setup(e.to_string()).into()
        })?);
        self.prepare(conn).await
    }

    /// Declares (or checks) the exchange and opens the confirm channel.
    async fn prepare(&self, conn: Arc<Connection>) -> Result<Arc<Link>, OpenError> {
        let setup = conn.create_channel().await.map_err(setup_err)?;
        let ready = if self.declare {
            self.topology.declare_exchange(&setup).await
        } else {
            self.topology.check_exchange(&setup).await
        };
        ready.map_err(|e| OpenError {
            refusal: match &e {
                TopologyError::Refused { refusal, .. } => Some((**refusal).clone()),
                _ => None,
            },
            ..PublishError::Setup(e.to_string()).into()
        })?;
        let _ = setup.close(200, "declared".into()).await;
        Ok(confirm_channel(&conn).await?)
    }
}

/// Why [`Target::open`] failed.
pub(super) struct OpenError {
    pub(super) error: PublishError,
    /// The broker refused the login or the vhost.
    pub(super) login_refused: bool,
    /// The permission the broker refused declaring the exchange.
    pub(super) refusal: Option<Refusal>,
}

impl From<PublishError> for OpenError {
    fn from(error: PublishError) -> Self {
        Self {
            error,
            login_refused: false,
            refusal: None,
        }
    }
}

/// Watches the live link; when it dies, clears it (publishes wait) and
/// reopens its channel, or reconnects when the connection died, with
/// backoff. Gives up, telling `health`, when the broker refuses the login
/// or the vhost before the first connection: that is a configuration
/// error, which waiting does not fix.
pub(super) async fn supervise(
    target: Target,
    mut link: Option<Arc<Link>>,
    tx: watch::Sender<Option<Arc<Link>>>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut connecting = Connecting {
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        connected_once: link.is_some(),
    };
    let mut reopener = Reopener::new();
    loop {
        if let Some(live) = &link {
            metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "publisher").set(1.0);
            let cause = tokio::select! {
                () = stop.cancelled() => return,
                cause = watch_link(live) => cause,
            };
            let _ = tx.send(None);
            // The broker closed only the channel: open another on the same connection.
            if live.connection.status().connected()
                && let Some(new) = reopener.reopen(&live.connection.clone(), &cause, &stop).await
            {
                health.connected();
                let _ = tx.send(Some(new.clone()));
                link = Some(new);
                continue;
            }
            if stop.is_cancelled() {
                return;
            }
            tracing::warn!(%cause, "publisher lost its connection to RabbitMQ; reconnecting");
        }
        metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "publisher").set(0.0);
        link = connecting.connect(&target, &health, &stop).await;
        let Some(new) = &link else { return };
        let _ = tx.send(Some(new.clone()));
        reopener.connected();
    }
}

/// The reconnect loop's state.
struct Connecting {
    backoff: Backoff,
    connected_once: bool,
}

impl Connecting {
    /// Connects with backoff until it works; `None` when `stop` is cancelled
    /// or the broker refuses the login or vhost before any first connection.
    async fn connect(&mut self, target: &Target, health: &Health, stop: &CancellationToken) -> Option<Arc<Link>> {
        loop {
            match target.open().await {
                Ok(new) => {
                    health.connected();
                    self.backoff.reset();
                    self.connected_once = true;
                    tracing::info!("publisher connected to RabbitMQ");
                    return Some(new);
                }
                Err(OpenError {
                    error,
                    login_refused: true,
                    ..
                }) if !self.connected_once => {
                    tracing::error!(%error, "publisher gives up");
                    health.give_up(error);
                    return None;
                }
                Err(OpenError { error, refusal, .. }) => {
                    if let Some(refusal) = &refusal {
                        health.refused(refusal);
                    }
                    let wait = self.backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?wait, "publisher cannot connect yet");
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// How often [`watch_link`] looks at the channel without being told.
const STATUS_CHECK: Duration = Duration::from_secs(5);

/// Resolves when the link is dead; logs flow control on the way.
///
/// lapin marks the channel or connection closed, then sends an `Error`
/// event, for every close with an error code and every lost connection, so
/// those end the watch at once. A channel closed without an error code sends
/// no event: the status check every [`STATUS_CHECK`] catches it. (Checking
/// every 250 ms instead woke an idle process four times a second per link.)
pub(super) async fn watch_link(link: &Link) -> String {
    let mut events = link.connection.events_listener();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + STATUS_CHECK, STATUS_CHECK);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    metrics::gauge!(crate::metrics::BROKER_BLOCKED).set(1.0);
                    tracing::warn!(%reason, "RabbitMQ blocked publishing (resource alarm): publishes wait up to their timeout");
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    metrics::gauge!(crate::metrics::BROKER_BLOCKED).set(0.0);
                    tracing::info!("RabbitMQ unblocked publishing");
                }
                // On a connection shared with a consumer, another channel's error: not ours.
                Some(lapin::Event::Error(e)) if !alive(link) => return amqp::describe(&e),
                Some(_) => {}
                None => return "connection dropped".into(),
            },
            _ = tick.tick() => {
                if !alive(link) {
                    return "channel closed".into();
                }
            }
        }
    }
}

fn alive(link: &Link) -> bool {
    link.channel.status().connected() && link.connection.status().connected()
}
