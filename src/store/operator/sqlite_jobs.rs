//! [`JobStore`] on SQLite: times as INTEGER microseconds, ids as TEXT.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::sqlite::{insert_audit, micros, time, uuid};
use super::{
    count, job_body, parsed, AuditEntry, ItemOutcome, Job, JobKind, JobState, JobStore, NewJob,
    SagaFilter,
};
use crate::store::{SqliteStore, StoreError};

const JOB_COLUMNS: &str =
    "job_id, kind, name, reason, actor, body, state, matched, done, skipped, \
    errors, created_at, updated_at";

fn job(row: &SqliteRow) -> Result<Job, StoreError> {
    let id_text: String = row.try_get("job_id")?;
    let job_id = uuid(&id_text)?;
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
        created_at: time(job_id, row.try_get("created_at")?)?,
        updated_at: time(job_id, row.try_get("updated_at")?)?,
    })
}

async fn job_in(tx: &mut Transaction<'_, Sqlite>, job_id: Uuid) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?");
    let row = sqlx::query(&sql)
        .bind(job_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(job).transpose()
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn saga_ids(&self, f: &SagaFilter, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT saga_id FROM sagas WHERE 1");
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
            qb.push(" AND updated_at >= ").push_bind(micros(since));
        }
        if let Some(until) = f.until {
            qb.push(" AND updated_at < ").push_bind(micros(until));
        }
        qb.push(" ORDER BY saga_id LIMIT ")
            .push_bind(i64::from(limit));
        let ids: Vec<String> = qb.build_query_scalar().fetch_all(self.pool()).await?;
        ids.iter().map(|id| uuid(id)).collect()
    }

    async fn create_job(
        &self,
        j: &NewJob,
        audit: &AuditEntry,
    ) -> Result<Result<Job, Job>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (job_id, body_key, kind, name, reason, actor, body, state, matched, \
                created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?) \
             ON CONFLICT (body_key) DO NOTHING",
        )
        .bind(j.job_id.to_string())
        .bind(&j.body_key)
        .bind(j.kind.as_str())
        .bind(&j.name)
        .bind(&j.reason)
        .bind(&j.actor)
        .bind(j.body.to_string())
        .bind(i64::try_from(j.targets.len()).unwrap_or(i64::MAX))
        .bind(micros(j.created_at))
        .bind(micros(j.created_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE body_key = ?");
            let row = sqlx::query(&sql)
                .bind(&j.body_key)
                .fetch_one(&mut *tx)
                .await?;
            return Ok(Err(job(&row)?));
        }
        for (seq, target) in j.targets.iter().enumerate() {
            sqlx::query("INSERT INTO job_items (job_id, seq, target) VALUES (?, ?, ?)")
                .bind(j.job_id.to_string())
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .bind(target)
                .execute(&mut *tx)
                .await?;
        }
        insert_audit(&mut tx, audit).await?;
        let created = job_in(&mut tx, j.job_id).await?;
        tx.commit().await?;
        created.map(Ok).ok_or(StoreError::Corrupt {
            saga_id: j.job_id,
            problem: "job vanished while being created".into(),
        })
    }

    async fn job(&self, job_id: Uuid) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?");
        let row = sqlx::query(&sql)
            .bind(job_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(job).transpose()
    }

    async fn job_by_key(&self, body_key: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE body_key = ?");
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
            "UPDATE jobs SET state = 'aborted', updated_at = ?, lease_owner = NULL, \
                lease_until = NULL WHERE job_id = ? AND state = 'running'",
        )
        .bind(micros(audit.at))
        .bind(job_id.to_string())
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
        // One connection serializes writers: no SKIP LOCKED needed.
        let sql = format!(
            "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE job_id = ( \
                SELECT job_id FROM jobs WHERE state = 'running' \
                  AND (lease_until IS NULL OR lease_until < ?) ORDER BY created_at LIMIT 1) \
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(owner)
            .bind(micros(until))
            .bind(micros(now))
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
            "UPDATE jobs SET lease_until = ? \
             WHERE job_id = ? AND lease_owner = ? AND state = 'running'",
        )
        .bind(micros(until))
        .bind(job_id.to_string())
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(renewed.rows_affected() > 0)
    }

    async fn open_items(&self, job_id: Uuid, limit: u32) -> Result<Vec<(i32, String)>, StoreError> {
        let rows = sqlx::query_as(
            "SELECT seq, target FROM job_items WHERE job_id = ? AND outcome IS NULL \
             ORDER BY seq LIMIT ?",
        )
        .bind(job_id.to_string())
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
        let mut tx = self.pool().begin().await?;
        let settled = sqlx::query(
            "UPDATE job_items SET outcome = ?, detail = ? \
             WHERE job_id = ? AND seq = ? AND outcome IS NULL",
        )
        .bind(outcome.as_str())
        .bind(detail)
        .bind(job_id.to_string())
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if settled > 0 {
            let column = match outcome {
                ItemOutcome::Done => "done",
                ItemOutcome::Skipped => "skipped",
                ItemOutcome::Error => "errors",
            };
            let sql =
                format!("UPDATE jobs SET {column} = {column} + 1, updated_at = ? WHERE job_id = ?");
            sqlx::query(&sql)
                .bind(micros(now))
                .bind(job_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
            "UPDATE jobs SET state = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL \
             WHERE job_id = ? AND lease_owner = ? AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(micros(now))
        .bind(job_id.to_string())
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
