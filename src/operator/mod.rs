//! What operators do beyond one saga (docs/contract.md §5, "Operator
//! routes"): read dead letters, redrive or discard them, and run bulk
//! jobs, each action recorded with who did it and why.
//!
//! - [`id`]: a dead letter's URL-safe id (channel + broker message id);
//! - [`letter`]: a letter as indexed, as shown, and its original message;
//! - [`index`]: the service's own subscription on every `<channel>-dlq`,
//!   which records each letter in the store (`dead_letters`), so the API
//!   filters and pages them, and a handled one leaves the listing even on
//!   Pulsar, whose topics cannot delete one entry;
//! - [`jobs`]: bulk retry and bulk redrive: chosen by filter, bounded,
//!   idempotent by their body; [`runner`] works on them in the background,
//!   paced, one instance per job (a lease), resumed after a restart.
//!
//! A redrive is recorded in the store before anything is published, in the
//! same transaction as its audit entry, so a second call finds it handled
//! and never sends a second copy. Should the process die between that
//! record and the publish, a runner claims it (one of every instance's)
//! and publishes it later (at least once: the message keeps its
//! `event_id`, so the dedup of a saga's start holds).

pub mod id;
pub mod index;
pub mod jobs;
pub mod letter;
pub mod runner;

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::orchestrator::Orchestrator;
use crate::store::operator::{
    AuditEntry, DeadLetterRecord, LetterAction, LetterState, StoredDeadLetter, Taken,
};
use crate::store::StoreError;
use crate::transport::{dead_letter_channel, TransportError};

/// How hard bulk jobs may push (`JOB_RATE_PER_SEC`, `JOB_MAX_ITEMS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Items per second, per job: paced so participants are not swamped.
    pub rate_per_sec: u32,
    /// The most items one job may take on.
    pub max_items: u32,
}

/// Why an action on a dead letter was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no dead letter {0}")]
    NotFound(String),
    #[error("dead letter {id} is already {}", .state.as_str())]
    Handled { id: String, state: LetterState },
    #[error(transparent)]
    Unreadable(#[from] letter::Unreadable),
    #[error(transparent)]
    ForeignSource(#[from] letter::ForeignSource),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker did not take the message back: {0}")]
    Transport(#[from] TransportError),
    /// The redrive's task ended without an answer (the runtime shutting
    /// down); a redrive it left recorded is finished by the runner.
    #[error("the redrive was interrupted; it is finished later if it was recorded")]
    Interrupted,
}

/// The longest a redrive's publish may take before it counts as failed
/// (the letter goes back to pending). The runner resends a redrive left
/// unsettled only well after this, so it never races a live one.
pub const REDRIVE_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An operator's reason as a saga's history keeps it: with who gave it
/// (the admin token's name) and, for a bulk job, which job.
pub fn attributed(reason: &str, actor: &str, job: Option<(&str, Uuid)>) -> String {
    match job {
        None => format!("{reason} (by {actor})"),
        Some((name, id)) => format!("{reason} (by {actor}, job {name} {id})"),
    }
}

/// Operators' actions, over the orchestrator's store and transport.
#[derive(Clone)]
pub struct Operator {
    orchestrator: Orchestrator,
    limits: JobLimits,
    /// Wakes the runner when a job is created, so it starts at once.
    wake: Arc<Notify>,
}

impl Operator {
    /// Actions through `orchestrator`, jobs bounded by `limits`.
    pub fn new(orchestrator: Orchestrator, limits: JobLimits) -> Self {
        Self {
            orchestrator,
            limits,
            wake: Arc::default(),
        }
    }

    /// The orchestrator acted through.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// The bounds of bulk jobs.
    pub fn limits(&self) -> JobLimits {
        self.limits
    }

    /// The dead-letter channels of every channel this instance consumes.
    pub fn dead_letter_channels(&self) -> Vec<String> {
        let config = self.orchestrator.config();
        config
            .consumed_channels()
            .iter()
            .map(|c| dead_letter_channel(c))
            .collect()
    }

    /// Starts the dead-letter index and the job runner; they stop with the
    /// orchestrator.
    pub fn spawn_background(&self) {
        for channel in self.dead_letter_channels() {
            self.orchestrator
                .spawn_loop(index::run(self.orchestrator.clone(), channel));
        }
        self.orchestrator.spawn_loop(runner::run(self.clone()));
    }

    /// Sends dead letter `id` back to its source channel, once: a second
    /// call finds it handled.
    pub async fn redrive(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        job_id: Option<Uuid>,
    ) -> Result<StoredDeadLetter, ActionError> {
        // In a task of its own, so that a caller dropped half-way (a client
        // that disconnects, a request cut by shutdown) cannot leave it sent
        // but unsettled, which the runner would later send again.
        let (op, id, actor, reason) = (
            self.clone(),
            id.to_string(),
            actor.to_string(),
            reason.to_string(),
        );
        tokio::spawn(async move { op.redrive_to_the_end(&id, &actor, &reason, job_id).await })
            .await
            .unwrap_or_else(|e| match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(ActionError::Interrupted),
            })
    }

    /// Take, send, settle: [`Self::redrive`]'s work, not to be cancelled.
    async fn redrive_to_the_end(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        job_id: Option<Uuid>,
    ) -> Result<StoredDeadLetter, ActionError> {
        // Refused before it is taken, so a refused letter stays listed.
        if let Some(letter) = self.orchestrator.store().dead_letter(id).await? {
            self.target(&letter.record)?;
        }
        let taken = self
            .take(id, LetterState::Redriving, actor, reason, job_id)
            .await?;
        self.send_back(&taken).await?;
        Ok(taken)
    }

    /// Drops dead letter `id` from the listing, with a reason.
    pub async fn discard(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
    ) -> Result<StoredDeadLetter, ActionError> {
        let taken = self
            .take(id, LetterState::Discarded, actor, reason, None)
            .await?;
        self.forget(&taken).await;
        Ok(taken)
    }

    /// Where `record` may be redriven to (see [`letter::redrive_target`]).
    fn target<'a>(&self, record: &'a DeadLetterRecord) -> Result<&'a str, letter::ForeignSource> {
        let consumed = self.orchestrator.config().consumed_channels();
        letter::redrive_target(record, &consumed)
    }

    /// Drops a handled letter from its channel where the broker can. The
    /// store already decided it is handled, so a failure is only logged:
    /// the entry stays on the broker, out of the listing.
    async fn forget(&self, letter: &StoredDeadLetter) {
        let r = &letter.record;
        if let Err(e) = self
            .orchestrator
            .transport()
            .forget(&r.channel, &r.message_id)
            .await
        {
            tracing::warn!(id = %r.id, error = %e, "a handled dead letter stays on the broker");
        }
    }

    async fn take(
        &self,
        id: &str,
        to: LetterState,
        actor: &str,
        reason: &str,
        job_id: Option<Uuid>,
    ) -> Result<StoredDeadLetter, ActionError> {
        let action = match to {
            LetterState::Discarded => "dead_letter.discard",
            _ => "dead_letter.redrive",
        };
        let audit = AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: id.to_string(),
            reason: reason.to_string(),
            detail: job_id.map(|j| serde_json::json!({ "job_id": j })),
        };
        let request = LetterAction {
            id: id.to_string(),
            to,
            job_id,
            audit,
        };
        match self.orchestrator.store().take_dead_letter(&request).await? {
            Taken::Taken(letter) => Ok(*letter),
            Taken::Missing => Err(ActionError::NotFound(id.to_string())),
            Taken::Handled(state) => Err(ActionError::Handled {
                id: id.to_string(),
                state,
            }),
        }
    }

    /// Publishes a taken letter's original on its source channel and
    /// settles it: redriven, or back to pending when the broker refused.
    async fn send_back(&self, taken: &StoredDeadLetter) -> Result<(), ActionError> {
        let store = self.orchestrator.store();
        let id = &taken.record.id;
        // Checked again here: the runner finishing a cut-short redrive
        // comes this way without `redrive`'s check.
        let ready = self.target(&taken.record).map_err(ActionError::from);
        let ready = ready.and_then(|to| Ok((to, letter::original(&taken.record.raw)?)));
        let (to, message) = match ready {
            Ok(ready) => ready,
            Err(e) => {
                store.settle_redrive(id, Some(&failure(taken, &e))).await?;
                return Err(e);
            }
        };
        let send = self.orchestrator.transport().send(to, vec![message]);
        let sent = match tokio::time::timeout(REDRIVE_SEND_TIMEOUT, send).await {
            Ok(sent) => sent.map_err(ActionError::from),
            Err(_) => Err(TransportError::Timeout("a redrive's publish").into()),
        };
        match sent {
            Ok(()) => store.settle_redrive(id, None).await?,
            Err(e) => {
                store.settle_redrive(id, Some(&failure(taken, &e))).await?;
                return Err(e);
            }
        }
        self.forget(taken).await;
        Ok(())
    }
}

/// The audit entry of a redrive that was taken but not sent: the letter
/// is listed again, and the record says the attempt failed and why, so it
/// never reads as redriven.
fn failure(taken: &StoredDeadLetter, error: &ActionError) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Utc::now(),
        actor: taken.acted_by.clone().unwrap_or_default(),
        action: "dead_letter.redrive_failed".to_string(),
        target: taken.record.id.clone(),
        reason: taken.action_reason.clone().unwrap_or_default(),
        detail: Some(serde_json::json!({ "error": error.to_string() })),
    }
}
