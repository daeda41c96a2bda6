//! The open connections of a server: what each is doing (sending a request
//! head, busy with a request, idle between requests), the cap on how many
//! may be open, and which one to close when a new one arrives at the cap.
//!
//! A client that opens connections and drips header bytes into them (a
//! slowloris) must not take every descriptor, or `/healthz` stops
//! answering. At the cap, the connection that has been sending its request
//! head the longest (else the one idle the longest) makes room for the new
//! one; one busy with a request is never closed. Time limits per phase are
//! enforced by the connection's own task (see `server.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Receiving a request head (from the connection's start, or from the
    /// first byte after an idle spell): bounded by `ingress.header_timeout`.
    Head = 0,
    /// A request is being handled (body read, handler, answer): bounded by
    /// `ingress.request_timeout`.
    Busy = 1,
    /// Between requests: bounded by `ingress.idle_timeout`.
    Idle = 2,
}

/// The phase of one connection and since when it is in it, in one atomic
/// word (milliseconds since the registry's epoch, shifted, plus the phase),
/// so that the accept loop reads a consistent pair.
pub(super) struct Activity {
    epoch: Instant,
    state: AtomicU64,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        let activity = Self {
            epoch,
            state: AtomicU64::new(0),
        };
        activity.set(Phase::Head);
        activity
    }

    #[cfg(test)]
    pub(super) fn for_tests() -> Self {
        Self::new(Instant::now())
    }

    pub(super) fn set(&self, phase: Phase) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 2);
        self.state.store((ms << 2) | phase as u64, Ordering::Relaxed);
    }

    /// The phase, and when it began.
    pub(super) fn get(&self) -> (Phase, Instant) {
        let word = self.state.load(Ordering::Relaxed);
        let phase = match word & 3 {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        };
        (phase, self.epoch + Duration::from_millis(word >> 2))
    }

    /// Bytes arrived: an idle connection starts a request head.
    pub(super) fn on_read(&self) {
        if self.state.load(Ordering::Relaxed) & 3 == Phase::Idle as u64 {
            self.set(Phase::Head);
        }
    }
}

/// One connection admitted by [`Connections::admit`]; dropping it frees its
/// place.
pub(super) struct Slot {
    id: u64,
    registry: Arc<Connections>,
    pub(super) activity: Arc<Activity>,
    /// Cancelled when the connection must close to admit a newer one.
    pub(super) evicted: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

struct Entry {
    activity: Arc<Activity>,
    evicted: CancellationToken,
}

/// The open connections of one server, at most `max`.
pub(super) struct Connections {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    at_cap: Throttle,
}

impl Connections {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            at_cap: Throttle::new(Duration::from_secs(10)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding the lock leaves the map usable.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new connection: free, or made by closing the connection
    /// slowest to send its request head, else the one idle the longest.
    /// `None` when every open connection is busy with a request.
    pub(super) fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let victim = pick_victim(open.iter().map(|(id, e)| (*id, e.activity.get())));
            self.log_cap(victim.is_some());
            let entry = open.remove(&victim?)?;
            entry.evicted.cancel();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(self.epoch));
        let evicted = CancellationToken::new();
        open.insert(
            id,
            Entry {
                activity: activity.clone(),
                evicted: evicted.clone(),
            },
        );
        Some(Slot {
            id,
            registry: self.clone(),
            activity,
            evicted,
        })
    }

    fn log_cap(&self, room_made: bool) {
        let Some(held_back) = self.at_cap.allow() else {
            return;
        };
        if room_made {
            tracing::warn!(
                max_connections = self.max,
                held_back,
                "connection limit reached (ingress.max_connections): closing the connection slowest to send \
                 its request to admit a new one"
            );
        } else {
            tracing::warn!(
                max_connections = self.max,
                held_back,
                "connection limit reached (ingress.max_connections) and every connection is busy: answering 503"
            );
        }
    }
}

/// The connection to close at the cap: the longest in [`Phase::Head`], else
/// the longest in [`Phase::Idle`]; never a busy one. Ids grow with time, so
/// of phases begun in the same millisecond the older connection goes.
fn pick_victim(conns: impl Iterator<Item = (u64, (Phase, Instant))>) -> Option<u64> {
    conns
        .filter(|(_, (phase, _))| *phase != Phase::Busy)
        .min_by_key(|(id, (phase, since))| (*phase != Phase::Head, *since, *id))
        .map(|(id, _)| id)
}

/// Lets one log line through per period and counts the ones held back, so
/// that a flood of the same event cannot flood the log.
pub(super) struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub(super) fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, held_back) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < self.every) {
            *held_back += 1;
            return None;
        }
        *last = Some(Instant::now());
        Some(std::mem::take(held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_victim_is_the_slowest_head_then_the_longest_idle_never_busy() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let conns = [
            (1, (Phase::Idle, at(0))),
            (2, (Phase::Head, at(5))),
            (3, (Phase::Busy, at(0))),
            (4, (Phase::Head, at(3))),
        ];
        assert_eq!(pick_victim(conns.into_iter()), Some(4));
        assert_eq!(pick_victim(conns.into_iter().filter(|c| c.1.0 != Phase::Head)), Some(1));
        assert_eq!(pick_victim(conns.into_iter().filter(|c| c.0 == 3)), None);
        let same_time = [(9, (Phase::Head, at(1))), (7, (Phase::Head, at(1)))];
        assert_eq!(pick_victim(same_time.into_iter()), Some(7), "the older of a tie");
    }

    #[test]
    fn at_the_cap_the_slowest_head_makes_room_and_busy_ones_stay() {
        let registry = Connections::new(2);
        let first = registry.admit().unwrap();
        let second = registry.admit().unwrap();
        second.activity.set(Phase::Busy);
        let third = registry.admit().expect("room is made");
        assert!(first.evicted.is_cancelled(), "the oldest head is closed");
        assert!(!second.evicted.is_cancelled(), "a busy connection is never closed");
        third.activity.set(Phase::Busy);
        assert!(registry.admit().is_none(), "every connection busy: no room");
        drop(first);
        drop(third);
        assert_eq!(registry.lock().len(), 1, "a dropped slot frees its place");
        assert!(registry.admit().is_some());
    }

    #[test]
    fn reading_starts_a_head_only_after_idling() {
        let activity = Activity::new(Instant::now());
        assert_eq!(activity.get().0, Phase::Head);
        activity.set(Phase::Busy);
        activity.on_read();
        assert_eq!(activity.get().0, Phase::Busy, "a request body is read while busy");
        activity.set(Phase::Idle);
        activity.on_read();
        assert_eq!(activity.get().0, Phase::Head);
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_period() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.allow(), Some(2), "the lines held back are counted");
    }
}
