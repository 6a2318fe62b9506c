//! Recovery: sagas whose next call is due and whose lease lapsed — their
//! driver crashed, their instance stopped, they were recorded while this
//! instance was at capacity — are leased here and driven again.

use chrono::Utc;

use super::{pause, Orchestrator, LEASE_GRACE};
use crate::saga::NextAction;
use crate::telemetry;

/// Sagas claimed per sweep at most.
const BATCH: usize = 256;

/// How often the clock is compared with the database's (see `clock`).
const CLOCK_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) async fn run(orch: Orchestrator) {
    let inner = &orch.inner;
    let lease = inner.config.step_timeout + LEASE_GRACE;
    let mut next_clock_check = tokio::time::Instant::now() + CLOCK_CHECK;
    while pause(&inner.cancel, inner.config.sweep_interval).await {
        if tokio::time::Instant::now() >= next_clock_check {
            next_clock_check += CLOCK_CHECK;
            check_clock(&orch).await;
        }
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
            inner
                .leased_any
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for saga in sagas {
            if orch.is_driving(saga.saga_id) {
                // Its driver here is still on it (a slow commit let the
                // lease lapse): one driver per saga.
                continue;
            }
            let Some(permit) = permits.pop() else { break };
            orch.release_awaiting(saga.saga_id);
            let next = NextAction::Call {
                step: saga.step,
                at: saga.next_attempt_at.unwrap_or(now),
            };
            orch.spawn_driver(saga, next, crate::saga::later(now, lease), permit);
        }
    }
}

/// Logs (and exports) a clock that drifted from the database's since start-up.
async fn check_clock(orch: &Orchestrator) {
    match super::clock::skew(orch.inner.store.as_ref()).await {
        Ok(skew) => {
            metrics::gauge!(telemetry::CLOCK_SKEW).set(skew.num_milliseconds() as f64 / 1000.0);
            if !super::clock::acceptable(skew) {
                tracing::error!(skew_ms = skew.num_milliseconds(),
                    "this machine's clock drifted from the database's past what leases allow; fix the time sync (NTP)");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not read the database's clock"),
    }
}
