//! The end-of-pass marker: an empty message a pass puts at the tail of the
//! queue before it starts, so it knows it has gone round when it gets it
//! back. Counting instead does not work on quorum queues: their reported
//! message counts (passive declare, `basic.get-ok`) lag behind the acks of
//! a pass that just ended, and a pass that takes too many or too few
//! messages rotates the queue out of order.
//!
//! Each pass holds an exclusive queue named after its id while it runs
//! (exclusive queues die with their connection), so a later pass that meets
//! the marker of a pass that was killed can tell it is stale and drop it,
//! and one that meets the marker of a pass still running keeps it.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::DeadError;

/// The header naming the pass a marker belongs to. Not `x-warren-*`: the
/// consumer strips those, and a marker moved to a work queue by hand must
/// still be recognisable when it comes back to `.dead`.
pub(crate) const HEADER: &str = "warren-dead-pass";

/// What a message taken during a pass is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A parked message.
    Message,
    /// This pass's marker: every message before it has been visited.
    Ours,
    /// The marker of a pass that is still running: kept.
    Live,
    /// The marker of a pass that died: dropped.
    Stale,
}

/// This pass's marker.
pub(crate) struct Marker {
    id: String,
}

fn liveness_queue(id: &str) -> String {
    format!("warren.dead-pass.{id}")
}

impl Marker {
    /// Declares this pass's liveness queue and publishes the marker to the
    /// tail of `queue`, confirmed.
    pub(crate) async fn place(ch: &Channel, queue: &str) -> Result<Self, DeadError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(liveness_queue(&id).as_str().into(), opts, FieldTable::default())
            .await
            .map_err(|e| DeadError::broker("declaring the pass's queue", &e))?;
        let mut headers = FieldTable::default();
        headers.insert(HEADER.into(), AMQPValue::LongString(id.as_str().into()));
        let props = BasicProperties::default().with_headers(headers);
        let opts = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = ch
            .basic_publish("".into(), queue.into(), opts, b"", props)
            .await
            .map_err(|e| DeadError::broker(&format!("publishing the pass marker to {queue}"), &e))?
            .await
            .map_err(|e| DeadError::broker("waiting for the marker's confirm", &e))?;
        match confirm {
            Confirmation::Ack(None) => Ok(Self { id }),
            Confirmation::Ack(Some(_)) => Err(DeadError::Unroutable(queue.to_owned())),
            other => Err(DeadError::Refused(format!("{other:?}"))),
        }
    }

    /// What `props` belong to: a parked message, or a marker.
    pub(crate) async fn classify(&self, conn: &Connection, props: &BasicProperties) -> Seen {
        let Some(id) = crate::event::headers::text(props, HEADER) else {
            return Seen::Message;
        };
        if id == self.id {
            return Seen::Ours;
        }
        if is_alive(conn, &id).await {
            Seen::Live
        } else {
            Seen::Stale
        }
    }

    /// Deletes the liveness queue (closing the connection would too).
    pub(crate) async fn remove(self, ch: &Channel) {
        let _ = ch
            .queue_delete(liveness_queue(&self.id).as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Whether the pass `id` still runs: its exclusive queue exists (a passive
/// declare of another connection's exclusive queue is refused with 405).
/// In doubt, alive: keeping a stale marker costs a message's copy, dropping
/// a live one makes that pass rotate twice.
async fn is_alive(conn: &Connection, id: &str) -> bool {
    let Ok(ch) = conn.create_channel().await else {
        return true;
    };
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(liveness_queue(id).as_str().into(), opts, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = ch.close(200, "checked".into()).await;
            true
        }
        Err(e) => !matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404),
    }
}
