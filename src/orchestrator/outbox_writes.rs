//! What this instance wrote to the outbox, and how much of it the relay is
//! known to have seen through: shutdown's last relay pass is needed only
//! while they differ.
//!
//! A write is counted where it is known durable (the transition writer,
//! after its commit; `start`, after the store's), not by the caller that
//! asked for it: a caller dropped at shutdown (a background loop, an API
//! request whose client left) must not hide a commit that went through.
//! A write abandoned mid-way may or may not have committed, so it makes
//! the outbox count as pending for good.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// The counters, shared by the orchestrator, its writer and its relay.
#[derive(Debug, Default)]
pub(super) struct OutboxWrites {
    written: AtomicU64,
    relayed: AtomicU64,
    unsure: AtomicBool,
    /// Wakes the relay.
    pub(super) wake: Notify,
}

impl OutboxWrites {
    /// A commit with outbox rows went through: count it, wake the relay.
    pub(super) fn written(&self) {
        self.written.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Read before a claim: an empty claim sees through every write so far.
    pub(super) fn mark(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// A claim taken after `mark` found the outbox empty.
    pub(super) fn seen_through(&self, mark: u64) {
        self.relayed.fetch_max(mark, Ordering::AcqRel);
    }

    /// Whether something this instance wrote may still be unpublished.
    pub(super) fn pending(&self) -> bool {
        let relayed = self.relayed.load(Ordering::Acquire);
        self.unsure.load(Ordering::Acquire) || self.written.load(Ordering::Acquire) > relayed
    }

    /// Held across a write that is not made by the writer: counted when it
    /// ends, and pending for good if it was abandoned before it ended.
    pub(super) fn in_flight(&self) -> InFlight<'_> {
        InFlight {
            writes: self,
            ended: false,
        }
    }
}

/// A write in flight; see [`OutboxWrites::in_flight`].
pub(super) struct InFlight<'a> {
    writes: &'a OutboxWrites,
    ended: bool,
}

impl InFlight<'_> {
    /// The write returned (committed or refused: counting it is harmless).
    pub(super) fn ended(mut self) {
        self.ended = true;
        self.writes.written();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.writes.unsure.store(true, Ordering::Release);
            self.writes.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_until_an_empty_claim_sees_through_the_writes() {
        let writes = OutboxWrites::default();
        assert!(!writes.pending(), "nothing written yet");
        writes.written();
        let mark = writes.mark();
        writes.written(); // lands while the claim runs
        writes.seen_through(mark);
        assert!(writes.pending(), "the later write is not seen through");
        writes.seen_through(writes.mark());
        assert!(!writes.pending());
    }

    #[test]
    fn an_abandoned_write_keeps_the_outbox_pending() {
        let writes = OutboxWrites::default();
        writes.in_flight().ended();
        writes.seen_through(writes.mark());
        assert!(!writes.pending(), "an ended write is counted");
        drop(writes.in_flight());
        writes.seen_through(writes.mark());
        assert!(writes.pending(), "it may have committed after the claim");
    }
}
