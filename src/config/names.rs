//! The names of the queues warren declares, from the settings: one place
//! for the naming rules that [`crate::topology`] uses, so the settings can
//! be checked against the broker's limit before anything is declared.

use std::time::Duration;

use super::{Settings, duration};

/// The broker's limit on a queue or exchange name (an AMQP short string), in bytes.
pub const MAX_NAME: usize = 255;

/// Work queue of an event type: `S.user.registered`.
#[must_use]
pub fn work_queue(service: &str, event_type: &str) -> String {
    format!("{service}.{event_type}")
}

/// Dead-letter queue of a work queue: `S.user.registered.dead`.
#[must_use]
pub fn dead_queue(work_queue: &str) -> String {
    format!("{work_queue}.dead")
}

/// Retry tier of a work queue with delay `delay`: `S.user.registered.retry.10s`.
#[must_use]
pub fn retry_queue(work_queue: &str, delay: Duration) -> String {
    format!("{work_queue}.retry.{}", duration::format(delay))
}

/// The longest name of a queue the settings make (work queues, their retry
/// tiers and dead letters), if any queue is made at all.
#[must_use]
pub fn longest_queue(s: &Settings) -> Option<String> {
    let tiers = s.consumer.retry.tiers();
    s.consumer
        .event_types
        .iter()
        .flat_map(|t| {
            let work = work_queue(&s.consumer.service, t);
            let mut names: Vec<String> = tiers.iter().map(|d| retry_queue(&work, *d)).collect();
            names.push(dead_queue(&work));
            names.push(work);
            names
        })
        .max_by_key(String::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_name_is_a_tier_or_the_dead_letters() {
        let mut s = Settings::default();
        s.consumer.service = "svc".into();
        assert_eq!(longest_queue(&s).unwrap(), "svc.user.registered.retry.10s");
        s.consumer.retry.attempts = 0;
        assert_eq!(longest_queue(&s).unwrap(), "svc.user.registered.dead");
        s.consumer.event_types.clear();
        assert_eq!(longest_queue(&s), None);
    }
}
