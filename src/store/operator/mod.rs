//! What operators act on beyond single sagas (docs/contract.md §5,
//! "Operator routes"): the dead-letter index and what was done with each
//! letter, the audit record, and bulk jobs with their items. Both stores
//! implement [`DeadLetterStore`] (here, `postgres.rs`, `sqlite.rs`) and
//! [`JobStore`] (`jobs.rs`, `*_jobs.rs`) and the console's reads,
//! [`ConsoleStore`] (`console.rs`), together [`OperatorStore`]; the tables
//! are in migration 0006, the console's index in 0007.

mod console;
mod jobs;
mod postgres;
mod postgres_jobs;
mod sqlite;
mod sqlite_jobs;

pub use console::{ConsoleStore, EndedInMinute};
pub use jobs::{ItemOutcome, Job, JobKind, JobState, JobStore, NewJob, SagaFilter};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::StoreError;

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterState {
    /// In the listing, waiting for a person.
    Pending,
    /// A redrive was recorded; its publish is under way (or was cut short
    /// by a crash, and is finished by the job runner).
    Redriving,
    /// Sent back to its source channel.
    Redriven,
    /// Dropped by an operator, with a reason.
    Discarded,
}

impl LetterState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Redriving => "redriving",
            Self::Redriven => "redriven",
            Self::Discarded => "discarded",
        }
    }

    /// The state a stored spelling names.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Redriving,
            Self::Redriven,
            Self::Discarded,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// A dead letter as read from its channel, to be indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// The API's id (see `operator::id`).
    pub id: String,
    pub channel: String,
    pub message_id: String,
    pub source_channel: String,
    pub dlq_reason: String,
    pub failed_at: DateTime<Utc>,
    /// The entry as read, as JSON text (see `operator::letter`).
    pub raw: String,
}

/// An indexed dead letter and what was done with it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Its place in indexing order: the paging cursor.
    pub seq: i64,
    pub record: DeadLetterRecord,
    pub state: LetterState,
    pub acted_by: Option<String>,
    pub action_reason: Option<String>,
    pub acted_at: Option<DateTime<Utc>>,
}

/// Which pending dead letters to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Only this dead-letter channel's.
    pub channel: Option<String>,
    /// Only those whose `dlq_reason` contains this text.
    pub reason_contains: Option<String>,
    /// Failed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Failed before.
    pub until: Option<DateTime<Utc>>,
    /// Only those indexed before this `seq` (the previous page's last).
    pub before: Option<i64>,
    pub limit: u32,
}

/// One operator action, for the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Assigned by the store (0 before): order and paging cursor.
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// The admin token's name.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub detail: Option<Value>,
}

/// An operator taking one dead letter out of the listing.
#[derive(Debug, Clone)]
pub struct LetterAction {
    pub id: String,
    /// [`LetterState::Redriving`] or [`LetterState::Discarded`].
    pub to: LetterState,
    pub job_id: Option<Uuid>,
    /// Recorded in the same transaction.
    pub audit: AuditEntry,
}

/// What taking a dead letter found.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// It was pending and is now the action's: the caller carries it out.
    Taken(Box<StoredDeadLetter>),
    /// No such letter.
    Missing,
    /// Already handled; nothing was written.
    Handled(LetterState),
}

/// The dead-letter index and the audit record.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Records dead letters as read; one indexed before is left as it is
    /// (a broker's redelivery). Returns how many were new.
    async fn index_dead_letters(
        &self,
        letters: &[DeadLetterRecord],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Pending dead letters matching `query`, newest first.
    async fn dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError>;

    /// The ids alone of the pending letters `query` matches, newest first:
    /// a bulk job's targets, without loading every letter's payload.
    async fn dead_letter_ids(&self, query: &DeadLetterQuery) -> Result<Vec<String>, StoreError>;

    /// One dead letter, in whatever state.
    async fn dead_letter(&self, id: &str) -> Result<Option<StoredDeadLetter>, StoreError>;

    /// Takes a pending letter out of the listing for `action`, recording its
    /// audit entry in the same transaction, so a second call finds it
    /// handled and nothing is done twice.
    async fn take_dead_letter(&self, action: &LetterAction) -> Result<Taken, StoreError>;

    /// Ends a redrive: `None` (it was sent) marks the letter redriven;
    /// `Some(failure)` puts it back to pending as it was before it was
    /// taken (no actor, reason or time) and records `failure` in the audit
    /// record, in one transaction.
    async fn settle_redrive(&self, id: &str, failed: Option<&AuditEntry>)
        -> Result<(), StoreError>;

    /// Claims redrives recorded (or last claimed) before `older_than` and
    /// never settled (a crash between the record and the publish), oldest
    /// first, to resend: their `acted_at` becomes `now` in the same
    /// statement, so of any number of runners looking at once only one
    /// gets a letter, and nobody again until that claim is older than
    /// `older_than` in turn.
    async fn claim_unsettled_redrives(
        &self,
        older_than: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredDeadLetter>, StoreError>;

    /// Appends to the audit record.
    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// The audit record, newest first, before `before` (a `seq`).
    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Operators' tables; every `SagaStore` is one.
pub trait OperatorStore: DeadLetterStore + JobStore + ConsoleStore {}

impl<T: DeadLetterStore + JobStore + ConsoleStore> OperatorStore for T {}

/// A stored job's body, which must be JSON.
pub(crate) fn job_body(job_id: Uuid, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        saga_id: job_id,
        problem: format!("job body is not JSON: {e}"),
    })
}

/// A stored spelling read back, or the row is corrupt.
pub(crate) fn parsed<T>(
    id: Uuid,
    what: &str,
    s: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(s).ok_or_else(|| StoreError::Corrupt {
        saga_id: id,
        problem: format!("unknown {what} {s:?}"),
    })
}

/// Counts as stored (never negative) as the API shows them.
pub(crate) fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// Text for a column that cannot hold NUL (PostgreSQL `text`): escaped as
/// JSON would, so what a broken producer sent can still be indexed.
pub(crate) fn column_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\\u0000")
    } else {
        s.to_string()
    }
}
