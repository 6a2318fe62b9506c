//! A batch of new sagas in one statement: the saga rows that are new, and
//! only theirs, with their history and outbox rows. One round trip and one
//! durable flush for the batch, where a transaction of separate inserts
//! took five round trips.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::SagaColumns;
use crate::saga::SagaState;
use crate::store::{stored_message, NewSaga, StoreError};

/// `ins` takes the sagas that meet no existing one (the same event, or a
/// live saga of the same partner: `ON CONFLICT DO NOTHING`); the history
/// and outbox rows are inserted for exactly those, joined on `saga_id`.
/// The foreign key of a history row is checked at the end of the
/// statement, when its saga row is there.
const INSERT_ALL: &str = "WITH ins AS ( \
        INSERT INTO sagas (saga_id, event_id, correlation_id, partner_id, state, step, attempts, \
            alliance_id, last_error, payload, traceparent, created_at, updated_at, deadline_at, \
            next_attempt_at, lease_owner, lease_until, version) \
        SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
            $7::int4[], $8::text[], $9::text[], $10::jsonb[], $11::text[], $12::timestamptz[], \
            $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::text[], \
            $17::timestamptz[], $18::int4[]) \
        ON CONFLICT DO NOTHING \
        RETURNING event_id, saga_id \
     ), hist AS ( \
        INSERT INTO saga_history (saga_id, seq, from_state, to_state, reason, detail, at, instance_id) \
        SELECT h.saga_id, h.seq, h.from_state, h.to_state, h.reason, h.detail, h.at, h.instance_id \
        FROM UNNEST($19::uuid[], $20::int4[], $21::text[], $22::text[], $23::text[], $24::text[], \
            $25::timestamptz[], $26::text[]) \
            AS h(saga_id, seq, from_state, to_state, reason, detail, at, instance_id) \
        JOIN ins ON ins.saga_id = h.saga_id \
     ), outgoing AS ( \
        INSERT INTO outbox (channel, message) \
        SELECT o.channel, o.message \
        FROM UNNEST($27::uuid[], $28::text[], $29::jsonb[]) WITH ORDINALITY \
            AS o(saga_id, channel, message, n) \
        JOIN ins ON ins.saga_id = o.saga_id \
        ORDER BY o.n \
     ) \
     SELECT event_id, saga_id FROM ins";

/// Records what of `sagas` is new, in one statement; returns the
/// `event_id` and `saga_id` of each saga inserted.
pub(super) async fn insert_all(
    pool: &PgPool,
    sagas: &[NewSaga],
) -> Result<HashMap<String, Uuid>, StoreError> {
    // In a stable order, so two batches that share partners (or events)
    // wait on each other's rows instead of deadlocking.
    let mut ordered: Vec<&NewSaga> = sagas.iter().collect();
    ordered.sort_by(|a, b| {
        (&a.saga.partner_id, &a.saga.event_id).cmp(&(&b.saga.partner_id, &b.saga.event_id))
    });
    let cols = SagaColumns::from(ordered.as_slice());
    let h = History::of(sagas);
    let (o_ids, o_channels, o_messages) = outgoing(sagas);
    let rows = sqlx::query(INSERT_ALL)
        .bind(cols.saga_id)
        .bind(cols.event_id)
        .bind(cols.correlation_id)
        .bind(cols.partner_id)
        .bind(cols.state)
        .bind(cols.step)
        .bind(cols.attempts)
        .bind(cols.alliance_id)
        .bind(cols.last_error)
        .bind(cols.payload)
        .bind(cols.traceparent)
        .bind(cols.created_at)
        .bind(cols.updated_at)
        .bind(cols.deadline_at)
        .bind(cols.next_attempt_at)
        .bind(cols.lease_owner)
        .bind(cols.lease_until)
        .bind(cols.version)
        .bind(h.saga_id)
        .bind(h.seq)
        .bind(h.from_state)
        .bind(h.to_state)
        .bind(h.reason)
        .bind(h.detail)
        .bind(h.at)
        .bind(h.instance_id)
        .bind(o_ids)
        .bind(o_channels)
        .bind(o_messages)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("event_id")?, row.try_get("saga_id")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The history rows of a batch as column arrays, each with its saga's id.
#[derive(Default)]
struct History<'a> {
    saga_id: Vec<Uuid>,
    seq: Vec<i32>,
    from_state: Vec<Option<&'static str>>,
    to_state: Vec<&'static str>,
    reason: Vec<&'a str>,
    detail: Vec<Option<&'a str>>,
    at: Vec<DateTime<Utc>>,
    instance_id: Vec<Option<&'a str>>,
}

impl<'a> History<'a> {
    fn of(sagas: &'a [NewSaga]) -> Self {
        let mut c = Self::default();
        for n in sagas {
            for h in &n.history {
                c.saga_id.push(n.saga.saga_id);
                c.seq.push(h.seq);
                c.from_state.push(h.from_state.map(SagaState::as_str));
                c.to_state.push(h.to_state.as_str());
                c.reason.push(h.reason.as_str());
                c.detail.push(h.detail.as_deref());
                c.at.push(h.at);
                c.instance_id.push(h.instance_id.as_deref());
            }
        }
        c
    }
}

/// Every new saga's outgoing messages in batch order, with its saga's id.
fn outgoing(sagas: &[NewSaga]) -> (Vec<Uuid>, Vec<String>, Vec<Value>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for n in sagas {
        for m in &n.outbox {
            out.0.push(n.saga.saga_id);
            out.1.push(m.channel.clone());
            out.2.push(stored_message(m));
        }
    }
    out
}
