//! Works on bulk jobs in the background of a serving instance: one job at
//! a time, leased so that no two instances run the same one, paced at
//! `JOB_RATE_PER_SEC`, and resumed (by whichever instance claims it once
//! its lease lapses) after a crash or restart. Every item is settled once,
//! and doing one again is harmless anyway: a saga no longer `failed`
//! refuses a retry, a handled dead letter a redrive.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::{ActionError, Operator};
use crate::orchestrator::OperateError;
use crate::saga::Input;
use crate::store::operator::{ItemOutcome, Job, JobKind, JobState, LetterState};
use crate::store::StoreError;

/// How long a claim on a job lasts without renewal (renewed every item,
/// and every third of it while one is slow):
/// how long a job of a crashed instance waits before another continues it.
const LEASE: Duration = Duration::from_secs(10);
/// How often an idle runner looks for work (new jobs also wake it).
const IDLE: Duration = Duration::from_secs(1);
/// A redrive recorded (or claimed) this long ago and never settled was cut
/// short. Comfortably longer than a redrive's publish may take
/// (`REDRIVE_SEND_TIMEOUT`), so a live one is never resent under it.
const UNSETTLED_AFTER: Duration = Duration::from_secs(4 * super::REDRIVE_SEND_TIMEOUT.as_secs());
/// Items fetched at once.
const ITEMS: u32 = 50;

/// Runs jobs until shutdown (which drops it; the lease then lapses).
pub async fn run(op: Operator) {
    loop {
        if let Err(e) = round(&op).await {
            tracing::warn!(error = %e, "job runner: store error; retrying");
        }
        tokio::select! {
            () = op.wake.notified() => {}
            () = tokio::time::sleep(IDLE) => {}
        }
    }
}

fn later(d: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn ago(d: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

async fn round(op: &Operator) -> Result<(), StoreError> {
    finish_unsettled_redrives(op).await?;
    let owner = op.orchestrator.config().instance_id.clone();
    while let Some(job) = op
        .orchestrator
        .store()
        .claim_job(&owner, Utc::now(), later(LEASE))
        .await?
    {
        tracing::info!(job_id = %job.job_id, name = %job.name, kind = job.kind.as_str(), "running job");
        work(op, &job, &owner).await?;
    }
    Ok(())
}

/// Redrives recorded but never published (a crash in between): claimed,
/// so that of every instance's runner one resends each, and sent now.
async fn finish_unsettled_redrives(op: &Operator) -> Result<(), StoreError> {
    let store = op.orchestrator.store();
    for letter in store
        .claim_unsettled_redrives(ago(UNSETTLED_AFTER), Utc::now(), ITEMS)
        .await?
    {
        if let Err(e) = op.send_back(&letter).await {
            tracing::warn!(id = %letter.record.id, error = %e, "could not finish an interrupted redrive");
        }
    }
    Ok(())
}

/// Works through `job`'s open items until none is left, it is aborted, or
/// its lease is lost.
async fn work(op: &Operator, job: &Job, owner: &str) -> Result<(), StoreError> {
    let store = op.orchestrator.store();
    let pause = Duration::from_secs(1) / op.limits.rate_per_sec.max(1);
    loop {
        let items = store.open_items(job.job_id, ITEMS).await?;
        if items.is_empty() {
            return finish(op, job.job_id, owner).await;
        }
        for (seq, target) in items {
            if !store.renew_job(job.job_id, owner, later(LEASE)).await? {
                tracing::info!(job_id = %job.job_id, "job stopped (aborted or taken over)");
                return Ok(());
            }
            match leased(op, job.job_id, owner, item(op, job, &target)).await {
                Some((outcome, detail)) => {
                    store
                        .settle_item(job.job_id, seq, outcome, detail.as_deref(), Utc::now())
                        .await?;
                    if outcome == ItemOutcome::Done {
                        tokio::time::sleep(pause).await;
                    }
                }
                // The store or broker is down: the same item again later.
                None => {
                    tokio::time::sleep(IDLE).await;
                    break;
                }
            }
        }
    }
}

/// Runs `work` (one item) while renewing the job's lease every third of
/// `LEASE`: an item may take longer than the lease (a redrive's publish up
/// to `REDRIVE_SEND_TIMEOUT`), and another instance must not take the job
/// over meanwhile. Whether the job was aborted is seen before the next item.
async fn leased<T>(op: &Operator, job_id: Uuid, owner: &str, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut renew = tokio::time::interval(LEASE / 3);
    renew.tick().await; // The first tick is now; the lease was just renewed.
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = renew.tick() => {
                let renewed = op.orchestrator.store().renew_job(job_id, owner, later(LEASE)).await;
                if let Err(e) = renewed {
                    tracing::warn!(%job_id, error = %e, "could not renew a job's lease");
                }
            }
        }
    }
}

async fn finish(op: &Operator, job_id: Uuid, owner: &str) -> Result<(), StoreError> {
    let store = op.orchestrator.store();
    let state = match store.job(job_id).await? {
        Some(j) if j.matched > 0 && j.errors == j.matched => JobState::Failed,
        _ => JobState::Done,
    };
    store.finish_job(job_id, owner, state, Utc::now()).await?;
    tracing::info!(%job_id, state = state.as_str(), "job finished");
    Ok(())
}

/// One item's outcome; `None` when it could not be tried now.
async fn item(op: &Operator, job: &Job, target: &str) -> Option<(ItemOutcome, Option<String>)> {
    match job.kind {
        JobKind::SagaRetry => retry_saga(op, job, target).await,
        JobKind::DeadLetterRedrive => {
            match op
                .redrive(target, &job.actor, &job.reason, Some(job.job_id))
                .await
            {
                Ok(_) => Some((ItemOutcome::Done, None)),
                // Someone else's redrive is under way: it may yet fail and
                // put the letter back, so this item waits to see.
                Err(ActionError::Handled {
                    state: LetterState::Redriving,
                    ..
                }) => None,
                Err(e @ (ActionError::NotFound(_) | ActionError::Handled { .. })) => {
                    Some((ItemOutcome::Skipped, Some(e.to_string())))
                }
                Err(ActionError::Transport(e)) if !e.blames_the_message() => None,
                Err(ActionError::Store(_) | ActionError::Interrupted) => None,
                Err(e) => Some((ItemOutcome::Error, Some(e.to_string()))),
            }
        }
    }
}

async fn retry_saga(
    op: &Operator,
    job: &Job,
    target: &str,
) -> Option<(ItemOutcome, Option<String>)> {
    let Ok(saga_id) = Uuid::parse_str(target) else {
        return Some((ItemOutcome::Error, Some(format!("not a saga id: {target}"))));
    };
    let reason = super::attributed(&job.reason, &job.actor, Some((&job.name, job.job_id)));
    match op
        .orchestrator
        .operate(saga_id, Input::RetryFailed { reason })
        .await
    {
        Ok(_) => Some((ItemOutcome::Done, None)),
        Err(e @ (OperateError::NotFound(_) | OperateError::NotAllowed(_))) => {
            Some((ItemOutcome::Skipped, Some(e.to_string())))
        }
        Err(OperateError::Busy(_) | OperateError::Store(_)) => None,
    }
}
