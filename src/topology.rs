//! The broker objects warren uses, as data: one [`Topology`] value drives
//! `declare()` on a live broker, the RabbitMQ definitions export, and the docs.
//!
//! For service `S` and event type `T`:
//!
//! | object | name | arguments |
//! |---|---|---|
//! | events exchange | `user.events` | topic, durable |
//! | work queue | `S.T` | bound with key `T`; dead-letters to `S.T.dead`; `x-delivery-limit` (quorum) |
//! | retry tier | `S.T.retry.<delay>` | `x-message-ttl`; dead-letters back to `S.T` through the default exchange |
//! | dead letters | `S.T.dead` | a parking lot nothing consumes; never drops (quorum) |
//!
//! Quorum work queues and tiers dead-letter at-least-once
//! (`x-dead-letter-strategy`, which needs `x-overflow: reject-publish`):
//! RabbitMQ's default for quorum queues, at-most-once, drops a dead letter
//! whose target queue has no leader at that moment.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use serde_json::json;

use crate::config::{QueueType, Settings, names};
use crate::refusal::{NOT_FOUND, Permission, Refusal, reply};

mod delete;
pub use delete::{DeleteError, DeleteOptions, Deleted, QueueState};

/// `x-delivery-limit` of quorum `.dead` queues: in effect none. A `.dead`
/// queue has nowhere to dead-letter to, so a message past its limit would
/// be dropped, and browsing it in the console (get, requeue) counts as a
/// delivery. Without the argument RabbitMQ 4.x applies a limit of 20;
/// 3.10 has none but reads -1 and 0 as "drop at the first requeue"
/// (tests/dead_lettering.rs shows it); 4.x reads -1 as "no limit". The
/// largest value both accept is the one limit that is safe on both.
pub const DEAD_DELIVERY_LIMIT: i64 = i32::MAX as i64;

/// A queue argument value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Str(String),
    Int(i64),
}

/// One queue to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: BTreeMap<&'static str, Arg>,
}

/// One exchange-to-queue binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// Everything warren declares for one consumer service.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The topic exchange events are published to.
    pub exchange: String,
    /// Consumer service name: the queue prefix.
    pub service: String,
    /// Event types with a work queue.
    pub event_types: Vec<String>,
    pub queue_type: QueueType,
    /// Delay of each retry tier, in order.
    pub retry_delays: Vec<Duration>,
    /// `x-delivery-limit` of quorum work queues.
    pub delivery_limit: u32,
    /// `x-quorum-initial-group-size` of quorum queues; `None`: the broker's default.
    pub quorum_initial_group_size: Option<u32>,
    /// Virtual host, for the definitions export.
    pub vhost: String,
}

/// Why declaring the topology failed.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The broker has the object with other arguments (PRECONDITION_FAILED).
    #[error(
        "{kind} {name:?} already exists with a different {argument}: {detail}. Configure warren to match, or move to new queues (docs/CLUSTER.md, \"Migrating existing queues\"); deleting it loses its messages"
    )]
    Mismatch {
        kind: &'static str,
        name: String,
        argument: String,
        detail: String,
    },
    /// RabbitMQ refused warren's user a permission it needs for the object.
    #[error(
        "declaring {kind} {name:?}: {refusal}: grant it, or set topology.declare = false and have a user that may declare the topology (warren topology apply)"
    )]
    Refused {
        kind: &'static str,
        name: String,
        /// Boxed: the error stays small for the `Ok` path.
        refusal: Box<Refusal>,
    },
    /// With `topology.declare = false`: an object warren uses does not exist.
    #[error(
        "{kind} {name:?} does not exist: apply the topology first (warren topology apply, as a user with the configure permission), or set topology.declare = true"
    )]
    Missing { kind: &'static str, name: String },
    /// Any other broker error, with the object being declared.
    #[error("declaring {kind} {name:?}: {source}")]
    Broker {
        kind: &'static str,
        name: String,
        #[source]
        source: lapin::Error,
    },
}

impl Topology {
    /// The topology the settings describe.
    #[must_use]
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            exchange: s.topology.exchange.clone(),
            service: s.consumer.service.clone(),
            event_types: s.consumer.event_types.clone(),
            queue_type: s.topology.queue_type,
            retry_delays: s.consumer.retry.tiers(),
            delivery_limit: s.topology.delivery_limit,
            quorum_initial_group_size: s.topology.quorum_initial_group_size,
            vhost: crate::uri::vhost_of(&s.amqp.url),
        }
    }

    /// Work queue of an event type: `S.user.registered`.
    #[must_use]
    pub fn work_queue(&self, event_type: &str) -> String {
        names::work_queue(&self.service, event_type)
    }

    /// Dead-letter queue of an event type: `S.user.registered.dead`.
    #[must_use]
    pub fn dead_queue(&self, event_type: &str) -> String {
        names::dead_queue(&self.work_queue(event_type))
    }

    /// Retry tier `tier` (0-based) of an event type: `S.user.registered.retry.10s`.
    #[must_use]
    pub fn retry_queue(&self, event_type: &str, tier: usize) -> Option<String> {
        let delay = self.retry_delays.get(tier)?;
        Some(names::retry_queue(&self.work_queue(event_type), *delay))
    }

    /// Every queue, work queue first, then its tiers, then its dead letters.
    #[must_use]
    pub fn queues(&self) -> Vec<QueueSpec> {
        let mut out = Vec::new();
        for t in &self.event_types {
            let work = self.work_queue(t);
            let mut args = self.dead_lettering_args(&self.dead_queue(t));
            if self.queue_type == QueueType::Quorum {
                args.insert("x-delivery-limit", Arg::Int(i64::from(self.delivery_limit)));
            }
            out.push(QueueSpec {
                name: work.clone(),
                arguments: args,
            });
            for (tier, delay) in self.retry_delays.iter().enumerate() {
                let mut args = self.dead_lettering_args(&work);
                args.insert(
                    "x-message-ttl",
                    Arg::Int(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                );
                let name = self.retry_queue(t, tier).expect("tier in range");
                out.push(QueueSpec { name, arguments: args });
            }
            let mut args = self.base_args();
            if self.queue_type == QueueType::Quorum {
                args.insert("x-delivery-limit", Arg::Int(DEAD_DELIVERY_LIMIT));
            }
            out.push(QueueSpec {
                name: self.dead_queue(t),
                arguments: args,
            });
        }
        out
    }

    fn base_args(&self) -> BTreeMap<&'static str, Arg> {
        let mut args = BTreeMap::from([("x-queue-type", Arg::Str(self.queue_type.as_str().to_owned()))]);
        if self.queue_type == QueueType::Quorum
            && let Some(size) = self.quorum_initial_group_size
        {
            args.insert("x-quorum-initial-group-size", Arg::Int(i64::from(size)));
        }
        args
    }

    /// Arguments of a queue that dead-letters to queue `target` through the
    /// default exchange; at-least-once when quorum.
    fn dead_lettering_args(&self, target: &str) -> BTreeMap<&'static str, Arg> {
        let mut args = self.base_args();
        args.insert("x-dead-letter-exchange", Arg::Str(String::new()));
        args.insert("x-dead-letter-routing-key", Arg::Str(target.to_owned()));
        if self.queue_type == QueueType::Quorum {
            args.insert("x-dead-letter-strategy", Arg::Str("at-least-once".into()));
            args.insert("x-overflow", Arg::Str("reject-publish".into()));
        }
        args
    }

    /// Work queues bound to the exchange, one key each.
    #[must_use]
    pub fn bindings(&self) -> Vec<BindingSpec> {
        self.event_types
            .iter()
            .map(|t| BindingSpec {
                exchange: self.exchange.clone(),
                queue: self.work_queue(t),
                routing_key: t.clone(),
            })
            .collect()
    }

    /// Declares the exchange, queues and bindings. Idempotent.
    ///
    /// A mismatch closes the channel (the broker's rule): use a channel you
    /// can drop.
    ///
    /// # Errors
    ///
    /// [`TopologyError::Mismatch`] naming the object and argument that differ
    /// from what the broker has, [`TopologyError::Refused`] naming the
    /// permission RabbitMQ refused, or [`TopologyError::Broker`].
    pub async fn declare(&self, channel: &Channel) -> Result<(), TopologyError> {
        self.declare_exchange(channel).await?;
        for q in self.queues() {
            let opts = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(q.name.as_str().into(), opts, field_table(&q.arguments))
                .await
                .map_err(|e| classify("queue", &q.name, e, queue_permissions))?;
        }
        for b in self.bindings() {
            channel
                .queue_bind(
                    b.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| classify("binding of queue", &b.queue, e, bind_permission))?;
        }
        Ok(())
    }

    /// Checks that the exchange and every queue exist, without declaring
    /// them (passive declares: no permission needed), for
    /// `topology.declare = false`. Arguments and bindings cannot be checked
    /// this way.
    ///
    /// A missing object closes the channel: use a channel you can drop.
    ///
    /// # Errors
    ///
    /// [`TopologyError::Missing`] naming the first missing object, or
    /// [`TopologyError::Broker`].
    pub async fn check(&self, channel: &Channel) -> Result<(), TopologyError> {
        self.check_exchange(channel).await?;
        for q in self.queues() {
            let opts = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(q.name.as_str().into(), opts, FieldTable::default())
                .await
                .map_err(|e| missing("queue", &q.name, e))?;
        }
        Ok(())
    }

    /// Checks that the events exchange exists (what a pure publisher needs).
    ///
    /// # Errors
    ///
    /// As [`Topology::check`].
    pub async fn check_exchange(&self, channel: &Channel) -> Result<(), TopologyError> {
        let opts = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                opts,
                FieldTable::default(),
            )
            .await
            .map_err(|e| missing("exchange", &self.exchange, e))
    }

    /// Declares only the events exchange (what a pure publisher needs).
    ///
    /// # Errors
    ///
    /// As [`Topology::declare`].
    pub async fn declare_exchange(&self, channel: &Channel) -> Result<(), TopologyError> {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                opts,
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify("exchange", &self.exchange, e, |_| &[Permission::Configure]))
    }

    /// RabbitMQ definitions (the format of `rabbitmqctl export_definitions`),
    /// loadable with `rabbitmqctl import_definitions` or `load_definitions`.
    #[must_use]
    pub fn to_definitions(&self) -> serde_json::Value {
        let queues: Vec<_> = self
            .queues()
            .into_iter()
            .map(|q| {
                let args: serde_json::Map<String, serde_json::Value> = q
                    .arguments
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Arg::Str(s) => json!(s),
                            Arg::Int(i) => json!(i),
                        };
                        ((*k).to_owned(), v)
                    })
                    .collect();
                json!({"name": q.name, "vhost": self.vhost, "durable": true, "auto_delete": false, "arguments": args})
            })
            .collect();
        let bindings: Vec<_> = self
            .bindings()
            .into_iter()
            .map(|b| {
                json!({"source": b.exchange, "vhost": self.vhost, "destination": b.queue,
                       "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}})
            })
            .collect();
        json!({
            "vhosts": [{"name": self.vhost}],
            "exchanges": [{"name": self.exchange, "vhost": self.vhost, "type": "topic", "durable": true,
                           "auto_delete": false, "internal": false, "arguments": {}}],
            "queues": queues,
            "bindings": bindings,
        })
    }

    /// [`Topology::to_definitions`] as the pretty JSON committed in `definitions/`.
    #[must_use]
    pub fn to_definitions_string(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_definitions()).expect("definitions serialize");
        s.push('\n');
        s
    }
}

fn field_table(args: &BTreeMap<&'static str, Arg>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let v = match v {
            Arg::Str(s) => AMQPValue::LongString(s.as_str().into()),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        t.insert(ShortString::from(*k), v);
    }
    t
}

/// A bind needs write on the queue and read on the exchange.
fn bind_permission(kind: &str) -> &'static [Permission] {
    if kind == "queue" {
        &[Permission::Write]
    } else {
        &[Permission::Read]
    }
}

/// Declaring a queue needs configure on it and, for a dead-letter exchange
/// (work queues and retry tiers have one), read on it and write on that
/// exchange (`amq.default`).
fn queue_permissions(kind: &str) -> &'static [Permission] {
    if kind == "queue" {
        &[Permission::Configure, Permission::Read]
    } else {
        &[Permission::Write]
    }
}

/// A passive declare's error: [`TopologyError::Missing`] for NOT_FOUND.
fn missing(kind: &'static str, name: &str, e: lapin::Error) -> TopologyError {
    match reply(&e) {
        Some((NOT_FOUND, _)) => TopologyError::Missing {
            kind,
            name: name.to_owned(),
        },
        _ => TopologyError::Broker {
            kind,
            name: name.to_owned(),
            source: e,
        },
    }
}

/// Turns "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue …"
/// into a [`TopologyError::Mismatch`] naming queue and argument, and
/// ACCESS_REFUSED into a [`TopologyError::Refused`] naming the permission
/// (`implied` by the operation, for brokers that do not say it).
fn classify(
    kind: &'static str,
    name: &str,
    e: lapin::Error,
    implied: fn(&str) -> &'static [Permission],
) -> TopologyError {
    if let Some(refusal) = Refusal::from_error(&e, implied) {
        return TopologyError::Refused {
            kind,
            name: name.to_owned(),
            refusal: Box::new(refusal),
        };
    }
    match parse_mismatch(&e.to_string()) {
        Some((argument, detail)) => TopologyError::Mismatch {
            kind,
            name: name.to_owned(),
            argument,
            detail,
        },
        None => TopologyError::Broker {
            kind,
            name: name.to_owned(),
            source: e,
        },
    }
}

fn parse_mismatch(text: &str) -> Option<(String, String)> {
    if !text.contains("PRECONDITION_FAILED") && !text.contains("inequivalent") {
        return None;
    }
    let argument = text
        .split("inequivalent arg '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .map_or_else(|| "argument".to_owned(), |a| format!("argument {a}"));
    let detail = text.split_once(" - ").map_or(text, |(_, d)| d).to_owned();
    Some((argument, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology::from_settings(&Settings::default())
    }

    #[test]
    fn names_follow_the_design() {
        let t = topo();
        assert_eq!(t.work_queue("user.registered"), "warren.user.registered");
        assert_eq!(t.dead_queue("user.login"), "warren.user.login.dead");
        assert_eq!(t.retry_queue("user.login", 2).unwrap(), "warren.user.login.retry.1m");
        assert_eq!(t.retry_queue("user.login", 3), None);
        let names: Vec<_> = t.queues().into_iter().map(|q| q.name).collect();
        assert_eq!(names.len(), 10);
        assert!(names.contains(&"warren.user.registered.retry.10s".to_owned()));
    }

    #[test]
    fn retry_tiers_return_to_their_own_queue_via_default_exchange() {
        let t = topo();
        let q = t
            .queues()
            .into_iter()
            .find(|q| q.name == "warren.user.login.retry.1s")
            .unwrap();
        assert_eq!(q.arguments["x-message-ttl"], Arg::Int(1000));
        assert_eq!(q.arguments["x-dead-letter-exchange"], Arg::Str(String::new()));
        assert_eq!(
            q.arguments["x-dead-letter-routing-key"],
            Arg::Str("warren.user.login".into())
        );
    }

    #[test]
    fn work_queue_dead_letters_to_its_parking_lot_with_delivery_limit() {
        let t = topo();
        let q = t.queues().into_iter().find(|q| q.name == "warren.user.login").unwrap();
        assert_eq!(
            q.arguments["x-dead-letter-routing-key"],
            Arg::Str("warren.user.login.dead".into())
        );
        assert_eq!(q.arguments["x-delivery-limit"], Arg::Int(10));
        assert_eq!(q.arguments["x-queue-type"], Arg::Str("quorum".into()));
        let classic = Topology {
            queue_type: QueueType::Classic,
            ..t
        };
        let q = classic
            .queues()
            .into_iter()
            .find(|q| q.name == "warren.user.login")
            .unwrap();
        assert!(
            !q.arguments.contains_key("x-delivery-limit"),
            "classic queues have no delivery limit"
        );
    }

    #[test]
    fn quorum_work_queues_and_tiers_dead_letter_at_least_once() {
        let t = topo();
        for name in ["warren.user.login", "warren.user.login.retry.10s"] {
            let q = t.queues().into_iter().find(|q| q.name == name).unwrap();
            assert_eq!(
                q.arguments["x-dead-letter-strategy"],
                Arg::Str("at-least-once".into()),
                "{name}"
            );
            assert_eq!(q.arguments["x-overflow"], Arg::Str("reject-publish".into()), "{name}");
        }
        let classic = Topology {
            queue_type: QueueType::Classic,
            ..t
        };
        assert!(
            classic
                .queues()
                .iter()
                .all(|q| !q.arguments.contains_key("x-dead-letter-strategy")),
            "a quorum-only argument"
        );
    }

    #[test]
    fn dead_queues_never_drop_and_nothing_else_is_set_on_them() {
        let t = topo();
        let q = t
            .queues()
            .into_iter()
            .find(|q| q.name == "warren.user.login.dead")
            .unwrap();
        assert_eq!(q.arguments["x-delivery-limit"], Arg::Int(2_147_483_647));
        assert_eq!(q.arguments.len(), 2, "{:?}", q.arguments);
    }

    #[test]
    fn the_initial_group_size_is_the_brokers_unless_set() {
        let t = topo();
        assert!(
            t.queues()
                .iter()
                .all(|q| !q.arguments.contains_key("x-quorum-initial-group-size"))
        );
        let three = Topology {
            quorum_initial_group_size: Some(3),
            ..t.clone()
        };
        assert!(
            three
                .queues()
                .iter()
                .all(|q| q.arguments.get("x-quorum-initial-group-size") == Some(&Arg::Int(3)))
        );
        let classic = Topology {
            queue_type: QueueType::Classic,
            ..three
        };
        assert!(
            classic
                .queues()
                .iter()
                .all(|q| !q.arguments.contains_key("x-quorum-initial-group-size"))
        );
    }

    #[test]
    fn definitions_have_exchange_queues_and_bindings() {
        let d = topo().to_definitions();
        assert_eq!(d["exchanges"][0]["name"], "user.events");
        assert_eq!(d["exchanges"][0]["type"], "topic");
        assert_eq!(d["queues"].as_array().unwrap().len(), 10);
        assert_eq!(d["bindings"].as_array().unwrap().len(), 2);
        assert_eq!(d["bindings"][0]["routing_key"], "user.registered");
        assert_eq!(d["vhosts"][0]["name"], "/");
    }

    #[test]
    fn committed_definitions_match_the_code() {
        let committed = include_str!("../definitions/definitions.json");
        assert_eq!(
            committed,
            topo().to_definitions_string(),
            "definitions/definitions.json drifted: regenerate it with `cargo run -- topology export > definitions/definitions.json`"
        );
    }

    #[test]
    fn mismatch_error_names_the_argument() {
        let text = "ACCESS_REFUSED? no: PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '5000' of type 'signedint' but current is none";
        let (argument, detail) = parse_mismatch(text).unwrap();
        assert_eq!(argument, "argument x-message-ttl");
        assert!(detail.starts_with("inequivalent arg"), "{detail}");
        assert_eq!(parse_mismatch("NOT_FOUND - no exchange"), None);
    }
}
