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
mod tests {
    use super::*;
    use crate::tools::monitor::view::ChannelKind;
    use chrono::{DateTime, Utc};
    use serde_json::{json, Map, Value};

    const S1: &str = "0194f0a2-1111-7000-8000-000000000001";
    const S2: &str = "0194f0a2-1111-7000-8000-000000000002";
    const S3: &str = "0194f0a2-1111-7000-8000-000000000003";

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_795_000_000_000 + ms).expect("a valid time")
    }

    fn message(
        kind: ChannelKind,
        event_type: &str,
        saga: Option<&str>,
        payload: Value,
        ms: i64,
    ) -> Observed {
        Observed {
            time: at(ms),
            channel: kind.as_str().into(),
            kind,
            id: format!("{ms}-0"),
            event_id: Some(format!("e-{event_type}-{ms}")),
            correlation_id: Some("corr-1".into()),
            saga_id: saga.map(str::to_string),
            event_type: Some(event_type.into()),
            status: None,
            payload: Some(payload),
            dlq_reason: None,
            source_channel: None,
            malformed: None,
            raw: None,
        }
    }

    fn created(partner: &str, event_id: &str, ms: i64) -> Observed {
        let mut o = message(
            ChannelKind::Events,
            "PartnerCreated",
            None,
            json!({"partner_id": partner, "name": "Acme"}),
            ms,
        );
        o.event_id = Some(event_id.into());
        o
    }

    fn saga_event(event_type: &str, saga: &str, partner: &str, state: &str, ms: i64) -> Observed {
        message(
            ChannelKind::SagaEvents,
            event_type,
            Some(saga),
            json!({"partner_id": partner, "state": state, "step": "create_alliance"}),
            ms,
        )
    }

    fn started(saga: &str, partner: &str, ms: i64) -> Observed {
        saga_event("SagaStarted", saga, partner, "creating_alliance", ms)
    }

    fn completed(saga: &str, partner: &str, ms: i64) -> Observed {
        saga_event("SagaCompleted", saga, partner, "completed", ms)
    }

    fn compensated(saga: &str, partner: &str, ms: i64) -> Observed {
        saga_event("SagaCompensated", saga, partner, "compensated", ms)
    }

    /// A reply: `saga_id` but, from a real participant, no `partner_id`.
    fn reply(saga: &str, ms: i64) -> Observed {
        message(
            ChannelKind::Replies,
            "CreateAllianceReply",
            Some(saga),
            Value::Object(Map::new()),
            ms,
        )
    }

    fn rules() -> BlockRules {
        BlockRules {
            quiet: Duration::from_secs(3),
            settle: Duration::from_secs(1),
            max_hold: Duration::from_secs(30),
            max_lines: 100,
            max_links: 100,
        }
    }

    fn secs(now: Instant, s: f64) -> Instant {
        now + Duration::from_secs_f64(s)
    }

    fn types(block: &Block) -> Vec<&str> {
        block
            .messages
            .iter()
            .map(|o| o.event_type.as_deref().unwrap_or("-"))
            .collect()
    }

    /// Pushes every message at `now`, expecting nothing printed yet.
    fn push_all(blocks: &mut Blocks, now: Instant, messages: Vec<Observed>) {
        for o in messages {
            assert_eq!(blocks.push(o, now), Vec::new(), "nothing due on push");
        }
    }

    #[test]
    fn a_partner_created_read_first_joins_its_saga_when_the_saga_appears() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(
            &mut blocks,
            now,
            vec![
                created("p-1", "e-1", 0),
                started(S1, "p-1", 5),
                reply(S1, 12),
                completed(S1, "p-1", 20),
            ],
        );
        assert_eq!(blocks.buffered_lines(), 4);
        assert!(blocks.due(secs(now, 0.5)).is_empty(), "settling");
        let out = blocks.due(secs(now, 1.0));
        assert_eq!(out.len(), 1, "{out:#?}");
        let block = &out[0];
        assert_eq!(block.key, GroupKey::Saga(S1.into()));
        assert_eq!(
            types(block),
            [
                "PartnerCreated",
                "SagaStarted",
                "CreateAllianceReply",
                "SagaCompleted"
            ]
        );
        assert_eq!(block.flush, Flush::Finished);
        assert_eq!(block.partner_id.as_deref(), Some("p-1"));
        assert_eq!(block.state.as_deref(), Some("completed"));
        assert!(!block.continued);
        assert_eq!(blocks.buffered_lines(), 0);
    }

    #[test]
    fn a_partner_created_read_after_its_saga_joins_it_too() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(
            &mut blocks,
            now,
            vec![
                started(S1, "p-1", 5),
                created("p-1", "e-1", 0),
                created("p-2", "e-2", 1),
                completed(S1, "p-1", 20),
            ],
        );
        let out = blocks.due(secs(now, 1.0));
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].key, GroupKey::Saga(S1.into()));
        assert_eq!(
            types(&out[0]),
            ["PartnerCreated", "SagaStarted", "SagaCompleted"],
            "in time order"
        );
        // A partner no saga has named yet waits in a group of its own.
        let rest = blocks.drain(now);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].key, GroupKey::Partner("p-2".into()));
        assert_eq!(rest[0].flush, Flush::End);
    }

    #[test]
    fn a_partner_created_waits_for_its_saga_longer_than_a_saga_goes_quiet() {
        // Under a backlog the orchestrator starts the saga seconds later.
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(&mut blocks, now, vec![created("p-1", "e-1", 0)]);
        assert!(blocks.due(secs(now, 10.0)).is_empty(), "still waiting");
        let later = secs(now, 12.0);
        push_all(
            &mut blocks,
            later,
            vec![started(S1, "p-1", 12_000), completed(S1, "p-1", 12_020)],
        );
        let out = blocks.due(secs(later, 1.0));
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(types(&out[0])[0], "PartnerCreated");

        // A saga that never comes: shown after the hold time.
        push_all(&mut blocks, now, vec![created("p-2", "e-2", 0)]);
        assert!(blocks.due(secs(now, 29.0)).is_empty());
        let alone = blocks.due(secs(now, 30.0));
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].key, GroupKey::Partner("p-2".into()));
        assert_eq!(alone[0].flush, Flush::Quiet);
    }

    #[test]
    fn a_new_start_after_compensation_waits_for_the_next_saga() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(
            &mut blocks,
            now,
            vec![
                created("p-1", "e-1", 0),
                started(S1, "p-1", 5),
                compensated(S1, "p-1", 20),
            ],
        );
        let first = blocks.due(secs(now, 1.0));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].state.as_deref(), Some("compensated"));

        // The partner again, after its saga was compensated: a new saga.
        let later = secs(now, 2.0);
        push_all(&mut blocks, later, vec![created("p-1", "e-2", 100)]);
        push_all(
            &mut blocks,
            later,
            vec![started(S2, "p-1", 105), completed(S2, "p-1", 120)],
        );
        let second = blocks.due(secs(later, 1.0));
        assert_eq!(second.len(), 1, "{second:#?}");
        assert_eq!(second[0].key, GroupKey::Saga(S2.into()));
        assert_eq!(
            second[0].messages[0].event_id.as_deref(),
            Some("e-2"),
            "the new start is the new saga's"
        );
        assert!(!second[0].continued);
    }

    #[test]
    fn a_second_start_for_a_live_saga_joins_that_saga() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(
            &mut blocks,
            now,
            vec![
                created("p-3", "e-3", 0),
                started(S3, "p-3", 5),
                // Answered with the saga that exists (docs/contract.md §1).
                created("p-3", "e-4", 8),
                completed(S3, "p-3", 20),
            ],
        );
        let out = blocks.drain(now);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].messages.len(), 4);
    }

    #[test]
    fn a_message_with_nothing_to_group_by_is_printed_at_once() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        let mut bare = message(
            ChannelKind::Events,
            "PartnerCreated",
            None,
            Value::String("{not json".into()),
            0,
        );
        bare.malformed = Some("invalid JSON".into());
        let out = blocks.push(bare, now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, GroupKey::Missing);
        assert_eq!(out[0].flush, Flush::Ungrouped);
        assert_eq!(blocks.buffered_lines(), 0);

        // Not grouping: every message passes straight through.
        let mut flat = Blocks::new(GroupBy::None, rules());
        let out = flat.push(started(S1, "p-1", 0), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, GroupKey::Missing);
    }

    #[test]
    fn an_unfinished_saga_is_printed_once_quiet_and_continued_later() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(&mut blocks, now, vec![started(S1, "p-1", 5)]);
        assert!(blocks.due(secs(now, 2.9)).is_empty());
        let quiet = blocks.due(secs(now, 3.0));
        assert_eq!(quiet.len(), 1);
        assert_eq!(quiet[0].flush, Flush::Quiet);
        assert_eq!(quiet[0].state.as_deref(), Some("creating_alliance"));
        assert_eq!(quiet[0].idle, Duration::from_secs(3));
        assert!(!quiet[0].continued);

        let later = secs(now, 4.0);
        push_all(&mut blocks, later, vec![completed(S1, "p-1", 4000)]);
        let rest = blocks.due(secs(later, 1.0));
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].flush, Flush::Finished);
        assert!(rest[0].continued, "the saga was shown before");
    }

    #[test]
    fn a_block_without_saga_events_still_says_where_its_saga_is() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(
            &mut blocks,
            now,
            vec![saga_event("SagaCompensating", S1, "p-1", "compensating", 0)],
        );
        assert_eq!(blocks.due(secs(now, 3.0)).len(), 1);
        let later = secs(now, 4.0);
        push_all(&mut blocks, later, vec![reply(S1, 4000)]);
        let out = blocks.due(secs(later, 3.0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].state.as_deref(), Some("compensating"));
        assert_eq!(out[0].partner_id.as_deref(), Some("p-1"));
    }

    #[test]
    fn a_group_that_never_goes_quiet_is_printed_after_max_hold() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Correlation, rules());
        let mut out = Vec::new();
        for i in 0..=30 {
            let t = secs(now, f64::from(i));
            let saga = format!("0194f0a2-1111-7000-8000-{i:012}");
            out.extend(blocks.push(started(&saga, "p-1", i64::from(i) * 1000), t));
            out.extend(blocks.due(t));
        }
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].flush, Flush::Held);
        assert_eq!(out[0].key, GroupKey::Correlation("corr-1".into()));
        assert_eq!(out[0].messages.len(), 31);
    }

    #[test]
    fn at_the_end_every_group_is_printed_oldest_first() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        push_all(
            &mut blocks,
            now,
            vec![
                started(S2, "p-2", 50),
                started(S1, "p-1", 10),
                created("p-9", "e-9", 30),
            ],
        );
        let out = blocks.drain(now);
        let keys: Vec<_> = out.iter().map(|b| b.key.clone()).collect();
        assert_eq!(
            keys,
            [
                GroupKey::Saga(S1.into()),
                GroupKey::Partner("p-9".into()),
                GroupKey::Saga(S2.into()),
            ]
        );
        assert!(out.iter().all(|b| b.flush == Flush::End));
        assert_eq!(blocks.buffered_lines(), 0);
        assert!(blocks.drain(now).is_empty());
    }

    #[test]
    fn a_full_buffer_prints_its_oldest_group() {
        let now = Instant::now();
        let mut blocks = Blocks::new(
            GroupBy::Saga,
            BlockRules {
                max_lines: 3,
                ..rules()
            },
        );
        push_all(&mut blocks, now, vec![started(S1, "p-1", 0)]);
        push_all(
            &mut blocks,
            secs(now, 0.1),
            vec![reply(S1, 1), started(S2, "p-2", 2)],
        );
        let out = blocks.push(started(S3, "p-3", 3), secs(now, 0.2));
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].key, GroupKey::Saga(S1.into()));
        assert_eq!(out[0].flush, Flush::Full);
        assert_eq!(out[0].messages.len(), 2);
        assert_eq!(blocks.buffered_lines(), 2);
    }

    #[test]
    fn a_block_is_in_time_order_whatever_the_order_read() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Saga, rules());
        let mut first_at_10 = reply(S1, 10);
        first_at_10.id = "first".into();
        let mut second_at_10 = reply(S1, 10);
        second_at_10.id = "second".into();
        push_all(
            &mut blocks,
            now,
            vec![
                completed(S1, "p-1", 30),
                first_at_10,
                started(S1, "p-1", 5),
                second_at_10,
                created("p-1", "e-1", 0),
            ],
        );
        let out = blocks.drain(now);
        let ids: Vec<_> = out[0].messages.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["0-0", "5-0", "first", "second", "30-0"]);
        assert_eq!(out[0].state.as_deref(), Some("completed"));
    }

    #[test]
    fn a_correlation_group_finishes_when_all_its_sagas_have() {
        let now = Instant::now();
        let mut blocks = Blocks::new(GroupBy::Correlation, rules());
        push_all(
            &mut blocks,
            now,
            vec![
                created("p-1", "e-1", 0),
                created("p-2", "e-2", 1),
                started(S1, "p-1", 5),
                started(S2, "p-2", 6),
                completed(S1, "p-1", 20),
            ],
        );
        assert!(blocks.due(secs(now, 1.0)).is_empty(), "S2 still running");
        push_all(
            &mut blocks,
            secs(now, 1.5),
            vec![compensated(S2, "p-2", 30)],
        );
        let out = blocks.due(secs(now, 2.5));
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].flush, Flush::Finished);
        assert_eq!(out[0].messages.len(), 6);
    }

    #[test]
    fn saga_links_are_bounded() {
        let now = Instant::now();
        let mut blocks = Blocks::new(
            GroupBy::Saga,
            BlockRules {
                max_links: 2,
                ..rules()
            },
        );
        for (saga, partner) in [(S1, "p-1"), (S2, "p-2"), (S3, "p-3")] {
            push_all(&mut blocks, now, vec![started(saga, partner, 0)]);
        }
        blocks.drain(now);
        // p-1's saga is forgotten, p-3's is not.
        push_all(
            &mut blocks,
            now,
            vec![created("p-1", "e-1", 1), created("p-3", "e-3", 1)],
        );
        let keys: Vec<_> = blocks.drain(now).into_iter().map(|b| b.key).collect();
        assert_eq!(
            keys,
            [GroupKey::Partner("p-1".into()), GroupKey::Saga(S3.into())]
        );
    }
}
