//! A run's accounting: when each partner's event went out, which terminal
//! saga event came back for it, and how many sagas are between the two.
//! Pure bookkeeping, so every rule is tested without a broker.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// How a saga ended, as its terminal event on `saga-events` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Completed,
    Compensated,
    Failed,
}

impl Outcome {
    /// Every outcome, in the report's order.
    pub const ALL: [Outcome; 3] = [Self::Completed, Self::Compensated, Self::Failed];

    /// The outcome a terminal event type announces; `None` for the others.
    pub fn of_event_type(event_type: &str) -> Option<Self> {
        match event_type {
            "SagaCompleted" => Some(Self::Completed),
            "SagaCompensated" => Some(Self::Compensated),
            "SagaFailed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// The saga state it leaves (docs/contract.md §1).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }
}

/// A terminal saga event as read on `saga-events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub partner_id: String,
    pub saga_id: Option<String>,
    pub outcome: Outcome,
    /// When the reader received it.
    pub at: DateTime<Utc>,
}

/// What one terminal event meant to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first terminal event of one of the run's partners.
    Settled,
    /// The same saga's terminal event again (a relay's at-least-once copy).
    Repeat,
    /// A second saga for a partner that already had one: must never happen.
    SecondSaga,
    /// Not one of the run's partners (another run, another client).
    Stranger,
}

#[derive(Debug, Default)]
struct Entry {
    sent_at: Option<DateTime<Utc>>,
    done: Option<Done>,
}

#[derive(Debug)]
struct Done {
    saga_id: Option<String>,
    outcome: Outcome,
    at: DateTime<Utc>,
}

/// Every partner of the run and where its saga is.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<String, Entry>,
    sent: usize,
    settled: usize,
    in_flight: usize,
    max_in_flight: usize,
    repeats: usize,
    second_sagas: usize,
    strangers: usize,
    first_sent: Option<DateTime<Utc>>,
    last_settled: Option<DateTime<Utc>>,
}

impl Ledger {
    /// A ledger for the run's partners, none sent yet.
    pub fn new(partners: impl IntoIterator<Item = String>) -> Self {
        Self {
            entries: partners
                .into_iter()
                .map(|p| (p, Entry::default()))
                .collect(),
            ..Self::default()
        }
    }

    /// The partner's event went out at `at`; `false` (and nothing counted)
    /// for a partner not of the run or already sent.
    pub fn sent(&mut self, partner: &str, at: DateTime<Utc>) -> bool {
        let Some(entry) = self.entries.get_mut(partner) else {
            return false;
        };
        if entry.sent_at.is_some() {
            return false;
        }
        entry.sent_at = Some(at);
        self.sent += 1;
        self.first_sent = Some(self.first_sent.map_or(at, |first| first.min(at)));
        // Publishing and reading race in the burst mode: a terminal event
        // may be counted before its send is.
        if entry.done.is_none() {
            self.in_flight += 1;
            self.max_in_flight = self.max_in_flight.max(self.in_flight);
        }
        true
    }

    /// Counts a terminal event.
    pub fn seen(&mut self, seen: Seen) -> Verdict {
        let Some(entry) = self.entries.get_mut(&seen.partner_id) else {
            self.strangers += 1;
            return Verdict::Stranger;
        };
        if let Some(done) = &entry.done {
            let verdict = if done.saga_id == seen.saga_id {
                self.repeats += 1;
                Verdict::Repeat
            } else {
                self.second_sagas += 1;
                Verdict::SecondSaga
            };
            return verdict;
        }
        if entry.sent_at.is_some() {
            self.in_flight -= 1;
        }
        self.settled += 1;
        self.last_settled = self.last_settled.max(Some(seen.at));
        entry.done = Some(Done {
            saga_id: seen.saga_id,
            outcome: seen.outcome,
            at: seen.at,
        });
        Verdict::Settled
    }

    /// Partners of the run.
    pub fn partners(&self) -> usize {
        self.entries.len()
    }

    /// Events sent.
    pub fn sent_count(&self) -> usize {
        self.sent
    }

    /// Partners with a terminal event.
    pub fn settled(&self) -> usize {
        self.settled
    }

    /// Sent and not settled.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The most sagas in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Terminal events of an already settled saga.
    pub fn repeats(&self) -> usize {
        self.repeats
    }

    /// Second sagas of one partner.
    pub fn second_sagas(&self) -> usize {
        self.second_sagas
    }

    /// Terminal events of partners not of the run.
    pub fn strangers(&self) -> usize {
        self.strangers
    }

    /// In flight and sent at least `timeout` before `now`: given up on.
    /// A scan of every partner: for a periodic check, not every event.
    pub fn overdue(&self, now: DateTime<Utc>, timeout: Duration) -> usize {
        self.unsettled_sends()
            .filter(|sent| is_overdue(*sent, now, timeout))
            .count()
    }

    /// In flight and not overdue: still worth waiting for.
    pub fn waiting(&self, now: DateTime<Utc>, timeout: Duration) -> usize {
        self.in_flight.saturating_sub(self.overdue(now, timeout))
    }

    fn unsettled_sends(&self) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.entries
            .values()
            .filter(|e| e.done.is_none())
            .filter_map(|e| e.sent_at)
    }

    /// Partners sent and never settled, sorted.
    pub fn unfinished(&self) -> Vec<String> {
        let mut partners: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.sent_at.is_some() && e.done.is_none())
            .map(|(p, _)| p.clone())
            .collect();
        partners.sort();
        partners
    }

    /// First send to the last settlement.
    pub fn elapsed(&self) -> Duration {
        match (self.first_sent, self.last_settled) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Send to terminal event of every settled saga whose send is known,
    /// by outcome (every outcome present, maybe empty).
    pub fn latencies(&self) -> BTreeMap<Outcome, Vec<Duration>> {
        let mut by: BTreeMap<Outcome, Vec<Duration>> =
            Outcome::ALL.iter().map(|o| (*o, Vec::new())).collect();
        for entry in self.entries.values() {
            if let (Some(sent), Some(done)) = (entry.sent_at, &entry.done) {
                let took = (done.at - sent).to_std().unwrap_or_default();
                by.entry(done.outcome).or_default().push(took);
            }
        }
        by
    }
}

fn is_overdue(sent: DateTime<Utc>, now: DateTime<Utc>, timeout: Duration) -> bool {
    (now - sent).to_std().is_ok_and(|waited| waited >= timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms)
    }

    fn seen(partner: &str, saga: &str, outcome: Outcome, at: i64) -> Seen {
        Seen {
            partner_id: partner.into(),
            saga_id: Some(saga.into()),
            outcome,
            at: t(at),
        }
    }

    fn ledger(n: usize) -> Ledger {
        Ledger::new((0..n).map(|i| format!("p{i}")))
    }

    #[test]
    fn a_saga_is_in_flight_from_its_send_to_its_terminal_event() {
        let mut l = ledger(3);
        assert!(l.sent("p0", t(0)));
        assert!(l.sent("p1", t(5)));
        assert!(!l.sent("p1", t(6)), "sent once");
        assert!(!l.sent("nobody", t(6)));
        assert_eq!(
            (l.in_flight(), l.max_in_flight(), l.sent_count()),
            (2, 2, 2)
        );
        let done = seen("p0", "s0", Outcome::Completed, 40);
        assert_eq!(l.seen(done), Verdict::Settled);
        assert_eq!(l.in_flight(), 1);
        assert!(l.sent("p2", t(41)));
        assert_eq!((l.in_flight(), l.max_in_flight()), (2, 2));
        assert_eq!(l.unfinished(), ["p1", "p2"]);
        assert_eq!(
            l.latencies()[&Outcome::Completed],
            [Duration::from_millis(40)]
        );
        assert!(l.latencies()[&Outcome::Failed].is_empty());
        assert_eq!(l.elapsed(), Duration::from_millis(40));
    }

    #[test]
    fn repeats_second_sagas_and_strangers_are_told_apart() {
        let mut l = ledger(2);
        l.sent("p0", t(0));
        assert_eq!(
            l.seen(seen("p0", "s0", Outcome::Completed, 9)),
            Verdict::Settled
        );
        assert_eq!(
            l.seen(seen("p0", "s0", Outcome::Completed, 10)),
            Verdict::Repeat
        );
        assert_eq!(
            l.seen(seen("p0", "s9", Outcome::Compensated, 11)),
            Verdict::SecondSaga
        );
        assert_eq!(
            l.seen(seen("px", "sx", Outcome::Failed, 12)),
            Verdict::Stranger
        );
        assert_eq!(
            (l.settled(), l.repeats(), l.second_sagas(), l.strangers()),
            (1, 1, 1, 1)
        );
        assert_eq!(l.in_flight(), 0, "only the first one settles");
        assert_eq!(
            l.latencies()[&Outcome::Completed],
            [Duration::from_millis(9)]
        );
    }

    #[test]
    fn a_terminal_event_counted_before_its_send_leaves_nothing_in_flight() {
        let mut l = ledger(1);
        assert_eq!(
            l.seen(seen("p0", "s0", Outcome::Failed, 30)),
            Verdict::Settled
        );
        assert!(l.sent("p0", t(10)));
        assert_eq!((l.in_flight(), l.max_in_flight(), l.settled()), (0, 0, 1));
        assert_eq!(l.latencies()[&Outcome::Failed], [Duration::from_millis(20)]);
    }

    #[test]
    fn sagas_in_flight_past_the_timeout_are_overdue() {
        let mut l = ledger(3);
        l.sent("p0", t(0));
        l.sent("p1", t(500));
        l.sent("p2", t(900));
        l.seen(seen("p2", "s2", Outcome::Completed, 950));
        let timeout = Duration::from_millis(600);
        assert_eq!(
            (l.overdue(t(599), timeout), l.waiting(t(599), timeout)),
            (0, 2)
        );
        assert_eq!(
            (l.overdue(t(600), timeout), l.waiting(t(600), timeout)),
            (1, 1)
        );
        assert_eq!(
            (l.overdue(t(5000), timeout), l.waiting(t(5000), timeout)),
            (2, 0)
        );
        assert_eq!(l.overdue(t(-1), timeout), 0, "a clock going back");
    }

    /// One step of a run as the engine and the reader may interleave them.
    #[derive(Debug, Clone)]
    enum Step {
        Send(usize),
        Seen { partner: usize, saga: u8 },
        Stranger,
    }

    fn step(partners: usize) -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..partners).prop_map(Step::Send),
            4 => (0..partners, 0..2u8).prop_map(|(partner, saga)| Step::Seen { partner, saga }),
            1 => Just(Step::Stranger),
        ]
    }

    proptest! {
        /// Whatever the order, every partner is counted once: in flight is
        /// exactly the sent and unsettled ones, settled never exceeds the
        /// partners, and each extra terminal event is a repeat or a second
        /// saga, never a second settlement.
        #[test]
        fn every_partner_is_counted_once(steps in proptest::collection::vec(step(8), 0..80)) {
            let mut l = ledger(8);
            let mut terminal_events = 0usize;
            let mut strangers = 0usize;
            for (i, s) in steps.iter().enumerate() {
                match s {
                    Step::Send(p) => { l.sent(&format!("p{p}"), t(i as i64)); }
                    Step::Seen { partner, saga } => {
                        terminal_events += 1;
                        l.seen(seen(&format!("p{partner}"), &format!("s{saga}"), Outcome::Completed, i as i64));
                    }
                    Step::Stranger => {
                        strangers += 1;
                        l.seen(seen("other", "s", Outcome::Completed, i as i64));
                    }
                }
                let sent_unsettled = l.unfinished().len();
                prop_assert_eq!(l.in_flight(), sent_unsettled);
                prop_assert!(l.in_flight() <= l.max_in_flight());
                prop_assert!(l.settled() <= l.partners());
            }
            prop_assert_eq!(l.settled() + l.repeats() + l.second_sagas(), terminal_events);
            prop_assert_eq!(l.strangers(), strangers);
            let timed: usize = l.latencies().values().map(Vec::len).sum();
            prop_assert!(timed <= l.settled().min(l.sent_count()));
        }
    }
}
