//! Rate limiting of a queue's retry log lines: the first at once, then at
//! most one per interval, saying how many were left out in between, so a
//! receiver that is down shows in the logs without flooding them.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Retry lines of one queue: at most one per this interval.
pub(crate) const RETRY_LOG_EVERY: Duration = Duration::from_secs(10);

/// Admits one line per interval.
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line about something that happened at `now` is logged:
    /// `Some(n)` with the `n` lines left out since the last one, or `None`
    /// (counted as left out).
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_passes_then_one_per_interval_with_the_count_left_out() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(throttle.admit(t0), Some(0), "the first failure is logged at once");
        assert_eq!(throttle.admit(at(1)), None);
        assert_eq!(throttle.admit(at(9)), None);
        assert_eq!(
            throttle.admit(at(10)),
            Some(2),
            "then one line telling how many were left out"
        );
        assert_eq!(throttle.admit(at(15)), None);
        assert_eq!(throttle.admit(at(60)), Some(1));
        assert_eq!(
            throttle.admit(at(100)),
            Some(0),
            "a quiet queue logs its next failure at once"
        );
    }
}
