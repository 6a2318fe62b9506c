//! Store upkeep for stores whose cached plans follow their statistics
//! (PostgreSQL): asks the store, every so often, to refresh the planner's
//! statistics of a table that outgrew them (see
//! [`SagaStore::refresh_statistics`](crate::store::SagaStore::refresh_statistics)).
//! Off the hot path: a round runs beside the writers; a failed one is
//! logged once per outage and tried again on the next tick.

use std::time::Duration;

use super::{pause, Orchestrator};
use crate::store::{Reanalyzed, StoreError};
use crate::telemetry;

/// Bound on one round, beyond the store's own on its statement (20 s): a
/// database that does not answer is asked again on a later tick.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait between checks while they fail.
const MAX_WAIT: Duration = Duration::from_secs(300);

pub(super) async fn run(orch: Orchestrator) {
    let store = &orch.inner.store;
    let Some(every) = store.statistics_interval() else {
        return;
    };
    let mut failures = 0;
    while pause(&orch.inner.cancel, after_failures(every, failures)).await {
        let round = tokio::time::timeout(ROUND_TIMEOUT, store.refresh_statistics())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unreachable(format!(
                    "no answer to the statistics check within {ROUND_TIMEOUT:?}"
                )))
            });
        match round {
            Ok(None) => {}
            Ok(Some(done)) if !done.took => {
                warn_refused(&done);
                return;
            }
            Ok(Some(done)) => {
                tracing::info!(
                    pages = done.pages,
                    planned_pages = done.planned_pages,
                    "analysed sagas: it had outgrown the planner's statistics"
                );
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "could not check the sagas table's statistics; trying again, less often while it fails");
                }
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "statistics").increment(1);
                continue;
            }
        }
        if failures > 0 {
            tracing::info!("statistics check recovered");
        }
        failures = 0;
    }
}

/// The wait before the next check: `every`, doubled for each failure in a
/// row up to [`MAX_WAIT`], so that an `ANALYZE` that keeps running out of
/// time is not started again every second.
fn after_failures(every: Duration, failures: u32) -> Duration {
    every
        .saturating_mul(1 << failures.min(16))
        .min(MAX_WAIT)
        .max(every)
}

/// Said once: the check stops, since the role cannot analyse the table
/// and autovacuum will, in its own time.
fn warn_refused(done: &Reanalyzed) {
    tracing::warn!(
        pages = done.pages,
        planned_pages = done.planned_pages,
        "sagas has outgrown the planner's statistics but this role may not ANALYZE it \
         (it needs to own the table, or MAINTAIN on PostgreSQL 17); left to autovacuum, \
         and not checked again"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_that_fail_wait_longer_up_to_five_minutes() {
        let every = Duration::from_secs(1);
        assert_eq!(after_failures(every, 0), every);
        assert_eq!(after_failures(every, 1), Duration::from_secs(2));
        assert_eq!(after_failures(every, 5), Duration::from_secs(32));
        assert_eq!(after_failures(every, 9), MAX_WAIT);
        assert_eq!(after_failures(every, u32::MAX), MAX_WAIT);
        // An interval above the cap is kept.
        let hourly = Duration::from_secs(3600);
        assert_eq!(after_failures(hourly, 3), hourly);
    }
}
