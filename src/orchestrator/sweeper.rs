//! Recovery: sagas whose next call is due and whose lease lapsed — their
//! driver crashed, their instance stopped, they were recorded while this
//! instance was at capacity — are leased here and driven again.

use chrono::Utc;

use super::{pause, Orchestrator, LEASE_GRACE};
use crate::saga::NextAction;
use crate::telemetry;

/// Sagas claimed per sweep at most.
const BATCH: usize = 256;

pub(super) async fn run(orch: Orchestrator) {
    let inner = &orch.inner;
    let lease = inner.config.step_timeout + LEASE_GRACE;
    while pause(&inner.cancel, inner.config.sweep_interval).await {
        // Waits that should be over give their slots back first, so the
        // sagas among them that are due can be claimed below.
        orch.expire_awaiting(Utc::now());
        let mut permits: Vec<_> = std::iter::from_fn(|| orch.try_permit())
            .take(BATCH)
            .collect();
        if permits.is_empty() {
            continue;
        }
        let limit = u32::try_from(permits.len()).unwrap_or(u32::MAX);
        let now = Utc::now();
        let sagas = match inner
            .store
            .claim_due(&inner.config.instance_id, now, lease, limit)
            .await
        {
            Ok(sagas) => sagas,
            Err(e) => {
                tracing::warn!(error = %e, "recovery sweep failed");
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "sweeper").increment(1);
                continue;
            }
        };
        if !sagas.is_empty() {
            tracing::info!(count = sagas.len(), "recovering due sagas");
        }
        for saga in sagas {
            let Some(permit) = permits.pop() else { break };
            orch.release_awaiting(saga.saga_id);
            let next = NextAction::Call {
                step: saga.step,
                at: saga.next_attempt_at.unwrap_or(now),
            };
            orch.spawn_driver(saga, next, permit);
        }
    }
}
