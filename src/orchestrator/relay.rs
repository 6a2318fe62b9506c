//! The outbox relay: publishes committed messages, then deletes them.
//!
//! A crash between publish and delete republishes (at least once); readers
//! dedup by `event_id`. Several instances relay safely side by side: each
//! claims its batch with a short lease.
//!
//! A stored row that is no message (not an envelope: an older version's,
//! a bug's, a hand edit's) is parked for a person at once, so it never
//! fails the claim of every batch after it.

use std::time::Duration;

use chrono::Utc;

use super::{loop_backoff, pause, Orchestrator};
use crate::store::{OutboxFault, OutboxMessage};
use crate::telemetry;
use crate::transport::OutboundMessage;

/// Messages claimed per round trip.
const BATCH: u32 = 500;
/// After this an unfinished claim may be taken by another relay.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Poll interval when nothing woke the relay (other instances' writes).
const IDLE_POLL: Duration = Duration::from_millis(500);

pub(super) async fn run(orch: Orchestrator) {
    let inner = &orch.inner;
    loop {
        tokio::select! {
            () = inner.relay_wake.notified() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
            () = inner.relay_stop.cancelled() => {
                // One last pass, once the drivers are done (see
                // `Orchestrator::shutdown`), so their final events go out.
                drain(&orch).await;
                return;
            }
        }
        drain(&orch).await;
    }
}

/// Relays until the outbox is empty or publishing fails.
async fn drain(orch: &Orchestrator) {
    let inner = &orch.inner;
    let mut failures = 0;
    loop {
        let claim = match inner
            .store
            .claim_outbox(&inner.config.instance_id, Utc::now(), CLAIM_LEASE, BATCH)
            .await
        {
            Ok(claim) if claim.is_empty() => return,
            Ok(claim) => claim,
            Err(e) => {
                tracing::warn!(error = %e, "outbox claim failed");
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "relay").increment(1);
                return;
            }
        };
        // Left claimed if parking fails: retried once the claim lapses.
        park(orch, &claim.unreadable, "unreadable").await;
        let batch = claim.messages;
        let ids: Vec<i64> = batch.iter().map(|m| m.id).collect();
        if let Err(e) = publish(orch, &batch).await {
            failures += 1;
            tracing::warn!(error = %e, failures, "outbox publish failed; will retry");
            metrics::counter!(telemetry::LOOP_ERRORS, "component" => "relay").increment(1);
            // Give the claim back so the retry starts from the oldest
            // message again: a saga's later events never overtake earlier ones.
            if let Err(e) = inner.store.release_outbox(&ids).await {
                tracing::warn!(error = %e, "could not release outbox claim; it lapses in 30 s");
            }
            if failures > 3 || !pause(&inner.relay_stop, loop_backoff(failures)).await {
                return;
            }
            continue;
        }
        failures = 0;
        if let Err(e) = inner.store.delete_outbox(&ids).await {
            tracing::warn!(error = %e, "outbox delete failed; messages may be published twice");
        }
        metrics::counter!(telemetry::RELAYED).increment(ids.len() as u64);
    }
}

/// Publishes runs of same-channel messages in id order.
async fn publish(
    orch: &Orchestrator,
    batch: &[OutboxMessage],
) -> Result<(), crate::transport::TransportError> {
    let transport = &orch.inner.transport;
    for run in batch.chunk_by(|a, b| a.channel == b.channel) {
        // Encoded straight from the stored envelopes: no copy of each one.
        let messages = run
            .iter()
            .map(|m| OutboundMessage::encode(&m.envelope, transport.format()))
            .collect();
        transport.send(&run[0].channel, messages).await?;
    }
    Ok(())
}

/// Parks `faults` (`kind` is the metric's `reason`); returns how many were
/// parked. Each is logged once, when parked.
async fn park(orch: &Orchestrator, faults: &[OutboxFault], kind: &'static str) -> u64 {
    if faults.is_empty() {
        return 0;
    }
    match orch.inner.store.park_outbox(faults, Utc::now()).await {
        Ok(parked) => {
            for fault in faults {
                tracing::warn!(outbox_id = fault.id, reason = %fault.reason, kind, "outbox message parked: it cannot be published");
            }
            metrics::counter!(telemetry::OUTBOX_PARKED_TOTAL, "reason" => kind).increment(parked);
            parked
        }
        Err(e) => {
            tracing::warn!(error = %e, count = faults.len(), "could not park outbox messages; retried once their claim lapses");
            0
        }
    }
}
