//! Reading a `.dead` queue without changing it: one pass that takes each
//! message that was in the queue when the pass began, exactly once, and
//! either copies it to the tail of the queue (keep), publishes it elsewhere
//! (move), or drops it (remove), acking the original only after the copy is
//! confirmed (or the removal is committed by the caller).
//!
//! Why not `basic.get` + requeue: a requeue puts the message back at the
//! head and, on a quorum queue, counts as a failed delivery (3.10 counts
//! every return), so browsing would walk messages towards `x-delivery-limit`.
//! A copy is a new message: same body, properties and headers, no delivery
//! count. A pass puts a marker at the tail first and takes messages until it
//! gets the marker back (see [`super::marker`]): the messages before it are
//! the old ones, in order, and copies and new arrivals all go behind it; a
//! whole pass therefore leaves the old messages in their order. An interrupted pass (kill -9, broker gone) returns the
//! unacked originals to the queue: nothing is lost, and a message whose copy
//! was confirmed but whose ack was not sent is there twice.

use lapin::PublisherConfirm;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio_util::sync::CancellationToken;

use super::DeadError;
use super::marker::{Marker, Seen};
use crate::event::headers::without_expiration;

/// Copies waiting for their confirm before their originals are acked.
///
/// Small on purpose: a quorum queue's client in the broker (3.10) holds
/// back acks (settles) once a channel has more than
/// `quorum_commands_soft_limit` (32) commands in flight, and an ack still
/// held back when the channel closes is lost: the broker then returns that
/// message to the head of the queue with its delivery count raised, while
/// its copy is at the tail. Copies plus acks plus the get stay far below it.
const WINDOW: usize = 8;

/// What becomes of one message of the pass.
#[derive(Debug)]
pub(crate) enum Action {
    /// Copied to the tail of its queue, unchanged.
    Keep,
    /// Published to `queue` through the default exchange with `properties`.
    Move {
        queue: String,
        properties: Box<BasicProperties>,
    },
    /// Dropped once [`Visitor::commit`] returns.
    Remove,
}

/// Decides each message's fate; told how it ended.
pub(crate) trait Visitor: Send {
    fn visit(&mut self, queue: &str, message: &Delivery) -> Action;

    /// Called before removed messages are acked: make what they were
    /// exported to durable.
    ///
    /// # Errors
    ///
    /// A message: the removals are not acked, and stay in the queue.
    fn commit(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// A move or removal whose original is now gone from the queue.
    fn done(&mut self, _queue: &str, _tag: u64) {}
}

/// How a pass over one queue went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Messages taken from the queue.
    pub seen: u64,
    /// Messages whose copy, move or export may exist while the original is
    /// still in the queue (a confirm or an ack was lost): possible duplicates.
    pub unsettled: u64,
}

struct Pending {
    tag: u64,
    /// The copy's or move's confirm; `None` for a removal.
    confirm: Option<PublisherConfirm>,
    /// A pass marker: not the visitor's, never exported.
    marker: bool,
}

impl Pending {
    /// A marker acked away without a copy.
    fn dropped(tag: u64) -> Self {
        Self {
            tag,
            confirm: None,
            marker: true,
        }
    }
}

/// The messages ready in `queue` now, or `None` when it does not exist.
///
/// # Errors
///
/// [`DeadError::Broker`] for anything but a missing queue.
pub(crate) async fn count(conn: &Connection, queue: &str) -> Result<Option<u32>, DeadError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| DeadError::broker("opening a channel", &e))?;
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    // A missing queue closes the channel: that is why it has one of its own.
    match ch.queue_declare(queue.into(), opts, FieldTable::default()).await {
        Ok(q) => {
            let _ = ch.close(200, "counted".into()).await;
            Ok(Some(q.message_count()))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(DeadError::broker(&format!("counting {queue}"), &e)),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

/// One pass over `queue`, stopping early (its window settled) when `stop`
/// is cancelled. `progress` is told after each message.
///
/// # Errors
///
/// [`DeadError`] when the broker fails or refuses a copy, or a commit fails;
/// the originals not yet acked stay in the queue.
pub(crate) async fn pass(
    conn: &Connection,
    queue: &str,
    visitor: &mut dyn Visitor,
    stop: &CancellationToken,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Pass, DeadError> {
    let Some(declared) = count(conn, queue).await? else {
        return Ok(Pass::default());
    };
    let ch = confirm_channel(conn).await?;
    let marker = Marker::place(&ch, queue).await?;
    // Should someone take the marker away (a console "Move messages"
    // mid-pass), stop after what the queue could hold rather than go round
    // forever.
    let guard = 2 * u64::from(declared) + 1000;
    let mut out = Pass::default();
    let mut pending = Vec::with_capacity(WINDOW);
    let mut result = Ok(());
    let mut taken = 0;
    while taken < guard && !stop.is_cancelled() {
        let message = match take(&ch, queue).await {
            Ok(Some(m)) => m,
            Ok(None) => break, // the marker is gone: someone else took messages
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        taken += 1;
        let seen = marker.classify(conn, &message.properties).await;
        let action = match seen {
            Seen::Ours | Seen::Stale => {
                pending.push(Pending::dropped(message.delivery_tag));
                if seen == Seen::Ours {
                    break;
                }
                continue;
            }
            Seen::Live => Action::Keep,
            Seen::Message => {
                out.seen += 1;
                visitor.visit(queue, &message)
            }
        };
        match send(&ch, queue, &message, action).await {
            Ok(confirm) => pending.push(Pending {
                tag: message.delivery_tag,
                confirm,
                marker: seen != Seen::Message,
            }),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        if pending.len() >= WINDOW {
            result = settle(&ch, queue, &mut pending, visitor, &mut out).await;
            if result.is_err() {
                break;
            }
        }
        progress(out.seen);
    }
    let last = settle(&ch, queue, &mut pending, visitor, &mut out).await;
    marker.remove(&ch).await;
    // Closing returns whatever is still unacked to the queue.
    let _ = ch.close(200, "pass done".into()).await;
    result.and(last).map(|()| out)
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, DeadError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| DeadError::broker("opening a channel", &e))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| DeadError::broker("enabling confirms", &e))?;
    Ok(ch)
}

/// The message at the head of `queue`, unacked.
async fn take(ch: &Channel, queue: &str) -> Result<Option<Delivery>, DeadError> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map(|m| m.map(|m| m.delivery))
        .map_err(|e| DeadError::broker(&format!("reading {queue}"), &e))
}

/// Publishes the copy or move of `message`; `None` for a removal.
async fn send(
    ch: &Channel,
    queue: &str,
    message: &Delivery,
    action: Action,
) -> Result<Option<PublisherConfirm>, DeadError> {
    let (to, properties) = match action {
        Action::Remove => return Ok(None),
        Action::Keep => (queue.to_owned(), copy_properties(&message.properties)),
        Action::Move { queue, properties } => (queue, *properties),
    };
    let opts = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    ch.basic_publish("".into(), to.as_str().into(), opts, &message.data, properties)
        .await
        .map(Some)
        .map_err(|e| DeadError::broker(&format!("publishing to {to}"), &e))
}

/// The properties of a kept copy: all of the original's, without the
/// broker's delivery count (a copy is a new message; the quorum queue
/// counts its own returns of it from zero) and without `expiration` (a
/// parked copy must not expire; the value stays in a header).
pub(crate) fn copy_properties(original: &BasicProperties) -> BasicProperties {
    let original = &without_expiration(original);
    let Some(headers) = original.headers() else {
        return original.clone();
    };
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != "x-delivery-count" {
            kept.insert(k.clone(), v.clone());
        }
    }
    original.clone().with_headers(kept)
}

/// Waits for every pending confirm in order and acks its original. Stops
/// acking at the first failure; what is left unacked goes back to the queue.
async fn settle(
    ch: &Channel,
    queue: &str,
    pending: &mut Vec<Pending>,
    visitor: &mut dyn Visitor,
    out: &mut Pass,
) -> Result<(), DeadError> {
    if pending.iter().any(|p| p.confirm.is_none() && !p.marker)
        && let Err(e) = visitor.commit()
    {
        out.unsettled += pending.iter().filter(|p| p.confirm.is_some()).count() as u64;
        pending.clear();
        return Err(DeadError::Export(e));
    }
    let mut result = Ok(());
    for p in pending.drain(..) {
        if result.is_err() {
            // The copy may still be confirmed (or the export holds it): the
            // original stays.
            out.unsettled += u64::from(!p.marker);
            continue;
        }
        if let Some(confirm) = p.confirm {
            match confirm.await {
                Ok(Confirmation::Ack(None)) => {}
                Ok(Confirmation::Ack(Some(_))) => {
                    result = Err(DeadError::Unroutable(queue.to_owned()));
                    continue;
                }
                Ok(other) => {
                    result = Err(DeadError::Refused(format!("{other:?}")));
                    continue;
                }
                Err(e) => {
                    out.unsettled += 1;
                    result = Err(DeadError::broker("waiting for a confirm", &e));
                    continue;
                }
            }
        }
        if let Err(e) = ch.basic_ack(p.tag, BasicAckOptions::default()).await {
            out.unsettled += u64::from(!p.marker);
            result = Err(DeadError::broker("acking", &e));
            continue;
        }
        if !p.marker {
            visitor.done(queue, p.tag);
        }
    }
    result
}

/// Publishes `(queue, body, properties)` messages through the default
/// exchange, mandatory, a window of confirms in flight; returns how many
/// were confirmed.
///
/// # Errors
///
/// [`DeadError`] at the first refusal; the messages before it are published.
pub(crate) async fn publish_all(
    conn: &Connection,
    messages: &[(&str, Vec<u8>, BasicProperties)],
) -> Result<u64, DeadError> {
    let ch = confirm_channel(conn).await?;
    let opts = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let mut confirmed = 0;
    let mut pending = Vec::with_capacity(WINDOW);
    for (i, (queue, body, props)) in messages.iter().enumerate() {
        let confirm = ch
            .basic_publish("".into(), (*queue).into(), opts, body, props.clone())
            .await
            .map_err(|e| DeadError::broker(&format!("publishing to {queue}"), &e))?;
        pending.push((*queue, confirm));
        if pending.len() >= WINDOW || i + 1 == messages.len() {
            for (queue, confirm) in pending.drain(..) {
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => confirmed += 1,
                    Ok(Confirmation::Ack(Some(_))) => return Err(DeadError::Unroutable(queue.to_owned())),
                    Ok(other) => return Err(DeadError::Refused(format!("{other:?}"))),
                    Err(e) => return Err(DeadError::broker("waiting for a confirm", &e)),
                }
            }
        }
    }
    let _ = ch.close(200, "published".into()).await;
    Ok(confirmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    #[test]
    fn a_copy_drops_only_the_delivery_count() {
        let mut h = FieldTable::default();
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        h.insert("x-warren-reason".into(), AMQPValue::LongString("exhausted".into()));
        let p = BasicProperties::default()
            .with_headers(h)
            .with_message_id("m".into())
            .with_delivery_mode(2);
        let c = copy_properties(&p);
        let headers = c.headers().as_ref().unwrap().inner();
        assert!(!headers.contains_key("x-delivery-count"));
        assert!(headers.contains_key("x-warren-reason"));
        assert_eq!(c.message_id(), p.message_id());
        assert_eq!(c.delivery_mode(), &Some(2));
    }

    #[test]
    fn a_copy_carries_no_expiration() {
        let p = BasicProperties::default()
            .with_message_id("m".into())
            .with_expiration("4000".into());
        let c = copy_properties(&p);
        assert_eq!(c.expiration(), &None);
        assert_eq!(c.message_id(), p.message_id());
        let original = crate::event::headers::text(&c, crate::event::headers::ORIGINAL_EXPIRATION);
        assert_eq!(original.as_deref(), Some("4000"));
    }
}
