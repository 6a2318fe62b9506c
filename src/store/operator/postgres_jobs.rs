//! [`JobStore`] on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::postgres::insert_audit;
use super::{
    column_text, count, job_body, parsed, AuditEntry, ItemOutcome, Job, JobKind, JobState,
    JobStore, NewJob, SagaFilter,
};
use crate::store::{PostgresStore, StoreError};

const JOB_COLUMNS: &str =
    "job_id, kind, name, reason, actor, body, state, matched, done, skipped, \
    errors, created_at, updated_at";

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
impl JobStore for PostgresStore {
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

    async fn job_by_key(&self, body_key: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE body_key = $1");
        let row = sqlx::query(&sql)
            .bind(body_key)
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
