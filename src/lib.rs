//! warren: typed `user.*` events between services over RabbitMQ.
//!
//! Producers publish JSON envelopes to a topic exchange with publisher
//! confirms; consumer services receive them on durable per-type queues, hand
//! each to a typed handler, retry failures through delay queues and park the
//! hopeless ones in dead-letter queues.
//!
//! # Layout
//!
//! - [`event`]: the wire contract: [`Envelope`], the [`Event`] trait, the known types,
//!   the AMQP properties, the `x-warren-*` headers and the dead-letter reasons.
//! - [`schema`]: the contract's JSON Schema (draft-07), derived from the types.
//! - [`config`]: layered [`Settings`] (defaults < `warren.toml` < `.env` < environment).
//! - [`topology`]: exchange, queues and bindings as data: declare, export definitions.
//! - [`uri`]: AMQP URIs: parsing, checking, the vhost, password redaction.
//! - [`secrets`]: scrubbing secrets, in every encoding, out of log lines.
//! - [`refusal`]: which permission RabbitMQ refused, on which object, read from its errors.
//! - [`amqp`]: connecting (the nodes of a cluster in turn, TLS, named connections, heartbeats), the reconnect backoff.
//! - [`publisher`]: confirmed, mandatory publishing with many confirms in flight.
//! - [`consumer`]: the consumer service: handlers, acks, retry tiers, dead letters, shutdown.
//! - [`dead`]: listing, grouping, replaying and purging parked events (feature `dead`).
//! - [`http`]: the HTTP ingress (`POST /events`), health probes and `/metrics`.
//! - [`metrics`]: the Prometheus recorder and the name of every metric warren emits.
//! - [`relay`]: the PostgreSQL transactional outbox relay (feature `relay`).
//! - [`process_metrics`]: the process's CPU, memory and file descriptors for `/metrics`.
//! - [`readiness`]: the readiness of a service's parts, which `/readyz` reports.
//! - [`shutdown`]: a shutdown token cancelled by SIGINT or SIGTERM, for a `main` to pass on.
//! - [`webhook`]: the handler that forwards events to an HTTP service, signed (Standard Webhooks).
//! - [`asyncapi`]: the deployment as an AsyncAPI 3.0 document (channels, queues, message schemas).
//!
//! Modules import "down" only: `schema` < `event`, `uri`, `secrets`, `refusal`,
//! `metrics`, `process_metrics`, `readiness`, `shutdown` < `config` < `topology` < `amqp` <
//! `publisher` < `consumer`, `relay` < `dead` < `http` < `webhook`, `asyncapi`
//! (tests/module_graph.rs keeps it so).
//!
//! The `warren` command (its subcommands and the allocator) lives with the
//! binary, in `src/bin/warren/`; the load generator is `warren-bench/`.
//!
//! # Features
//!
//! - `cli` (default): the `warren` binary; implies `http`, `webhook`, `relay` and `dead`.
//! - `relay`: the [`relay`] module (tokio-postgres, deadpool, rustls).
//! - `http`: the [`http`] module (axum).
//! - `webhook`: the [`webhook`] module (reqwest, rustls).
//! - `dead`: the [`dead`] module; with `http`, the `/dead` routes of the ingress.
//!
//! A service that only publishes or consumes depends on warren with
//! `default-features = false` and gets neither clap, nor an HTTP stack.

pub mod amqp;
pub mod asyncapi;
pub mod config;
pub mod consumer;
#[cfg(feature = "dead")]
pub mod dead;
pub mod event;
#[cfg(feature = "http")]
pub mod http;
pub mod metrics;
pub mod process_metrics;
pub mod publisher;
pub mod readiness;
pub mod refusal;
#[cfg(feature = "relay")]
pub mod relay;
pub mod schema;
pub mod secrets;
pub mod shutdown;
pub mod topology;
pub mod uri;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use config::Settings;
pub use event::{Envelope, Event, UserLogin, UserRegistered};
pub use publisher::{PublishError, Publisher};
/// The `schemars` warren derives its schemas with: an [`Event`] type derives
/// `JsonSchema` from it (`#[schemars(crate = "warren::schemars")]`).
pub use schemars;
pub use topology::Topology;

/// The Rust snippets of the README and docs/ compile (as doctests).
#[cfg(doctest)]
mod docs {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/HTTP.md")]
    struct Http;
    #[doc = include_str!("../docs/WEBHOOK.md")]
    struct Webhook;
}
