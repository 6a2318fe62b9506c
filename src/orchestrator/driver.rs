//! Drives one saga: call the participant, store the outcome, repeat until
//! terminal or until the saga is no longer ours. In broker mode a step's
//! command goes out with its transition and the driver stops there: the
//! reply is applied by the `saga-replies` consumer, a missed reply
//! deadline by the sweeper.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::{loop_backoff, pause, Orchestrator};
use crate::envelope::MAX_ID_CHARS;
use crate::participants::text::storable;
use crate::saga::{self, Input, NextAction, Saga, SagaState};
use crate::telemetry;
use crate::transport::TransportError;

/// Store errors tolerated on one commit before the saga is left to recovery.
const COMMIT_TRIES: u32 = 4;
/// How long the broker may take to answer before it counts as unreachable.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Waits longer than this free the saga's slot and go to the sweeper.
const HAND_OFF_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `saga` from `next` on, under a lease that ends at `lease_end`;
/// holds `permit` (one in-flight slot) throughout.
pub(super) async fn drive(
    orch: Orchestrator,
    saga: Saga,
    next: NextAction,
    lease_end: DateTime<Utc>,
    permit: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!(
        "saga",
        saga_id = %saga.saga_id,
        correlation_id = %saga.correlation_id,
        partner_id = %saga.partner_id,
    );
    // One trace from the event through every step, across restarts.
    telemetry::continue_trace(&span, saga.traceparent.as_deref());
    metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
    let in_flight = orch.stats().in_flight();
    let saga_id = saga.saga_id;
    let driving = orch.driving(saga_id);
    let awaiting = run(&orch, saga, next, lease_end).instrument(span).await;
    drop(driving);
    drop(in_flight);
    metrics::gauge!(telemetry::IN_FLIGHT).decrement(1.0);
    match awaiting {
        // A saga waiting for its reply keeps its slot: otherwise the consumer
        // would take new events without bound while replies are pending.
        Some(until) => orch.hold_while_awaiting(saga_id, permit, until),
        None => drop(permit),
    }
}

/// Drives until terminal, handed off, or (broker mode) waiting for a
/// reply: then `Some(reply deadline)`.
async fn run(
    orch: &Orchestrator,
    mut saga: Saga,
    mut next: NextAction,
    mut lease_end: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    while let NextAction::Call { step, at } = next {
        if orch.inner.cancel.is_cancelled() {
            // Shutting down: start no new call; the saga is durable and its
            // lease is handed back or lapses.
            return None;
        }
        if !wait_until(orch, &saga, at).await {
            return None;
        }
        if !fits_in_lease(Utc::now(), orch.inner.config.step_timeout, lease_end) {
            // Late (a slow store, a stalled process): the call could outlast
            // the lease, and another instance may hold the saga by now.
            // Renewed only if nobody took it; else the call must not be
            // made beside the new owner's.
            lease_end = renew(orch, &saga, lease_end).await?;
        }
        let input = next_input(orch, &saga, step).await;
        let decision = match saga::decide(&saga, &input, &orch.inner.config.retry, Utc::now()) {
            Ok(decision) => decision,
            Err(stale) => {
                tracing::warn!(error = %stale, "outcome no longer applies; leaving the saga");
                return None;
            }
        };
        // A long wait (a participant's Retry-After) is not worth a slot:
        // store the saga unleased and let the sweeper pick it up when due.
        let hand_off = matches!(decision.next, NextAction::Call { at, .. }
            if (at - Utc::now()).to_std().unwrap_or_default() > HAND_OFF_AFTER);
        let after = commit(orch, &saga, &input, decision, !hand_off).await?;
        if hand_off {
            tracing::info!(next_attempt_at = ?after.next_attempt_at, "long wait; left to the sweeper");
            return None;
        }
        next = after_next(&after);
        if let NextAction::Call { at, .. } = next {
            // The commit leased the next call as Orchestrator::lease_until says.
            lease_end = orch.lease_until(at).until;
        }
        saga = after;
    }
    match next {
        NextAction::AwaitReply { until, .. } => Some(until),
        _ => None,
    }
}

/// Sleeps until the call planned for `at` is due. `false`: it must not be
/// made (shutting down, or the saga moved or cannot be re-read meanwhile).
async fn wait_until(orch: &Orchestrator, saga: &Saga, at: DateTime<Utc>) -> bool {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    if wait.is_zero() {
        return true;
    }
    if !pause(&orch.inner.cancel, wait).await {
        return false;
    }
    // While we slept an operator (or another instance whose lease
    // check saw ours lapse) may have moved the saga: then the call
    // planned before the pause must not be made.
    match orch.inner.store.get(saga.saga_id).await {
        Ok(Some(current)) if current.version == saga.version => true,
        Ok(_) => {
            tracing::info!("saga moved on while waiting; leaving it");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-read the saga; leaving it to recovery");
            false
        }
    }
}

/// What happens at `step` now that it is due: the saga begins, its
/// deadline has passed, its reply is overdue, its command goes out, or the
/// participant is called (over HTTP) and answers.
async fn next_input(orch: &Orchestrator, saga: &Saga, step: saga::Step) -> Input {
    let now = Utc::now();
    if saga.state == SagaState::Started {
        Input::Begin
    } else if !saga.state.is_terminal() && now >= saga.deadline_at {
        // Forward: compensate. Compensating: park as failed.
        Input::DeadlinePassed
    } else if saga.awaiting_reply {
        reply_overdue(orch, step, now).await
    } else if orch.inner.config.over_broker(step) {
        // The command goes out with this transition, through the outbox.
        Input::CommandSent {
            step,
            reply_by: saga::later(now, orch.inner.config.step_timeout),
        }
    } else {
        call(orch, saga, step).await
    }
}

/// Only the sweeper hands us an awaiting saga: its reply deadline passed.
/// With the broker down, no command went out and no reply could come: that
/// is not the participant's failure, so the saga waits longer instead.
async fn reply_overdue(orch: &Orchestrator, step: saga::Step, now: DateTime<Utc>) -> Input {
    let ping = tokio::time::timeout(PING_TIMEOUT, orch.inner.transport.ping()).await;
    match ping.unwrap_or(Err(TransportError::Timeout("broker ping"))) {
        Ok(()) => Input::ReplyTimedOut { step },
        Err(e) => {
            tracing::warn!(error = %e, "reply deadline passed with the broker unreachable; waiting longer");
            Input::BrokerUnreachable {
                step,
                until: saga::later(now, orch.inner.config.step_timeout),
            }
        }
    }
}

/// Stores a decision, retrying store errors a few times. `None`: the saga
/// is not ours to drive any more (moved elsewhere, or left to recovery).
///
/// Two outcomes are never dropped: a step the participant did while the
/// saga moved on is applied to the saga as it is now (an alliance created
/// late is recorded on it), and an outcome the store refuses as bad data
/// ends the attempt as failed instead of being lost and called again
/// forever by recovery.
async fn commit(
    orch: &Orchestrator,
    saga: &Saga,
    input: &Input,
    decision: saga::Decision,
    keep_lease: bool,
) -> Option<Saga> {
    match store(orch, saga, &decision, keep_lease).await {
        Stored::Done(after) => {
            log_transition(&decision, &after);
            Some(after)
        }
        Stored::Moved => {
            if matches!(input, Input::StepSucceeded { .. }) {
                apply_late(orch, saga, input).await;
            } else {
                tracing::info!("saga moved on elsewhere; leaving it");
            }
            None
        }
        Stored::Refused(e) => {
            let replacement = refused_outcome(input, &e);
            let fallback = replacement.and_then(|input| {
                saga::decide(saga, &input, &orch.inner.config.retry, Utc::now()).ok()
            })?;
            tracing::warn!(error = %e, "the store refused this outcome as data; storing it in a form it takes");
            match store(orch, saga, &fallback, keep_lease).await {
                Stored::Done(after) => {
                    log_transition(&fallback, &after);
                    Some(after)
                }
                _ => None,
            }
        }
        Stored::Unavailable => None,
    }
}

/// What one attempt to store a decision came to.
enum Stored {
    Done(Saga),
    /// The saga's version moved, or another instance holds its lease.
    Moved,
    /// The store refused the data itself (it would fail the same way again).
    Refused(crate::store::StoreError),
    /// The store kept failing; recovery redoes the step under the same key.
    Unavailable,
}

async fn store(
    orch: &Orchestrator,
    saga: &Saga,
    decision: &saga::Decision,
    keep_lease: bool,
) -> Stored {
    let mut tries = 0;
    loop {
        match orch
            .commit(saga, std::slice::from_ref(decision), keep_lease, true)
            .await
        {
            Ok(Some(committed)) => return Stored::Done(committed),
            Ok(None) => return Stored::Moved,
            Err(e) if e.is_data_error() => return Stored::Refused(e),
            Err(e) if tries + 1 < COMMIT_TRIES => {
                tries += 1;
                tracing::warn!(error = %e, tries, "could not store transition; retrying");
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "driver").increment(1);
                if !pause(&orch.inner.cancel, loop_backoff(tries)).await {
                    return Stored::Unavailable;
                }
            }
            Err(e) => {
                // The step will be redone by recovery under the same
                // idempotency key, so the participant acts once.
                tracing::error!(error = %e, "could not store transition; leaving the saga to recovery");
                return Stored::Unavailable;
            }
        }
    }
}

/// A participant's success that lost the race with another transition:
/// applied to the saga as stored now (an operator's forced compensation
/// makes it an `alliance_created_late` entry for a person to undo).
async fn apply_late(orch: &Orchestrator, saga: &Saga, input: &Input) {
    match orch.operate(saga.saga_id, input.clone()).await {
        Ok(now) => tracing::warn!(state = %now.state, alliance_id = ?now.alliance_id,
            "the step succeeded after the saga moved on; recorded on the saga"),
        Err(e) => {
            tracing::info!(error = %e, "saga moved on elsewhere; the late success changes nothing")
        }
    }
}

/// What replaces a participant's outcome that the store refused as data;
/// `None` for anything else (left to recovery).
///
/// A failure becomes a failed attempt that says why, so the retries run
/// out instead of recovery calling again for ever. A success stays a
/// success — the participant did the step, and turning it into a failure
/// would compensate (delete) a partner whose alliance exists — with its
/// `alliance_id` made storable.
fn refused_outcome(input: &Input, error: &crate::store::StoreError) -> Option<Input> {
    match input {
        Input::StepSucceeded {
            step,
            alliance_id,
            detail,
        } => Some(Input::StepSucceeded {
            step: *step,
            // One character short: a cut id ends in an ellipsis.
            alliance_id: alliance_id
                .as_deref()
                .map(|id| storable(id, MAX_ID_CHARS - 1)),
            detail: detail.as_deref().map(|d| storable(d, 300)),
        }),
        Input::StepFailed { step, .. } | Input::StepRejected { step, .. } => {
            Some(Input::StepFailed {
                step: *step,
                error: storable(&format!("the store refused the outcome: {error}"), 300),
                retry_after: None,
            })
        }
        _ => None,
    }
}

fn log_transition(decision: &saga::Decision, after: &Saga) {
    tracing::info!(
        from = decision.from.as_str(),
        to = decision.to.as_str(),
        reason = decision.reason.as_str(),
        attempts = after.attempts,
        "saga transition"
    );
}

/// What a stored saga does next, read off its stored fields (a fallback
/// decision may differ from the one first made).
fn after_next(after: &Saga) -> NextAction {
    match after.next_attempt_at {
        Some(until) if after.awaiting_reply => NextAction::AwaitReply {
            step: after.step,
            until,
        },
        Some(at) if !after.state.is_terminal() => NextAction::Call {
            step: after.step,
            at,
        },
        _ => NextAction::Done,
    }
}

/// A new end for this driver's lease on `saga`, if it still holds it (the
/// saga unmoved, no other owner); `None`: leave the saga.
async fn renew(
    orch: &Orchestrator,
    saga: &Saga,
    lease_end: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let inner = &orch.inner;
    let until = orch.lease_until(Utc::now()).until;
    let renewed = inner
        .store
        .renew_lease(saga.saga_id, saga.version, &inner.config.instance_id, until)
        .await;
    match renewed {
        Ok(true) => {
            tracing::info!(%lease_end, lease_until = %until, "late for this saga's lease; renewed it");
            Some(until)
        }
        Ok(false) => {
            tracing::warn!(%lease_end, "too late for this saga's lease, taken by another; leaving it");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, %lease_end, "too late for this saga's lease and cannot renew it; leaving it to recovery");
            None
        }
    }
}

/// Whether a call made at `now`, lasting at most `step_timeout`, ends
/// before the lease does.
fn fits_in_lease(
    now: DateTime<Utc>,
    step_timeout: std::time::Duration,
    lease_end: DateTime<Utc>,
) -> bool {
    saga::later(now, step_timeout) <= lease_end
}

async fn call(orch: &Orchestrator, saga: &Saga, step: saga::Step) -> Input {
    let started = Instant::now();
    let outcome = orch.inner.participants.call(saga, step).await;
    let labels = [("step", step.as_str()), ("outcome", outcome.label())];
    metrics::counter!(telemetry::PARTICIPANT_CALLS, &labels).increment(1);
    metrics::histogram!(telemetry::PARTICIPANT_SECONDS, &labels)
        .record(started.elapsed().as_secs_f64());
    outcome.into_input(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Step;
    use crate::store::StoreError;

    #[test]
    fn a_call_is_made_only_while_it_can_end_inside_the_lease() {
        let now = Utc::now();
        let timeout = std::time::Duration::from_secs(10);
        let planned = now + chrono::Duration::seconds(15);
        assert!(
            fits_in_lease(now, timeout, planned),
            "on time, 5 s to spare"
        );
        assert!(fits_in_lease(
            planned - chrono::Duration::seconds(10),
            timeout,
            planned
        ));
        assert!(
            !fits_in_lease(planned - chrono::Duration::seconds(9), timeout, planned),
            "woke too late: the call could outlive the lease"
        );
    }

    fn refused() -> StoreError {
        StoreError::Unreachable("invalid byte sequence 0x00".into())
    }

    #[test]
    fn a_refused_success_stays_a_success_with_a_storable_id() {
        let input = Input::StepSucceeded {
            step: Step::CreateAlliance,
            alliance_id: Some(format!("a\u{0}b{}", "x".repeat(400))),
            detail: None,
        };
        let Some(Input::StepSucceeded { alliance_id, .. }) = refused_outcome(&input, &refused())
        else {
            panic!("a success must stay a success");
        };
        let id = alliance_id.unwrap_or_default();
        assert!(id.starts_with("a\\u0000b"), "{id}");
        assert!(!id.contains('\0'));
        assert!(id.chars().count() <= MAX_ID_CHARS, "{id}");
    }

    #[test]
    fn a_refused_failure_is_a_failed_attempt_and_nothing_else_is_replaced() {
        let input = Input::StepRejected {
            step: Step::DeletePartner,
            error: "x\u{0}".into(),
        };
        let Some(Input::StepFailed { step, error, .. }) = refused_outcome(&input, &refused())
        else {
            panic!("a refused failure is a failed attempt");
        };
        assert_eq!(step, Step::DeletePartner);
        assert!(
            error.starts_with("the store refused the outcome"),
            "{error}"
        );
        for other in [Input::Begin, Input::DeadlinePassed] {
            assert!(refused_outcome(&other, &refused()).is_none());
        }
    }
}
