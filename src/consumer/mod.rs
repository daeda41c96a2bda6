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
//! No failing message is ever requeued in place.

mod acks;
mod handler;
pub mod headers;
mod policy;
mod process;
mod route;
mod worker;

use std::sync::Arc;
use std::time::Duration;

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
    /// TLS to the broker is set up wrong (CA, host name, client certificate)
    /// at start: reported, not retried.
    #[error(transparent)]
    Tls(ConnectError),
}

/// A consumer service: one work queue per registered event type.
pub struct Consumer {
    settings: Settings,
    routes: Vec<(Arc<dyn Route>, Limits)>,
    /// Made once: its reconnects go round the nodes of `amqp.url`.
    connect: ConnectOptions,
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
        }
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
    /// capped, jittered backoff.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Topology`] when the broker's queues do not match the
    /// settings; [`ConsumerError::Tls`] when no node can be reached over TLS
    /// at start; [`ConsumerError::NoHandlers`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        if self.routes.is_empty() {
            return Err(ConsumerError::NoHandlers);
        }
        let topology = Arc::new(self.topology());
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        let mut started = false;
        loop {
            match self.session(&topology, &shutdown, started).await {
                Ok(()) => return Ok(()),
                Err(SessionError::Fatal(e)) => return Err(e),
                Err(SessionError::Lost { reason, connected }) => {
                    if connected {
                        started = true;
                        backoff.reset();
                    }
                    metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "consumer").set(0.0);
                    let wait = backoff.next_delay();
                    warn!(%reason, retry_in = ?wait, "consumer lost the broker; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// One connection's life: connect and declare, run a worker per queue
    /// until `shutdown` or until one of them loses its channel. `started`:
    /// an earlier session consumed (a TLS failure is then retried).
    async fn session(
        &self,
        topology: &Arc<Topology>,
        shutdown: &CancellationToken,
        started: bool,
    ) -> Result<(), SessionError> {
        let (conn, republisher) = self.connect(topology, started).await?;
        metrics::gauge!(crate::metrics::BROKER_CONNECTED, "role" => "consumer").set(1.0);
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
                connected: true,
            }),
            _ => Ok(()),
        }
    }

    /// Connects, declares the topology and opens the republisher (for
    /// retries and dead letters) on the same connection.
    async fn connect(&self, topology: &Topology, started: bool) -> Result<(Arc<Connection>, Publisher), SessionError> {
        let s = &self.settings;
        let conn = match amqp::connect(&self.connect).await {
            Ok(conn) => Arc::new(conn),
            Err(e @ ConnectError::Tls { .. }) if !started => return Err(SessionError::Fatal(ConsumerError::Tls(e))),
            Err(e) => return Err(SessionError::setup(e)),
        };
        let setup = conn
            .create_channel()
            .await
            .map_err(|e| SessionError::setup(amqp::describe(&e)))?;
        match topology.declare(&setup).await {
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
    /// `connected`: the session got as far as consuming before it was lost.
    Lost {
        reason: String,
        connected: bool,
    },
}

impl SessionError {
    fn setup(reason: impl ToString) -> Self {
        Self::Lost {
            reason: reason.to_string(),
            connected: false,
        }
    }
}
