//! Publishing one claimed batch: many confirms in flight across users, one
//! at a time within a user, so a user's events reach the broker in order.

use std::collections::HashMap;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::job::Job;
use crate::publisher::{PublishError, Publisher};

/// What happened to one job of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Confirmed and routed: mark it published.
    Published,
    /// Not confirmed (broker away, nack, timeout, unroutable): stays
    /// pending with this error and goes again in a later batch.
    Retry { error: String, unroutable: bool },
    /// Not tried because an earlier event of its user was not confirmed:
    /// publishing it now would put it ahead of that one.
    Held,
}

/// Publishes `jobs` (in claim order) and returns one outcome per job.
///
/// Users' chains run concurrently; within a chain the next publish starts
/// only after the previous one is confirmed. Waiting for each confirm is
/// what keeps order through a reconnect: the publisher re-sends an
/// unconfirmed event on a new connection, and a later event of the same
/// user must not overtake it there. A chain stops at its first failure.
pub(super) async fn publish(publisher: &Publisher, jobs: &[Job]) -> Vec<Outcome> {
    let mut chains: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        chains.entry(job.envelope.user_id).or_default().push(i);
    }
    let mut outcomes = vec![Outcome::Held; jobs.len()];
    let mut running: FuturesUnordered<_> = chains
        .into_values()
        .map(|chain| publish_chain(publisher, jobs, chain))
        .collect();
    while let Some(done) = running.next().await {
        for (i, outcome) in done {
            outcomes[i] = outcome;
        }
    }
    outcomes
}

async fn publish_chain(publisher: &Publisher, jobs: &[Job], chain: Vec<usize>) -> Vec<(usize, Outcome)> {
    let mut out = Vec::with_capacity(chain.len());
    for i in chain {
        match publisher.publish_raw(&jobs[i].envelope).await {
            Ok(()) => out.push((i, Outcome::Published)),
            Err(e) => {
                let unroutable = matches!(e, PublishError::Unroutable { .. });
                let error = crate::event::truncate(&e.to_string(), 500).to_owned();
                out.push((i, Outcome::Retry { error, unroutable }));
                break;
            }
        }
    }
    out
}
