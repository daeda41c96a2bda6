//! warren: typed `user.*` events between services over RabbitMQ.
//!
//! Producers publish JSON envelopes to a topic exchange with publisher
//! confirms; consumer services receive them on durable per-type queues, hand
//! each to a typed handler, retry failures through delay queues and park the
//! hopeless ones in dead-letter queues.
//!
//! # Layout
//!
//! - [`event`]: the wire contract: [`Envelope`], the [`Event`] trait, the known types.
//! - [`config`]: layered [`Settings`] (defaults < `warren.toml` < `.env` < environment).
//! - [`topology`]: exchange, queues and bindings as data: declare, export definitions.
//! - [`uri`]: AMQP URIs: parsing, checking, the vhost, password redaction.
//! - [`amqp`]: connecting (the nodes of a cluster in turn, TLS, named connections, heartbeats), the reconnect backoff.
//! - [`publisher`]: confirmed, mandatory publishing with many confirms in flight.
//! - [`consumer`]: the consumer service: handlers, acks, retry tiers, dead letters, shutdown.
//! - [`http`]: the HTTP ingress (`POST /events`), health probes and `/metrics`.
//! - [`metrics`]: the Prometheus recorder and the name of every metric warren emits.
//! - [`webhook`]: the handler that forwards events to an HTTP service, signed (Standard Webhooks).
//!
//! Modules import "down" only: `event`, `uri`, `metrics` < `config` <
//! `topology` < `amqp` < `publisher` < `consumer`, `http` < `webhook`
//! (tests/module_graph.rs keeps it so).
//!
//! The `warren` command (its subcommands, the `bench` load generator and the
//! allocator) lives with the binary, in `src/bin/warren/`.
//!
//! # Features
//!
//! - `cli` (default): the `warren` binary; implies `http` and `webhook`.
//! - `http`: the [`http`] module (axum).
//! - `webhook`: the [`webhook`] module (reqwest, rustls).
//!
//! A service that only publishes or consumes depends on warren with
//! `default-features = false` and gets neither clap, nor an HTTP stack.

pub mod amqp;
pub mod config;
pub mod consumer;
pub mod event;
#[cfg(feature = "http")]
pub mod http;
pub mod metrics;
pub mod publisher;
pub mod topology;
pub mod uri;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use config::Settings;
pub use event::{Envelope, Event, UserLogin, UserRegistered};
pub use publisher::{PublishError, Publisher};
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
