//! What this instance wrote to the outbox, and how much of it the relay is
//! known to have seen through: shutdown's last relay pass is needed only
//! while they differ.
//!
//! A write is counted where it is known done, not by the caller that
//! asked for it: its [`InFlight`] guard travels with it (into the
//! transition writer's job; `start` holds its own across the store's
//! create), so a caller dropped at shutdown (a background loop, an API
//! request whose client left) cannot hide a commit that went through.
//! A write abandoned mid-way may or may not have committed: it is counted
//! as a write all the same, so a later empty claim settles it; one still
//! under way makes the outbox pending until it ends.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The counters, shared by the orchestrator, its writer and its relay.
#[derive(Debug, Default)]
pub(super) struct OutboxWrites {
    written: AtomicU64,
    relayed: AtomicU64,
    /// Writes under way: asked for, not yet ended or abandoned.
    under_way: AtomicUsize,
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
        self.under_way.load(Ordering::Acquire) > 0 || self.written.load(Ordering::Acquire) > relayed
    }

    /// Held across a write, by whoever makes it (`start`, or the writer
    /// task that has the job, whether or not its caller still waits):
    /// pending while it is under way, counted as a write when it ends or
    /// is abandoned (counting one that did not commit costs one empty
    /// claim).
    pub(super) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.under_way.fetch_add(1, Ordering::AcqRel);
        InFlight {
            writes: Arc::clone(self),
        }
    }

    /// Resolves once no write is under way: shutdown's last relay pass
    /// must come after the writes whose callers it dropped.
    pub(super) async fn settled(&self) {
        while self.under_way.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(SETTLED_POLL).await;
        }
    }
}

/// How often [`OutboxWrites::settled`] looks (at shutdown only).
const SETTLED_POLL: Duration = Duration::from_millis(5);

/// A write in flight; see [`OutboxWrites::in_flight`].
pub(super) struct InFlight {
    writes: Arc<OutboxWrites>,
}

impl InFlight {
    /// The write returned.
    pub(super) fn ended(self) {}
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Counted before it stops being under way: `pending` never sees
        // neither.
        self.writes.written();
        self.writes.under_way.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_until_an_empty_claim_sees_through_the_writes() {
        let writes = Arc::new(OutboxWrites::default());
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
    fn a_write_under_way_is_pending_and_counted_however_it_ends() {
        let writes = Arc::new(OutboxWrites::default());
        let under_way = writes.in_flight();
        writes.seen_through(writes.mark());
        assert!(writes.pending(), "under way: it may commit after the claim");
        under_way.ended();
        assert!(writes.pending(), "ended: counted, not yet seen through");
        writes.seen_through(writes.mark());
        assert!(!writes.pending());
        drop(writes.in_flight());
        assert!(writes.pending(), "an abandoned write counts as one");
        writes.seen_through(writes.mark());
        assert!(!writes.pending(), "and a later empty claim settles it");
    }
}
