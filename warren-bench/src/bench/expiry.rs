//! Shared confirm deadlines: one timer for the publishes that start close together.
//!
//! A copy of warren's own (private) publisher deadlines, so that the lean
//! loop's "confirm deadlines" addition prices the same mechanism the
//! library uses. Keep the two alike when either changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Confirm deadlines at a coarse grain.
///
/// A timer of its own per publish was about a quarter of what warren spent
/// per event over a bare lapin loop (~1.2k of ~4.6k instructions): its entry
/// in tokio's timer wheel was registered and cleared again for every confirm
/// that arrived in time, which is nearly all of them. Publishes that start within the same
/// `grain` share one [`Expiry`] instead. It fires `grain` after the last of
/// them could have started plus the timeout, so a publish gives up between
/// `timeout` and `timeout + grain` after it started, never before.
pub struct Expiries {
    timeout: Duration,
    grain: Duration,
    current: std::sync::Mutex<Option<Arc<Expiry>>>,
}

/// One shared confirm deadline; see [`Expiries`].
pub struct Expiry {
    /// Start of the publishes that share it.
    opened: Instant,
    fired: AtomicBool,
    notify: Notify,
}

impl Expiries {
    /// The grain is a sixteenth of the timeout, and at most 250 ms.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            grain: (timeout / 16).min(Duration::from_millis(250)),
            current: std::sync::Mutex::new(None),
        }
    }

    /// The expiry of a publish that started at `started`.
    pub fn around(&self, started: Instant) -> Arc<Expiry> {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(expiry) = current.as_ref()
            && started >= expiry.opened
            && started - expiry.opened < self.grain
        {
            return expiry.clone();
        }
        let expiry = Arc::new(Expiry {
            opened: started,
            fired: AtomicBool::new(false),
            notify: Notify::new(),
        });
        *current = Some(expiry.clone());
        drop(current);
        let at = tokio::time::Instant::from_std(started) + self.grain + self.timeout;
        let firing = expiry.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            firing.fired.store(true, Ordering::Release);
            firing.notify.notify_waiters();
        });
        expiry
    }
}

impl Expiry {
    /// Resolves once the deadline has passed.
    pub async fn expired(&self) {
        // Made before the flag is read, the waiter cannot miss the wake-up.
        let notified = self.notify.notified();
        if self.fired.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_within_a_grain_share_an_expiry_and_later_ones_get_their_own() {
        let expiries = Expiries::new(Duration::from_millis(1600));
        assert_eq!(expiries.grain, Duration::from_millis(100));
        let t0 = Instant::now();
        let first = expiries.around(t0);
        assert!(Arc::ptr_eq(&first, &expiries.around(t0 + Duration::from_millis(99))));
        let next = expiries.around(t0 + Duration::from_millis(100));
        assert!(!Arc::ptr_eq(&first, &next));
        // A start before the current expiry's (a clock read earlier by a
        // slower task) gets one of its own, so it never fires late.
        assert!(!Arc::ptr_eq(&next, &expiries.around(t0)));
        assert_eq!(Expiries::new(Duration::from_secs(60)).grain, Duration::from_millis(250));
    }

    #[tokio::test]
    async fn an_expiry_fires_after_the_timeout_and_its_grain_never_before() {
        let timeout = Duration::from_millis(320);
        let expiries = Expiries::new(timeout);
        let started = Instant::now();
        let expiry = expiries.around(started);
        // Waiting before and after it fired both resolve.
        let early = expiry.expired();
        tokio::time::timeout(Duration::from_secs(10), early)
            .await
            .expect("fires");
        let waited = started.elapsed();
        assert!(waited >= timeout + expiries.grain, "fired after {waited:?}");
        tokio::time::timeout(Duration::from_millis(100), expiry.expired())
            .await
            .expect("already fired: resolves at once");
    }
}
