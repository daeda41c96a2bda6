//! Readiness of a service's parts, for `/readyz`: each part (the consumer's
//! connection, each work queue's consumer) says whether it is ready and why
//! not; the service is ready when every part is.
//!
//! A [`Readiness`] is a cheap shared handle: the consumer updates it, the
//! HTTP probes read it. It knows nothing of either, so both can use it.
//!
//! A part's detail is fixed text (`&'static str`): `/readyz` answers
//! without a token, so an error's own text (the broker's address, the user,
//! the OS error) can never reach it; the cause goes to the log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// The state of one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    pub ready: bool,
    /// What it is doing (`consuming`), or a generic reason why it is not
    /// ready (`reconnecting`).
    pub detail: &'static str,
}

/// Shared readiness of named parts; clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    parts: Arc<Mutex<BTreeMap<String, Part>>>,
}

impl Readiness {
    /// An empty readiness (ready: no part says otherwise).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the state of `part`; `detail` is served as is, so it names
    /// no host, user or error text.
    pub fn set(&self, part: &str, ready: bool, detail: &'static str) {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        match parts.get_mut(part) {
            Some(p) => {
                p.ready = ready;
                p.detail = detail;
            }
            None => {
                parts.insert(part.to_owned(), Part { ready, detail });
            }
        }
    }

    /// Whether every part is ready.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        parts.values().all(|p| p.ready)
    }

    /// Every part's state, by name.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, Part> {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_part_is() {
        let r = Readiness::new();
        assert!(r.is_ready(), "no part, nothing waits");
        let shared = r.clone();
        shared.set("consumer", false, "connecting");
        shared.set("queue a", true, "consuming");
        assert!(!r.is_ready(), "clones share the state");
        r.set("consumer", true, "connected");
        assert!(r.is_ready());
        let snap = r.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap["consumer"].detail, "connected");
    }
}
