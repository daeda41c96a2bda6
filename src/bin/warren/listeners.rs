//! The sockets `warren run` and `warren ingress` serve on, bound before
//! anything else starts: a port already taken is an error at once, before a
//! consumer, the relay or a publisher has touched the broker or a message.

use std::fmt::Display;

use anyhow::Context;
use tokio::net::{TcpListener, ToSocketAddrs};
use warren::Settings;

/// The ingress's listener, and the metrics' when `metrics.listen` is set.
pub struct Listeners {
    pub ingress: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `ingress.listen`, then `metrics.listen` when set.
    ///
    /// # Errors
    ///
    /// An address that cannot be bound (taken, not local, no permission),
    /// named with its setting.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let ingress = bind(settings.ingress.listen, "ingress.listen").await?;
        let metrics = match settings.metrics.listen {
            Some(addr) => Some(bind(addr, "metrics.listen").await?),
            None => None,
        };
        Ok(Self { ingress, metrics })
    }
}

async fn bind(addr: impl ToSocketAddrs + Display, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({setting})"))
}
