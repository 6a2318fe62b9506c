//! Durable saga state: the [`SagaStore`] trait, PostgreSQL (production)
//! and SQLite (embedded demo), picked by [`connect`] from `DATABASE_URL`.
//!
//! The store knows nothing of the state machine: the orchestrator hands it
//! finished writes (new saga row, history, outbox) and the store applies
//! each atomically, refusing a transition whose `expected_version` is stale.

pub mod operator;
mod postgres;
mod rows;
mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;
use uuid::Uuid;

pub use operator::OperatorStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::envelope::Envelope;
use crate::saga::{HistoryEntry, Saga, SagaState, Step};
use serde_json::{Map, Value};

/// Store failures; the orchestrator retries them, the API maps them to 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value we cannot read back (e.g. an unknown state); never
    /// silently mapped to something else.
    #[error("corrupt row for saga {saga_id}: {problem}")]
    Corrupt { saga_id: Uuid, problem: String },
}

impl StoreError {
    /// The database refused the data itself (PostgreSQL SQLSTATE classes
    /// 22 "data exception" and 54 "program limit exceeded"): retrying the
    /// same input fails the same way, so it must be set aside, not retried.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
            _ => false,
        }
    }
}

/// Who is driving a saga, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: DateTime<Utc>,
}

/// A message to relay after commit.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Assigned by the store; 0 before insertion.
    pub id: i64,
    pub channel: String,
    pub envelope: Envelope,
}

impl OutboxMessage {
    /// A message not yet stored.
    pub fn new(channel: impl Into<String>, envelope: Envelope) -> Self {
        Self {
            id: 0,
            channel: channel.into(),
            envelope,
        }
    }
}

/// An outbox row the relay cannot publish, and why: to be parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxFault {
    pub id: i64,
    pub reason: String,
}

/// What one claim of the outbox took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxClaim {
    /// Messages to publish, oldest first.
    pub messages: Vec<OutboxMessage>,
    /// Claimed rows that cannot be read back as a message (not JSON, not
    /// an envelope): they are left out of `messages` so the rest can go,
    /// and stay claimed until the caller parks them.
    pub unreadable: Vec<OutboxFault>,
}

impl OutboxClaim {
    /// Whether the claim took no row at all.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.unreadable.is_empty()
    }
}

/// Outbox rows written already claimed: by the relay of `owner`, until
/// `until`. That relay is handed them in memory and publishes them without
/// claiming them first (no round trip, no row rewritten); should it never
/// do so (a crash), any relay's claim takes them once `until` has passed.
#[derive(Debug, Clone)]
pub struct OutboxHold {
    pub owner: String,
    pub until: DateTime<Utc>,
}

/// The ids a held write gave its outbox rows: one per message of each
/// write that was applied (or saga that was new), in input order, as
/// [`Held::assign`] takes them. Empty when nothing was held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    ids: Vec<i64>,
    /// Rows were written held, but their ids could not be given: they stay
    /// held until given back or lapsed.
    unmatched: bool,
}

impl Held {
    /// Whether the rows were written held, and their ids are here.
    pub fn is_held(&self) -> bool {
        !self.ids.is_empty()
    }

    /// The held rows' ids.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// Whether rows were written held that these ids do not cover.
    pub fn unmatched(&self) -> bool {
        self.unmatched
    }

    /// Rows were held whose ids are not known: no hand-off will bring them.
    pub(crate) fn lost() -> Self {
        Self {
            ids: Vec::new(),
            unmatched: true,
        }
    }

    /// Moves the messages out of `messages` (the outbox of each applied
    /// write, in input order), sets their ids and returns them; `None`
    /// unless the ids are exactly one per message (the messages are gone
    /// either way: callers keep only their sagas).
    pub fn assign<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a mut Vec<OutboxMessage>>,
    ) -> Option<Vec<OutboxMessage>> {
        let mut out = Vec::with_capacity(self.ids.len());
        for outbox in messages {
            out.append(outbox);
        }
        if out.len() != self.ids.len() {
            return None;
        }
        for (m, id) in out.iter_mut().zip(&self.ids) {
            m.id = *id;
        }
        Some(out)
    }

    /// Puts the ids of the rows the store returned (by event id) in the
    /// order of `messages`; empty unless each message has a row of its own.
    pub(crate) fn ordered<'a>(
        returned: &HashMap<String, i64>,
        messages: impl IntoIterator<Item = &'a OutboxMessage>,
    ) -> Self {
        if returned.is_empty() {
            return Self::default();
        }
        let ids: Option<Vec<i64>> = messages
            .into_iter()
            .map(|m| returned.get(&m.envelope.event_id).copied())
            .collect();
        let distinct = |ids: &[i64]| {
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            sorted.len() == ids.len()
        };
        match ids {
            Some(ids) if ids.len() == returned.len() && distinct(&ids) => Self {
                ids,
                unmatched: false,
            },
            _ => {
                // Never seen: event ids are unique. The rows stay held
                // (the writer counts the write, so its relay gives them
                // back to the claim), else any claim takes them once
                // their hold lapses.
                tracing::warn!(
                    rows = returned.len(),
                    "held outbox rows do not match their messages; left to a claim"
                );
                Self::lost()
            }
        }
    }
}

/// A saga to record, already moved past `started` by its first decision.
#[derive(Debug, Clone)]
pub struct NewSaga {
    pub saga: Saga,
    /// The creation row and the first transition.
    pub history: Vec<HistoryEntry>,
    pub outbox: Vec<OutboxMessage>,
    pub lease: Option<Lease>,
}

/// Outcome of recording one [`NewSaga`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Recorded now: the caller drives it.
    New(Uuid),
    /// This `event_id` started a saga before: nothing was written.
    Duplicate(Uuid),
}

/// One transition to store.
#[derive(Debug, Clone)]
pub struct TransitionWrite {
    /// The saga as it is after the transition (its `version` already bumped).
    pub saga: Saga,
    /// The version the decision was made on; the write is refused if the row moved.
    pub expected_version: i32,
    /// One row per decision the write stores, in order (replies folded
    /// into one write leave one each).
    pub history: Vec<HistoryEntry>,
    pub outbox: Vec<OutboxMessage>,
    /// `None` releases the saga (terminal, or left to the sweeper).
    pub lease: Option<Lease>,
    /// A driver's write: refused (as if the version had moved) when another
    /// owner holds an unexpired lease on the saga — fencing, so a driver
    /// that stalled past its lease (a slow store) cannot overwrite the
    /// instance that took the saga over. `None` for operators and replies.
    pub fence: Option<String>,
    /// Leave the saga's lease as it is (`lease` is ignored): news recorded
    /// on a saga that its driver, here or elsewhere, goes on driving.
    pub lease_unchanged: bool,
}

/// Filters and paging for listing sagas, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<SagaState>,
    pub partner_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Only sagas last changed at or after this time (as a bulk retry's
    /// `since`, so a console lists exactly what a bulk retry would take).
    pub since: Option<DateTime<Utc>>,
    /// … and before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only sagas older than this one (the previous page's last).
    pub before: Option<Uuid>,
    pub limit: u32,
}

impl ListQuery {
    /// Adds the filters, newest-first order and page size to `qb`, a select
    /// from `sagas` whose `WHERE` clause is open; `saga_id` and `time` bind
    /// an id and a time as the dialect stores them.
    pub(crate) fn push_onto<'a, DB, Id, Time>(
        &'a self,
        qb: &mut QueryBuilder<'a, DB>,
        saga_id: impl Fn(Uuid) -> Id,
        time: impl Fn(DateTime<Utc>) -> Time,
    ) where
        DB: sqlx::Database,
        &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        Id: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        Time: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    {
        if let Some(state) = self.state {
            qb.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(partner) = &self.partner_id {
            qb.push(" AND partner_id = ").push_bind(partner.as_str());
        }
        if let Some(correlation) = &self.correlation_id {
            qb.push(" AND correlation_id = ")
                .push_bind(correlation.as_str());
        }
        if let Some(since) = self.since {
            qb.push(" AND updated_at >= ").push_bind(time(since));
        }
        if let Some(until) = self.until {
            qb.push(" AND updated_at < ").push_bind(time(until));
        }
        if let Some(before) = self.before {
            qb.push(" AND saga_id < ").push_bind(saga_id(before));
        }
        qb.push(" ORDER BY saga_id DESC LIMIT ")
            .push_bind(i64::from(self.limit));
    }
}

/// What [`SagaStore::refresh_statistics`] did to a table that had outgrown
/// its planner statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reanalyzed {
    /// The table's size when it was analysed, in pages.
    pub pages: i64,
    /// The size its statistics had been taken at, in pages.
    pub planned_pages: i64,
    /// Whether the new statistics took; `false` when the store may not
    /// analyse the table (a role that may not maintain it), which asking
    /// again would not change.
    pub took: bool,
}

/// Where sagas, their history and the outbox live, and (through
/// [`OperatorStore`]) what operators act on.
#[async_trait]
pub trait SagaStore: OperatorStore + Send + Sync + 'static {
    /// Applies the schema.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How often [`SagaStore::refresh_statistics`] is worth asking, for a
    /// store whose cached query plans follow its tables' statistics;
    /// `None` (the default) for one that needs no such upkeep.
    fn statistics_interval(&self) -> Option<Duration> {
        None
    }

    /// Refreshes the planner's statistics of the sagas table if it has far
    /// outgrown them, so that plans cached while it was small are made
    /// again; says what it did, `None` when there was nothing to do or
    /// another session's lock was in the way (the next check sees).
    async fn refresh_statistics(&self) -> Result<Option<Reanalyzed>, StoreError> {
        Ok(None)
    }

    /// The store's own clock, which every instance shares (see
    /// `orchestrator::clock`). The default is this machine's: right for a
    /// store that lives in this process.
    async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(Utc::now())
    }

    /// Records new sagas in one transaction; an `event_id` seen before yields
    /// [`Created::Duplicate`] with the existing saga's id. Results are in input order.
    async fn create(&self, sagas: &[NewSaga]) -> Result<Vec<Created>, StoreError> {
        Ok(self.create_held(sagas, None).await?.0)
    }

    /// Whether [`SagaStore::create_held`] and
    /// [`SagaStore::commit_batch_held`] ever write held rows.
    fn holds_outbox(&self) -> bool {
        false
    }

    /// As [`SagaStore::create`]; with `hold`, the new sagas' outbox rows
    /// are written held by its owner (see [`OutboxHold`]) and their ids
    /// come back as [`Held`] says. A store that cannot hold writes them
    /// unclaimed, for any relay's claim, and returns no ids.
    async fn create_held(
        &self,
        sagas: &[NewSaga],
        hold: Option<&OutboxHold>,
    ) -> Result<(Vec<Created>, Held), StoreError>;

    /// Stores a transition atomically. `Ok(false)`: the saga's version moved
    /// (someone else transitioned it); nothing was written.
    async fn commit(&self, write: &TransitionWrite) -> Result<bool, StoreError>;

    /// Stores several sagas' transitions in one transaction (one durable
    /// flush for all); each result is as [`SagaStore::commit`]'s. An error
    /// writes nothing. The default commits them one by one.
    async fn commit_batch(&self, writes: &[TransitionWrite]) -> Result<Vec<bool>, StoreError> {
        Ok(self.commit_batch_held(writes, None).await?.0)
    }

    /// As [`SagaStore::commit_batch`]; with `hold`, the applied writes'
    /// outbox rows are written held, as [`SagaStore::create_held`] says.
    /// The default commits them one by one, unclaimed.
    async fn commit_batch_held(
        &self,
        writes: &[TransitionWrite],
        hold: Option<&OutboxHold>,
    ) -> Result<(Vec<bool>, Held), StoreError> {
        let _ = hold;
        let mut applied = Vec::with_capacity(writes.len());
        for write in writes {
            applied.push(self.commit(write).await?);
        }
        Ok((applied, Held::default()))
    }

    /// One saga.
    async fn get(&self, saga_id: Uuid) -> Result<Option<Saga>, StoreError>;

    /// The sagas of `ids` that exist, each once, in no particular order,
    /// in one statement: what a batch of replies needs.
    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Saga>, StoreError>;

    /// A saga's transitions, oldest first.
    async fn history(&self, saga_id: Uuid) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Sagas matching `query`, newest first, at most `query.limit`; their
    /// `payload` is left out (an empty object): listings do not show it.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Saga>, StoreError>;

    /// Leases up to `limit` live sagas whose next call is due and whose
    /// lease has expired (crashed or slow owners), for `owner`.
    async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Saga>, StoreError>;

    /// Extends `owner`'s lease on `saga_id` to `until`, if the saga is still
    /// at `version` and nobody else has leased it since (a lapsed lease of
    /// `owner`'s own counts: nobody took it). `false`: it is not ours.
    async fn renew_lease(
        &self,
        saga_id: Uuid,
        version: i32,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Hands back the leases `owner` holds on live sagas, except those of
    /// `keep` (still being driven): any instance may claim them once due,
    /// instead of after the lease. What a stopping instance does with the
    /// sagas it will not finish. Returns how many were handed back.
    async fn release_leases(&self, owner: &str, keep: &[Uuid]) -> Result<u64, StoreError>;

    /// Counts sagas by state.
    async fn count_by_state(&self) -> Result<Vec<(SagaState, i64)>, StoreError>;

    /// Claims up to `limit` unclaimed (or abandoned) outbox rows, oldest
    /// first. A row that cannot be read back never fails the claim: it is
    /// reported in [`OutboxClaim::unreadable`].
    async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<OutboxClaim, StoreError>;

    /// Deletes relayed messages.
    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// Gives messages `owner` claimed back (publishing failed), so the next
    /// claim takes them again, oldest first. Each of these follow-ups acts
    /// only on rows `owner` still holds: once its claim lapsed and another
    /// relay took them, they are that relay's.
    async fn release_outbox(&self, owner: &str, ids: &[i64]) -> Result<(), StoreError>;

    /// Gives back every row `owner` claims or holds, for the next claim to
    /// take in id order: its relay does so when a row it holds may never
    /// be handed to it (a write cut short, a failed release). A row it
    /// sent but has not deleted yet is published again: at least once.
    async fn release_all_outbox(&self, owner: &str) -> Result<(), StoreError>;

    /// Counts a failed attempt to publish message `id` (claimed by `owner`),
    /// keeping `error` as its last; returns its attempts so far (0 when the
    /// row is gone or no longer `owner`'s).
    async fn record_outbox_failure(
        &self,
        owner: &str,
        id: i64,
        error: &str,
    ) -> Result<u32, StoreError>;

    /// Moves messages `owner` claimed out of the relay's queue into
    /// `outbox_parked`, as stored, with their reasons, for a person to look
    /// at. Other ids are skipped; returns how many were parked.
    async fn park_outbox(
        &self,
        owner: &str,
        faults: &[OutboxFault],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Messages waiting to be relayed (parked ones not included).
    async fn outbox_backlog(&self) -> Result<i64, StoreError>;

    /// Messages parked for a person.
    async fn outbox_parked(&self) -> Result<i64, StoreError>;
}

/// The stored form of an outbox message: the envelope JSON with its
/// traceparent kept inside, so the relay can restore it.
pub(crate) fn stored_message(message: &OutboxMessage) -> Value {
    let mut body = message.envelope.to_json();
    if let (Some(tp), Value::Object(obj)) = (&message.envelope.traceparent, &mut body) {
        obj.insert("traceparent".into(), tp.clone().into());
    }
    body
}

/// The claimed rows, `(id, channel, message as stored)`, read back oldest
/// first, each as [`read_claimed_bytes`] reads it.
pub(crate) fn read_claim(rows: impl IntoIterator<Item = (i64, String, Vec<u8>)>) -> OutboxClaim {
    let mut claim = OutboxClaim::default();
    for (id, channel, message) in rows {
        read_claimed_bytes(&mut claim, id, channel, &message);
    }
    claim.messages.sort_by_key(|m| m.id);
    claim.unreadable.sort_by_key(|f| f.id);
    claim
}

/// A claimed row's message as the bytes stored: text that is not UTF-8 or
/// not JSON (a hand edit, another writer, a number serde cannot hold) makes
/// that one row unreadable, never the whole claim.
pub(crate) fn read_claimed_bytes(claim: &mut OutboxClaim, id: i64, channel: String, bytes: &[u8]) {
    let message = std::str::from_utf8(bytes)
        .map_err(|_| "not UTF-8 text".to_string())
        .and_then(|text| serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}")));
    read_claimed(claim, id, channel, message);
}

/// Reads one claimed row back (what [`stored_message`] wrote, or failed
/// to be read as JSON) into `claim`: a message, or a fault saying why it
/// is none.
pub(crate) fn read_claimed(
    claim: &mut OutboxClaim,
    id: i64,
    channel: String,
    message: Result<Value, String>,
) {
    match message.and_then(|m| Envelope::from_stored(m).map_err(|e| e.to_string())) {
        Ok(envelope) => claim.messages.push(OutboxMessage {
            id,
            channel,
            envelope,
        }),
        Err(reason) => claim.unreadable.push(OutboxFault { id, reason }),
    }
}

pub(crate) fn parse_state(saga_id: Uuid, s: &str) -> Result<SagaState, StoreError> {
    SagaState::parse(s).ok_or_else(|| StoreError::Corrupt {
        saga_id,
        problem: format!("unknown state {s:?}"),
    })
}

pub(crate) fn parse_step(saga_id: Uuid, s: &str) -> Result<Step, StoreError> {
    Step::parse(s).ok_or_else(|| StoreError::Corrupt {
        saga_id,
        problem: format!("unknown step {s:?}"),
    })
}

pub(crate) fn payload_object(
    saga_id: Uuid,
    value: Value,
) -> Result<Map<String, Value>, StoreError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(StoreError::Corrupt {
            saga_id,
            problem: format!("payload is not an object: {other}"),
        }),
    }
}

pub(crate) fn attempts_i32(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

/// Opens the store `url` names: `postgres://…` or `sqlite:…`.
/// `max_connections` sizes the PostgreSQL pool (SQLite uses one writer).
pub async fn connect(
    url: &secrecy::SecretString,
    max_connections: u32,
) -> Result<std::sync::Arc<dyn SagaStore>, StoreError> {
    use secrecy::ExposeSecret;
    if url.expose_secret().starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            SqliteStore::connect(url.expose_secret()).await?,
        ))
    } else {
        Ok(std::sync::Arc::new(
            PostgresStore::connect(url, max_connections).await?,
        ))
    }
}
