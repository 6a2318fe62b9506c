//! PostgreSQL store (sqlx).
//!
//! Speed comes from round trips, not tuning: a batch of new sagas is a
//! handful of array-bound statements in one transaction, and a transition
//! is a single statement whose data-modifying CTEs update the saga, append
//! its history row and enqueue its messages atomically, or do nothing when
//! the version moved.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, QueryBuilder, Row};
use uuid::Uuid;

use super::rows::{
    events_column, history_entry, saga_from, state_count, DialectFields, COUNT_BY_STATE,
    SAGA_COLUMNS,
};
use super::{
    attempts_i32, payload_object, read_claim, stored_message, Created, Held, ListQuery, NewSaga,
    OutboxClaim, OutboxFault, OutboxHold, OutboxMessage, Reanalyzed, SagaStore, StoreError,
    TransitionWrite,
};
use crate::saga::{later, HistoryEntry, Saga, SagaState};

mod batch;
mod create;
mod statistics;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// [`SAGA_COLUMNS`] without the payload (up to `MAX_MESSAGE_BYTES` each),
/// which listings do not show: an empty object stands in for it.
const LIST_COLUMNS: &str = "saga_id, event_id, correlation_id, partner_id, state, step, attempts, \
    alliance_id, last_error, '{}'::jsonb AS payload, traceparent, created_at, updated_at, deadline_at, \
    next_attempt_at, awaiting_reply, version";

/// Connections of the relay's bookkeeping pool (see [`PostgresStore`]).
const BOOKKEEPING_CONNECTIONS: u32 = 2;

/// Sagas in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The relay's claims, deletes and parks, on connections that do not
    /// wait for their commit to reach the disk (`synchronous_commit=off`).
    /// Nothing they write needs to be durable: a claim lost in a crash is
    /// claimed again, a lost delete publishes again (at least once, dedup
    /// by `event_id`), a lost park parks again. Transitions and new sagas,
    /// whose durability comes before their effects, stay on `pool`, whose
    /// commits wait for the flush as the server is configured.
    bookkeeping: PgPool,
}

impl PostgresStore {
    /// The pool, for the operator tables' statements.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connects a pool of at most `max_connections`.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url.expose_secret())?;
        // One direct connection first: a pool reports any failure as "pool
        // timed out", while this says "connection refused" or "password
        // authentication failed", which is what an operator needs to read.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                StoreError::Unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
            })??;
        probe.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options.clone());
        let bookkeeping = PgPoolOptions::new()
            .max_connections(BOOKKEEPING_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options.options([("synchronous_commit", "off")]));
        Ok(Self { pool, bookkeeping })
    }
}

impl PostgresStore {
    /// Records a batch in one transaction, statement by statement: the
    /// path for the rare batch whose fast path met a saga that changed
    /// under it.
    async fn create_in_tx(&self, sagas: &[NewSaga]) -> Result<Vec<Created>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = insert_sagas(&mut tx, sagas).await?;
        let owners = existing_owners(&mut tx, sagas, &inserted).await?;

        let is_new = |n: &NewSaga| inserted.get(&n.saga.event_id) == Some(&n.saga.saga_id);
        let fresh: Vec<&NewSaga> = sagas.iter().filter(|n| is_new(n)).collect();
        let history: Vec<(Uuid, &HistoryEntry)> = fresh
            .iter()
            .flat_map(|n| n.history.iter().map(move |h| (n.saga.saga_id, h)))
            .collect();
        let outbox: Vec<&OutboxMessage> = fresh.iter().flat_map(|n| n.outbox.iter()).collect();
        insert_history(&mut tx, &history).await?;
        insert_outbox(&mut tx, &outbox).await?;
        tx.commit().await?;

        sagas
            .iter()
            .map(|n| {
                if is_new(n) {
                    Ok(Created::New(n.saga.saga_id))
                } else {
                    owners.duplicate(n)
                }
            })
            .collect()
    }
}

#[async_trait]
impl SagaStore for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn statistics_interval(&self) -> Option<Duration> {
        Some(statistics::INTERVAL)
    }

    async fn refresh_statistics(&self) -> Result<Option<Reanalyzed>, StoreError> {
        statistics::refresh(&self.pool).await
    }

    async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await?)
    }

    fn holds_outbox(&self) -> bool {
        true
    }

    async fn create_held(
        &self,
        sagas: &[NewSaga],
        hold: Option<&OutboxHold>,
    ) -> Result<(Vec<Created>, Held), StoreError> {
        if sagas.is_empty() {
            return Ok((Vec::new(), Held::default()));
        }
        let (inserted, held) = create::insert_all(&self.pool, sagas, hold).await?;
        if inserted.len() == sagas.len() {
            let created = sagas.iter().map(|n| Created::New(n.saga.saga_id)).collect();
            return Ok((created, held));
        }
        let mut held_back = Held::default();
        if let (Some(hold), true) = (hold, held.is_held()) {
            // Some of the rest may be recorded below, unheld: the ids would
            // no longer follow the new sagas. Rare (a redelivery, a
            // partner's second saga): the held rows go to the claim now
            // (or, should that fail, back by their relay or by the lapse).
            if let Err(e) = self.release_outbox(&hold.owner, held.ids()).await {
                tracing::warn!(error = %e, "could not release held outbox rows; left to their relay");
                held_back = Held::lost();
            }
        }
        // Some met a saga that exists: the new ones are committed; find
        // the owners of the others. One whose owner is gone meanwhile (a
        // partner's saga compensated in between) is recorded again, the
        // careful way.
        let mut tx = self.pool.begin().await?;
        let owners = existing_owners(&mut tx, sagas, &inserted).await?;
        tx.commit().await?;
        let mut created = Vec::with_capacity(sagas.len());
        for n in sagas {
            created.push(match inserted.get(&n.saga.event_id) {
                Some(id) if *id == n.saga.saga_id => Created::New(*id),
                _ => match owners.duplicate(n) {
                    Ok(dup) => dup,
                    Err(lost) => self
                        .create_in_tx(std::slice::from_ref(n))
                        .await?
                        .into_iter()
                        .next()
                        .ok_or(lost)?,
                },
            });
        }
        Ok((created, held_back))
    }

    async fn commit(&self, write: &TransitionWrite) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(commit_on(&mut conn, write, None).await?.0)
    }

    async fn commit_batch_held(
        &self,
        writes: &[TransitionWrite],
        hold: Option<&OutboxHold>,
    ) -> Result<(Vec<bool>, Held), StoreError> {
        match writes {
            [] => Ok((Vec::new(), Held::default())),
            // One write: the single statement is the lighter one.
            [write] => {
                let mut conn = self.pool.acquire().await?;
                let (applied, held) = commit_on(&mut conn, write, hold).await?;
                Ok((vec![applied], held))
            }
            _ => batch::commit_batch(&self.pool, writes, hold).await,
        }
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<Saga>, StoreError> {
        let sql = format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id = $1");
        let row = sqlx::query(&sql)
            .bind(saga_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(saga_from_row).transpose()
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Saga>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id = ANY($1)");
        let rows = sqlx::query(&sql).bind(ids).fetch_all(&self.pool).await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn history(&self, saga_id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, from_state, to_state, reason, detail, at, instance_id, events FROM saga_history \
             WHERE saga_id = $1 ORDER BY seq",
        )
        .bind(saga_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| history_entry(row, saga_id, row.try_get("at")?))
            .collect()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Saga>, StoreError> {
        let mut qb = QueryBuilder::new(format!("SELECT {LIST_COLUMNS} FROM sagas WHERE TRUE"));
        query.push_onto(&mut qb, |id| id, |t| t);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Saga>, StoreError> {
        let sql = format!(
            "UPDATE sagas SET lease_owner = $1, lease_until = $2 \
             WHERE saga_id IN ( \
                SELECT saga_id FROM sagas \
                WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $3 \
                  AND (lease_until IS NULL OR lease_until < $3) \
                ORDER BY next_attempt_at LIMIT $4 \
                FOR UPDATE SKIP LOCKED) \
             RETURNING {SAGA_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(later(now, lease))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn renew_lease(
        &self,
        saga_id: Uuid,
        version: i32,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sagas SET lease_until = $4 \
             WHERE saga_id = $1 AND version = $2 AND lease_owner = $3",
        )
        .bind(saga_id)
        .bind(version)
        .bind(owner)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self, owner: &str, keep: &[Uuid]) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE sagas SET lease_owner = NULL, lease_until = NULL \
             WHERE lease_owner = $1 AND NOT (saga_id = ANY($2)) \
               AND next_attempt_at IS NOT NULL \
               AND state NOT IN ('completed', 'compensated', 'failed')",
        )
        .bind(owner)
        .bind(keep)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn count_by_state(&self) -> Result<Vec<(SagaState, i64)>, StoreError> {
        let rows = sqlx::query(COUNT_BY_STATE).fetch_all(&self.pool).await?;
        rows.iter().map(state_count).collect()
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<OutboxClaim, StoreError> {
        // The message as text: a jsonb value serde cannot read (a number
        // out of its range, say) must fail its own row, not every claim.
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "UPDATE outbox SET claimed_by = $1, claimed_until = $2 \
             WHERE id IN ( \
                SELECT id FROM outbox \
                WHERE claimed_until IS NULL OR claimed_until < $3 \
                ORDER BY id LIMIT $4 \
                FOR UPDATE SKIP LOCKED) \
             RETURNING id, channel, convert_to(message::text, 'UTF8') AS message",
        )
        .bind(owner)
        .bind(later(now, lease))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.bookkeeping)
        .await?;
        Ok(read_claim(rows))
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(ids)
                .execute(&self.bookkeeping)
                .await?;
        }
        Ok(())
    }

    async fn release_outbox(&self, owner: &str, ids: &[i64]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL \
                 WHERE id = ANY($1) AND claimed_by = $2",
            )
            .bind(ids)
            .bind(owner)
            .execute(&self.bookkeeping)
            .await?;
        }
        Ok(())
    }

    async fn release_all_outbox(&self, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(owner)
        .execute(&self.bookkeeping)
        .await?;
        Ok(())
    }

    async fn record_outbox_failure(
        &self,
        owner: &str,
        id: i64,
        error: &str,
    ) -> Result<u32, StoreError> {
        let attempts: Option<i32> = sqlx::query_scalar(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 \
             WHERE id = $1 AND claimed_by = $3 RETURNING attempts",
        )
        .bind(id)
        .bind(error)
        .bind(owner)
        .fetch_optional(&self.bookkeeping)
        .await?;
        Ok(attempts.map_or(0, |n| u32::try_from(n).unwrap_or(0)))
    }

    async fn park_outbox(
        &self,
        owner: &str,
        faults: &[OutboxFault],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if faults.is_empty() {
            return Ok(0);
        }
        let (ids, reasons): (Vec<i64>, Vec<&str>) =
            faults.iter().map(|f| (f.id, f.reason.as_str())).unzip();
        // One statement: a row is either still queued or parked, never both
        // or neither. A copy left parked when an operator requeued the
        // message by hand is replaced, so parking it again cannot fail.
        let parked = sqlx::query(
            "WITH fault AS (SELECT * FROM UNNEST($1::int8[], $2::text[]) AS f(id, reason)), \
             moved AS ( \
                DELETE FROM outbox o USING fault f WHERE o.id = f.id AND o.claimed_by = $4 \
                RETURNING o.id, o.channel, o.message, o.created_at, o.attempts, f.reason) \
             INSERT INTO outbox_parked (id, channel, message, created_at, attempts, reason, parked_at) \
             SELECT id, channel, message, created_at, attempts, reason, $3 FROM moved \
             ON CONFLICT (id) DO UPDATE SET channel = EXCLUDED.channel, message = EXCLUDED.message, \
                created_at = EXCLUDED.created_at, attempts = EXCLUDED.attempts, \
                reason = EXCLUDED.reason, parked_at = EXCLUDED.parked_at",
        )
        .bind(ids)
        .bind(reasons)
        .bind(now)
        .bind(owner)
        .execute(&self.bookkeeping)
        .await?
        .rows_affected();
        Ok(parked)
    }

    async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT count(*) AS n FROM outbox")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn outbox_parked(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT count(*) AS n FROM outbox_parked")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }
}

/// The multi-row insert of a batch's saga rows (`$1`…`$18`, bound by
/// [`SagaColumns::bind`]), `ON CONFLICT DO NOTHING`, returning the
/// `event_id` and `saga_id` of each row inserted. A macro, so that
/// `create.rs` can wrap it in its CTEs with `concat!`.
macro_rules! insert_sagas_sql {
    () => {
        "INSERT INTO sagas (saga_id, event_id, correlation_id, partner_id, state, step, attempts, \
            alliance_id, last_error, payload, traceparent, created_at, updated_at, deadline_at, \
            next_attempt_at, lease_owner, lease_until, version, awaiting_reply) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
            $7::int4[], $8::text[], $9::text[], $10::jsonb[], $11::text[], $12::timestamptz[], \
            $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::text[], \
            $17::timestamptz[], $18::int4[], $19::bool[]) \
         ON CONFLICT DO NOTHING \
         RETURNING event_id, saga_id"
    };
}
use insert_sagas_sql;

/// Inserts the saga rows of a batch in one statement; returns the
/// `event_id` and `saga_id` of each row inserted (the others met an
/// existing saga: the same event, or a live one of the same partner).
async fn insert_sagas(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sagas: &[NewSaga],
) -> Result<HashMap<String, Uuid>, StoreError> {
    let query = SagaColumns::ordered(sagas).bind(sqlx::query(insert_sagas_sql!()));
    inserted(&query.fetch_all(&mut **tx).await?)
}

/// The `(event_id, saga_id)` of each row an insert of sagas returned.
fn inserted(rows: &[PgRow]) -> Result<HashMap<String, Uuid>, StoreError> {
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("event_id")?, row.try_get("saga_id")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// The held outbox rows a write returned (`outbox_id`, and the message's
/// event id as `held_event`), by event id.
fn held_rows(rows: &[PgRow]) -> Result<HashMap<String, i64>, StoreError> {
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("held_event")?, row.try_get("outbox_id")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// The sagas that kept some of a batch from being inserted: the same
/// `event_id`, or another saga of the same partner that is not compensated.
struct Owners {
    by_event: HashMap<String, Uuid>,
    by_partner: HashMap<String, Uuid>,
}

impl Owners {
    /// The saga that kept `new` out: the one of its event, else the live
    /// one of its partner.
    fn duplicate(&self, new: &NewSaga) -> Result<Created, StoreError> {
        self.by_event
            .get(&new.saga.event_id)
            .or_else(|| self.by_partner.get(&new.saga.partner_id))
            .map(|id| Created::Duplicate(*id))
            .ok_or_else(|| StoreError::Corrupt {
                saga_id: new.saga.saga_id,
                problem: format!(
                    "event {} neither inserted nor found by event or partner",
                    new.saga.event_id
                ),
            })
    }
}

async fn existing_owners(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sagas: &[NewSaga],
    inserted: &HashMap<String, Uuid>,
) -> Result<Owners, StoreError> {
    let mut owners = Owners {
        by_event: inserted.clone(),
        by_partner: HashMap::new(),
    };
    let missing: Vec<&NewSaga> = sagas
        .iter()
        .filter(|n| !inserted.contains_key(&n.saga.event_id))
        .collect();
    if missing.is_empty() {
        return Ok(owners);
    }
    let events: Vec<&str> = missing.iter().map(|n| n.saga.event_id.as_str()).collect();
    owners.by_event.extend(
        saga_ids_by(
            tx,
            "SELECT event_id, saga_id FROM sagas WHERE event_id = ANY($1)",
            &events,
        )
        .await?,
    );
    // Within the batch, the first of two events for one partner was just
    // inserted: the partner query below finds it too.
    let partners: Vec<&str> = missing.iter().map(|n| n.saga.partner_id.as_str()).collect();
    owners.by_partner.extend(
        saga_ids_by(
            tx,
            "SELECT partner_id, saga_id FROM sagas \
             WHERE partner_id = ANY($1) AND state <> 'compensated'",
            &partners,
        )
        .await?,
    );
    Ok(owners)
}

/// The `(key, saga_id)` pairs `sql` selects for `keys`, bound as `$1`.
async fn saga_ids_by(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sql: &str,
    keys: &[&str],
) -> Result<Vec<(String, Uuid)>, StoreError> {
    Ok(sqlx::query_as(sql).bind(keys).fetch_all(&mut **tx).await?)
}

/// Column arrays for one multi-row `UNNEST` insert of sagas.
struct SagaColumns {
    saga_id: Vec<Uuid>,
    event_id: Vec<String>,
    correlation_id: Vec<String>,
    partner_id: Vec<String>,
    state: Vec<&'static str>,
    step: Vec<&'static str>,
    attempts: Vec<i32>,
    alliance_id: Vec<Option<String>>,
    last_error: Vec<Option<String>>,
    payload: Vec<Value>,
    traceparent: Vec<Option<String>>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    deadline_at: Vec<DateTime<Utc>>,
    next_attempt_at: Vec<Option<DateTime<Utc>>>,
    lease_owner: Vec<Option<String>>,
    lease_until: Vec<Option<DateTime<Utc>>>,
    version: Vec<i32>,
    awaiting_reply: Vec<bool>,
}

impl SagaColumns {
    /// A batch's columns in a stable order, so two batches that share
    /// partners (or events) wait on each other's rows instead of
    /// deadlocking.
    fn ordered(sagas: &[NewSaga]) -> Self {
        let mut ordered: Vec<&NewSaga> = sagas.iter().collect();
        ordered.sort_by(|a, b| {
            (&a.saga.partner_id, &a.saga.event_id).cmp(&(&b.saga.partner_id, &b.saga.event_id))
        });
        Self::from(ordered.as_slice())
    }

    /// Binds the columns as `$1`…`$19` of [`insert_sagas_sql`].
    fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        query
            .bind(self.saga_id)
            .bind(self.event_id)
            .bind(self.correlation_id)
            .bind(self.partner_id)
            .bind(self.state)
            .bind(self.step)
            .bind(self.attempts)
            .bind(self.alliance_id)
            .bind(self.last_error)
            .bind(self.payload)
            .bind(self.traceparent)
            .bind(self.created_at)
            .bind(self.updated_at)
            .bind(self.deadline_at)
            .bind(self.next_attempt_at)
            .bind(self.lease_owner)
            .bind(self.lease_until)
            .bind(self.version)
            .bind(self.awaiting_reply)
    }
}

/// A query with its arguments, as sqlx builds them for PostgreSQL.
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl From<&[&NewSaga]> for SagaColumns {
    fn from(sagas: &[&NewSaga]) -> Self {
        let s = || sagas.iter().map(|n| &n.saga);
        Self {
            saga_id: s().map(|s| s.saga_id).collect(),
            event_id: s().map(|s| s.event_id.clone()).collect(),
            correlation_id: s().map(|s| s.correlation_id.clone()).collect(),
            partner_id: s().map(|s| s.partner_id.clone()).collect(),
            state: s().map(|s| s.state.as_str()).collect(),
            step: s().map(|s| s.step.as_str()).collect(),
            attempts: s().map(|s| attempts_i32(s.attempts)).collect(),
            alliance_id: s().map(|s| s.alliance_id.clone()).collect(),
            last_error: s().map(|s| s.last_error.clone()).collect(),
            payload: s().map(|s| Value::Object(s.payload.clone())).collect(),
            traceparent: s().map(|s| s.traceparent.clone()).collect(),
            created_at: s().map(|s| s.created_at).collect(),
            updated_at: s().map(|s| s.updated_at).collect(),
            deadline_at: s().map(|s| s.deadline_at).collect(),
            next_attempt_at: s().map(|s| s.next_attempt_at).collect(),
            lease_owner: sagas
                .iter()
                .map(|n| n.lease.as_ref().map(|l| l.owner.clone()))
                .collect(),
            lease_until: sagas
                .iter()
                .map(|n| n.lease.as_ref().map(|l| l.until))
                .collect(),
            version: s().map(|s| s.version).collect(),
            awaiting_reply: s().map(|s| s.awaiting_reply).collect(),
        }
    }
}

/// History rows as column arrays, each with a key that names what it
/// belongs to in its statement (its saga's id, or its write's index in a
/// batch); bound in one go, key first.
pub(super) struct HistoryColumns<'a, K> {
    key: Vec<K>,
    seq: Vec<i32>,
    from_state: Vec<Option<&'static str>>,
    to_state: Vec<&'static str>,
    reason: Vec<&'a str>,
    detail: Vec<Option<&'a str>>,
    at: Vec<DateTime<Utc>>,
    instance_id: Vec<Option<&'a str>>,
    events: Vec<Option<String>>,
}

impl<K> Default for HistoryColumns<'_, K> {
    fn default() -> Self {
        Self {
            key: Vec::new(),
            seq: Vec::new(),
            from_state: Vec::new(),
            to_state: Vec::new(),
            reason: Vec::new(),
            detail: Vec::new(),
            at: Vec::new(),
            instance_id: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<'a, K> HistoryColumns<'a, K>
where
    K: 'a + for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    Vec<K>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    pub(super) fn push(&mut self, key: K, h: &'a HistoryEntry) {
        self.key.push(key);
        self.seq.push(h.seq);
        self.from_state.push(h.from_state.map(SagaState::as_str));
        self.to_state.push(h.to_state.as_str());
        self.reason.push(h.reason.as_str());
        self.detail.push(h.detail.as_deref());
        self.at.push(h.at);
        self.instance_id.push(h.instance_id.as_deref());
        self.events.push(events_column(h));
    }

    /// Binds the key and the eight columns, in the order of
    /// `saga_history`'s columns, as the next nine parameters of `query`.
    pub(super) fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
        K: 'q,
    {
        query
            .bind(self.key)
            .bind(self.seq)
            .bind(self.from_state)
            .bind(self.to_state)
            .bind(self.reason)
            .bind(self.detail)
            .bind(self.at)
            .bind(self.instance_id)
            .bind(self.events)
    }
}

async fn insert_history(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    entries: &[(Uuid, &HistoryEntry)],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut history = HistoryColumns::default();
    for &(saga_id, h) in entries {
        history.push(saga_id, h);
    }
    let query = sqlx::query(
        "INSERT INTO saga_history (saga_id, seq, from_state, to_state, reason, detail, at, instance_id, events) \
         SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])",
    );
    history.bind(query).execute(&mut **tx).await?;
    Ok(())
}

async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    messages: &[&OutboxMessage],
) -> Result<(), StoreError> {
    let (channels, bodies): (Vec<String>, Vec<Value>) = messages
        .iter()
        .map(|m| (m.channel.clone(), stored_message(m)))
        .unzip();
    if channels.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (channel, message) \
         SELECT channel, message FROM UNNEST($1::text[], $2::jsonb[]) WITH ORDINALITY AS o(channel, message, n) \
         ORDER BY n",
    )
    .bind(channels)
    .bind(bodies)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One transition on `conn` (a pooled connection or an open transaction):
/// a single statement, so it is atomic either way. Its outbox rows are
/// held by `hold` if given, and their ids returned.
async fn commit_on(
    conn: &mut PgConnection,
    write: &TransitionWrite,
    hold: Option<&OutboxHold>,
) -> Result<(bool, Held), StoreError> {
    let s = &write.saga;
    let mut history = HistoryColumns::default();
    for h in &write.history {
        history.push(s.saga_id, h);
    }
    let (channels, messages): (Vec<String>, Vec<Value>) = write
        .outbox
        .iter()
        .map(|m| (m.channel.clone(), stored_message(m)))
        .unzip();
    let query = sqlx::query(
        "WITH upd AS ( \
            UPDATE sagas SET state = $3, step = $4, attempts = $5, alliance_id = $6, \
                last_error = $7, updated_at = $8, next_attempt_at = $9, \
                lease_owner = CASE WHEN $18 THEN lease_owner ELSE $10 END, \
                lease_until = CASE WHEN $18 THEN lease_until ELSE $11 END, version = $12, \
                awaiting_reply = $15, deadline_at = $17 \
            WHERE saga_id = $1 AND version = $2 \
              AND ($16::text IS NULL OR lease_owner IS NULL OR lease_owner = $16 \
                   OR lease_until < $8) \
            RETURNING saga_id \
         ), hist AS ( \
            INSERT INTO saga_history (saga_id, seq, from_state, to_state, reason, detail, at, instance_id, events) \
            SELECT h.saga_id, h.seq, h.from_state, h.to_state, h.reason, h.detail, h.at, h.instance_id, h.events \
            FROM UNNEST($21::uuid[], $22::int4[], $23::text[], $24::text[], $25::text[], \
                $26::text[], $27::timestamptz[], $28::text[], $29::text[]) \
                AS h(saga_id, seq, from_state, to_state, reason, detail, at, instance_id, events) \
            JOIN upd ON upd.saga_id = h.saga_id \
         ), outgoing AS ( \
            INSERT INTO outbox (channel, message, claimed_by, claimed_until) \
            SELECT o.channel, o.message, $19::text, $20::timestamptz \
            FROM upd, UNNEST($13::text[], $14::jsonb[]) WITH ORDINALITY AS o(channel, message, n) \
            ORDER BY o.n \
            RETURNING id, message->>'event_id' AS held_event \
         ) \
         SELECT (SELECT count(*) FROM upd) AS updated, \
            (SELECT json_object_agg(held_event, id) FROM outgoing WHERE $19::text IS NOT NULL) AS held",
    )
    .bind(s.saga_id)
    .bind(write.expected_version)
    .bind(s.state.as_str())
    .bind(s.step.as_str())
    .bind(attempts_i32(s.attempts))
    .bind(&s.alliance_id)
    .bind(&s.last_error)
    .bind(s.updated_at)
    .bind(s.next_attempt_at)
    .bind(write.lease.as_ref().map(|l| l.owner.as_str()))
    .bind(write.lease.as_ref().map(|l| l.until))
    .bind(s.version)
    .bind(channels)
    .bind(messages)
    .bind(s.awaiting_reply)
    .bind(write.fence.as_deref())
    .bind(s.deadline_at)
    .bind(write.lease_unchanged)
    .bind(hold.map(|h| h.owner.as_str()))
    .bind(hold.map(|h| h.until));
    let row = history.bind(query).fetch_one(&mut *conn).await?;
    let applied = row.try_get::<i64, _>("updated")? == 1;
    let returned: HashMap<String, i64> = row
        .try_get::<Option<sqlx::types::Json<HashMap<String, i64>>>, _>("held")?
        .map(|held| held.0)
        .unwrap_or_default();
    let held = if applied {
        Held::ordered(&returned, &write.outbox)
    } else {
        Held::default()
    };
    Ok((applied, held))
}

fn saga_from_row(row: &PgRow) -> Result<Saga, StoreError> {
    let saga_id: Uuid = row.try_get("saga_id")?;
    let own = DialectFields {
        saga_id,
        payload: payload_object(saga_id, row.try_get::<Value, _>("payload")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deadline_at: row.try_get("deadline_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
    };
    saga_from(row, own)
}
