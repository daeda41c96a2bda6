//! Coalesced acknowledgements for one channel.
//!
//! Handlers finish out of order. [`AckBook`] turns the settled delivery tags
//! into as few `basic.ack` frames as is safe: one `multiple` ack up to the
//! highest tag below which every delivery is settled, plus single acks when a
//! slow handler holds the low end back for too long (so the prefetch window
//! keeps moving). [`Acks`] holds a channel's book and sends its frames.

use std::collections::VecDeque;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::amqp::describe;

/// A frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckFrame {
    /// `basic.ack(tag, multiple)`.
    Ack { tag: u64, multiple: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Delivered, not settled yet.
    Open,
    /// Settled by warren, not yet acked on the wire.
    Pending,
    /// Acked (or nacked) on the wire already.
    Done,
}

/// Which delivery tags are settled and which are acked on the wire.
///
/// Tags on a channel are dense (1, 2, 3, …), so the book is a window of
/// slots starting just above `floor`.
#[derive(Debug, Default)]
pub(crate) struct AckBook {
    /// Every tag ≤ this is acked on the wire (or settled otherwise).
    floor: u64,
    /// Slot of tag `floor + 1 + i` at index `i`.
    slots: VecDeque<Slot>,
    pending: usize,
}

impl AckBook {
    fn slot(&mut self, tag: u64) -> Option<&mut Slot> {
        let index = usize::try_from(tag.checked_sub(self.floor + 1)?).ok()?;
        // Tags come in order: nearly always one slot more.
        while self.slots.len() <= index {
            self.slots.push_back(Slot::Open);
        }
        self.slots.get_mut(index)
    }

    /// Records that `tag` is settled and wants an ack.
    pub(crate) fn settle(&mut self, tag: u64) {
        if let Some(slot) = self.slot(tag)
            && *slot == Slot::Open
        {
            *slot = Slot::Pending;
            self.pending += 1;
        }
    }

    /// Records that `tag` was settled on the wire already (a single nack).
    pub(crate) fn settled_elsewhere(&mut self, tag: u64) {
        let was_pending = self
            .slot(tag)
            .is_some_and(|slot| std::mem::replace(slot, Slot::Done) == Slot::Pending);
        if was_pending {
            self.pending -= 1;
        }
    }

    /// Settled tags not yet acked.
    #[must_use]
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// The frames that ack every pending tag it is safe to ack now. When more
    /// than `single_after` tags wait behind an unsettled one, they are acked singly.
    pub(crate) fn flush(&mut self, single_after: usize) -> Vec<AckFrame> {
        let mut frames = Vec::new();
        let mut highest_pending = None;
        while let Some(&front) = self.slots.front() {
            if front == Slot::Open {
                break;
            }
            self.slots.pop_front();
            self.floor += 1;
            if front == Slot::Pending {
                self.pending -= 1;
                highest_pending = Some(self.floor);
            }
        }
        if let Some(tag) = highest_pending {
            frames.push(AckFrame::Ack { tag, multiple: true });
        }
        if self.pending > single_after {
            let floor = self.floor;
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if *slot == Slot::Pending {
                    *slot = Slot::Done;
                    frames.push(AckFrame::Ack {
                        tag: floor + 1 + i as u64,
                        multiple: false,
                    });
                }
            }
            self.pending = 0;
        }
        frames
    }
}

/// How a delivery left the handler path: what its channel still owes the broker.
pub(crate) enum Settlement {
    /// Settled by warren: wants an ack.
    Ack(u64),
    /// Nacked (requeued) on the wire already.
    Elsewhere(u64),
    /// Neither: the channel died first, and the broker redelivers it.
    Unsettled,
}

/// A channel's [`AckBook`] and the frames it sends, owned by the worker loop.
pub(crate) struct Acks {
    book: AckBook,
    channel: Channel,
    queue: String,
    /// Settled deliveries worth one ack frame even while more keep coming.
    flush_at: usize,
    /// Settled deliveries held behind an unsettled one that get acked singly.
    single_after: usize,
    stale: u64,
}

impl Acks {
    pub(crate) fn new(channel: Channel, queue: String, prefetch: usize) -> Self {
        let quarter = (prefetch / 4).max(1);
        Self {
            book: AckBook::default(),
            channel,
            queue,
            flush_at: quarter,
            single_after: quarter,
            stale: 0,
        }
    }

    pub(crate) fn record(&mut self, settled: Settlement) {
        match settled {
            Settlement::Ack(tag) => self.book.settle(tag),
            Settlement::Elsewhere(tag) => self.book.settled_elsewhere(tag),
            Settlement::Unsettled => {}
        }
    }

    /// Records the settlements waiting in `rx`; returns how many there were.
    pub(crate) fn record_waiting(&mut self, rx: &mut mpsc::UnboundedReceiver<Settlement>) -> usize {
        let mut n = 0;
        while let Ok(s) = rx.try_recv() {
            self.record(s);
            n += 1;
        }
        n
    }

    /// Enough settled deliveries wait for an ack to send one now.
    pub(crate) fn due(&self) -> bool {
        self.book.pending() >= self.flush_at
    }

    pub(crate) async fn flush(&mut self) {
        let frames = self.book.flush(self.single_after);
        self.send(frames).await;
    }

    /// Acks everything settled, however it is spread.
    pub(crate) async fn finish(mut self) {
        let frames = self.book.flush(0);
        self.send(frames).await;
        if self.stale > 0 {
            warn!(
                queue = self.queue,
                stale = self.stale,
                "acks lost with the channel; those messages will be redelivered"
            );
        }
    }

    async fn send(&mut self, frames: Vec<AckFrame>) {
        for AckFrame::Ack { tag, multiple } in frames {
            if let Err(e) = self.channel.basic_ack(tag, BasicAckOptions { multiple }).await {
                // The channel is gone: the broker will redeliver these.
                self.stale += 1;
                metrics::counter!(crate::metrics::STALE_ACKS_TOTAL, "queue" => self.queue.clone()).increment(1);
                debug!(queue = self.queue, tag, error = %describe(&e), "ack on a closed channel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(tag: u64, multiple: bool) -> AckFrame {
        AckFrame::Ack { tag, multiple }
    }

    #[test]
    fn in_order_settles_coalesce_into_one_multiple_ack() {
        let mut b = AckBook::default();
        for t in 1..=5 {
            b.settle(t);
        }
        assert_eq!(b.flush(100), vec![ack(5, true)]);
        assert_eq!(b.flush(100), vec![]);
    }

    #[test]
    fn a_gap_holds_back_the_multiple_ack() {
        let mut b = AckBook::default();
        b.settle(1);
        b.settle(3);
        assert_eq!(b.flush(100), vec![ack(1, true)]);
        b.settle(4);
        assert_eq!(b.flush(100), vec![], "2 is still in flight");
        b.settle(2);
        assert_eq!(b.flush(100), vec![ack(4, true)]);
    }

    #[test]
    fn many_waiting_behind_a_slow_one_are_acked_singly_and_never_twice() {
        let mut b = AckBook::default();
        for t in 2..=4 {
            b.settle(t);
        }
        assert_eq!(b.flush(2), vec![ack(2, false), ack(3, false), ack(4, false)]);
        b.settle(5);
        assert_eq!(b.flush(2), vec![], "5 waits for 1");
        b.settle(1);
        // 1 and 5 are pending; 2..4 are done: the multiple ack names 5, which was never acked.
        assert_eq!(b.flush(2), vec![ack(5, true)]);
    }

    #[test]
    fn a_multiple_ack_never_names_a_tag_acked_singly() {
        let mut b = AckBook::default();
        b.settle(2);
        assert_eq!(b.flush(0), vec![ack(2, false)]);
        b.settle(1);
        assert_eq!(b.flush(0), vec![ack(1, true)], "ack 1 only: 2 is done");
    }

    #[test]
    fn nacked_tags_let_the_floor_pass() {
        let mut b = AckBook::default();
        b.settled_elsewhere(1);
        b.settle(2);
        assert_eq!(b.flush(10), vec![ack(2, true)]);
    }
}
