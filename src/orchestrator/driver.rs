//! Drives one saga: call the participant, store the outcome, repeat until
//! terminal or until the saga is no longer ours.

use std::time::Instant;

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::{loop_backoff, pause, Orchestrator};
use crate::saga::{self, Input, NextAction, Saga, SagaState};
use crate::telemetry;

/// Store errors tolerated on one commit before the saga is left to recovery.
const COMMIT_TRIES: u32 = 4;

/// Runs `saga` from `next` on; holds `permit` (one in-flight slot) throughout.
pub(super) async fn drive(
    orch: Orchestrator,
    saga: Saga,
    next: NextAction,
    permit: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!(
        "saga",
        saga_id = %saga.saga_id,
        correlation_id = %saga.correlation_id,
        partner_id = %saga.partner_id,
    );
    metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
    run(&orch, saga, next).instrument(span).await;
    metrics::gauge!(telemetry::IN_FLIGHT).decrement(1.0);
    drop(permit);
}

async fn run(orch: &Orchestrator, mut saga: Saga, mut next: NextAction) {
    let cancel = &orch.inner.cancel;
    while let NextAction::Call { step, at } = next {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() && !pause(cancel, wait).await {
            // Shutting down: the saga is durable and its lease will lapse.
            return;
        }
        let input = if saga.state == SagaState::Started {
            Input::Begin
        } else if saga.state.is_forward() && Utc::now() >= saga.deadline_at {
            Input::DeadlinePassed
        } else {
            call(orch, &saga, step).await
        };
        let decision = match saga::decide(&saga, &input, &orch.inner.config.retry, Utc::now()) {
            Ok(decision) => decision,
            Err(stale) => {
                tracing::warn!(error = %stale, "outcome no longer applies; leaving the saga");
                return;
            }
        };
        let mut tries = 0;
        let committed = loop {
            match orch.commit(&saga, decision.clone(), true).await {
                Ok(result) => break result,
                Err(e) if tries + 1 < COMMIT_TRIES => {
                    tries += 1;
                    tracing::warn!(error = %e, tries, "could not store transition; retrying");
                    metrics::counter!(telemetry::LOOP_ERRORS, "component" => "driver").increment(1);
                    if !pause(cancel, loop_backoff(tries)).await {
                        return;
                    }
                }
                Err(e) => {
                    // The step will be redone by recovery under the same
                    // idempotency key, so the participant acts once.
                    tracing::error!(error = %e, "could not store transition; leaving the saga to recovery");
                    return;
                }
            }
        };
        let Some((after, decision)) = committed else {
            tracing::info!("saga moved on elsewhere; leaving it");
            return;
        };
        tracing::info!(
            from = decision.from.as_str(),
            to = decision.to.as_str(),
            reason = decision.reason.as_str(),
            attempts = after.attempts,
            "saga transition"
        );
        saga = after;
        next = decision.next;
    }
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
