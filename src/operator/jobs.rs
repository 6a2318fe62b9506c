//! Bulk jobs (docs/contract.md §5): every failed saga matching a filter
//! retried, or every dead letter matching one redriven. A job's targets are
//! fixed when it starts (at most its `max`), so a restart resumes the same
//! set; the same body twice is the same job, so nothing is done twice.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Operator;
use crate::envelope::format_time;
use crate::store::operator::{AuditEntry, DeadLetterQuery, Job, JobKind, NewJob, SagaFilter};
use crate::store::StoreError;

/// What a job works on.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Sagas to retry.
    Sagas(SagaFilter),
    /// Pending dead letters to redrive (`limit` and `before` are ignored).
    DeadLetters(DeadLetterQuery),
}

impl Selection {
    fn kind(&self) -> JobKind {
        match self {
            Self::Sagas(_) => JobKind::SagaRetry,
            Self::DeadLetters(_) => JobKind::DeadLetterRedrive,
        }
    }

    /// The filter as stored and compared: every field, absent ones null.
    fn normalized(&self) -> Value {
        let time = |t: Option<DateTime<Utc>>| t.map(format_time);
        match self {
            Self::Sagas(f) => json!({
                "state": f.state.map(|s| s.as_str()),
                "partner_id": f.partner_id,
                "correlation_id": f.correlation_id,
                "since": time(f.since),
                "until": time(f.until),
            }),
            Self::DeadLetters(q) => json!({
                "channel": q.channel,
                "reason_contains": q.reason_contains,
                "since": time(q.since),
                "until": time(q.until),
            }),
        }
    }
}

/// A bulk request, checked by the API.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub selection: Selection,
    /// At most this many items (already within [`super::JobLimits`]).
    pub max: u32,
    /// Named after the incident.
    pub name: String,
    pub reason: String,
    /// The admin token's name.
    pub actor: String,
}

impl JobRequest {
    /// The body as compared: the same for the same request whoever posts it.
    pub fn normalized(&self) -> Value {
        json!({
            "kind": self.selection.kind().as_str(),
            "filter": self.selection.normalized(),
            "max": self.max,
            "name": self.name,
            "reason": self.reason,
        })
    }
}

/// The job's idempotency key: SHA-256 of the normalized body, in hex.
pub fn body_key(normalized: &Value) -> String {
    let digest = Sha256::digest(normalized.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What posting a job did.
#[derive(Debug, Clone)]
pub enum Started {
    /// `dry_run`: how many it would touch, and nothing done.
    Preview { matched: u32 },
    /// A new job, running.
    New(Job),
    /// The same body was posted before: that job, untouched.
    Existing(Job),
}

impl Operator {
    /// The targets `selection` matches now, at most `max`.
    async fn targets(&self, selection: &Selection, max: u32) -> Result<Vec<String>, StoreError> {
        let store = self.orchestrator.store();
        Ok(match selection {
            Selection::Sagas(filter) => store
                .saga_ids(filter, max)
                .await?
                .into_iter()
                .map(|id| id.to_string())
                .collect(),
            Selection::DeadLetters(query) => {
                let query = DeadLetterQuery {
                    limit: max,
                    before: None,
                    ..query.clone()
                };
                // Ids only: a job of thousands never holds their payloads.
                let mut ids = store.dead_letter_ids(&query).await?;
                // Oldest first, as they failed.
                ids.reverse();
                ids
            }
        })
    }

    /// The job this request started before, if any: what starting it
    /// again would answer with.
    pub async fn earlier_job(&self, request: &JobRequest) -> Result<Option<Job>, StoreError> {
        let key = body_key(&request.normalized());
        self.orchestrator.store().job_by_key(&key).await
    }

    /// Previews or starts a job; the runner picks a new one up at once.
    pub async fn start_job(
        &self,
        request: JobRequest,
        dry_run: bool,
    ) -> Result<Started, StoreError> {
        let body = request.normalized();
        let key = body_key(&body);
        // A duplicate post is answered before any target is selected.
        if !dry_run {
            if let Some(existing) = self.earlier_job(&request).await? {
                return Ok(Started::Existing(existing));
            }
        }
        let targets = self.targets(&request.selection, request.max).await?;
        if dry_run {
            let matched = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            return Ok(Started::Preview { matched });
        }
        let job = NewJob {
            job_id: Uuid::now_v7(),
            body_key: key,
            kind: request.selection.kind(),
            name: request.name.clone(),
            reason: request.reason.clone(),
            actor: request.actor.clone(),
            body: body.clone(),
            targets,
            created_at: Utc::now(),
        };
        let audit = AuditEntry {
            seq: 0,
            at: job.created_at,
            actor: request.actor,
            action: "job.start".into(),
            target: job.job_id.to_string(),
            reason: request.reason,
            detail: Some(json!({ "body": body, "matched": job.targets.len() })),
        };
        match self.orchestrator.store().create_job(&job, &audit).await? {
            Ok(created) => {
                self.wake.notify_one();
                Ok(Started::New(created))
            }
            Err(existing) => Ok(Started::Existing(existing)),
        }
    }

    /// Aborts a running job; `None` when there is no such job, and the job
    /// with whether this call stopped it otherwise.
    pub async fn abort_job(
        &self,
        job_id: Uuid,
        actor: &str,
        reason: &str,
    ) -> Result<Option<(Job, bool)>, StoreError> {
        let audit = AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor: actor.to_string(),
            action: "job.abort".into(),
            target: job_id.to_string(),
            reason: reason.to_string(),
            detail: None,
        };
        self.orchestrator.store().abort_job(job_id, &audit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::SagaState;

    fn request(name: &str, actor: &str) -> JobRequest {
        JobRequest {
            selection: Selection::Sagas(SagaFilter {
                state: Some(SagaState::Failed),
                ..SagaFilter::default()
            }),
            max: 100,
            name: name.into(),
            reason: "healed".into(),
            actor: actor.into(),
        }
    }

    #[test]
    fn the_same_body_is_the_same_key_whoever_posts_it() {
        let a = body_key(&request("incident-7", "alice").normalized());
        let b = body_key(&request("incident-7", "bob").normalized());
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(a, body_key(&request("incident-8", "alice").normalized()));
    }

    #[test]
    fn sagas_and_dead_letters_never_share_a_key() {
        let mut other = request("incident-7", "alice");
        other.selection = Selection::DeadLetters(DeadLetterQuery::default());
        assert_ne!(
            body_key(&request("incident-7", "alice").normalized()),
            body_key(&other.normalized())
        );
    }
}
