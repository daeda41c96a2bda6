//! The consumer service: typed handlers on per-type work queues, acks after
//! success, retries through delay queues, dead letters, graceful shutdown.
//!
//! ```no_run
//! use warren::consumer::{Consumer, Context, HandlerError};
//! use warren::{Envelope, Settings, UserLogin, UserRegistered};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> Result<(), warren::consumer::ConsumerError> {
//! let consumer = Consumer::new(Settings::default())
//!     .on(|e: Envelope<UserRegistered>, _ctx: Context| async move {
//!         println!("welcome {}", e.data.username);
//!         Ok::<_, HandlerError>(())
//!     })
//!     .on(|e: Envelope<UserLogin>, _ctx: Context| async move {
//!         println!("login from {}", e.data.ip_address);
//!         Ok(())
//!     });
//! consumer.run(CancellationToken::new()).await
//! # }
//! ```
//!
//! Each delivery ends in exactly one of: ack (handler `Ok`); republish to the
//! next retry tier then ack (transient error or panic, tiers left); republish
//! to `.dead` then ack (tiers exhausted, permanent error, malformed or invalid
//! body, unhandled type). The republish waits for the broker's confirm before
//! the ack, so a crash in between can duplicate a message but never lose it.
//! No failing message is ever requeued in place: when the broker does not
//! take a republish (it refuses the write permission on the default
//! exchange, a tier is missing), the queue pauses, starting no handler,
//! and the republish is retried with backoff, its delivery held unacked,
//! until it goes through (or the consumer stops, leaving it for redelivery).

mod acks;
mod handler;
mod pause;
mod policy;
mod process;
mod route;
mod throttle;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use handler::{AnyEventHandler, Context, Handler, HandlerError, LogHandler};
pub use worker::Limits;

use policy::RetryPolicy;
use route::{Route, Typed, route_for};
use worker::WorkerLost;

use crate::amqp::{self, Backoff, ConnectError, ConnectOptions};
use crate::config::Settings;
use crate::event::Event;
use crate::publisher::Publisher;
use crate::readiness::Readiness;
use crate::topology::{Topology, TopologyError};

/// Why the consumer service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The broker's queues differ from the configuration: fix one or the other.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// `run` was called without any handler.
    #[error("no handlers registered: call .on::<Event>(handler) first")]
    NoHandlers,
    /// RabbitMQ refused the login or the vhost before the consumer ever
    /// connected: fix `amqp.url` or the broker's users.
    #[error(transparent)]
    Refused(ConnectError),
    /// TLS to the broker is set up wrong (CA, host name, client certificate)
    /// at start: reported, not retried.
    #[error(transparent)]
    Tls(ConnectError),
}

/// A session that lasted this long resets the reconnect backoff; one the
/// broker ends sooner (a refused permission closes a channel at once) backs
/// off further each time instead of reconnecting in a loop.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// A consumer service: one work queue per registered event type.
pub struct Consumer {
    settings: Settings,
    routes: Vec<(Arc<dyn Route>, Limits)>,
    /// Its connection (`consumer`) and each queue's consumer (`queue <name>`).
    readiness: Readiness,
    /// Made once: its reconnects go round the nodes of `amqp.url`.
    connect: ConnectOptions,
}

/// The readiness part of the consumer's connection.
const CONNECTION: &str = "consumer";

/// The readiness part of the consumer of work queue `queue`.
fn queue_part(queue: &str) -> String {
    format!("queue {queue}")
}

impl Consumer {
    /// A consumer with no handlers yet.
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        let role = format!("consumer {}", settings.consumer.service);
        Self {
            connect: ConnectOptions::new(&settings.amqp, &role),
            settings,
            routes: Vec::new(),
            readiness: Readiness::new(),
        }
    }

    /// Reports the connection and each queue's consumer to `readiness`
    /// (what `/readyz` shows); not ready until connected.
    #[must_use]
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        readiness.set(CONNECTION, false, "not started");
        self.readiness = readiness;
        self
    }

    /// Handles event type `E` with the default prefetch and concurrency.
    #[must_use]
    pub fn on<E: Event>(self, handler: impl Handler<E>) -> Self {
        let limits = self.default_limits();
        self.on_with(handler, limits)
    }

    /// Handles event type `E` with its own prefetch and concurrency. A second
    /// handler for the same type replaces the first.
    #[must_use]
    pub fn on_with<E: Event>(self, handler: impl Handler<E>, limits: Limits) -> Self {
        self.with_route(Arc::new(Typed::<E, _>::new(handler)), limits)
    }

    /// Handles every type in `consumer.event_types` with one handler.
    #[must_use]
    pub fn on_all<H: AnyEventHandler>(mut self, handler: H) -> Self {
        let limits = self.default_limits();
        for name in self.settings.consumer.event_types.clone() {
            if let Some(route) = route_for(&name, handler.clone()) {
                self = self.with_route(route, limits);
            }
        }
        self
    }

    fn default_limits(&self) -> Limits {
        Limits {
            prefetch: self.settings.consumer.prefetch,
            concurrency: self.settings.consumer.concurrency,
        }
    }

    /// Adds `route`, replacing any earlier one for its type.
    fn with_route(mut self, route: Arc<dyn Route>, limits: Limits) -> Self {
        self.routes.retain(|(r, _)| r.event_type() != route.event_type());
        self.routes.push((route, limits));
        self
    }

    /// The topology this consumer declares: the settings' with the handled types.
    #[must_use]
    pub fn topology(&self) -> Topology {
        let mut t = Topology::from_settings(&self.settings);
        t.event_types = self.routes.iter().map(|(r, _)| r.event_type().to_owned()).collect();
        t
    }

    /// Runs until `shutdown` is cancelled, then stops taking deliveries, lets
    /// in-flight handlers finish within `consumer.shutdown_timeout`, settles
    /// their messages and returns. A lost connection is re-established with
    /// capped, jittered backoff; so is a first connection the broker does
    /// not answer (it may still be starting).
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Topology`] when the broker's queues do not match the
    /// settings; [`ConsumerError::Refused`] when the broker refuses the login
    /// or the vhost before the consumer ever connected; [`ConsumerError::Tls`]
    /// when no node can be reached over TLS at start;
    /// [`ConsumerError::NoHandlers`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        if self.routes.is_empty() {
            return Err(ConsumerError::NoHandlers);
        }
        let topology = Arc::new(self.topology());
        metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "consumer").set(0.0);
        self.readiness.set(CONNECTION, false, "connecting");
        // Every queue is a part from the start: connected is not yet consuming.
        for (route, _) in &self.routes {
            let part = queue_part(&topology.work_queue(route.event_type()));
            self.readiness.set(&part, false, "not consuming yet");
        }
        let result = self.sessions(&topology, &shutdown).await;
        self.readiness.set(CONNECTION, false, "stopped");
        result
    }

    /// One session after another, with backoff between them, until
    /// `shutdown` or an error that retrying cannot fix.
    async fn sessions(&self, topology: &Arc<Topology>, shutdown: &CancellationToken) -> Result<(), ConsumerError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        let mut connected_once = false;
        loop {
            let (reason, lived) = match self.session(topology, shutdown).await {
                Ok(()) => return Ok(()),
                Err(SessionError::Fatal(e)) => return Err(e),
                // At start, a refused login or vhost is a configuration
                // error: retrying would only hide it behind warnings.
                Err(SessionError::Refused(e @ ConnectError::Tls { .. })) if !connected_once => {
                    return Err(ConsumerError::Tls(e));
                }
                Err(SessionError::Refused(e)) if !connected_once => return Err(ConsumerError::Refused(e)),
                Err(SessionError::Refused(e)) => (e.to_string(), None),
                Err(SessionError::Lost { reason, lived }) => (reason, lived),
            };
            if let Some(lived) = lived {
                connected_once = true;
                if lived >= STABLE_SESSION {
                    backoff.reset();
                }
            }
            metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "consumer").set(0.0);
            // The reason (address, user, OS error) is logged below, never served.
            self.readiness.set(CONNECTION, false, "reconnecting");
            let wait = backoff.next_delay();
            if lived.is_some() {
                warn!(%reason, retry_in = ?wait, "consumer lost the broker; reconnecting");
            } else {
                warn!(%reason, retry_in = ?wait, "consumer cannot start consuming yet; retrying");
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// One connection's life: connect and declare, run a worker per queue
    /// until `shutdown` or until one of them loses its channel.
    async fn session(&self, topology: &Arc<Topology>, shutdown: &CancellationToken) -> Result<(), SessionError> {
        let (conn, republisher) = self.connect(topology).await?;
        let started = Instant::now();
        metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "consumer").set(1.0);
        self.readiness.set(CONNECTION, true, "connected");
        info!(
            service = self.settings.consumer.service,
            queues = self.routes.len(),
            "consumer connected"
        );
        let lost = self.run_workers(&conn, topology, &republisher, shutdown).await;
        if conn.status().connected() {
            let _ = conn.close(200, "consumer stopped".into()).await;
        }
        match lost {
            Some(reason) if !shutdown.is_cancelled() => Err(SessionError::Lost {
                reason,
                lived: Some(started.elapsed()),
            }),
            _ => Ok(()),
        }
    }

    /// Connects, declares the topology (or, with `topology.declare =
    /// false`, checks that it exists) and opens the republisher (for
    /// retries and dead letters) on the same connection.
    async fn connect(&self, topology: &Topology) -> Result<(Arc<Connection>, Publisher), SessionError> {
        let s = &self.settings;
        let conn = match amqp::connect(&self.connect).await {
            Ok(conn) => Arc::new(conn),
            Err(e) if e.is_refused() || matches!(e, ConnectError::Tls { .. }) => return Err(SessionError::Refused(e)),
            Err(e) => return Err(SessionError::setup(e)),
        };
        let setup = conn
            .create_channel()
            .await
            .map_err(|e| SessionError::setup(amqp::describe(&e)))?;
        let ready = if s.topology.declare {
            topology.declare(&setup).await
        } else {
            topology.check(&setup).await
        };
        match ready {
            Ok(()) => {}
            Err(e @ TopologyError::Mismatch { .. }) => return Err(SessionError::Fatal(e.into())),
            Err(e) => return Err(SessionError::setup(e)),
        }
        let _ = setup.close(200, "declared".into()).await;
        let republisher = Publisher::on_connection(conn.clone(), "", s.publisher.confirm_timeout)
            .await
            .map_err(SessionError::setup)?;
        Ok((conn, republisher))
    }

    /// Runs a worker per queue until all have stopped; returns why the first
    /// one that failed did. One queue losing its channel stops them all.
    async fn run_workers(
        &self,
        conn: &Arc<Connection>,
        topology: &Arc<Topology>,
        republisher: &Publisher,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let stop = shutdown.child_token();
        let mut workers = JoinSet::new();
        for (route, limits) in &self.routes {
            let worker = worker::Worker {
                route: route.clone(),
                limits: *limits,
                topology: topology.clone(),
                policy: RetryPolicy {
                    tiers: topology.retry_delays.len(),
                },
                republisher: republisher.clone(),
                shutdown_timeout: self.settings.consumer.shutdown_timeout,
                readiness: self.readiness.clone(),
            };
            let (conn, stop) = (conn.clone(), stop.clone());
            workers.spawn(async move { worker.run(&conn, stop).await });
        }
        let mut lost = None;
        while let Some(joined) = workers.join_next().await {
            let result = joined.unwrap_or_else(|e| {
                Err(WorkerLost {
                    queue: "?".into(),
                    reason: e.to_string(),
                })
            });
            if let Err(e) = result {
                if lost.is_none() {
                    error!(error = %e, "queue worker stopped");
                    lost = Some(e.to_string());
                }
                // One queue lost its channel: restart the whole session.
                stop.cancel();
            }
        }
        lost
    }
}

enum SessionError {
    Fatal(ConsumerError),
    /// The broker refused the login or the vhost, or TLS is set up wrong:
    /// fatal at start, retried once the consumer has been connected.
    Refused(ConnectError),
    /// `lived`: how long the session consumed before it was lost; `None`
    /// when it never got that far.
    Lost {
        reason: String,
        lived: Option<Duration>,
    },
}

impl SessionError {
    fn setup(reason: impl ToString) -> Self {
        Self::Lost {
            reason: reason.to_string(),
            lived: None,
        }
    }
}
