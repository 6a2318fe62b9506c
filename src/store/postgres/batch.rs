//! Many sagas' transitions in one statement: group commit with one round
//! trip and one durable flush, however many sagas the batch holds.
//!
//! The statement does what `commit_on` does for one transition, for all of
//! them at once: a version-checked, lease-fenced `UPDATE … FROM UNNEST`,
//! then the history rows and outbox messages of exactly the rows it
//! updated. A single statement is atomic on its own, so no `BEGIN`/`COMMIT`
//! round trips either: the batch costs one round trip where it used to
//! cost one per transition plus two.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::HistoryColumns;

use crate::store::{attempts_i32, stored_message, Held, OutboxHold, StoreError, TransitionWrite};

/// One statement for the whole batch. `w` holds one row per write (its
/// index in the batch first); `h` every history row and `o` every outgoing
/// message, each with the index of its write, in batch order. When two writes of one batch name the same
/// saga (an operator and its driver at the same moment), the `UPDATE`
/// applies one of them and `RETURNING w.idx` says which: the other is
/// refused like any stale write.
const COMMIT_BATCH: &str = "WITH w AS ( \
        SELECT * FROM UNNEST($1::int4[], $2::uuid[], $3::int4[], $4::text[], $5::text[], \
            $6::int4[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], \
            $11::text[], $12::timestamptz[], $13::int4[], $14::bool[], $15::text[], \
            $16::timestamptz[], $17::bool[]) \
        AS w(idx, saga_id, expected, state, step, attempts, alliance_id, last_error, updated_at, \
            next_attempt_at, lease_owner, lease_until, version, awaiting_reply, fence, deadline_at, \
            lease_unchanged) \
     ), upd AS ( \
        UPDATE sagas s SET state = w.state, step = w.step, attempts = w.attempts, \
            alliance_id = w.alliance_id, last_error = w.last_error, updated_at = w.updated_at, \
            next_attempt_at = w.next_attempt_at, \
            lease_owner = CASE WHEN w.lease_unchanged THEN s.lease_owner ELSE w.lease_owner END, \
            lease_until = CASE WHEN w.lease_unchanged THEN s.lease_until ELSE w.lease_until END, \
            version = w.version, awaiting_reply = w.awaiting_reply, deadline_at = w.deadline_at \
        FROM w \
        WHERE s.saga_id = w.saga_id AND s.version = w.expected \
          AND (w.fence IS NULL OR s.lease_owner IS NULL OR s.lease_owner = w.fence \
               OR s.lease_until < w.updated_at) \
        RETURNING w.idx, w.saga_id \
     ), hist AS ( \
        INSERT INTO saga_history (saga_id, seq, from_state, to_state, reason, detail, at, instance_id, events) \
        SELECT upd.saga_id, h.seq, h.from_state, h.to_state, h.reason, h.detail, h.at, h.instance_id, h.events \
        FROM upd JOIN UNNEST($18::int4[], $19::int4[], $20::text[], $21::text[], $22::text[], \
            $23::text[], $24::timestamptz[], $25::text[], $26::text[]) \
            AS h(idx, seq, from_state, to_state, reason, detail, at, instance_id, events) \
            ON h.idx = upd.idx \
     ), outgoing AS ( \
        INSERT INTO outbox (channel, message, claimed_by, claimed_until) \
        SELECT o.channel, o.message, $30::text, $31::timestamptz \
        FROM upd JOIN UNNEST($27::int4[], $28::text[], $29::jsonb[]) WITH ORDINALITY \
            AS o(idx, channel, message, n) ON o.idx = upd.idx \
        ORDER BY o.n \
        RETURNING id, message->>'event_id' AS held_event \
     ) \
     SELECT idx, NULL::bigint AS outbox_id, NULL::text AS held_event FROM upd \
     UNION ALL \
     SELECT NULL, id, held_event FROM outgoing WHERE $30::text IS NOT NULL";

/// Writes `writes` in one statement, their outbox rows held by `hold` if
/// given; `applied[i]` as `SagaStore::commit` would answer for
/// `writes[i]`, and the held rows' ids. An error writes nothing.
pub(super) async fn commit_batch(
    pool: &PgPool,
    writes: &[TransitionWrite],
    hold: Option<&OutboxHold>,
) -> Result<(Vec<bool>, Held), StoreError> {
    let cols = Columns::of(writes);
    let out = Outgoing::of(writes);
    let query = sqlx::query(COMMIT_BATCH)
        .bind(cols.idx)
        .bind(cols.saga_id)
        .bind(cols.expected)
        .bind(cols.state)
        .bind(cols.step)
        .bind(cols.attempts)
        .bind(cols.alliance_id)
        .bind(cols.last_error)
        .bind(cols.updated_at)
        .bind(cols.next_attempt_at)
        .bind(cols.lease_owner)
        .bind(cols.lease_until)
        .bind(cols.version)
        .bind(cols.awaiting_reply)
        .bind(cols.fence)
        .bind(cols.deadline_at)
        .bind(cols.lease_unchanged);
    let rows = history(writes)
        .bind(query)
        .bind(out.idx)
        .bind(out.channel)
        .bind(out.message)
        .bind(hold.map(|h| h.owner.as_str()))
        .bind(hold.map(|h| h.until))
        .fetch_all(pool)
        .await?;
    let mut applied = vec![false; writes.len()];
    let mut returned = HashMap::new();
    for row in rows {
        if let Some(id) = row.try_get::<Option<i64>, _>("outbox_id")? {
            returned.insert(row.try_get("held_event")?, id);
            continue;
        }
        let idx: i32 = row.try_get("idx")?;
        if let Some(slot) = usize::try_from(idx).ok().and_then(|i| applied.get_mut(i)) {
            *slot = true;
        }
    }
    let messages = writes
        .iter()
        .zip(&applied)
        .filter(|(_, applied)| **applied)
        .flat_map(|(w, _)| &w.outbox);
    let held = Held::ordered(&returned, messages);
    Ok((applied, held))
}

/// The index of a write in its batch, as the statement carries it.
fn index(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// Column arrays of the writes, one element per write.
#[derive(Default)]
struct Columns<'a> {
    idx: Vec<i32>,
    saga_id: Vec<Uuid>,
    expected: Vec<i32>,
    state: Vec<&'static str>,
    step: Vec<&'static str>,
    attempts: Vec<i32>,
    alliance_id: Vec<Option<&'a str>>,
    last_error: Vec<Option<&'a str>>,
    updated_at: Vec<DateTime<Utc>>,
    next_attempt_at: Vec<Option<DateTime<Utc>>>,
    lease_owner: Vec<Option<&'a str>>,
    lease_until: Vec<Option<DateTime<Utc>>>,
    version: Vec<i32>,
    awaiting_reply: Vec<bool>,
    fence: Vec<Option<&'a str>>,
    deadline_at: Vec<DateTime<Utc>>,
    lease_unchanged: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn of(writes: &'a [TransitionWrite]) -> Self {
        let mut c = Self::default();
        for (i, w) in writes.iter().enumerate() {
            let s = &w.saga;
            c.idx.push(index(i));
            c.saga_id.push(s.saga_id);
            c.expected.push(w.expected_version);
            c.state.push(s.state.as_str());
            c.step.push(s.step.as_str());
            c.attempts.push(attempts_i32(s.attempts));
            c.alliance_id.push(s.alliance_id.as_deref());
            c.last_error.push(s.last_error.as_deref());
            c.updated_at.push(s.updated_at);
            c.next_attempt_at.push(s.next_attempt_at);
            c.lease_owner
                .push(w.lease.as_ref().map(|l| l.owner.as_str()));
            c.lease_until.push(w.lease.as_ref().map(|l| l.until));
            c.version.push(s.version);
            c.awaiting_reply.push(s.awaiting_reply);
            c.fence.push(w.fence.as_deref());
            c.deadline_at.push(s.deadline_at);
            c.lease_unchanged.push(w.lease_unchanged);
        }
        c
    }
}

/// Every write's history rows, flattened in batch order, each keyed by
/// the index of its write.
fn history(writes: &[TransitionWrite]) -> HistoryColumns<'_, i32> {
    let mut c = HistoryColumns::default();
    for (i, w) in writes.iter().enumerate() {
        for h in &w.history {
            c.push(index(i), h);
        }
    }
    c
}

/// Every write's outgoing messages, flattened in batch order, each with
/// the index of its write.
#[derive(Debug, Default, PartialEq)]
struct Outgoing {
    idx: Vec<i32>,
    channel: Vec<String>,
    message: Vec<Value>,
}

impl Outgoing {
    fn of(writes: &[TransitionWrite]) -> Self {
        let mut out = Self::default();
        for (i, w) in writes.iter().enumerate() {
            for m in &w.outbox {
                out.idx.push(index(i));
                out.channel.push(m.channel.clone());
                out.message.push(stored_message(m));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, EventType};
    use crate::saga::{HistoryEntry, Saga, SagaState, Step};
    use crate::store::OutboxMessage;
    use serde_json::Map;

    fn write(n: usize) -> TransitionWrite {
        let now = Utc::now();
        let saga = Saga {
            saga_id: Uuid::now_v7(),
            event_id: format!("e-{n}"),
            correlation_id: format!("c-{n}"),
            partner_id: format!("p-{n}"),
            state: SagaState::Completed,
            step: Step::CreateAlliance,
            attempts: 1,
            alliance_id: None,
            last_error: None,
            payload: Map::new(),
            created_at: now,
            updated_at: now,
            deadline_at: now,
            next_attempt_at: None,
            traceparent: None,
            awaiting_reply: false,
            version: 3,
        };
        let outbox = (0..n)
            .map(|_| {
                let envelope = Envelope::new(
                    EventType::SagaCompleted,
                    saga.correlation_id.clone(),
                    Some(saga.saga_id),
                    None,
                    Map::new(),
                );
                OutboxMessage::new("saga-events", envelope)
            })
            .collect();
        TransitionWrite {
            history: vec![HistoryEntry {
                seq: 3,
                from_state: Some(SagaState::CreatingAlliance),
                to_state: SagaState::Completed,
                reason: "alliance_created".into(),
                detail: None,
                at: now,
                instance_id: None,
                events: Vec::new(),
            }],
            expected_version: 2,
            outbox,
            lease: None,
            fence: None,
            lease_unchanged: false,
            saga,
        }
    }

    #[test]
    fn each_message_names_its_write_in_batch_order() {
        let writes = vec![write(2), write(0), write(1)];
        let out = Outgoing::of(&writes);
        assert_eq!(out.idx, [0, 0, 2]);
        let sagas: Vec<Value> = writes
            .iter()
            .flat_map(|w| {
                w.outbox
                    .iter()
                    .map(|_| Value::from(w.saga.saga_id.to_string()))
            })
            .collect();
        let stored: Vec<Value> = out.message.iter().map(|m| m["saga_id"].clone()).collect();
        assert_eq!(stored, sagas, "each message beside its own write's index");
    }

    #[test]
    fn one_row_per_write_indexed_as_the_batch() {
        let writes = vec![write(0), write(1), write(0)];
        let cols = Columns::of(&writes);
        assert_eq!(cols.idx, [0, 1, 2]);
        let ids: Vec<Uuid> = writes.iter().map(|w| w.saga.saga_id).collect();
        assert_eq!(cols.saga_id, ids);
        assert_eq!(cols.expected, [2, 2, 2]);
        assert_eq!(history(&writes).key, [0, 1, 2]);
    }
}
