//! The retry policy, as a pure value: what becomes of a delivery given how
//! its handler ended and which attempt it was.

use super::handler::HandlerError;
use super::route::Outcome;
use crate::event::DeadReason;

/// What becomes of a delivery: decided once, by [`RetryPolicy::decide`], and
/// carried as is to the republish and the ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Done: ack it.
    Ack,
    /// Republish to retry tier `tier` (0-based), then ack.
    Retry { tier: usize, error: String },
    /// Republish to `.dead`, then ack.
    DeadLetter { reason: DeadReason, error: String },
}

impl Fate {
    /// The error that led to a retry or a dead letter; empty for an ack.
    pub(crate) fn error(&self) -> &str {
        match self {
            Fate::Ack => "",
            Fate::Retry { error, .. } | Fate::DeadLetter { error, .. } => error,
        }
    }

    /// Why a dead letter is dead.
    pub(crate) fn dead_reason(&self) -> Option<DeadReason> {
        match self {
            Fate::DeadLetter { reason, .. } => Some(*reason),
            Fate::Ack | Fate::Retry { .. } => None,
        }
    }
}

/// Retries through `tiers` delay queues, then dead-letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Number of retry tiers (= retries after the first attempt).
    pub tiers: usize,
}

impl RetryPolicy {
    /// The fate of attempt `attempt` (1 = first delivery) that ended in
    /// `outcome`. The error text is the handler's (or the decoder's) message.
    pub(crate) fn decide(&self, outcome: Outcome, attempt: u32) -> Fate {
        match outcome {
            Outcome::Handled(Ok(())) => Fate::Ack,
            Outcome::Handled(Err(HandlerError::Permanent(error))) => Fate::DeadLetter {
                reason: DeadReason::Permanent,
                error,
            },
            Outcome::Handled(Err(HandlerError::Transient(error))) => {
                let tier = attempt.max(1) as usize - 1;
                if tier < self.tiers {
                    Fate::Retry { tier, error }
                } else {
                    Fate::DeadLetter {
                        reason: DeadReason::Exhausted,
                        error,
                    }
                }
            }
            Outcome::Undecodable(reason, error) => Fate::DeadLetter { reason, error },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Outcome {
        Outcome::Handled(Err(HandlerError::Transient("boom".into())))
    }

    fn retry(tier: usize) -> Fate {
        Fate::Retry {
            tier,
            error: "boom".into(),
        }
    }

    fn dead(reason: DeadReason, error: &str) -> Fate {
        Fate::DeadLetter {
            reason,
            error: error.into(),
        }
    }

    #[test]
    fn success_acks() {
        assert_eq!(RetryPolicy { tiers: 3 }.decide(Outcome::Handled(Ok(())), 1), Fate::Ack);
        assert_eq!(RetryPolicy { tiers: 3 }.decide(Outcome::Handled(Ok(())), 4), Fate::Ack);
    }

    #[test]
    fn transient_failures_climb_the_tiers_then_dead_letter() {
        let p = RetryPolicy { tiers: 3 };
        assert_eq!(p.decide(fail(), 1), retry(0));
        assert_eq!(p.decide(fail(), 2), retry(1));
        assert_eq!(p.decide(fail(), 3), retry(2));
        assert_eq!(p.decide(fail(), 4), dead(DeadReason::Exhausted, "boom"));
        assert_eq!(p.decide(fail(), 40), dead(DeadReason::Exhausted, "boom"));
    }

    #[test]
    fn permanent_failures_dead_letter_at_once() {
        let p = RetryPolicy { tiers: 3 };
        assert_eq!(
            p.decide(Outcome::Handled(Err(HandlerError::Permanent("no".into()))), 1),
            dead(DeadReason::Permanent, "no")
        );
    }

    #[test]
    fn bodies_that_never_reached_the_handler_dead_letter_at_once() {
        let p = RetryPolicy { tiers: 3 };
        assert_eq!(
            p.decide(Outcome::Undecodable(DeadReason::Malformed, "not json".into()), 1),
            dead(DeadReason::Malformed, "not json")
        );
    }

    #[test]
    fn no_tiers_means_no_retries() {
        assert_eq!(
            RetryPolicy { tiers: 0 }.decide(fail(), 1),
            dead(DeadReason::Exhausted, "boom")
        );
    }

    #[test]
    fn the_error_text_is_the_handlers_message() {
        let e = HandlerError::transient("db down");
        assert_eq!(
            RetryPolicy { tiers: 1 }.decide(Outcome::Handled(Err(e.clone())), 1),
            Fate::Retry {
                tier: 0,
                error: e.to_string()
            }
        );
    }
}
