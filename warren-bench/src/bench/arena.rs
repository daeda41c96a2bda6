//! The broker objects of one benchmark run: a uniquely named exchange and
//! `user.registered` queues, declared before the run and deleted after it
//! (best effort, also after an error or Ctrl-C).

use std::future::Future;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::BenchError;
use warren::amqp::{self, ConnectOptions};
use warren::config::Settings;
use warren::event::{Event, UserRegistered};
use warren::topology::Topology;

/// One run's settings and topology.
#[derive(Debug, Clone)]
pub struct Arena {
    /// The bench settings with this run's names.
    pub settings: Settings,
    pub topology: Topology,
    /// The exchange is not ours (an HTTP ingress publishes to it): keep it.
    shared_exchange: bool,
}

impl Arena {
    /// Fresh names for run `label`: exchange `warren-bench-<id>` (or the
    /// configured one when `shared_exchange`), service `warren-bench-<id>-<label>`.
    #[must_use]
    pub fn new(base: &Settings, label: &str, shared_exchange: bool) -> Self {
        let id = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let mut settings = base.clone();
        settings.consumer.service = format!("warren-bench-{id}-{label}");
        if !shared_exchange {
            settings.topology.exchange = format!("warren-bench-{id}");
        }
        settings.consumer.event_types = vec![UserRegistered::TYPE.to_owned()];
        let topology = Topology::from_settings(&settings);
        Self {
            settings,
            topology,
            shared_exchange,
        }
    }

    /// The work queue the events land in.
    #[must_use]
    pub fn queue(&self) -> String {
        self.topology.work_queue(UserRegistered::TYPE)
    }

    /// A named connection to the broker.
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] when the broker is unreachable.
    pub async fn connect(&self, role: &str) -> Result<Connection, BenchError> {
        let opts = ConnectOptions::new(&self.settings.amqp, &format!("bench {role}"));
        amqp::connect(&opts)
            .await
            .map_err(|e| BenchError::Broker(e.to_string()))
    }

    /// Declares the exchange, queues and binding.
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] or [`BenchError::Topology`].
    pub async fn declare(&self) -> Result<(), BenchError> {
        within("declaring the bench queues", async {
            let conn = self.connect("setup").await?;
            let channel = channel(&conn).await?;
            let result = self.topology.declare(&channel).await;
            let _ = conn.close(200, "declared".into()).await;
            Ok(result?)
        })
        .await
    }

    /// Waits until `n` consumers are subscribed to the work queue.
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] after 30 s without them.
    pub async fn wait_for_consumers(&self, n: u32) -> Result<(), BenchError> {
        within("waiting for the consumer", self.poll_consumers(n)).await
    }

    async fn poll_consumers(&self, n: u32) -> Result<(), BenchError> {
        let conn = self.connect("setup").await?;
        let queue = self.queue();
        let result = loop {
            let ch = channel(&conn).await?;
            match passive_declare(&ch, &queue).await {
                Ok(q) if q.consumer_count() >= n => break Ok(()),
                Ok(_) => {
                    let _ = ch.close(200, "polled".into()).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => break Err(BenchError::Broker(amqp::describe(&e))),
            }
        };
        let _ = conn.close(200, "ready".into()).await;
        result
    }

    /// Whether queue `name` exists on the broker (a passive declare).
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] when the broker is unreachable.
    pub async fn queue_exists(&self, name: &str) -> Result<bool, BenchError> {
        within("looking up a queue", async {
            let conn = self.connect("setup").await?;
            let ch = channel(&conn).await?;
            // A queue that does not exist closes the channel (404).
            let exists = passive_declare(&ch, name).await.is_ok();
            let _ = conn.close(200, "looked up".into()).await;
            Ok(exists)
        })
        .await
    }

    /// Deletes the queues and (unless shared) the exchange. Best effort: a
    /// failure is logged, never returned.
    pub async fn cleanup(&self) {
        let delete = async {
            self.delete().await;
            Ok(())
        };
        if let Err(e) = within("deleting the bench queues", delete).await {
            tracing::warn!(error = %e, service = self.settings.consumer.service, "bench queues left behind");
        }
    }

    async fn delete(&self) {
        let conn = match self.connect("cleanup").await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, service = self.settings.consumer.service, "cannot clean up the bench queues");
                return;
            }
        };
        for q in self.topology.queues() {
            if let Ok(ch) = channel(&conn).await
                && let Err(e) = ch
                    .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                    .await
            {
                tracing::warn!(queue = q.name, error = %amqp::describe(&e), "cannot delete a bench queue");
            }
        }
        if !self.shared_exchange
            && let Ok(ch) = channel(&conn).await
        {
            let name = self.topology.exchange.as_str();
            if let Err(e) = ch.exchange_delete(name.into(), ExchangeDeleteOptions::default()).await {
                tracing::warn!(exchange = name, error = %amqp::describe(&e), "cannot delete the bench exchange");
            }
        }
        let _ = conn.close(200, "cleaned up".into()).await;
    }
}

/// How long any setup or cleanup step may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `step`, failing with [`BenchError::Broker`] naming `what` after [`SETUP_TIMEOUT`].
///
/// # Errors
///
/// `step`'s, or the timeout.
pub async fn within<T>(what: &str, step: impl Future<Output = Result<T, BenchError>>) -> Result<T, BenchError> {
    tokio::time::timeout(SETUP_TIMEOUT, step).await.unwrap_or_else(|_| {
        Err(BenchError::Broker(format!(
            "{what}: no answer within {SETUP_TIMEOUT:?}"
        )))
    })
}

/// Declares `queue` passively: its counts when it exists, an error (and a
/// closed channel) when it does not.
async fn passive_declare(ch: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default()).await
}

async fn channel(conn: &Connection) -> Result<Channel, BenchError> {
    conn.create_channel()
        .await
        .map_err(|e| BenchError::Broker(amqp::describe(&e)))
}
