//! What this instance wrote to the outbox, and how much of it the relay is
//! known to have seen through: shutdown's last relay pass is needed only
//! while they differ.
//!
//! Most writes are *handed*: their rows are written held by this instance
//! (see [`crate::store::OutboxHold`]) and given to the relay here, in
//! memory, to publish without claiming them. The others (a store that
//! cannot hold, a batch written one by one after an error) are *counted*:
//! the relay must claim them from the store.
//!
//! A write is counted where it is known done, not by the caller that
//! asked for it: its [`InFlight`] guard travels with it (into the
//! transition writer's job; `start` holds its own across the store's
//! create), so a caller dropped at shutdown (a background loop, an API
//! request whose client left) cannot hide a commit that went through.
//! A write abandoned mid-way may or may not have committed: it is counted
//! as a write all the same, so a later empty claim settles it; one still
//! under way makes the outbox pending until it ends, and rows it may have
//! written held are *orphans*: the relay gives back everything it holds
//! before its next claim. A write not yet taken by the writer wrote
//! nothing, and one that wrote no rows counts nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::store::{Held, OutboxMessage};

/// Rows one write handed to the relay: stored, held by this instance
/// until `until`.
#[derive(Debug)]
pub(super) struct Handed {
    pub(super) until: DateTime<Utc>,
    pub(super) messages: Vec<OutboxMessage>,
}

/// The counters, shared by the orchestrator, its writer and its relay.
#[derive(Debug, Default)]
pub(super) struct OutboxWrites {
    /// Counted writes: the relay must claim to see them.
    written: AtomicU64,
    relayed: AtomicU64,
    /// Writes under way: asked for, not yet ended or abandoned.
    under_way: AtomicUsize,
    /// Handed rows the relay has not taken yet, in commit order.
    handed: std::sync::Mutex<Vec<Handed>>,
    /// Takes of handed rows the relay is not done with.
    in_hand: AtomicUsize,
    /// Rows held by this instance may exist that no hand-off will bring
    /// (a write abandoned or failed mid-way, rows its relay could not give
    /// back): the relay gives back all it holds before its next claim.
    orphans: std::sync::atomic::AtomicBool,
    /// Whether the store writes held rows at all: if not, there can be
    /// no orphans, only counted writes.
    holds: std::sync::atomic::AtomicBool,
    /// Wakes the relay.
    pub(super) wake: Notify,
}

impl OutboxWrites {
    /// A commit with outbox rows went through: count it, wake the relay.
    pub(super) fn written(&self) {
        self.written.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Gives the relay rows a commit wrote held, and wakes it.
    pub(super) fn hand_off(&self, until: DateTime<Utc>, messages: Vec<OutboxMessage>) {
        if messages.is_empty() {
            return;
        }
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Handed { until, messages });
        self.wake.notify_one();
    }

    /// Ends the guards of a write that returned, by what it wrote
    /// (`outboxes`: the messages of each applied write or new saga; `held`:
    /// the ids the store gave their rows): rows held with their ids are
    /// handed to the relay, held rows without them are orphans, unheld rows
    /// are counted, and no rows count nothing.
    pub(super) fn settle<'a>(
        &self,
        writing: impl IntoIterator<Item = InFlight>,
        held: &Held,
        until: DateTime<Utc>,
        outboxes: impl IntoIterator<Item = &'a mut Vec<OutboxMessage>>,
    ) {
        let mut outboxes: Vec<&mut Vec<OutboxMessage>> = outboxes.into_iter().collect();
        let outcome = if outboxes.iter().all(|outbox| outbox.is_empty()) {
            Outcome::Handed
        } else if let Some(messages) = held
            .is_held()
            .then(|| held.assign(outboxes.drain(..)))
            .flatten()
        {
            self.hand_off(until, messages);
            Outcome::Handed
        } else if held.is_held() || held.unmatched() {
            Outcome::Orphaned
        } else {
            Outcome::Counted
        };
        for write in writing {
            write.end(outcome);
        }
    }

    /// Everything handed so far, oldest first; pending until the relay is
    /// done with it (the [`InHand`] is dropped).
    pub(super) fn take_handed(self: &Arc<Self>) -> InHand {
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        let counted = !handed.is_empty();
        if counted {
            // Under the lock: `pending` never sees them in neither place.
            self.in_hand.fetch_add(1, Ordering::AcqRel);
        }
        InHand {
            entries: std::mem::take(&mut *handed),
            counted,
            writes: Arc::clone(self),
        }
    }

    /// Held rows no hand-off will bring may exist: counted, and the relay
    /// told to give back everything it holds.
    pub(super) fn orphaned(&self) {
        if self.holds.load(Ordering::Acquire) {
            self.orphans.store(true, Ordering::Release);
        }
        self.written();
    }

    /// Says whether the store writes held rows (see [`OutboxWrites::orphaned`]).
    pub(super) fn set_holds(&self, holds: bool) {
        self.holds.store(holds, Ordering::Release);
    }

    /// Whether [`OutboxWrites::orphaned`] was called since last asked.
    pub(super) fn take_orphans(&self) -> bool {
        self.orphans.swap(false, Ordering::AcqRel)
    }

    /// Whether a counted write may hold rows no claim has seen yet.
    pub(super) fn claim_wanted(&self) -> bool {
        self.written.load(Ordering::Acquire) > self.relayed.load(Ordering::Acquire)
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
        // Under way first: a write leaves it only once counted or handed,
        // so read after it, either shows it.
        if self.under_way.load(Ordering::Acquire) > 0 {
            return true;
        }
        let handed = {
            let handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
            !handed.is_empty() || self.in_hand.load(Ordering::Acquire) > 0
        };
        handed || self.claim_wanted()
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
            outcome: Outcome::Abandoned,
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

/// Handed rows the relay took; see [`OutboxWrites::take_handed`].
pub(super) struct InHand {
    pub(super) entries: Vec<Handed>,
    /// Whether it took any: an empty take keeps nothing pending.
    counted: bool,
    writes: Arc<OutboxWrites>,
}

impl Drop for InHand {
    fn drop(&mut self) {
        if self.counted {
            self.writes.in_hand.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A write in flight; see [`OutboxWrites::in_flight`].
pub(super) struct InFlight {
    writes: Arc<OutboxWrites>,
    outcome: Outcome,
}

/// How a write in flight ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not started: queued for the writer, which has not taken it.
    Queued,
    /// Its caller went away mid-way: it may have committed held rows.
    Abandoned,
    /// Its rows, if any, are unclaimed: a claim finds them.
    Counted,
    /// Its rows, if any, were handed.
    Handed,
    /// It may have left held rows that no hand-off brings (it failed
    /// after a commit, or its ids did not match).
    Orphaned,
}

impl InFlight {
    /// A write waiting for the transition writer: ended as nothing if it
    /// never reaches it.
    pub(super) fn queued(mut self) -> Self {
        self.outcome = Outcome::Queued;
        self
    }

    /// The writer took the job: from here on, as any write under way.
    pub(super) fn taken(mut self) -> Self {
        self.outcome = Outcome::Abandoned;
        self
    }

    /// The write failed, or its held rows could not be handed: see
    /// [`OutboxWrites::orphaned`].
    pub(super) fn orphaned(self) {
        self.end(Outcome::Orphaned);
    }

    /// The write is over, as `outcome` says (for the relay, as it drops).
    fn end(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Counted (or handed) before it stops being under way: `pending`
        // never sees neither.
        match self.outcome {
            Outcome::Abandoned | Outcome::Orphaned => self.writes.orphaned(),
            Outcome::Counted => self.writes.written(),
            Outcome::Handed | Outcome::Queued => {}
        }
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
    fn handed_rows_are_pending_until_taken_and_want_no_claim() {
        let writes = Arc::new(OutboxWrites::default());
        let under_way = writes.in_flight();
        let envelope = crate::envelope::Envelope::new(
            crate::envelope::EventType::SagaCompleted,
            "c",
            None,
            None,
            serde_json::Map::new(),
        );
        let message = OutboxMessage::new("c", envelope);
        writes.hand_off(Utc::now(), vec![message]);
        under_way.end(Outcome::Handed);
        assert!(writes.pending(), "handed, not yet taken by the relay");
        assert!(!writes.claim_wanted(), "handed rows need no claim");
        let taken = writes.take_handed();
        assert_eq!(taken.entries.len(), 1);
        assert!(writes.pending(), "taken, the relay not done with them");
        drop(taken);
        assert!(!writes.pending());
        let nothing = writes.take_handed();
        assert!(!writes.pending(), "an empty take keeps nothing pending");
        drop(nothing);
        writes.hand_off(Utc::now(), Vec::new());
        assert!(!writes.pending(), "a write without rows hands nothing");
    }

    #[test]
    fn a_write_under_way_is_pending_and_counted_however_it_ends() {
        let writes = Arc::new(OutboxWrites::default());
        let under_way = writes.in_flight();
        writes.seen_through(writes.mark());
        assert!(writes.pending(), "under way: it may commit after the claim");
        under_way.end(Outcome::Counted);
        assert!(writes.pending(), "ended: counted, not yet seen through");
        writes.seen_through(writes.mark());
        assert!(!writes.pending());
        writes.set_holds(true);
        drop(writes.in_flight());
        assert!(writes.pending(), "an abandoned write counts as one");
        assert!(writes.take_orphans(), "and may have left held rows");
        assert!(!writes.take_orphans(), "told once");
        writes.seen_through(writes.mark());
        drop(writes.in_flight().queued());
        assert!(
            !writes.pending(),
            "one never taken by the writer wrote nothing"
        );
        drop(writes.in_flight().queued().taken());
        assert!(writes.take_orphans(), "one taken is under way");
        writes.seen_through(writes.mark());
        assert!(!writes.pending(), "and a later empty claim settles it");
    }
}
