//! The load both runs share: the event bodies (with a send timestamp inside),
//! the quota and pacing of publishers, and the recorder of what was confirmed
//! and handled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use warren::event::{Envelope, UserRegistered};

/// Hex digits of the send timestamp at the start of `data.username`.
const STAMP_DIGITS: usize = 16;

/// Makes the benchmark's `user.registered` envelopes, padded to a target size.
///
/// The send time (nanoseconds since the run's clock base, both ends being
/// this process) travels as the first 16 hex digits of `data.username`, so
/// the typed handler reads it back from the event itself.
#[derive(Debug, Clone)]
pub struct Payload {
    pad: String,
    registered_at: DateTime<Utc>,
}

impl Payload {
    /// Envelopes of about `target` bytes of JSON (never below the smallest
    /// possible one, about 285 bytes: `event_id` and two timestamps take 100).
    #[must_use]
    pub fn new(target: usize) -> Self {
        let registered_at = DateTime::parse_from_rfc3339("2025-01-20T10:30:00Z")
            .expect("a valid constant")
            .with_timezone(&Utc);
        let bare = Self {
            pad: String::new(),
            registered_at,
        };
        let len = serde_json::to_vec(&bare.envelope(0, 0)).map_or(0, |b| b.len());
        Self {
            pad: "u".repeat(target.saturating_sub(len)),
            registered_at,
        }
    }

    /// Event number `seq`, sent at `sent_ns`.
    #[must_use]
    pub fn envelope(&self, sent_ns: u64, seq: u64) -> Envelope<UserRegistered> {
        Envelope::new("bench", self.data(sent_ns, seq))
    }

    /// The `data` of event number `seq`, sent at `sent_ns`.
    #[must_use]
    pub fn data(&self, sent_ns: u64, seq: u64) -> UserRegistered {
        // Seven digits whatever seq is: every body has the same length.
        let user_id = 1_000_000 + i64::try_from(seq % 9_000_000).unwrap_or(0);
        UserRegistered {
            user_id,
            username: format!("{sent_ns:016x}{}", self.pad),
            email: "b@example.com".into(),
            registration_timestamp: self.registered_at,
        }
    }

    /// The send timestamp an envelope's username carries.
    #[must_use]
    pub fn sent_ns(username: &str) -> Option<u64> {
        u64::from_str_radix(username.get(..STAMP_DIGITS)?, 16).ok()
    }
}

/// Counts and latencies of one run, shared by publishers and the handler.
#[derive(Debug)]
pub struct Recorder {
    base: Instant,
    started_ns: AtomicU64,
    confirmed: AtomicU64,
    failed: AtomicU64,
    last_confirm_ns: AtomicU64,
    handled: AtomicU64,
    last_handled_ns: AtomicU64,
    expected: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
    done: CancellationToken,
}

impl Recorder {
    /// A recorder whose clock starts now.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            base: Instant::now(),
            started_ns: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_confirm_ns: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            last_handled_ns: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
            latencies: Mutex::new(Vec::with_capacity(capacity)),
            first_error: Mutex::new(None),
            done: CancellationToken::new(),
        }
    }

    /// Nanoseconds since the clock base (monotonic).
    #[must_use]
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Marks the first publish.
    pub fn start(&self) {
        self.started_ns.store(self.now_ns(), Ordering::SeqCst);
    }

    /// A publish was confirmed (or failed with `error`).
    pub fn published(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.confirmed.fetch_add(1, Ordering::Relaxed);
                self.last_confirm_ns.fetch_max(self.now_ns(), Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().expect("not poisoned").get_or_insert(e);
            }
        }
    }

    /// An event sent at `sent_ns` reached the handler.
    pub fn handled(&self, sent_ns: u64) {
        let now = self.now_ns();
        self.latencies
            .lock()
            .expect("not poisoned")
            .push(now.saturating_sub(sent_ns));
        self.last_handled_ns.fetch_max(now, Ordering::Relaxed);
        let n = self.handled.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.expected.load(Ordering::SeqCst) {
            self.done.cancel();
        }
    }

    /// Publishing is over: `n` events are to be handled.
    pub fn expect(&self, n: u64) {
        self.expected.store(n, Ordering::SeqCst);
        if self.handled.load(Ordering::SeqCst) >= n {
            self.done.cancel();
        }
    }

    /// Cancelled once every expected event was handled.
    #[must_use]
    pub fn done(&self) -> &CancellationToken {
        &self.done
    }

    /// Publishes confirmed so far.
    #[must_use]
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Publishes that failed so far, with the first error.
    #[must_use]
    pub fn failures(&self) -> (u64, Option<String>) {
        let first = self.first_error.lock().expect("not poisoned").clone();
        (self.failed.load(Ordering::Relaxed), first)
    }

    /// Events handled so far.
    #[must_use]
    pub fn handled_count(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// First publish → last confirm.
    #[must_use]
    pub fn publish_elapsed(&self) -> Duration {
        self.since_start(self.last_confirm_ns.load(Ordering::Relaxed))
    }

    /// First publish → last handled.
    #[must_use]
    pub fn end_to_end_elapsed(&self) -> Duration {
        self.since_start(self.last_handled_ns.load(Ordering::Relaxed))
    }

    fn since_start(&self, ns: u64) -> Duration {
        Duration::from_nanos(ns.saturating_sub(self.started_ns.load(Ordering::SeqCst)))
    }

    /// The latencies recorded, leaving none behind.
    #[must_use]
    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *self.latencies.lock().expect("not poisoned"))
    }
}

/// How much to publish: a count or a time limit, optionally paced.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Events(u64),
    Duration(Duration),
}

/// The events one publisher task may send, and when.
///
/// Every task claims sequence numbers from one shared counter (so `Events(n)`
/// sends exactly `n` in total). With a rate, task `k` of `p` sends its `j`-th
/// event at `start + (k + j·p) / rate`: together they send at `rate`.
pub struct Quota {
    claimed: Arc<AtomicU64>,
    limit: Limit,
    start: tokio::time::Instant,
    rate: Option<f64>,
    task: u64,
    tasks: u64,
    sent: u64,
    exhausted: bool,
}

impl Quota {
    /// The quotas of `tasks` publisher tasks starting now.
    #[must_use]
    pub fn split(limit: Limit, rate: Option<f64>, tasks: usize) -> Vec<Self> {
        let claimed = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let tasks = tasks.max(1) as u64;
        (0..tasks)
            .map(|task| Self {
                claimed: claimed.clone(),
                limit,
                start,
                rate,
                task,
                tasks,
                sent: 0,
                exhausted: false,
            })
            .collect()
    }

    /// Whether this task has nothing more to send.
    #[must_use]
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// When this task's next event is due, if paced.
    #[must_use]
    pub fn due(&self) -> Option<tokio::time::Instant> {
        let rate = self.rate?;
        let slot = (self.task + self.sent * self.tasks) as f64;
        Some(self.start + Duration::from_secs_f64(slot / rate))
    }

    /// Waits until the next event is due and claims its sequence number;
    /// `None` once the quota is used up. Cancel-safe: nothing is claimed
    /// before the wait is over.
    pub async fn next(&mut self) -> Option<u64> {
        if self.exhausted {
            return None;
        }
        if let Some(due) = self.due() {
            tokio::time::sleep_until(due).await;
        }
        let seq = match self.limit {
            Limit::Events(n) => {
                let seq = self.claimed.fetch_add(1, Ordering::Relaxed);
                (seq < n).then_some(seq)
            }
            Limit::Duration(d) => (self.start.elapsed() < d).then(|| self.claimed.fetch_add(1, Ordering::Relaxed)),
        };
        self.sent += 1;
        self.exhausted = seq.is_none();
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_have_the_target_size_and_carry_their_send_time() {
        let payload = Payload::new(400);
        let env = payload.envelope(0x1234_5678_9abc, 42);
        let body = serde_json::to_vec(&env).unwrap();
        // chrono drops a `.000` fraction from the envelope's timestamp: 4 bytes.
        assert!((396..=400).contains(&body.len()), "{}", body.len());
        let parsed = Envelope::<UserRegistered>::from_slice(&body).expect("a valid event");
        assert_eq!(Payload::sent_ns(&parsed.data.username), Some(0x1234_5678_9abc));
        assert_eq!(parsed.user_id, 1_000_042);
        assert_eq!(Payload::sent_ns("short"), None);
    }

    #[test]
    fn a_target_below_the_smallest_envelope_gives_the_smallest() {
        let body = serde_json::to_vec(&Payload::new(10).envelope(u64::MAX, 8_999_999)).unwrap();
        assert!(body.len() > 250 && body.len() < 300, "{}", body.len());
    }

    #[test]
    fn recorder_is_done_once_all_expected_are_handled_in_either_order() {
        let r = Recorder::new(4);
        r.handled(0);
        r.handled(0);
        assert!(!r.done().is_cancelled(), "nothing expected yet");
        r.expect(3);
        assert!(!r.done().is_cancelled());
        r.handled(0);
        assert!(r.done().is_cancelled());
        let late = Recorder::new(1);
        late.handled(0);
        late.expect(1);
        assert!(late.done().is_cancelled(), "expect after the last handled");
        assert_eq!(late.take_latencies().len(), 1);
    }

    #[test]
    fn recorder_counts_failures_and_keeps_the_first_error() {
        let r = Recorder::new(0);
        r.published(Ok(()));
        r.published(Err("first".into()));
        r.published(Err("second".into()));
        assert_eq!(r.confirmed(), 1);
        assert_eq!(r.failures(), (2, Some("first".into())));
    }

    #[tokio::test]
    async fn quotas_share_one_count() {
        let mut q = Quota::split(Limit::Events(5), None, 2);
        assert_eq!(q[0].due(), None, "unpaced");
        assert_eq!(q[0].next().await, Some(0));
        assert_eq!(q[1].next().await, Some(1));
        let mut got = vec![];
        while let Some(s) = q[0].next().await {
            got.push(s);
        }
        assert_eq!(got, vec![2, 3, 4]);
        assert!(q[0].exhausted());
        assert!(!q[1].exhausted(), "not until it asks");
        assert_eq!(q[1].next().await, None, "the shared count is used up");
        assert!(q[1].exhausted());
    }

    #[tokio::test]
    async fn paced_quotas_interleave_their_slots() {
        let mut q = Quota::split(Limit::Events(100), Some(100.0), 2);
        let start = q[0].start;
        assert_eq!(q[0].due(), Some(start));
        assert_eq!(q[1].due(), Some(start + Duration::from_millis(10)));
        // Slot 0 is due at once: no waiting.
        assert_eq!(q[0].next().await, Some(0));
        assert_eq!(q[0].due(), Some(start + Duration::from_millis(20)), "every 2nd slot");
        let mut over = Quota::split(Limit::Duration(Duration::ZERO), None, 1).remove(0);
        assert_eq!(over.next().await, None, "a zero duration sends nothing");
    }
}
