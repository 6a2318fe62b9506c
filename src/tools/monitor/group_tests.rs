//! The grouping's tests: keys, joins and when blocks are printed.
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
