//! Grouping: which group a message belongs to, and when a group's buffered
//! messages are printed together, in time order, as one block.
//!
//! A saga's messages carry its `saga_id`, but the `PartnerCreated` that
//! starts it cannot: the saga does not exist yet. What they share is the
//! partner: every saga event, command and `PartnerCreated` names it in
//! `payload.partner_id` (docs/contract.md §3). So the first message of a
//! saga that names its partner links the two, and a saga-less message of
//! that partner joins the saga, whichever of them is read first. Replies
//! need no link: they carry the `saga_id`.
//!
//! Groups are buffered, not printed as read, because a saga's messages
//! arrive interleaved with other sagas' and not quite in time order (each
//! channel is read at its own pace; the outbox publishes saga events after
//! the fact). A group is printed as one block, sorted by message time, when
//! its saga has finished, when it has been quiet for a while (a stuck saga
//! still shows), when it has been held too long, when the buffer is full
//! (the oldest group goes first), or when the monitor stops.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::filter::{GroupBy, NO_KEY};
use super::view::{ChannelKind, Observed};
use crate::envelope::EventType;
use crate::saga::SagaState;

/// How long an unfinished group may go without a new message before it is
/// printed anyway (`monitor --idle`): longer than the default step timeout
/// (`STEP_TIMEOUT_MS`, 10 s), the longest a saga normally waits in silence
/// (for a participant's answer, before trying again).
pub const DEFAULT_QUIET: Duration = Duration::from_secs(15);
/// How long a finished saga's group waits for stragglers: messages of it
/// still in flight on other channels, read a moment later.
const SETTLE: Duration = Duration::from_secs(1);
/// How long a group that never goes quiet (a correlation id shared by a
/// whole load test) is held at most.
const MAX_HOLD: Duration = Duration::from_secs(30);
/// Messages buffered at most, over all groups.
const MAX_LINES: usize = 10_000;
/// Sagas remembered (partner links, groups already shown) at most.
const MAX_LINKS: usize = 10_000;

/// A group's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupKey {
    /// One saga's messages, the `PartnerCreated` that started it included.
    Saga(String),
    /// Messages naming a partner whose saga is not known (yet): a
    /// `PartnerCreated` read before its saga's first message waits here
    /// (up to [`BlockRules::max_hold`]), and moves into the saga's group
    /// when that message comes.
    Partner(String),
    /// One `correlation_id`'s messages.
    Correlation(String),
    /// Lacks what is grouped by: printed at once, alone.
    Missing,
}

impl GroupKey {
    /// The key as text: the JSON `group` field, and what picks its colour.
    pub fn text(&self) -> String {
        match self {
            Self::Saga(id) | Self::Correlation(id) => id.clone(),
            Self::Partner(id) => format!("partner:{id}"),
            Self::Missing => NO_KEY.to_string(),
        }
    }
}

/// Why a block was printed when it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Its saga (every saga of a correlation group) reached a terminal state.
    Finished,
    /// No new message for [`BlockRules::quiet`]; it may go on later.
    Quiet,
    /// Held for [`BlockRules::max_hold`] while messages kept coming.
    Held,
    /// The buffer was full and this was its oldest group.
    Full,
    /// The monitor is stopping.
    End,
    /// A message with no group, printed as it came.
    Ungrouped,
}

/// Messages of one group, in time order, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub key: GroupKey,
    /// By message time; messages of the same time in the order read.
    pub messages: Vec<Observed>,
    pub flush: Flush,
    /// A block of the same group was printed before.
    pub continued: bool,
    /// The partner its messages name.
    pub partner_id: Option<String>,
    /// A saga group's state after its latest saga event.
    pub state: Option<String>,
    /// How long the group had gone without a new message.
    pub idle: Duration,
}

/// When buffered groups are printed, and how much is kept at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRules {
    /// An unfinished group is printed after this long without a message.
    pub quiet: Duration,
    /// A finished group is printed after this long without a message.
    pub settle: Duration,
    /// A group is printed after being held this long, however busy; a
    /// partner's messages wait this long for their saga to appear.
    pub max_hold: Duration,
    /// Messages buffered at most; past it the oldest group is printed.
    pub max_lines: usize,
    /// Sagas remembered at most (for late `PartnerCreated`s, "continued").
    pub max_links: usize,
}

impl BlockRules {
    /// The defaults, with unfinished groups printed after `quiet`; the
    /// other times never exceed it or fall below it as that would mean.
    pub fn with_quiet(quiet: Duration) -> Self {
        Self {
            quiet,
            settle: SETTLE.min(quiet),
            max_hold: MAX_HOLD.max(quiet),
            max_lines: MAX_LINES,
            max_links: MAX_LINKS,
        }
    }
}

impl Default for BlockRules {
    fn default() -> Self {
        Self::with_quiet(DEFAULT_QUIET)
    }
}

/// Buffers messages per group and hands out the blocks due.
#[derive(Debug)]
pub struct Blocks {
    group_by: GroupBy,
    rules: BlockRules,
    groups: HashMap<GroupKey, Group>,
    links: Links,
    /// Groups printed before, so that a later block says it continues one.
    printed: Recent<GroupKey>,
    /// Messages in `groups`.
    lines: usize,
    /// Arrival order, to keep messages of one time in the order read.
    seq: u64,
}

impl Blocks {
    /// Groups by `group_by` under `rules`; [`GroupBy::None`] passes every
    /// message straight through as its own block.
    pub fn new(group_by: GroupBy, rules: BlockRules) -> Self {
        Self {
            group_by,
            rules,
            groups: HashMap::new(),
            links: Links::new(rules.max_links),
            printed: Recent::new(rules.max_links),
            lines: 0,
            seq: 0,
        }
    }

    /// Takes `o`, read at `now`. Returns what is printed because of it: `o`
    /// itself when it has no group, or the oldest groups when the buffer
    /// is full.
    pub fn push(&mut self, o: Observed, now: Instant) -> Vec<Block> {
        let key = self.key(&o);
        if key == GroupKey::Missing {
            return vec![alone(o)];
        }
        self.seq += 1;
        self.groups
            .entry(key)
            .or_insert_with(|| Group::new(now, self.seq))
            .add(self.seq, o, now);
        self.lines += 1;
        self.over_bound(now)
    }

    /// The groups due at `now`: finished and settled, quiet, or held too
    /// long. Oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<Block> {
        let due: Vec<(GroupKey, Flush)> = self
            .groups
            .iter()
            .filter_map(|(key, group)| {
                let waiting = matches!(key, GroupKey::Partner(_));
                Some((key.clone(), group.due(now, &self.rules, waiting)?))
            })
            .collect();
        self.take(due, now)
    }

    /// Every buffered group, oldest first: the monitor is stopping.
    pub fn drain(&mut self, now: Instant) -> Vec<Block> {
        let all = self
            .groups
            .keys()
            .map(|k| (k.clone(), Flush::End))
            .collect();
        self.take(all, now)
    }

    /// Messages buffered.
    pub fn buffered_lines(&self) -> usize {
        self.lines
    }

    /// The group of `o`, learning (and applying) saga–partner links.
    fn key(&mut self, o: &Observed) -> GroupKey {
        match self.group_by {
            GroupBy::None => GroupKey::Missing,
            GroupBy::Correlation => o
                .correlation_id
                .clone()
                .map_or(GroupKey::Missing, GroupKey::Correlation),
            GroupBy::Saga => self.saga_key(o),
        }
    }

    fn saga_key(&mut self, o: &Observed) -> GroupKey {
        let partner = o.payload_text("partner_id");
        let Some(saga) = &o.saga_id else {
            let Some(partner) = partner else {
                return GroupKey::Missing;
            };
            return match self.links.saga_taking(&partner, o.event_id.as_deref()) {
                Some(saga) => GroupKey::Saga(saga),
                None => GroupKey::Partner(partner),
            };
        };
        let state = saga_state(o);
        let linked = self.links.note(saga, partner.as_deref(), state.as_deref());
        if let (true, Some(partner)) = (linked, partner) {
            self.claim(&partner, saga);
        }
        GroupKey::Saga(saga.clone())
    }

    /// Moves what waits under `partner` into `saga`'s group: the saga it
    /// was waiting for has just named the partner.
    fn claim(&mut self, partner: &str, saga: &str) {
        let Some(waiting) = self.groups.remove(&GroupKey::Partner(partner.to_string())) else {
            return;
        };
        let starts = waiting
            .messages
            .iter()
            .map(|(_, o)| o.event_id.clone())
            .collect::<Vec<_>>();
        self.links.started_by(saga, starts);
        let key = GroupKey::Saga(saga.to_string());
        match self.groups.get_mut(&key) {
            Some(group) => group.merge(waiting),
            None => {
                self.groups.insert(key, waiting);
            }
        }
    }

    /// A saga block of commands and replies alone (a participant's reply
    /// need not name the partner) says what the saga's earlier messages
    /// did: its partner, and the state its latest saga event put it in.
    fn fill_in(&self, block: &mut Block) {
        let GroupKey::Saga(saga) = &block.key else {
            return;
        };
        let Some(link) = self.links.sagas.get(saga) else {
            return;
        };
        if block.partner_id.is_none() {
            block.partner_id.clone_from(&link.partner_id);
        }
        if block.state.is_none() {
            block.state.clone_from(&link.state);
        }
    }

    /// Prints the oldest groups until the buffer is within its bound.
    fn over_bound(&mut self, now: Instant) -> Vec<Block> {
        let mut out = Vec::new();
        while self.lines > self.rules.max_lines {
            let oldest = self
                .groups
                .iter()
                .min_by_key(|(_, g)| (g.first_seen, g.first_seq))
                .map(|(key, _)| key.clone());
            let Some(oldest) = oldest else { break };
            out.extend(self.take(vec![(oldest, Flush::Full)], now));
        }
        out
    }

    /// Removes the groups named and makes them blocks, the one with the
    /// earliest message first.
    fn take(&mut self, keys: Vec<(GroupKey, Flush)>, now: Instant) -> Vec<Block> {
        let mut blocks: Vec<(u64, Block)> = keys
            .into_iter()
            .filter_map(|(key, flush)| {
                let group = self.groups.remove(&key)?;
                self.lines = self.lines.saturating_sub(group.messages.len());
                let continued = !self.printed.insert(key.clone());
                let first_seq = group.first_seq;
                let mut block = group.into_block(key, flush, continued, now);
                self.fill_in(&mut block);
                Some((first_seq, block))
            })
            .collect();
        blocks.sort_by(|(a_seq, a), (b_seq, b)| {
            let first = |b: &Block| b.messages.first().map(|o| o.time);
            first(a).cmp(&first(b)).then(a_seq.cmp(b_seq))
        });
        blocks.into_iter().map(|(_, block)| block).collect()
    }
}

/// A message with no group, as a block of its own.
fn alone(o: Observed) -> Block {
    Block {
        key: GroupKey::Missing,
        partner_id: o.payload_text("partner_id"),
        messages: vec![o],
        flush: Flush::Ungrouped,
        continued: false,
        state: None,
        idle: Duration::ZERO,
    }
}

/// The saga's state after a saga event (`payload.state`); `None` for
/// other messages.
fn saga_state(o: &Observed) -> Option<String> {
    (o.kind == ChannelKind::SagaEvents)
        .then(|| o.payload_text("state"))
        .flatten()
}

/// Whether `o` is a saga event saying its saga reached a terminal state:
/// by `payload.state`, or by its type when the state is missing.
fn is_terminal(o: &Observed) -> bool {
    match saga_state(o) {
        Some(state) => SagaState::parse(&state).is_some_and(SagaState::is_terminal),
        None => o
            .event_type
            .as_deref()
            .and_then(EventType::parse)
            .is_some_and(|t| {
                matches!(
                    t,
                    EventType::SagaCompleted | EventType::SagaCompensated | EventType::SagaFailed
                )
            }),
    }
}

/// One group's buffered messages.
#[derive(Debug)]
struct Group {
    /// With their arrival number.
    messages: Vec<(u64, Observed)>,
    first_seen: Instant,
    first_seq: u64,
    last_seen: Instant,
    /// The sagas it holds and whether each has reached a terminal state.
    sagas: Vec<(String, bool)>,
}

impl Group {
    fn new(now: Instant, seq: u64) -> Self {
        Self {
            messages: Vec::new(),
            first_seen: now,
            first_seq: seq,
            last_seen: now,
            sagas: Vec::new(),
        }
    }

    fn add(&mut self, seq: u64, o: Observed, now: Instant) {
        if let Some(saga) = &o.saga_id {
            // Only saga events say where a saga is; a command or reply
            // merely shows that it exists.
            let terminal = (o.kind == ChannelKind::SagaEvents).then(|| is_terminal(&o));
            match self.sagas.iter_mut().find(|(s, _)| s == saga) {
                Some((_, done)) => *done = terminal.unwrap_or(*done),
                None => self.sagas.push((saga.clone(), terminal.unwrap_or(false))),
            }
        }
        self.messages.push((seq, o));
        self.last_seen = now;
    }

    fn merge(&mut self, other: Group) {
        self.messages.extend(other.messages);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.first_seq = self.first_seq.min(other.first_seq);
        self.last_seen = self.last_seen.max(other.last_seen);
        for (saga, done) in other.sagas {
            if !self.sagas.iter().any(|(s, _)| *s == saga) {
                self.sagas.push((saga, done));
            }
        }
    }

    /// Every saga it holds has finished (and it holds one).
    fn finished(&self) -> bool {
        !self.sagas.is_empty() && self.sagas.iter().all(|(_, done)| *done)
    }

    /// Why it is to be printed at `now`, if it is. `waiting`: a partner's
    /// messages waiting for their saga, which the orchestrator may start
    /// only seconds later under load: they are held until
    /// [`BlockRules::max_hold`] rather than the (shorter) quiet time.
    fn due(&self, now: Instant, rules: &BlockRules, waiting: bool) -> Option<Flush> {
        let idle = now.saturating_duration_since(self.last_seen);
        let quiet = if waiting { rules.max_hold } else { rules.quiet };
        if self.finished() && idle >= rules.settle {
            Some(Flush::Finished)
        } else if idle >= quiet {
            Some(Flush::Quiet)
        } else if now.saturating_duration_since(self.first_seen) >= rules.max_hold {
            Some(Flush::Held)
        } else {
            None
        }
    }

    fn into_block(self, key: GroupKey, flush: Flush, continued: bool, now: Instant) -> Block {
        let idle = now.saturating_duration_since(self.last_seen);
        let mut messages = self.messages;
        messages.sort_by(|(a_seq, a), (b_seq, b)| a.time.cmp(&b.time).then(a_seq.cmp(b_seq)));
        let messages: Vec<Observed> = messages.into_iter().map(|(_, o)| o).collect();
        let partner_id = match &key {
            GroupKey::Partner(partner) => Some(partner.clone()),
            _ => messages.iter().find_map(|o| o.payload_text("partner_id")),
        };
        // Only a saga group has one state to tell.
        let state = match &key {
            GroupKey::Saga(_) => messages.iter().rev().find_map(saga_state),
            _ => None,
        };
        Block {
            key,
            messages,
            flush,
            continued,
            partner_id,
            state,
            idle,
        }
    }
}

/// What is known of a saga seen lately: enough to place a saga-less
/// message of its partner.
#[derive(Debug, Default)]
struct SagaLink {
    partner_id: Option<String>,
    /// Its state after its latest saga event read.
    state: Option<String>,
    /// Saga-less messages (its `PartnerCreated`) joined it.
    started: bool,
    /// Their `event_id`s, to recognise a redelivery.
    start_ids: Vec<String>,
}

/// Saga–partner links, the most recent [`BlockRules::max_links`] sagas.
#[derive(Debug)]
struct Links {
    sagas: HashMap<String, SagaLink>,
    /// Each partner's latest saga.
    by_partner: HashMap<String, String>,
    /// Sagas by first sight, to forget the oldest.
    order: VecDeque<String>,
    cap: usize,
}

impl Links {
    fn new(cap: usize) -> Self {
        Self {
            sagas: HashMap::new(),
            by_partner: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Notes a message of `saga` naming `partner` (and, from a saga event,
    /// its `state`). `true` when this links the saga to its partner for
    /// the first time.
    fn note(&mut self, saga: &str, partner: Option<&str>, state: Option<&str>) -> bool {
        if !self.sagas.contains_key(saga) {
            self.order.push_back(saga.to_string());
            self.sagas.insert(saga.to_string(), SagaLink::default());
            self.forget_oldest();
        }
        let Some(link) = self.sagas.get_mut(saga) else {
            return false;
        };
        if let Some(state) = state {
            link.state = Some(state.to_string());
        }
        let (None, Some(partner)) = (&link.partner_id, partner) else {
            return false;
        };
        link.partner_id = Some(partner.to_string());
        self.by_partner
            .insert(partner.to_string(), saga.to_string());
        true
    }

    /// The saga a saga-less message of `partner` belongs to: the partner's
    /// latest saga, unless that one was compensated after its own start,
    /// in which case this starts a new saga (docs/contract.md §1: only a
    /// compensated saga lets its partner have another). A redelivery of
    /// the saga's own start stays with it.
    fn saga_taking(&mut self, partner: &str, event_id: Option<&str>) -> Option<String> {
        let saga = self.by_partner.get(partner)?;
        let link = self.sagas.get_mut(saga)?;
        let redelivered = event_id.is_some_and(|id| link.start_ids.iter().any(|s| s == id));
        let compensated = link.state.as_deref() == Some(SagaState::Compensated.as_str());
        if link.started && compensated && !redelivered {
            return None;
        }
        link.started = true;
        link.start_ids.extend(event_id.map(str::to_string));
        Some(saga.clone())
    }

    /// Records that the messages with `event_ids` started `saga`.
    fn started_by(&mut self, saga: &str, event_ids: Vec<Option<String>>) {
        if let Some(link) = self.sagas.get_mut(saga) {
            link.started = true;
            link.start_ids.extend(event_ids.into_iter().flatten());
        }
    }

    fn forget_oldest(&mut self) {
        while self.order.len() > self.cap {
            let Some(old) = self.order.pop_front() else {
                return;
            };
            let partner = self.sagas.remove(&old).and_then(|link| link.partner_id);
            if let Some(partner) = partner {
                if self.by_partner.get(&partner) == Some(&old) {
                    self.by_partner.remove(&partner);
                }
            }
        }
    }
}

/// A set that forgets its oldest members past `cap`.
#[derive(Debug)]
struct Recent<K> {
    members: HashSet<K>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Clone + Eq + Hash> Recent<K> {
    fn new(cap: usize) -> Self {
        Self {
            members: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Adds `key`; `false` when it was already there.
    fn insert(&mut self, key: K) -> bool {
        if !self.members.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.members.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
