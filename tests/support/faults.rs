//! The bookkeeping of a fault-injection scenario, counted like Jepsen: which
//! event_ids the producer saw confirmed (and when each was sent), which the
//! handlers saw (and when), what was parked in `.dead`, and what that adds
//! up to.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;
use warren::consumer::{Context, HandlerError};
use warren::{Envelope, Publisher, UserRegistered};

/// Events each scenario publishes.
pub const N: usize = 5000;

/// Handled event_ids: how often each was handled, and when first.
#[derive(Clone, Default)]
pub struct Handled(Arc<Mutex<HashMap<Uuid, (u32, Instant)>>>);

impl Handled {
    pub fn record(&self, id: Uuid) {
        self.0
            .lock()
            .unwrap()
            .entry(id)
            .and_modify(|(n, _)| *n += 1)
            .or_insert((1, Instant::now()));
    }

    pub fn unique(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn covers(&self, ids: &HashSet<Uuid>) -> bool {
        let m = self.0.lock().unwrap();
        ids.iter().all(|id| m.contains_key(id))
    }

    /// How often each event_id was handled.
    pub fn counts(&self) -> HashMap<Uuid, u32> {
        self.0.lock().unwrap().iter().map(|(id, (n, _))| (*id, *n)).collect()
    }

    /// When each event_id was first handled.
    pub fn first_handled(&self) -> HashMap<Uuid, Instant> {
        self.0.lock().unwrap().iter().map(|(id, (_, at))| (*id, *at)).collect()
    }

    /// A handler that records every event it sees and succeeds.
    pub fn handler(
        &self,
    ) -> impl Fn(Envelope<UserRegistered>, Context) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
    {
        let me = self.clone();
        move |e, _ctx| {
            me.record(e.event_id);
            std::future::ready(Ok(()))
        }
    }
}

/// How the producer publishes: `tasks` concurrent tasks, each awaiting
/// `batch` confirms at a time; at most `rate` events per second when set.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub tasks: usize,
    pub batch: usize,
    pub rate: Option<f64>,
}

/// What the producer saw.
#[derive(Default)]
pub struct Sent {
    pub confirmed: HashSet<Uuid>,
    /// The errors of publishes that were not confirmed.
    pub failed: Vec<String>,
    /// When the publish of each event started.
    pub sent_at: HashMap<Uuid, Instant>,
}

/// Publishes `events` as `plan` says, counting progress in `sent`.
pub async fn publish_all(
    publisher: Publisher,
    events: Vec<Envelope<UserRegistered>>,
    plan: Plan,
    sent: Arc<AtomicUsize>,
) -> Sent {
    let events = Arc::new(events);
    let start = tokio::time::Instant::now();
    let mut joins = Vec::new();
    for t in 0..plan.tasks {
        let (publisher, events, sent) = (publisher.clone(), events.clone(), sent.clone());
        joins.push(tokio::spawn(async move {
            let mut out = Sent::default();
            // Batch k (counted over all tasks) is task k % tasks's, due at k·batch/rate.
            for k in (t..events.len().div_ceil(plan.batch)).step_by(plan.tasks) {
                if let Some(rate) = plan.rate {
                    let due = start + Duration::from_secs_f64((k * plan.batch) as f64 / rate);
                    tokio::time::sleep_until(due).await;
                }
                let chunk = &events[k * plan.batch..((k + 1) * plan.batch).min(events.len())];
                let at = Instant::now();
                for (e, r) in chunk.iter().zip(publisher.publish_batch(chunk).await) {
                    out.sent_at.insert(e.event_id, at);
                    match r {
                        Ok(()) => {
                            out.confirmed.insert(e.event_id);
                        }
                        Err(err) => out.failed.push(err.to_string()),
                    }
                }
                sent.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            out
        }));
    }
    let mut all = Sent::default();
    for j in joins {
        let part = j.await.expect("publisher task");
        all.confirmed.extend(part.confirmed);
        all.failed.extend(part.failed);
        all.sent_at.extend(part.sent_at);
    }
    all
}

/// Waits until `counter` reaches `at`.
pub async fn wait_for_count(counter: &AtomicUsize, at: usize, within: Duration) {
    super::eventually(within, &format!("{at} events in"), || {
        counter.load(Ordering::Relaxed) >= at
    })
    .await;
}

/// The event_id of a parked message: its `message_id`, or its body's `event_id`.
pub fn event_id_of(delivery: &lapin::message::Delivery) -> Option<Uuid> {
    if let Some(id) = delivery.properties.message_id() {
        return id.as_str().parse().ok();
    }
    let body: serde_json::Value = serde_json::from_slice(&delivery.data).ok()?;
    body["event_id"].as_str()?.parse().ok()
}

/// One row of docs/RELIABILITY.md.
#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    pub published: usize,
    pub confirmed: usize,
    pub handled_unique: usize,
    pub duplicates: usize,
    /// Confirmed, yet neither handled nor parked in `.dead`.
    pub lost: usize,
    /// Messages in `.dead` at the end.
    pub dead: usize,
    /// Messages waiting in retry tiers just before the fault.
    pub retrying_at_fault: Option<u32>,
    /// From a fault to the first handling of an event sent after it (the
    /// longest, over several faults).
    pub resume: Option<Duration>,
    /// From the (first) fault until the last event that had failed before
    /// it (and so sat in a retry tier) was handled.
    pub retries_drained: Option<Duration>,
    /// Poison bodies sent, and found in `.dead`.
    pub poison_dead: Option<(usize, usize)>,
}

impl Report {
    pub fn new(scenario: &'static str, published: usize, sent: &Sent, handled: &Handled) -> Self {
        let counts = handled.counts();
        let lost = sent.confirmed.iter().filter(|id| !counts.contains_key(id)).count();
        let duplicates = counts.values().map(|n| (*n as usize).saturating_sub(1)).sum();
        Self {
            scenario,
            published,
            confirmed: sent.confirmed.len(),
            handled_unique: counts.len(),
            duplicates,
            lost,
            dead: 0,
            retrying_at_fault: None,
            resume: None,
            retries_drained: None,
            poison_dead: None,
        }
    }

    /// Accounts for what `.dead` held: parked events are not lost.
    pub fn parked(mut self, sent: &Sent, handled: &Handled, dead: &[lapin::message::Delivery]) -> Self {
        let counts = handled.counts();
        let parked: HashSet<Uuid> = dead.iter().filter_map(event_id_of).collect();
        self.dead = dead.len();
        self.lost = sent
            .confirmed
            .iter()
            .filter(|id| !counts.contains_key(id) && !parked.contains(id))
            .count();
        self
    }

    /// The time to resume after each of `faults`: from the fault to the
    /// first handling of an event whose publish started after it.
    pub fn resumed(mut self, faults: &[Instant], sent: &Sent, handled: &Handled) -> Self {
        let first = handled.first_handled();
        let per_fault = faults.iter().map(|fault| {
            sent.sent_at
                .iter()
                .filter(|(_, at)| *at >= fault)
                .filter_map(|(id, _)| first.get(id))
                .min()
                .map(|handled_at| handled_at.saturating_duration_since(*fault))
        });
        self.resume = per_fault
            .collect::<Option<Vec<_>>>()
            .and_then(|all| all.into_iter().max());
        self
    }

    /// Prints the row (collected by scripts/reliability-table) and asserts
    /// nothing confirmed was lost and duplicates stay within `dup_bound`.
    pub fn check(&self, dup_bound: usize) {
        let retrying = self.retrying_at_fault.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let secs = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!(
            "RELIABILITY|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.scenario,
            self.published,
            self.confirmed,
            self.handled_unique,
            self.duplicates,
            self.lost,
            self.dead,
            retrying,
            secs(self.resume),
            secs(self.retries_drained)
        );
        assert_eq!(
            self.lost, 0,
            "{}: confirmed events neither handled nor parked: {self:?}",
            self.scenario
        );
        assert!(
            self.duplicates <= dup_bound,
            "{}: {} duplicates > bound {dup_bound}",
            self.scenario,
            self.duplicates
        );
        assert!(self.confirmed > 0, "{}: nothing confirmed", self.scenario);
        if let Some((sent, dead)) = self.poison_dead {
            assert_eq!(sent, dead, "{}: poison bodies not all in .dead", self.scenario);
        }
    }
}
