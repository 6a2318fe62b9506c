//! Broker upkeep of the channels this instance consumes, for brokers that
//! need it from their clients (Redis: trimming streams, removing consumers
//! of instances that are gone). A round runs beside the consumers, never in
//! their way; a failed one is logged once per outage and tried again on the
//! next tick.

use std::time::Duration;

use super::{pause, Orchestrator};
use crate::telemetry;
use crate::transport::TransportError;

/// Bound on one round: a broker that stopped answering gets asked again on
/// the next tick rather than holding the task.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn run(orch: Orchestrator) {
    let inner = &orch.inner;
    let Some(every) = inner.transport.maintenance_interval() else {
        return;
    };
    let channels = inner.config.consumed_channels();
    let mut failures = 0;
    while pause(&inner.cancel, every).await {
        let round = tokio::select! {
            round = tokio::time::timeout(ROUND_TIMEOUT, inner.transport.maintain(&channels)) => {
                round.unwrap_or(Err(TransportError::Timeout("broker upkeep")))
            }
            () = inner.cancel.cancelled() => return,
        };
        match round {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("broker upkeep recovered");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "broker upkeep failed; trying again every {every:?}");
                }
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "upkeep").increment(1);
            }
        }
    }
}
