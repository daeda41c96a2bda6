//! Removing a service's topology (`warren topology delete`): its queues in
//! an order that sends nothing into a queue already gone, and never a queue
//! that holds messages unless asked.
//!
//! Retry tiers go first (their messages return to the work queue), then the
//! work queues (they dead-letter to `.dead`), the `.dead` queues last. The
//! exchange is shared with other services and publishers: it goes only when
//! asked, and only when no other queue is bound to it.

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::Topology;
use crate::refusal::{NOT_FOUND, reply};

/// Code of a delete refused by `if-empty` or `if-unused` (PRECONDITION_FAILED).
const PRECONDITION_FAILED: u16 = 406;

/// A queue of the topology as the broker has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    pub name: String,
    /// Messages ready in it; `None` when it does not exist.
    pub messages: Option<u32>,
}

/// What [`Topology::delete`] may remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Also queues that hold messages (they are lost with the queue).
    pub force: bool,
    /// Also the exchange, when no queue of another service is bound to it
    /// (with `force`, even then).
    pub exchange: bool,
}

/// What [`Topology::delete`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Queues deleted, with the messages they held.
    pub queues: Vec<(String, u32)>,
    pub exchange: bool,
}

/// Why [`Topology::delete`] stopped. Queues listed before the one named
/// are already deleted ([`Deleted`] in the error says which).
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// Queues hold messages: nothing was deleted.
    #[error("{} not empty: {}; nothing deleted (pass --force to delete them with their messages)", plural(.0.len()), list(.0))]
    NotEmpty(Vec<(String, u32)>),
    /// A queue received a message after the check, or the exchange has other
    /// queues bound: it was kept.
    #[error("{kind} {name:?} kept: {reason} (deleted before it: {})", names(&done.queues))]
    Kept {
        kind: &'static str,
        name: String,
        reason: String,
        done: Deleted,
    },
    #[error("deleting {kind} {name:?}: {source} (deleted before it: {})", names(&done.queues))]
    Broker {
        kind: &'static str,
        name: String,
        #[source]
        source: lapin::Error,
        done: Deleted,
    },
}

impl DeleteError {
    /// What was deleted before it stopped (nothing for [`DeleteError::NotEmpty`]).
    #[must_use]
    pub fn deleted(&self) -> Option<&Deleted> {
        match self {
            DeleteError::NotEmpty(_) => None,
            DeleteError::Kept { done, .. } | DeleteError::Broker { done, .. } => Some(done),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "a queue is" } else { "queues are" }
}

fn list(queues: &[(String, u32)]) -> String {
    let items: Vec<String> = queues
        .iter()
        .map(|(q, n)| format!("{q} ({n} message{})", if *n == 1 { "" } else { "s" }))
        .collect();
    items.join(", ")
}

fn names(queues: &[(String, u32)]) -> String {
    if queues.is_empty() {
        return "none".into();
    }
    let items: Vec<&str> = queues.iter().map(|(q, _)| q.as_str()).collect();
    items.join(", ")
}

impl Topology {
    /// The queues in the order [`Topology::delete`] removes them: every
    /// retry tier, then every work queue, then every `.dead` queue.
    #[must_use]
    pub fn deletion_order(&self) -> Vec<String> {
        let types = &self.event_types;
        let tiers = types
            .iter()
            .flat_map(|t| (0..self.retry_delays.len()).filter_map(move |i| self.retry_queue(t, i)));
        let work = types.iter().map(|t| self.work_queue(t));
        let dead = types.iter().map(|t| self.dead_queue(t));
        tiers.chain(work).chain(dead).collect()
    }

    /// Each queue of [`Topology::deletion_order`] with its message count,
    /// or `None` when it does not exist (passive declares: nothing changes).
    ///
    /// # Errors
    ///
    /// The broker's error for a queue it cannot report on.
    pub async fn survey(&self, conn: &Connection) -> Result<Vec<QueueState>, lapin::Error> {
        let mut channel = conn.create_channel().await?;
        let mut out = Vec::new();
        for name in self.deletion_order() {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let messages = match channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => Some(q.message_count()),
                // A missing queue closes the channel (the broker's rule).
                Err(e) if reply(&e).is_some_and(|(code, _)| code == NOT_FOUND) => {
                    channel = conn.create_channel().await?;
                    None
                }
                Err(e) => return Err(e),
            };
            out.push(QueueState { name, messages });
        }
        Ok(out)
    }

    /// Deletes the service's queues (see [`Topology::deletion_order`]), and
    /// the exchange when `options.exchange`. Without `options.force`, a
    /// queue holding messages stops it before anything is deleted, and the
    /// deletes are `if-empty`, so a message arriving meanwhile is kept too.
    /// A queue that does not exist is skipped.
    ///
    /// # Errors
    ///
    /// [`DeleteError::NotEmpty`] listing the queues and their messages;
    /// [`DeleteError::Kept`] or [`DeleteError::Broker`] naming the object
    /// and what was deleted before it.
    pub async fn delete(&self, conn: &Connection, options: DeleteOptions) -> Result<Deleted, DeleteError> {
        let mut done = Deleted::default();
        let broker = |kind: &'static str, name: &str, source: lapin::Error, done: &Deleted| DeleteError::Broker {
            kind,
            name: name.to_owned(),
            source,
            done: done.clone(),
        };
        let survey = self
            .survey(conn)
            .await
            .map_err(|e| broker("queue", &self.service, e, &done))?;
        let full: Vec<(String, u32)> = survey
            .iter()
            .filter_map(|q| q.messages.filter(|n| *n > 0).map(|n| (q.name.clone(), n)))
            .collect();
        if !options.force && !full.is_empty() {
            return Err(DeleteError::NotEmpty(full));
        }
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| broker("queue", &self.service, e, &done))?;
        for q in survey.iter().filter(|q| q.messages.is_some()) {
            let opts = QueueDeleteOptions {
                if_empty: !options.force,
                ..QueueDeleteOptions::default()
            };
            match channel.queue_delete(q.name.as_str().into(), opts).await {
                Ok(n) => done.queues.push((q.name.clone(), n)),
                Err(e) => return Err(refused("queue", &q.name, e, "it is not empty any more", done)),
            }
        }
        if options.exchange {
            delete_exchange(&channel, &self.exchange, options.force, &mut done).await?;
        }
        Ok(done)
    }
}

async fn delete_exchange(channel: &Channel, name: &str, force: bool, done: &mut Deleted) -> Result<(), DeleteError> {
    let opts = ExchangeDeleteOptions {
        if_unused: !force,
        ..ExchangeDeleteOptions::default()
    };
    match channel.exchange_delete(name.into(), opts).await {
        Ok(()) => {
            done.exchange = true;
            Ok(())
        }
        Err(e) => Err(refused(
            "exchange",
            name,
            e,
            "other queues are bound to it (--force deletes it all the same)",
            done.clone(),
        )),
    }
}

/// [`DeleteError::Kept`] for a delete the broker refused by its condition,
/// [`DeleteError::Broker`] for anything else.
fn refused(kind: &'static str, name: &str, e: lapin::Error, reason: &str, done: Deleted) -> DeleteError {
    if reply(&e).is_some_and(|(code, _)| code == PRECONDITION_FAILED) {
        return DeleteError::Kept {
            kind,
            name: name.to_owned(),
            reason: reason.to_owned(),
            done,
        };
    }
    DeleteError::Broker {
        kind,
        name: name.to_owned(),
        source: e,
        done,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn tiers_go_first_and_dead_queues_last() {
        let mut s = crate::config::Settings::default();
        s.consumer.service = "svc".into();
        s.consumer.event_types = vec!["user.registered".into(), "user.login".into()];
        let mut topology = Topology::from_settings(&s);
        topology.retry_delays = vec![Duration::from_secs(5), Duration::from_secs(30)];
        assert_eq!(
            topology.deletion_order(),
            [
                "svc.user.registered.retry.5s",
                "svc.user.registered.retry.30s",
                "svc.user.login.retry.5s",
                "svc.user.login.retry.30s",
                "svc.user.registered",
                "svc.user.login",
                "svc.user.registered.dead",
                "svc.user.login.dead",
            ]
        );
        let mut every: Vec<String> = topology.queues().into_iter().map(|q| q.name).collect();
        let mut ordered = topology.deletion_order();
        every.sort();
        ordered.sort();
        assert_eq!(ordered, every, "every queue declare() makes, and no other");
    }

    #[test]
    fn not_empty_names_each_queue_with_its_count() {
        let e = DeleteError::NotEmpty(vec![("s.t.dead".into(), 3), ("s.t".into(), 1)]);
        assert_eq!(
            e.to_string(),
            "queues are not empty: s.t.dead (3 messages), s.t (1 message); nothing deleted \
             (pass --force to delete them with their messages)"
        );
    }
}
