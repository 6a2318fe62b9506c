//! [`OperatorStore`] on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::{
    column_text, count, job_body, parsed, AuditEntry, DeadLetterQuery, DeadLetterRecord,
    ItemOutcome, Job, JobKind, JobState, LetterAction, LetterState, NewJob, OperatorStore,
    SagaFilter, StoredDeadLetter, Taken,
};
use crate::store::{PostgresStore, StoreError};

const LETTER_COLUMNS: &str =
    "seq, id, channel, message_id, source_channel, dlq_reason, failed_at, \
    raw, state, acted_by, action_reason, acted_at";
const JOB_COLUMNS: &str =
    "job_id, kind, name, reason, actor, body, state, matched, done, skipped, \
    errors, created_at, updated_at";

fn letter(row: &PgRow) -> Result<StoredDeadLetter, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(StoredDeadLetter {
        seq: row.try_get("seq")?,
        record: DeadLetterRecord {
            id: row.try_get("id")?,
            channel: row.try_get("channel")?,
            message_id: row.try_get("message_id")?,
            source_channel: row.try_get("source_channel")?,
            dlq_reason: row.try_get("dlq_reason")?,
            failed_at: row.try_get("failed_at")?,
            raw: row.try_get("raw")?,
        },
        state: parsed(Uuid::nil(), "dead-letter state", &state, LetterState::parse)?,
        acted_by: row.try_get("acted_by")?,
        action_reason: row.try_get("action_reason")?,
        acted_at: row.try_get("acted_at")?,
    })
}

fn job(row: &PgRow) -> Result<Job, StoreError> {
    let job_id: Uuid = row.try_get("job_id")?;
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let body: String = row.try_get("body")?;
    Ok(Job {
        job_id,
        kind: parsed(job_id, "job kind", &kind, JobKind::parse)?,
        name: row.try_get("name")?,
        reason: row.try_get("reason")?,
        actor: row.try_get("actor")?,
        body: job_body(job_id, &body)?,
        state: parsed(job_id, "job state", &state, JobState::parse)?,
        matched: count(row.try_get("matched")?),
        done: count(row.try_get("done")?),
        skipped: count(row.try_get("skipped")?),
        errors: count(row.try_get("errors")?),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn insert_audit(
    tx: &mut Transaction<'_, Postgres>,
    e: &AuditEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO operator_audit (at, actor, action, target, reason, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.at)
    .bind(column_text(&e.actor))
    .bind(&e.action)
    .bind(column_text(&e.target))
    .bind(column_text(&e.reason))
    .bind(e.detail.as_ref().map(|d| d.to_string()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn job_in(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1");
    let row = sqlx::query(&sql)
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(job).transpose()
}

#[async_trait]
impl OperatorStore for PostgresStore {
    async fn index_dead_letters(
        &self,
        letters: &[DeadLetterRecord],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if letters.is_empty() {
            return Ok(0);
        }
        let mut qb = QueryBuilder::<Postgres>::new(
            "INSERT INTO dead_letters (id, channel, message_id, source_channel, dlq_reason, \
             failed_at, raw, indexed_at) ",
        );
        qb.push_values(letters, |mut b, l| {
            b.push_bind(&l.id)
                .push_bind(column_text(&l.channel))
                .push_bind(column_text(&l.message_id))
                .push_bind(column_text(&l.source_channel))
                .push_bind(column_text(&l.dlq_reason))
                .push_bind(l.failed_at)
                .push_bind(&l.raw)
                .push_bind(now);
        });
        qb.push(" ON CONFLICT (id) DO NOTHING");
        Ok(qb.build().execute(self.pool()).await?.rows_affected())
    }

    async fn dead_letters(&self, q: &DeadLetterQuery) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {LETTER_COLUMNS} FROM dead_letters WHERE state = 'pending'"
        ));
        if let Some(channel) = &q.channel {
            qb.push(" AND channel = ").push_bind(channel);
        }
        if let Some(text) = &q.reason_contains {
            qb.push(" AND strpos(dlq_reason, ")
                .push_bind(column_text(text))
                .push(") > 0");
        }
        if let Some(since) = q.since {
            qb.push(" AND failed_at >= ").push_bind(since);
        }
        if let Some(until) = q.until {
            qb.push(" AND failed_at < ").push_bind(until);
        }
        if let Some(before) = q.before {
            qb.push(" AND seq < ").push_bind(before);
        }
        qb.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = qb.build().fetch_all(self.pool()).await?;
        rows.iter().map(letter).collect()
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<StoredDeadLetter>, StoreError> {
        let sql = format!("SELECT {LETTER_COLUMNS} FROM dead_letters WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(letter).transpose()
    }

    async fn take_dead_letter(&self, a: &LetterAction) -> Result<Taken, StoreError> {
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "UPDATE dead_letters SET state = $2, acted_by = $3, action_reason = $4, \
                acted_at = $5, job_id = $6 \
             WHERE id = $1 AND state = 'pending' RETURNING {LETTER_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&a.id)
            .bind(a.to.as_str())
            .bind(column_text(&a.audit.actor))
            .bind(column_text(&a.audit.reason))
            .bind(a.audit.at)
            .bind(a.job_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM dead_letters WHERE id = $1")
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

    async fn settle_redrive(&self, id: &str, sent: bool) -> Result<(), StoreError> {
        let to = if sent {
            LetterState::Redriven
        } else {
            LetterState::Pending
        };
        sqlx::query("UPDATE dead_letters SET state = $2 WHERE id = $1 AND state = 'redriving'")
            .bind(id)
            .bind(to.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn unsettled_redrives(
        &self,
        older_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {LETTER_COLUMNS} FROM dead_letters \
             WHERE state = 'redriving' AND acted_at < $1 ORDER BY acted_at LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(older_than)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(letter).collect()
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
             WHERE ($1::bigint IS NULL OR seq < $1) ORDER BY seq DESC LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let detail: Option<String> = r.try_get("detail")?;
                Ok(AuditEntry {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    reason: r.try_get("reason")?,
                    detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .collect()
    }

    async fn saga_ids(&self, f: &SagaFilter, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        let mut qb = QueryBuilder::<Postgres>::new("SELECT saga_id FROM sagas WHERE true");
        if let Some(state) = f.state {
            qb.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(p) = &f.partner_id {
            qb.push(" AND partner_id = ").push_bind(p);
        }
        if let Some(c) = &f.correlation_id {
            qb.push(" AND correlation_id = ").push_bind(c);
        }
        if let Some(since) = f.since {
            qb.push(" AND updated_at >= ").push_bind(since);
        }
        if let Some(until) = f.until {
            qb.push(" AND updated_at < ").push_bind(until);
        }
        qb.push(" ORDER BY saga_id LIMIT ")
            .push_bind(i64::from(limit));
        Ok(qb.build_query_scalar().fetch_all(self.pool()).await?)
    }

    async fn create_job(
        &self,
        j: &NewJob,
        audit: &AuditEntry,
    ) -> Result<Result<Job, Job>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (job_id, body_key, kind, name, reason, actor, body, state, matched, \
                created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $9, $9) \
             ON CONFLICT (body_key) DO NOTHING",
        )
        .bind(j.job_id)
        .bind(&j.body_key)
        .bind(j.kind.as_str())
        .bind(column_text(&j.name))
        .bind(column_text(&j.reason))
        .bind(column_text(&j.actor))
        .bind(j.body.to_string())
        .bind(i32::try_from(j.targets.len()).unwrap_or(i32::MAX))
        .bind(j.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE body_key = $1");
            let row = sqlx::query(&sql)
                .bind(&j.body_key)
                .fetch_one(&mut *tx)
                .await?;
            return Ok(Err(job(&row)?));
        }
        let seqs: Vec<i32> = (0..j.targets.len())
            .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect();
        sqlx::query(
            "INSERT INTO job_items (job_id, seq, target) \
             SELECT $1, * FROM UNNEST($2::integer[], $3::text[])",
        )
        .bind(j.job_id)
        .bind(&seqs)
        .bind(&j.targets)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        let created = job_in(&mut tx, j.job_id).await?;
        tx.commit().await?;
        created.map(Ok).ok_or(StoreError::Corrupt {
            saga_id: j.job_id,
            problem: "job vanished while being created".into(),
        })
    }

    async fn job(&self, job_id: Uuid) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1");
        let row = sqlx::query(&sql)
            .bind(job_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(job).transpose()
    }

    async fn abort_job(
        &self,
        job_id: Uuid,
        audit: &AuditEntry,
    ) -> Result<Option<(Job, bool)>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let aborted = sqlx::query(
            "UPDATE jobs SET state = 'aborted', updated_at = $2, lease_owner = NULL, \
                lease_until = NULL WHERE job_id = $1 AND state = 'running'",
        )
        .bind(job_id)
        .bind(audit.at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if aborted {
            insert_audit(&mut tx, audit).await?;
        }
        let found = job_in(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(found.map(|j| (j, aborted)))
    }

    async fn claim_job(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Job>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET lease_owner = $1, lease_until = $3 WHERE job_id = ( \
                SELECT job_id FROM jobs WHERE state = 'running' \
                  AND (lease_until IS NULL OR lease_until < $2) \
                ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(owner)
            .bind(now)
            .bind(until)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(job).transpose()
    }

    async fn renew_job(
        &self,
        job_id: Uuid,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_until = $3 \
             WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(owner)
        .bind(until)
        .execute(self.pool())
        .await?;
        Ok(renewed.rows_affected() > 0)
    }

    async fn open_items(&self, job_id: Uuid, limit: u32) -> Result<Vec<(i32, String)>, StoreError> {
        let rows = sqlx::query_as(
            "SELECT seq, target FROM job_items WHERE job_id = $1 AND outcome IS NULL \
             ORDER BY seq LIMIT $2",
        )
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    async fn settle_item(
        &self,
        job_id: Uuid,
        seq: i32,
        outcome: ItemOutcome,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // One statement: the item and its job's count move together.
        sqlx::query(
            "WITH settled AS ( \
                UPDATE job_items SET outcome = $3, detail = $4 \
                WHERE job_id = $1 AND seq = $2 AND outcome IS NULL RETURNING job_id) \
             UPDATE jobs SET updated_at = $5, \
                done = done + (CASE WHEN $3 = 'done' THEN 1 ELSE 0 END), \
                skipped = skipped + (CASE WHEN $3 = 'skipped' THEN 1 ELSE 0 END), \
                errors = errors + (CASE WHEN $3 = 'error' THEN 1 ELSE 0 END) \
             WHERE job_id IN (SELECT job_id FROM settled)",
        )
        .bind(job_id)
        .bind(seq)
        .bind(outcome.as_str())
        .bind(detail.map(column_text))
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn finish_job(
        &self,
        job_id: Uuid,
        owner: &str,
        state: JobState,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = $3, updated_at = $4, lease_owner = NULL, lease_until = NULL \
             WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(owner)
        .bind(state.as_str())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
