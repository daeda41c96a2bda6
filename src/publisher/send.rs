//! The publish path: wait for a link, publish mandatory, await the confirm
//! under the shared deadline, and re-send after a reconnect when allowed.

use std::sync::Arc;
use std::time::Instant;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::watch;

use super::error::{PublishError, publish_failed};
use super::supervisor::Link;
use super::{Publisher, metrics};

impl Publisher {
    /// Sends to `to` with the properties `properties()` makes, once per attempt.
    pub(super) async fn send_with(
        &self,
        to: Destination<'_>,
        properties: impl FnMut() -> BasicProperties,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.inner.confirm_timeout;
        let result = self.send_until(&to, properties, started, deadline).await;
        if !self.inner.exchange.is_empty() && to.exchange == self.inner.exchange {
            match &result {
                Ok(()) => self.inner.metrics.confirmed(to.routing_key, started.elapsed()),
                Err(_) => metrics::failed(to.routing_key, &result, started.elapsed()),
            }
        }
        result
    }

    async fn send_until(
        &self,
        to: &Destination<'_>,
        mut properties: impl FnMut() -> BasicProperties,
        started: Instant,
        deadline: tokio::time::Instant,
    ) -> Result<(), PublishError> {
        let timeout = self.inner.confirm_timeout;
        // The confirm's deadline, shared with the publishes that started
        // about now (waiting for a connection keeps the exact `deadline`).
        let expiry = self.inner.expiries.around(started);
        // A receiver of our own only to wait for a (new) connection.
        let mut waiting: Option<watch::Receiver<Option<Arc<Link>>>> = None;
        loop {
            // Fast path: connected (no waiting, no timer).
            let current = self.inner.link.borrow().clone();
            let link = match current {
                Some(link) => link,
                None => match tokio::time::timeout_at(
                    deadline,
                    waiting
                        .get_or_insert_with(|| self.inner.link.clone())
                        .wait_for(Option::is_some),
                )
                .await
                {
                    Ok(Ok(link)) => link.clone().expect("waited for Some"),
                    Ok(Err(_)) => {
                        return Err(self
                            .inner
                            .health
                            .fatal()
                            .unwrap_or_else(|| PublishError::ConnectionLost("publisher stopped".into())));
                    }
                    Err(_) => {
                        return Err(PublishError::ConnectionLost(format!(
                            "not connected to RabbitMQ for {timeout:?}"
                        )));
                    }
                },
            };
            let sent = tokio::select! {
                biased;
                sent = send_on(&link.channel, to, properties()) => sent,
                () = expiry.expired() => return Err(PublishError::Timeout(timeout)),
            };
            match sent {
                Err(PublishError::Refused(refusal)) => {
                    // Until the supervisor has a channel again, the refusal
                    // is why this publisher cannot publish.
                    self.inner.health.refused(&refusal);
                    return Err(PublishError::Refused(refusal));
                }
                Err(PublishError::ConnectionLost(reason)) => {
                    if !self.inner.resend || self.inner._supervisor.is_none() {
                        return Err(PublishError::ConnectionLost(reason));
                    }
                    tracing::debug!(%reason, "connection lost before the confirm: sending again after reconnect");
                    // Wait for the supervisor to replace this link.
                    let link_rx = waiting.get_or_insert_with(|| self.inner.link.clone());
                    let _ = tokio::time::timeout_at(
                        deadline,
                        link_rx.wait_for(|l| l.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &link))),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }
}

/// Where a message goes, and its body.
pub(super) struct Destination<'a> {
    pub(super) exchange: &'a str,
    pub(super) routing_key: &'a str,
    pub(super) body: &'a [u8],
}

async fn send_on(channel: &Channel, to: &Destination<'_>, properties: BasicProperties) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            to.exchange.into(),
            to.routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            to.body,
            properties,
        )
        .await
        .map_err(publish_failed)?;
    match confirm.await.map_err(publish_failed)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
            exchange: to.exchange.to_owned(),
            routing_key: to.routing_key.to_owned(),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked {
            routing_key: to.routing_key.to_owned(),
        }),
        Confirmation::NotRequested => Err(PublishError::Setup("publisher confirms are not enabled".into())),
    }
}
