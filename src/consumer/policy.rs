//! The retry policy, as a pure value: what to do with a delivery given how
//! its handler ended and which attempt it was.

use super::handler::HandlerError;

/// Why a message was parked in its `.dead` queue (the `x-warren-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    /// Every retry tier was used.
    Exhausted,
    /// The handler said it can never succeed.
    Permanent,
    /// The body is not JSON.
    Malformed,
    /// JSON, but not a valid envelope of the queue's type.
    Invalid,
    /// An event type this consumer has no handler for.
    Unhandled,
}

impl DeadReason {
    /// The header value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::Permanent => "permanent",
            DeadReason::Malformed => "malformed",
            DeadReason::Invalid => "invalid",
            DeadReason::Unhandled => "unhandled",
        }
    }
}

/// What happens to a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Done: ack it.
    Ack,
    /// Republish to retry tier `tier` (0-based), then ack.
    Retry { tier: usize },
    /// Republish to `.dead`, then ack.
    DeadLetter(DeadReason),
}

/// Retries through `tiers` delay queues, then dead-letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Number of retry tiers (= retries after the first attempt).
    pub tiers: usize,
}

impl RetryPolicy {
    /// The decision for `outcome` of attempt `attempt` (1 = first delivery).
    pub(crate) fn decide(&self, outcome: &Result<(), HandlerError>, attempt: u32) -> Decision {
        match outcome {
            Ok(()) => Decision::Ack,
            Err(HandlerError::Permanent(_)) => Decision::DeadLetter(DeadReason::Permanent),
            Err(HandlerError::Transient(_)) => {
                let tier = attempt.max(1) as usize - 1;
                if tier < self.tiers {
                    Decision::Retry { tier }
                } else {
                    Decision::DeadLetter(DeadReason::Exhausted)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Result<(), HandlerError> = Err(HandlerError::Transient(String::new()));

    #[test]
    fn success_acks() {
        assert_eq!(RetryPolicy { tiers: 3 }.decide(&Ok(()), 1), Decision::Ack);
        assert_eq!(RetryPolicy { tiers: 3 }.decide(&Ok(()), 4), Decision::Ack);
    }

    #[test]
    fn transient_failures_climb_the_tiers_then_dead_letter() {
        let p = RetryPolicy { tiers: 3 };
        assert_eq!(p.decide(&FAIL, 1), Decision::Retry { tier: 0 });
        assert_eq!(p.decide(&FAIL, 2), Decision::Retry { tier: 1 });
        assert_eq!(p.decide(&FAIL, 3), Decision::Retry { tier: 2 });
        assert_eq!(p.decide(&FAIL, 4), Decision::DeadLetter(DeadReason::Exhausted));
        assert_eq!(p.decide(&FAIL, 40), Decision::DeadLetter(DeadReason::Exhausted));
    }

    #[test]
    fn permanent_failures_dead_letter_at_once() {
        let p = RetryPolicy { tiers: 3 };
        assert_eq!(
            p.decide(&Err(HandlerError::Permanent("no".into())), 1),
            Decision::DeadLetter(DeadReason::Permanent)
        );
    }

    #[test]
    fn no_tiers_means_no_retries() {
        assert_eq!(
            RetryPolicy { tiers: 0 }.decide(&FAIL, 1),
            Decision::DeadLetter(DeadReason::Exhausted)
        );
    }
}
