//! LISTEN for the insert trigger's NOTIFY: only a hint to poll now.
//! Notifications sent while this connection is down are lost, which is why
//! the relay polls every `relay.poll_interval` whatever happens here.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::db::Database;
use crate::amqp::Backoff;

/// Keeps a LISTEN connection open on `channel` until `stop`, waking `wake`
/// on every notification; reconnects with backoff when it drops.
pub(super) async fn listen(db: Database, channel: String, wake: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !stop.is_cancelled() {
        let cause = tokio::select! {
            () = stop.cancelled() => return,
            cause = listen_once(&db, &channel, &wake) => cause,
        };
        let wait = backoff.next_delay();
        tracing::debug!(%cause, retry_in = ?wait, "relay LISTEN connection down: polling only until it is back");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One LISTEN connection, until it fails; returns why.
async fn listen_once(db: &Database, channel: &str, wake: &Notify) -> String {
    let (client, mut connection) = match db.connect().await {
        Ok(pair) => pair,
        Err(e) => return e.to_string(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The connection object carries the notifications: drive it here and
    // pass them on.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return "listener stopped".to_owned();
                    }
                }
                Ok(_) => {}
                Err(e) => return super::error::describe(&e),
            }
        }
        "connection closed".to_owned()
    });
    // Quoted: the channel is the (maybe schema-qualified) table name.
    if let Err(e) = client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
        driver.abort();
        return super::error::describe(&e);
    }
    // Rows may have come while nobody listened.
    wake.notify_one();
    while rx.recv().await.is_some() {
        wake.notify_one();
    }
    driver.await.unwrap_or_else(|e| e.to_string())
}
