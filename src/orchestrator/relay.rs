//! The outbox relay: publishes committed messages, then deletes them.
//!
//! A crash between publish and delete republishes (at least once); readers
//! dedup by `event_id`. Several instances relay safely side by side: each
//! claims its batch with a short lease.
//!
//! No single message can stop the relay. A stored row that is no message
//! is parked at once. When a send fails, the broker is asked whether it
//! answers: if not (or it says it takes nothing now), it is an outage and
//! the batch is retried later from its oldest message, in order. If it
//! answers, the run is sent again one message at a time to find the one it
//! refuses; that one counts a failed attempt and, after [`PARK_AFTER`], is
//! parked with the broker's reason, so the messages behind it go on.
//! Nothing behind an offender is sent again before it is parked, so a
//! saga's messages keep their order (a parked one is skipped). The failed
//! send itself may already have taken some of them (brokers pipeline
//! sends); they are sent again later, at least once as always.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;

use super::{loop_backoff, pause, Orchestrator};
use crate::store::{OutboxFault, OutboxMessage, StoreError};
use crate::telemetry;
use crate::transport::{OutboundMessage, TransportError};

/// Messages claimed per round trip.
const BATCH: u32 = 500;
/// After this an unfinished claim may be taken by another relay.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Poll interval when nothing woke the relay (other instances' writes).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Sends the broker refuses, while it answers, before a message is parked.
const PARK_AFTER: u32 = 3;
/// Time allowed for the broker to answer one of [`PINGS`] pings after a
/// failed send, [`PING_PAUSE`] apart.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const PINGS: u32 = 3;
const PING_PAUSE: Duration = Duration::from_millis(100);

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

/// Why a pass over a batch stopped before its end.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("broker unavailable: {0}")]
    Outage(TransportError),
    #[error("message {id} refused (attempt {attempts} of {PARK_AFTER}): {error}")]
    Refused {
        id: i64,
        attempts: u32,
        error: TransportError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Relays until the outbox is empty or publishing keeps failing.
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
        let Err(stop) = relay(orch, &claim.messages).await else {
            failures = 0;
            continue;
        };
        failures += 1;
        tracing::warn!(error = %stop, failures, "outbox publish failed; will retry");
        metrics::counter!(telemetry::LOOP_ERRORS, "component" => "relay").increment(1);
        if failures > 3 || !pause(&inner.relay_stop, loop_backoff(failures)).await {
            return;
        }
    }
}

/// Publishes a claimed batch: deletes what the broker took, and when it
/// stopped early, gives the rest back so the retry starts from the oldest
/// message again and a saga's later events never overtake earlier ones.
async fn relay(orch: &Orchestrator, batch: &[OutboxMessage]) -> Result<(), Stop> {
    let store = &orch.inner.store;
    let mut done = Done::default();
    let mut outcome = Ok(());
    for run in batch.chunk_by(|a, b| a.channel == b.channel) {
        outcome = send_run(orch, run, &mut done).await;
        if outcome.is_err() {
            break;
        }
    }
    if let Err(e) = store.delete_outbox(&done.sent).await {
        tracing::warn!(error = %e, "outbox delete failed; messages may be published twice");
    }
    metrics::counter!(telemetry::RELAYED).increment(done.sent.len() as u64);
    if outcome.is_err() {
        let settled: HashSet<i64> = done.sent.iter().chain(&done.parked).copied().collect();
        let rest: Vec<i64> = batch
            .iter()
            .map(|m| m.id)
            .filter(|id| !settled.contains(id))
            .collect();
        if let Err(e) = store.release_outbox(&rest).await {
            tracing::warn!(error = %e, "could not release outbox claim; it lapses in 30 s");
        }
    }
    outcome
}

/// What a pass did with its messages so far.
#[derive(Debug, Default)]
struct Done {
    sent: Vec<i64>,
    parked: Vec<i64>,
}

/// Sends one run of same-channel messages, in id order.
async fn send_run(orch: &Orchestrator, run: &[OutboxMessage], done: &mut Done) -> Result<(), Stop> {
    let transport = &orch.inner.transport;
    // Encoded straight from the stored envelopes: no copy of each one.
    let messages = run
        .iter()
        .map(|m| OutboundMessage::encode(&m.envelope, transport.format()))
        .collect();
    match transport.send(&run[0].channel, messages).await {
        Ok(()) => {
            done.sent.extend(run.iter().map(|m| m.id));
            Ok(())
        }
        Err(e) if !broker_answers(orch, &e).await => Err(Stop::Outage(e)),
        Err(_) => isolate(orch, run, done).await,
    }
}

/// Sends a run the broker refused part of, one message at a time, to find
/// the one it refuses. Stops at an offender not yet parked: what follows it
/// waits, so that it cannot overtake it.
async fn isolate(orch: &Orchestrator, run: &[OutboxMessage], done: &mut Done) -> Result<(), Stop> {
    let transport = &orch.inner.transport;
    for m in run {
        let message = OutboundMessage::encode(&m.envelope, transport.format());
        let error = match transport.send(&m.channel, vec![message]).await {
            Ok(()) => {
                done.sent.push(m.id);
                continue;
            }
            Err(e) if !broker_answers(orch, &e).await => return Err(Stop::Outage(e)),
            Err(e) => e,
        };
        let reason = error.to_string();
        let attempts = orch
            .inner
            .store
            .record_outbox_failure(m.id, &reason)
            .await?;
        if attempts < PARK_AFTER {
            return Err(Stop::Refused {
                id: m.id,
                attempts,
                error,
            });
        }
        let fault = OutboxFault { id: m.id, reason };
        if park(orch, std::slice::from_ref(&fault), "refused").await == 0 {
            return Err(Stop::Refused {
                id: m.id,
                attempts,
                error,
            });
        }
        done.parked.push(m.id);
    }
    Ok(())
}

/// Whether the broker is up and taking messages, after a send failed with `e`.
async fn broker_answers(orch: &Orchestrator, e: &TransportError) -> bool {
    if e.is_unavailable() {
        return false;
    }
    // A broker may refuse a message by dropping the connection (Redis does
    // for a value over its proto-max-bulk-len): the first ping then meets
    // the dead connection, the next one the client's new one.
    let answers = async {
        for _ in 0..PINGS {
            if orch.inner.transport.ping().await.is_ok() {
                return true;
            }
            tokio::time::sleep(PING_PAUSE).await;
        }
        false
    };
    tokio::time::timeout(PING_TIMEOUT, answers)
        .await
        .unwrap_or(false)
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
