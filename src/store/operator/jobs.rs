//! Bulk jobs' rows: the job, its items fixed when it starts, its lease.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::AuditEntry;
use crate::saga::SagaState;
use crate::store::StoreError;

/// Which sagas a bulk retry takes, oldest first.
#[derive(Debug, Clone, Default)]
pub struct SagaFilter {
    pub state: Option<SagaState>,
    pub partner_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Last changed at or after (for a failed saga: when it was parked).
    pub since: Option<DateTime<Utc>>,
    /// Last changed before.
    pub until: Option<DateTime<Utc>>,
}

/// A bulk job's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    SagaRetry,
    DeadLetterRedrive,
}

impl JobKind {
    /// The stored and shown spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SagaRetry => "saga_retry",
            Self::DeadLetterRedrive => "dead_letter_redrive",
        }
    }

    /// The kind a stored spelling names.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::SagaRetry, Self::DeadLetterRedrive]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A bulk job's state (docs/contract.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Aborted,
    Failed,
}

impl JobState {
    /// The stored and shown spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }

    /// The state a stored spelling names.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Done, Self::Aborted, Self::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A job to record, with its targets fixed.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: Uuid,
    /// The same key is the same job (see `operator::jobs::body_key`).
    pub body_key: String,
    pub kind: JobKind,
    pub name: String,
    pub reason: String,
    pub actor: String,
    /// The normalized body.
    pub body: Value,
    /// Saga ids or dead-letter ids, in the order they are worked on.
    pub targets: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A stored job and its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub job_id: Uuid,
    pub kind: JobKind,
    pub name: String,
    pub reason: String,
    pub actor: String,
    pub body: Value,
    pub state: JobState,
    pub matched: u32,
    pub done: u32,
    pub skipped: u32,
    pub errors: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How one job item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// The action was carried out.
    Done,
    /// Nothing to do any more (the saga is no longer failed, the letter was
    /// handled): counted, not an error.
    Skipped,
    /// It could not be carried out.
    Error,
}

impl ItemOutcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Skipped => "skipped",
            Self::Error => "error",
        }
    }
}

/// Bulk jobs, their items and leases.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Ids of the sagas `filter` matches, oldest first, at most `limit`.
    async fn saga_ids(&self, filter: &SagaFilter, limit: u32) -> Result<Vec<Uuid>, StoreError>;

    /// Records a job, its items and `audit` in one transaction; when a job
    /// with the same body key exists, nothing is written and that job is
    /// returned (`Err` side of the result: it is not new).
    async fn create_job(
        &self,
        job: &NewJob,
        audit: &AuditEntry,
    ) -> Result<Result<Job, Job>, StoreError>;

    /// One job.
    async fn job(&self, job_id: Uuid) -> Result<Option<Job>, StoreError>;

    /// The job recorded with `body_key`, if any: a duplicate post is
    /// answered with it before any target is selected.
    async fn job_by_key(&self, body_key: &str) -> Result<Option<Job>, StoreError>;

    /// Stops a running job (its lease holder sees it before its next item),
    /// recording `audit`. `None`: no such job; a job not running is
    /// returned as it is, unchanged.
    async fn abort_job(
        &self,
        job_id: Uuid,
        audit: &AuditEntry,
    ) -> Result<Option<(Job, bool)>, StoreError>;

    /// Leases the oldest running job nobody holds (or whose holder's lease
    /// lapsed) to `owner` until `until`.
    async fn claim_job(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Job>, StoreError>;

    /// Extends `owner`'s lease; `false` when the job is no longer running
    /// or no longer `owner`'s (aborted, or taken over): stop working on it.
    async fn renew_job(
        &self,
        job_id: Uuid,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` items still to do, in order: `(seq, target)`.
    async fn open_items(&self, job_id: Uuid, limit: u32) -> Result<Vec<(i32, String)>, StoreError>;

    /// Settles one item and counts it on its job, once: an item settled
    /// before is left as it is.
    async fn settle_item(
        &self,
        job_id: Uuid,
        seq: i32,
        outcome: ItemOutcome,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Ends a running job `owner` holds, in `state`, releasing its lease.
    async fn finish_job(
        &self,
        job_id: Uuid,
        owner: &str,
        state: JobState,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}
