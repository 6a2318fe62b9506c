//! [`OperatorStore`] on SQLite: the same statements as PostgreSQL's, with
//! times as INTEGER microseconds and ids as TEXT.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::{
    parsed, AuditEntry, DeadLetterQuery, DeadLetterRecord, DeadLetterStore, LetterAction,
    LetterState, StoredDeadLetter, Taken,
};
use crate::store::{SqliteStore, StoreError};

const LETTER_COLUMNS: &str =
    "seq, id, channel, message_id, source_channel, dlq_reason, failed_at, \
    raw, state, acted_by, action_reason, acted_at";
pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn time(id: Uuid, v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| StoreError::Corrupt {
        saga_id: id,
        problem: format!("time {v} out of range"),
    })
}

pub(super) fn uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt {
        saga_id: Uuid::nil(),
        problem: format!("job id {text:?} is not a UUID"),
    })
}

/// `columns` of the pending letters `q` matches, newest first.
fn pending<'q>(columns: &str, q: &'q DeadLetterQuery) -> QueryBuilder<'q, Sqlite> {
    let mut qb = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {columns} FROM dead_letters WHERE state = 'pending'"
    ));
    if let Some(channel) = &q.channel {
        qb.push(" AND channel = ").push_bind(channel);
    }
    if let Some(text) = &q.reason_contains {
        qb.push(" AND instr(dlq_reason, ")
            .push_bind(text)
            .push(") > 0");
    }
    if let Some(since) = q.since {
        qb.push(" AND failed_at >= ").push_bind(micros(since));
    }
    if let Some(until) = q.until {
        qb.push(" AND failed_at < ").push_bind(micros(until));
    }
    if let Some(before) = q.before {
        qb.push(" AND seq < ").push_bind(before);
    }
    qb.push(" ORDER BY seq DESC LIMIT ")
        .push_bind(i64::from(q.limit));
    qb
}

fn letter(row: &SqliteRow) -> Result<StoredDeadLetter, StoreError> {
    let state: String = row.try_get("state")?;
    let nil = Uuid::nil();
    let acted_at: Option<i64> = row.try_get("acted_at")?;
    Ok(StoredDeadLetter {
        seq: row.try_get("seq")?,
        record: DeadLetterRecord {
            id: row.try_get("id")?,
            channel: row.try_get("channel")?,
            message_id: row.try_get("message_id")?,
            source_channel: row.try_get("source_channel")?,
            dlq_reason: row.try_get("dlq_reason")?,
            failed_at: time(nil, row.try_get("failed_at")?)?,
            raw: row.try_get("raw")?,
        },
        state: parsed(nil, "dead-letter state", &state, LetterState::parse)?,
        acted_by: row.try_get("acted_by")?,
        action_reason: row.try_get("action_reason")?,
        acted_at: acted_at.map(|t| time(nil, t)).transpose()?,
    })
}

pub(super) async fn insert_audit(
    tx: &mut Transaction<'_, Sqlite>,
    e: &AuditEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO operator_audit (at, actor, action, target, reason, detail) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(micros(e.at))
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.reason)
    .bind(e.detail.as_ref().map(|d| d.to_string()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn index_dead_letters(
        &self,
        letters: &[DeadLetterRecord],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if letters.is_empty() {
            return Ok(0);
        }
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO dead_letters (id, channel, message_id, source_channel, dlq_reason, \
             failed_at, raw, indexed_at) ",
        );
        qb.push_values(letters, |mut b, l| {
            b.push_bind(&l.id)
                .push_bind(&l.channel)
                .push_bind(&l.message_id)
                .push_bind(&l.source_channel)
                .push_bind(&l.dlq_reason)
                .push_bind(micros(l.failed_at))
                .push_bind(&l.raw)
                .push_bind(micros(now));
        });
        qb.push(" ON CONFLICT (id) DO NOTHING");
        Ok(qb.build().execute(self.pool()).await?.rows_affected())
    }

    async fn dead_letters(&self, q: &DeadLetterQuery) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let rows = pending(LETTER_COLUMNS, q)
            .build()
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(letter).collect()
    }

    async fn dead_letter_ids(&self, q: &DeadLetterQuery) -> Result<Vec<String>, StoreError> {
        let rows = pending("id", q).build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<StoredDeadLetter>, StoreError> {
        let sql = format!("SELECT {LETTER_COLUMNS} FROM dead_letters WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(letter).transpose()
    }

    async fn take_dead_letter(&self, a: &LetterAction) -> Result<Taken, StoreError> {
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "UPDATE dead_letters SET state = ?, acted_by = ?, action_reason = ?, acted_at = ?, \
                job_id = ? WHERE id = ? AND state = 'pending' RETURNING {LETTER_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(a.to.as_str())
            .bind(&a.audit.actor)
            .bind(&a.audit.reason)
            .bind(micros(a.audit.at))
            .bind(a.job_id.map(|j| j.to_string()))
            .bind(&a.id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM dead_letters WHERE id = ?")
                    .bind(&a.id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Ok(match state {
                None => Taken::Missing,
                Some(s) => Taken::Handled(parsed(
                    Uuid::nil(),
                    "dead-letter state",
                    &s,
                    LetterState::parse,
                )?),
            });
        };
        let taken = letter(&row)?;
        insert_audit(&mut tx, &a.audit).await?;
        tx.commit().await?;
        Ok(Taken::Taken(Box::new(taken)))
    }

    async fn settle_redrive(
        &self,
        id: &str,
        failed: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let Some(failure) = failed else {
            sqlx::query(
                "UPDATE dead_letters SET state = 'redriven' WHERE id = ? AND state = 'redriving'",
            )
            .bind(id)
            .execute(self.pool())
            .await?;
            return Ok(());
        };
        let mut tx = self.pool().begin().await?;
        let reverted = sqlx::query(
            "UPDATE dead_letters SET state = 'pending', acted_by = NULL, action_reason = NULL, \
                 acted_at = NULL, job_id = NULL WHERE id = ? AND state = 'redriving'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Only a revert is a failure to record (a second settle is not).
        if reverted > 0 {
            insert_audit(&mut tx, failure).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_unsettled_redrives(
        &self,
        older_than: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        // One statement, and SQLite has one writer: two claims never
        // both see a row as lapsed.
        let sql = format!(
            "UPDATE dead_letters SET acted_at = ? WHERE id IN (\
                SELECT id FROM dead_letters WHERE state = 'redriving' AND acted_at < ? \
                ORDER BY acted_at LIMIT ?) RETURNING {LETTER_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(micros(now))
            .bind(micros(older_than))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        let mut letters = rows.iter().map(letter).collect::<Result<Vec<_>, _>>()?;
        letters.sort_by_key(|l| l.seq);
        Ok(letters)
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        insert_audit(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, reason, detail FROM operator_audit \
             WHERE (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT ?",
        )
        .bind(before)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let detail: Option<String> = r.try_get("detail")?;
                Ok(AuditEntry {
                    seq: r.try_get("seq")?,
                    at: time(Uuid::nil(), r.try_get("at")?)?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    reason: r.try_get("reason")?,
                    detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .collect()
    }
}
