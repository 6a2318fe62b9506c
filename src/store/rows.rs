//! Reading stored rows back, for both dialects. What PostgreSQL and SQLite
//! store alike (text, integers, booleans) is read here once, so a column
//! is added or checked in one place; what they store differently (ids,
//! payloads, times) each store decodes itself and hands in.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{ColumnIndex, Database, Decode, Row, Type};
use uuid::Uuid;

use super::{parse_state, parse_step, StoreError};
use crate::saga::{HistoryEntry, Saga, SagaState};

/// The columns [`saga_from`] reads, in both dialects.
pub(super) const SAGA_COLUMNS: &str = "saga_id, event_id, correlation_id, partner_id, state, \
    step, attempts, alliance_id, last_error, payload, traceparent, created_at, updated_at, \
    deadline_at, next_attempt_at, awaiting_reply, version";

/// Counts sagas by state; each row is read by [`state_count`].
pub(super) const COUNT_BY_STATE: &str = "SELECT state, count(*) AS n FROM sagas GROUP BY state";

/// A Rust type that a row of database `DB` decodes.
pub(super) trait Column<DB: Database>: for<'r> Decode<'r, DB> + Type<DB> {}

impl<DB: Database, T> Column<DB> for T where T: for<'r> Decode<'r, DB> + Type<DB> {}

/// The fields of a saga row that the dialects store in types of their own.
pub(super) struct DialectFields {
    pub saga_id: Uuid,
    pub payload: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A saga from a row of [`SAGA_COLUMNS`], with the fields the dialect read.
pub(super) fn saga_from<R>(row: &R, own: DialectFields) -> Result<Saga, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Column<R::Database>,
    i32: Column<R::Database>,
    bool: Column<R::Database>,
{
    let saga_id = own.saga_id;
    let state: String = row.try_get("state")?;
    let step: String = row.try_get("step")?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(Saga {
        saga_id,
        event_id: row.try_get("event_id")?,
        correlation_id: row.try_get("correlation_id")?,
        partner_id: row.try_get("partner_id")?,
        state: parse_state(saga_id, &state)?,
        step: parse_step(saga_id, &step)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        alliance_id: row.try_get("alliance_id")?,
        last_error: row.try_get("last_error")?,
        payload: own.payload,
        created_at: own.created_at,
        updated_at: own.updated_at,
        deadline_at: own.deadline_at,
        next_attempt_at: own.next_attempt_at,
        traceparent: row.try_get("traceparent")?,
        awaiting_reply: row.try_get("awaiting_reply")?,
        version: row.try_get("version")?,
    })
}

/// One row of `seq, from_state, to_state, reason, detail, instance_id,
/// events` of saga `saga_id`'s history, with its time as the dialect read it.
pub(super) fn history_entry<R>(
    row: &R,
    saga_id: Uuid,
    at: DateTime<Utc>,
) -> Result<HistoryEntry, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Column<R::Database>,
    i32: Column<R::Database>,
    Option<String>: Column<R::Database>,
{
    let from: Option<String> = row.try_get("from_state")?;
    let to: String = row.try_get("to_state")?;
    Ok(HistoryEntry {
        seq: row.try_get("seq")?,
        from_state: from.map(|f| parse_state(saga_id, &f)).transpose()?,
        to_state: parse_state(saga_id, &to)?,
        reason: row.try_get("reason")?,
        detail: row.try_get("detail")?,
        at,
        instance_id: row.try_get("instance_id")?,
        events: row
            .try_get::<Option<String>, _>("events")?
            .map(|e| e.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

/// A transition's saga events as stored: their types, space-separated;
/// `None` for none.
pub(super) fn events_column(h: &HistoryEntry) -> Option<String> {
    (!h.events.is_empty()).then(|| h.events.join(" "))
}

/// One row of [`COUNT_BY_STATE`].
pub(super) fn state_count<R>(row: &R) -> Result<(SagaState, i64), StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Column<R::Database>,
    i64: Column<R::Database>,
{
    let state: String = row.try_get("state")?;
    Ok((parse_state(Uuid::nil(), &state)?, row.try_get("n")?))
}
