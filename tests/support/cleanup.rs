//! Broker objects a test declared, deleted when the guard holding them is
//! dropped: at the end of a test that passes, and while a failing one
//! unwinds, so no path leaves queues or exchanges behind on the shared
//! broker (`scripts/broker-litter` checks that none are).
//!
//! Drop cannot await, and the test's own connection may run on the runtime
//! that is unwinding: the objects are deleted from a thread of their own,
//! on a fresh connection made as warren makes its own (node list, TLS).

use std::ops::Deref;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use warren::amqp::ConnectOptions;
use warren::config::AmqpSettings;
use warren::{Settings, Topology};

/// How long deleting may take before the guard gives up (a node a test
/// left unreachable must not hang the test binary).
const PATIENCE: Duration = Duration::from_secs(20);

/// Queues and exchanges to delete when dropped, on the broker of `amqp`
/// (`let _gone = Cleanup::broker().exchange(&name);`: a guard bound to `_`
/// alone would be dropped at once).
/// A name that no longer exists is fine: deleting is idempotent.
#[must_use = "dropping the guard deletes its objects"]
pub struct Cleanup {
    amqp: AmqpSettings,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Cleanup {
    /// Nothing yet, on the broker at `AMQP_URL`.
    pub fn broker() -> Self {
        let mut amqp = Settings::default().amqp;
        amqp.url = super::amqp_url();
        Self::on(&amqp)
    }

    /// Nothing yet, on the broker(s) of `amqp`.
    pub fn on(amqp: &AmqpSettings) -> Self {
        Self {
            amqp: amqp.clone(),
            queues: Vec::new(),
            exchanges: Vec::new(),
        }
    }

    /// Every queue and the exchange of `topology`, on the broker at `AMQP_URL`.
    pub fn of(topology: &Topology) -> Self {
        Self::broker().with_topology(topology)
    }

    /// Every queue and the exchange of the topology of `s` (declared by the
    /// test, or by the warren it runs), on its broker.
    pub fn topology(s: &Settings) -> Self {
        Self::on(&s.amqp).with_topology(&Topology::from_settings(s))
    }

    /// Adds every queue and the exchange of `topology`.
    pub fn with_topology(mut self, topology: &Topology) -> Self {
        self.queues.extend(topology.queues().into_iter().map(|q| q.name));
        self.exchange(&topology.exchange)
    }

    /// Adds a queue.
    pub fn queue(mut self, name: &str) -> Self {
        self.queues.push(name.to_owned());
        self
    }

    /// Adds an exchange.
    pub fn exchange(mut self, name: &str) -> Self {
        self.exchanges.push(name.to_owned());
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.queues.is_empty() && self.exchanges.is_empty() {
            return;
        }
        let outcome = std::thread::scope(|s| s.spawn(|| delete_all(self)).join());
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "the deleting thread panicked".to_owned(),
        };
        // No panic here (it would abort a test already unwinding): the
        // litter check after the suite fails on what stays behind.
        eprintln!(
            "cleanup: could not delete queues {:?} and exchanges {:?}: {failure}",
            self.queues, self.exchanges
        );
    }
}

fn delete_all(c: &Cleanup) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        tokio::time::timeout(PATIENCE, delete_on_broker(c))
            .await
            .unwrap_or_else(|_| Err(format!("not done after {PATIENCE:?}")))
    })
}

async fn delete_on_broker(c: &Cleanup) -> Result<(), String> {
    let conn = warren::amqp::connect(&ConnectOptions::new(&c.amqp, "tests' cleanup"))
        .await
        .map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for q in &c.queues {
        // A channel per object: an error closes the channel it happened on.
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        if let Err(e) = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await {
            errors.push(format!("queue {q}: {e}"));
        }
    }
    for x in &c.exchanges {
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        if let Err(e) = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await
        {
            errors.push(format!("exchange {x}: {e}"));
        }
    }
    let _ = conn.close(200, "cleaned up".into()).await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A topology declared by a test: reads as the [`Topology`], and deletes its
/// queues and exchange when dropped.
#[must_use = "dropping the guard deletes the topology"]
pub struct Declared {
    topology: Topology,
    _cleanup: Cleanup,
}

impl Declared {
    /// `topology`, declared on the broker(s) of `amqp`.
    pub fn new(topology: Topology, amqp: &AmqpSettings) -> Self {
        let cleanup = Cleanup::on(amqp).with_topology(&topology);
        Self {
            topology,
            _cleanup: cleanup,
        }
    }

    /// The topology, no longer deleted when dropped: for a topology in a
    /// vhost that a [`super::admin::Vhost`] guard deletes whole.
    pub fn in_own_vhost(mut self) -> Topology {
        self._cleanup.queues.clear();
        self._cleanup.exchanges.clear();
        self.topology
    }
}

impl Deref for Declared {
    type Target = Topology;

    fn deref(&self) -> &Topology {
        &self.topology
    }
}
