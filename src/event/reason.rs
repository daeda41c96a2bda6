//! Why a message was parked in its `.dead` queue: the values of the
//! `x-warren-reason` header, written by the consumer and read by `dead` and
//! the AsyncAPI document.

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
