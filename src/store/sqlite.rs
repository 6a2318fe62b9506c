//! SQLite store (sqlx), for the embedded demo and small single-node
//! installs. Same contract as PostgreSQL.
//!
//! One connection: SQLite serializes writers anyway, and a single writer
//! never meets `SQLITE_BUSY` on a lock upgrade. WAL with a full fsync on
//! commit keeps every transition durable.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::rows::{
    events_column, history_entry, saga_from, state_count, DialectFields, COUNT_BY_STATE,
    SAGA_COLUMNS,
};
use super::{
    attempts_i32, payload_object, read_claim, stored_message, Created, Held, ListQuery, NewSaga,
    OutboxClaim, OutboxFault, OutboxHold, OutboxMessage, SagaStore, StoreError, TransitionWrite,
};
use crate::saga::{later, HistoryEntry, Saga, SagaState};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// [`SAGA_COLUMNS`] without the payload (up to `MAX_MESSAGE_BYTES` each),
/// which listings do not show: an empty object stands in for it.
const LIST_COLUMNS: &str = "saga_id, event_id, correlation_id, partner_id, state, step, attempts, \
    alliance_id, last_error, '{}' AS payload, traceparent, created_at, updated_at, deadline_at, \
    next_attempt_at, awaiting_reply, version";

/// Sagas in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database `url` names, e.g.
    /// `sqlite://.dev/demo/sagas.db` or `sqlite::memory:`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }
}

impl SqliteStore {
    /// The pool, for the operator tables' statements and unit tests that
    /// set up rows directly.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(saga_id: Uuid, v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| StoreError::Corrupt {
        saga_id,
        problem: format!("time {v} out of range"),
    })
}

#[async_trait]
impl SagaStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Never holds: the embedded store's relay claims every row (one
    /// local file, no round trip to save).
    async fn create_held(
        &self,
        sagas: &[NewSaga],
        _hold: Option<&OutboxHold>,
    ) -> Result<(Vec<Created>, Held), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut created = Vec::with_capacity(sagas.len());
        for new in sagas {
            let s = &new.saga;
            if insert_saga(&mut tx, new).await? {
                for h in &new.history {
                    insert_history(&mut tx, s.saga_id, h).await?;
                }
                for m in &new.outbox {
                    insert_outbox(&mut tx, m, s.updated_at).await?;
                }
                created.push(Created::New(s.saga_id));
            } else {
                created.push(Created::Duplicate(existing_saga(&mut tx, s).await?));
            }
        }
        tx.commit().await?;
        Ok((created, Held::default()))
    }

    async fn commit(&self, write: &TransitionWrite) -> Result<bool, StoreError> {
        let s = &write.saga;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE sagas SET state = ?, step = ?, attempts = ?, alliance_id = ?, last_error = ?, \
                updated_at = ?, next_attempt_at = ?, \
                lease_owner = CASE WHEN ? THEN lease_owner ELSE ? END, \
                lease_until = CASE WHEN ? THEN lease_until ELSE ? END, version = ?, \
                awaiting_reply = ?, deadline_at = ? \
             WHERE saga_id = ? AND version = ? \
               AND (? IS NULL OR lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
        )
        .bind(s.state.as_str())
        .bind(s.step.as_str())
        .bind(attempts_i32(s.attempts))
        .bind(&s.alliance_id)
        .bind(&s.last_error)
        .bind(micros(s.updated_at))
        .bind(s.next_attempt_at.map(micros))
        .bind(write.lease_unchanged)
        .bind(write.lease.as_ref().map(|l| l.owner.as_str()))
        .bind(write.lease_unchanged)
        .bind(write.lease.as_ref().map(|l| micros(l.until)))
        .bind(s.version)
        .bind(s.awaiting_reply)
        .bind(micros(s.deadline_at))
        .bind(s.saga_id.to_string())
        .bind(write.expected_version)
        .bind(write.fence.as_deref())
        .bind(write.fence.as_deref())
        .bind(micros(s.updated_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for h in &write.history {
            insert_history(&mut tx, s.saga_id, h).await?;
        }
        for m in &write.outbox {
            insert_outbox(&mut tx, m, s.updated_at).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<Saga>, StoreError> {
        let sql = format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id = ?");
        let row = sqlx::query(&sql)
            .bind(saga_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(saga_from_row).transpose()
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Saga>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = QueryBuilder::new(format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id IN ("
        ));
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        qb.push(")");
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn history(&self, saga_id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, from_state, to_state, reason, detail, at, instance_id, events FROM saga_history WHERE saga_id = ? ORDER BY seq",
        )
        .bind(saga_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| history_entry(row, saga_id, time(saga_id, row.try_get("at")?)?))
            .collect()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Saga>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {LIST_COLUMNS} FROM sagas WHERE 1 = 1"));
        query.push_onto(&mut qb, |id| id.to_string(), |t| t.timestamp_micros());
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
            "UPDATE sagas SET lease_owner = ?, lease_until = ? \
             WHERE saga_id IN ( \
                SELECT saga_id FROM sagas \
                WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ? \
                  AND (lease_until IS NULL OR lease_until < ?) \
                ORDER BY next_attempt_at LIMIT ?) \
             RETURNING {SAGA_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(micros(later(now, lease)))
            .bind(micros(now))
            .bind(micros(now))
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
            "UPDATE sagas SET lease_until = ? WHERE saga_id = ? AND version = ? AND lease_owner = ?",
        )
        .bind(micros(until))
        .bind(saga_id.to_string())
        .bind(version)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self, owner: &str, keep: &[Uuid]) -> Result<u64, StoreError> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "UPDATE sagas SET lease_owner = NULL, lease_until = NULL \
             WHERE state NOT IN ('completed', 'compensated', 'failed') AND lease_owner = ",
        );
        qb.push_bind(owner.to_string());
        if !keep.is_empty() {
            qb.push(" AND saga_id NOT IN (");
            let mut list = qb.separated(", ");
            for id in keep {
                list.push_bind(id.to_string());
            }
            qb.push(")");
        }
        Ok(qb.build().execute(&self.pool).await?.rows_affected())
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
        // As bytes: it may not even be text (a hand edit, another
        // writer), and that must fail its own row, not every claim.
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "UPDATE outbox SET claimed_by = ?, claimed_until = ? \
             WHERE id IN ( \
                SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < ? ORDER BY id LIMIT ?) \
             RETURNING id, CAST(channel AS BLOB) AS channel, CAST(message AS BLOB) AS message",
        )
        .bind(owner)
        .bind(micros(later(now, lease)))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(read_claim(rows.into_iter().map(
            |(id, channel, message)| (id, String::from_utf8_lossy(&channel).into_owned(), message),
        )))
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        outbox_by_ids(&self.pool, "DELETE FROM outbox WHERE id IN (", ids).await
    }

    async fn release_outbox(&self, owner: &str, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ",
        );
        qb.push_bind(owner.to_string()).push(" AND id IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        qb.push(")");
        qb.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn release_all_outbox(&self, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_outbox_failure(
        &self,
        owner: &str,
        id: i64,
        error: &str,
    ) -> Result<u32, StoreError> {
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? \
             WHERE id = ? AND claimed_by = ? RETURNING attempts",
        )
        .bind(error)
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(attempts.map_or(0, |n| u32::try_from(n).unwrap_or(0)))
    }

    async fn park_outbox(
        &self,
        owner: &str,
        faults: &[OutboxFault],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // One transaction: a row is either still queued or parked, never both or neither.
        let mut tx = self.pool.begin().await?;
        let mut parked = 0;
        for fault in faults {
            parked += sqlx::query(
                // REPLACE: a copy left parked when an operator requeued the
                // message by hand must not make parking it again fail.
                "INSERT OR REPLACE INTO outbox_parked (id, channel, message, created_at, attempts, reason, parked_at) \
                 SELECT id, channel, message, created_at, attempts, ?, ? FROM outbox \
                 WHERE id = ? AND claimed_by = ?",
            )
            .bind(&fault.reason)
            .bind(micros(now))
            .bind(fault.id)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM outbox WHERE id = ? AND claimed_by = ?")
                .bind(fault.id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(parked)
    }

    async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn outbox_parked(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox_parked")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// Inserts the saga row of `new`; `false` when an existing saga kept it
/// out (see [`existing_saga`]).
async fn insert_saga(tx: &mut Transaction<'_, Sqlite>, new: &NewSaga) -> Result<bool, StoreError> {
    let s = &new.saga;
    let inserted = sqlx::query(
        "INSERT INTO sagas (saga_id, event_id, correlation_id, partner_id, state, step, attempts, \
            alliance_id, last_error, payload, traceparent, created_at, updated_at, deadline_at, \
            next_attempt_at, lease_owner, lease_until, version, awaiting_reply) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT DO NOTHING",
    )
    .bind(s.saga_id.to_string())
    .bind(&s.event_id)
    .bind(&s.correlation_id)
    .bind(&s.partner_id)
    .bind(s.state.as_str())
    .bind(s.step.as_str())
    .bind(attempts_i32(s.attempts))
    .bind(&s.alliance_id)
    .bind(&s.last_error)
    .bind(Value::Object(s.payload.clone()).to_string())
    .bind(&s.traceparent)
    .bind(micros(s.created_at))
    .bind(micros(s.updated_at))
    .bind(micros(s.deadline_at))
    .bind(s.next_attempt_at.map(micros))
    .bind(new.lease.as_ref().map(|l| l.owner.as_str()))
    .bind(new.lease.as_ref().map(|l| micros(l.until)))
    .bind(s.version)
    .bind(s.awaiting_reply)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The saga that kept `s` out: the same event, or another saga of this
/// partner that is not compensated (see migrations/postgres/0003).
async fn existing_saga(tx: &mut Transaction<'_, Sqlite>, s: &Saga) -> Result<Uuid, StoreError> {
    let existing: String = sqlx::query_scalar(
        "SELECT saga_id FROM ( \
            SELECT saga_id, 0 AS rank FROM sagas WHERE event_id = ? \
            UNION ALL SELECT saga_id, 1 AS rank FROM sagas \
                WHERE partner_id = ? AND state <> 'compensated') \
         ORDER BY rank LIMIT 1",
    )
    .bind(&s.event_id)
    .bind(&s.partner_id)
    .fetch_one(&mut **tx)
    .await?;
    parse_uuid(&existing)
}

async fn insert_history(
    tx: &mut Transaction<'_, Sqlite>,
    saga_id: Uuid,
    h: &HistoryEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO saga_history (saga_id, seq, from_state, to_state, reason, detail, at, instance_id, events) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(saga_id.to_string())
    .bind(h.seq)
    .bind(h.from_state.map(SagaState::as_str))
    .bind(h.to_state.as_str())
    .bind(&h.reason)
    .bind(&h.detail)
    .bind(micros(h.at))
    .bind(&h.instance_id)
    .bind(events_column(h))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_outbox(
    tx: &mut Transaction<'_, Sqlite>,
    m: &OutboxMessage,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO outbox (channel, message, created_at) VALUES (?, ?, ?)")
        .bind(&m.channel)
        .bind(stored_message(m).to_string())
        .bind(micros(at))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Runs `statement` (which ends in `id IN (`) over `ids`.
async fn outbox_by_ids(pool: &SqlitePool, statement: &str, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(statement);
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    qb.push(")");
    qb.build().execute(pool).await?;
    Ok(())
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt {
        saga_id: Uuid::nil(),
        problem: format!("bad saga_id {s:?}"),
    })
}

fn saga_from_row(row: &SqliteRow) -> Result<Saga, StoreError> {
    let saga_id = parse_uuid(&row.try_get::<String, _>("saga_id")?)?;
    let payload_text: String = row.try_get("payload")?;
    let payload_value: Value =
        serde_json::from_str(&payload_text).map_err(|e| StoreError::Corrupt {
            saga_id,
            problem: format!("payload: {e}"),
        })?;
    let next: Option<i64> = row.try_get("next_attempt_at")?;
    let own = DialectFields {
        saga_id,
        payload: payload_object(saga_id, payload_value)?,
        created_at: time(saga_id, row.try_get("created_at")?)?,
        updated_at: time(saga_id, row.try_get("updated_at")?)?,
        deadline_at: time(saga_id, row.try_get("deadline_at")?)?,
        next_attempt_at: next.map(|v| time(saga_id, v)).transpose()?,
    };
    saga_from(row, own)
}
