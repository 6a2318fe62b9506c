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

pub(super) async fn run(orch: Orchestrator) {
    let store = &orch.inner.store;
    let Some(every) = store.statistics_interval() else {
        return;
    };
    let mut failures = 0;
    while pause(&orch.inner.cancel, every).await {
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
                    tracing::warn!(error = %e, "could not check the sagas table's statistics; trying again every {every:?}");
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
