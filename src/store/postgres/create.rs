//! A batch of new sagas in one statement: the saga rows that are new, and
//! only theirs, with their history and outbox rows. One round trip and one
//! durable flush for the batch, where a transaction of separate inserts
//! took five round trips.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{held_rows, insert_sagas_sql, inserted, HistoryColumns, SagaColumns};
use crate::store::{stored_message, Held, NewSaga, OutboxHold, StoreError};

/// `ins` takes the sagas that meet no existing one (the same event, or a
/// live saga of the same partner: `ON CONFLICT DO NOTHING`); the history
/// and outbox rows are inserted for exactly those, joined on `saga_id`.
/// The foreign key of a history row is checked at the end of the
/// statement, when its saga row is there.
const INSERT_ALL: &str = concat!(
    "WITH ins AS (",
    insert_sagas_sql!(),
    "), hist AS ( \
        INSERT INTO saga_history (saga_id, seq, from_state, to_state, reason, detail, at, instance_id, events) \
        SELECT h.saga_id, h.seq, h.from_state, h.to_state, h.reason, h.detail, h.at, h.instance_id, h.events \
        FROM UNNEST($20::uuid[], $21::int4[], $22::text[], $23::text[], $24::text[], $25::text[], \
            $26::timestamptz[], $27::text[], $28::text[]) \
            AS h(saga_id, seq, from_state, to_state, reason, detail, at, instance_id, events) \
        JOIN ins ON ins.saga_id = h.saga_id \
     ), outgoing AS ( \
        INSERT INTO outbox (channel, message, claimed_by, claimed_until) \
        SELECT o.channel, o.message, $32::text, $33::timestamptz \
        FROM UNNEST($29::uuid[], $30::text[], $31::jsonb[]) WITH ORDINALITY \
            AS o(saga_id, channel, message, n) \
        JOIN ins ON ins.saga_id = o.saga_id \
        ORDER BY o.n \
        RETURNING id, message->>'event_id' AS held_event \
     ) \
     SELECT event_id, saga_id, NULL::bigint AS outbox_id, NULL::text AS held_event FROM ins \
     UNION ALL \
     SELECT NULL, NULL, id, held_event FROM outgoing WHERE $32::text IS NOT NULL"
);

/// Records what of `sagas` is new, in one statement, their outbox rows
/// held by `hold` if given; returns the `event_id` and `saga_id` of each
/// saga inserted, and the ids of the held rows.
pub(super) async fn insert_all(
    pool: &PgPool,
    sagas: &[NewSaga],
    hold: Option<&OutboxHold>,
) -> Result<(HashMap<String, Uuid>, Held), StoreError> {
    let (o_ids, o_channels, o_messages) = outgoing(sagas);
    let query = SagaColumns::ordered(sagas).bind(sqlx::query(INSERT_ALL));
    let rows = history(sagas)
        .bind(query)
        .bind(o_ids)
        .bind(o_channels)
        .bind(o_messages)
        .bind(hold.map(|h| h.owner.as_str()))
        .bind(hold.map(|h| h.until))
        .fetch_all(pool)
        .await?;
    let (sagas_rows, outbox_rows): (Vec<PgRow>, Vec<PgRow>) = rows
        .into_iter()
        .partition(|row| matches!(row.try_get::<Option<i64>, _>("outbox_id"), Ok(None)));
    let inserted = inserted(&sagas_rows)?;
    let returned = held_rows(&outbox_rows)?;
    let new_messages = sagas
        .iter()
        .filter(|n| inserted.get(&n.saga.event_id) == Some(&n.saga.saga_id))
        .flat_map(|n| &n.outbox);
    let held = Held::ordered(&returned, new_messages);
    Ok((inserted, held))
}

/// The history rows of a batch as column arrays, each keyed by its saga's id.
fn history(sagas: &[NewSaga]) -> HistoryColumns<'_, Uuid> {
    let mut c = HistoryColumns::default();
    for n in sagas {
        for h in &n.history {
            c.push(n.saga.saga_id, h);
        }
    }
    c
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
