//! The `partner-events` consumer.
//!
//! Reads only as many messages as there are free in-flight slots, so a
//! burst queues in the broker rather than in memory. Bad input is
//! dead-lettered with its reason; unknown event types are acked and
//! ignored; valid events are recorded in one transaction per batch and
//! acked only after that commit.

use super::{loop_backoff, pause, Orchestrator, Source, StartRequest};
use crate::envelope::{EventType, PartnerCreated};
use crate::telemetry;
use crate::transport::{Delivery, Subscription};

/// Messages read per batch at most.
const BATCH: usize = 64;

pub(super) async fn run(orch: Orchestrator) {
    let channel = orch.inner.config.channels.partner_events.clone();
    read_loop(&orch, &channel, Gate::FreeSlots, |deliveries| {
        handle(&orch, deliveries)
    })
    .await;
}

/// How much one read may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// No more than the free in-flight slots: each message may start a saga.
    FreeSlots,
    /// A full batch: handling needs no slot of its own.
    Batch,
}

/// Subscribes to `channel` and hands each batch read to `handle` until
/// cancelled; broker errors back off and are logged once per outage.
pub(super) async fn read_loop<F, Fut>(orch: &Orchestrator, channel: &str, gate: Gate, mut handle: F)
where
    F: FnMut(Vec<Delivery>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let inner = &orch.inner;
    let Some(mut subscription) = subscribe(orch, channel).await else {
        return;
    };
    tracing::info!(%channel, "consuming");
    let mut failures = 0;
    loop {
        let mut max = BATCH;
        if gate == Gate::FreeSlots {
            // Read no more than there are free slots for, so a burst queues
            // in the broker; but hold no slot while waiting on the broker, or
            // an idle consumer would starve the sweeper and the API.
            let free = inner.permits.available_permits();
            if free == 0 {
                tokio::select! {
                    permit = inner.permits.acquire() => drop(permit),
                    () = inner.cancel.cancelled() => return,
                }
                continue;
            }
            max = free.min(BATCH);
        }
        let batch = tokio::select! {
            batch = subscription.next_batch(max) => batch,
            () = inner.cancel.cancelled() => return,
        };
        match batch {
            Ok(deliveries) => {
                if failures > 0 {
                    tracing::info!(%channel, "broker reads recovered");
                }
                failures = 0;
                if !deliveries.is_empty() {
                    handle(deliveries).await;
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%channel, error = %e, "broker read failed; retrying with backoff");
                }
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "consumer").increment(1);
                if !pause(&inner.cancel, loop_backoff(failures)).await {
                    return;
                }
                if matches!(e, crate::transport::TransportError::Closed) {
                    // The subscription itself is gone: reading it again
                    // would fail forever.
                    let Some(fresh) = subscribe(orch, channel).await else {
                        return;
                    };
                    subscription = fresh;
                }
            }
        }
    }
}

async fn subscribe(orch: &Orchestrator, channel: &str) -> Option<Box<dyn Subscription>> {
    let mut failures = 0;
    loop {
        match orch.inner.transport.subscribe(channel).await {
            Ok(subscription) => return Some(subscription),
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%channel, error = %e, "cannot subscribe yet; retrying with backoff");
                }
                if !pause(&orch.inner.cancel, loop_backoff(failures)).await {
                    return None;
                }
            }
        }
    }
}

/// What one delivery asks of us.
enum Verdict {
    Start(StartRequest),
    Ignore(String),
    DeadLetter(String),
}

fn judge(delivery: &Delivery, max_bytes: usize) -> Verdict {
    let envelope = match delivery.raw.decode(max_bytes) {
        Ok(envelope) => envelope,
        Err(e) => return Verdict::DeadLetter(e.to_string()),
    };
    if envelope.kind() != Some(EventType::PartnerCreated) {
        return Verdict::Ignore(envelope.event_type);
    }
    match PartnerCreated::from_payload(&envelope.payload) {
        Ok(partner) => Verdict::Start(StartRequest {
            event_id: envelope.event_id,
            correlation_id: envelope.correlation_id,
            partner,
            traceparent: envelope.traceparent,
        }),
        Err(e) => Verdict::DeadLetter(e.to_string()),
    }
}

async fn handle(orch: &Orchestrator, deliveries: Vec<Delivery>) {
    let inner = &orch.inner;
    let mut starts = Vec::with_capacity(deliveries.len());
    let mut to_ack = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match judge(&delivery, inner.config.max_message_bytes) {
            Verdict::Start(request) => {
                starts.push(request);
                to_ack.push(delivery);
            }
            Verdict::Ignore(event_type) => ignore(delivery, &event_type).await,
            Verdict::DeadLetter(reason) => dead_letter(orch, delivery, &reason).await,
        }
    }
    if starts.is_empty() {
        return;
    }
    // One slot per saga. The batch was sized to the free slots, so this
    // waits only if the sweeper or the API took some meanwhile.
    let mut with_permits = Vec::with_capacity(starts.len());
    for request in starts {
        let permit = tokio::select! {
            permit = inner.permits.clone().acquire_owned() => permit.ok(),
            () = inner.cancel.cancelled() => None,
        };
        with_permits.push((request, permit));
    }
    match orch.start(Source::Broker, with_permits).await {
        Ok(_) => ack_all(to_ack).await,
        Err(e) if e.is_data_error() => {
            // One event's data failed the whole batch: record them one by
            // one so only the offender is set aside.
            tracing::warn!(error = %e, count = to_ack.len(), "store refused a batch; recording one at a time");
            // Decoding again costs only on this rare path, not on every batch.
            for delivery in to_ack {
                if let Verdict::Start(request) = judge(&delivery, inner.config.max_message_bytes) {
                    start_one(orch, delivery, request).await;
                }
            }
        }
        Err(e) => {
            // Nothing was recorded: give the events back for redelivery.
            tracing::error!(error = %e, count = to_ack.len(), "could not record sagas; events will be redelivered");
            metrics::counter!(telemetry::LOOP_ERRORS, "component" => "consumer").increment(1);
            for delivery in to_ack {
                settle(delivery.nack().await, "nack");
            }
            pause(&inner.cancel, loop_backoff(2)).await;
        }
    }
}

/// Acks a batch whose sagas are committed, all at once: the acks go out
/// together (Redis pipelines them on its one connection; Pulsar's are
/// queued to its consumer task), so a batch costs one round trip before
/// the next read, not one per event.
async fn ack_all(deliveries: Vec<Delivery>) {
    let acks = deliveries.into_iter().map(Delivery::ack);
    for result in futures::future::join_all(acks).await {
        settle(result, "ack");
    }
}

/// Records one event; its own data error dead-letters it.
async fn start_one(orch: &Orchestrator, delivery: Delivery, request: StartRequest) {
    match orch
        .start(Source::Broker, vec![(request, orch.try_permit())])
        .await
    {
        Ok(_) => {
            settle(delivery.ack().await, "ack");
        }
        Err(e) if e.is_data_error() => {
            dead_letter(orch, delivery, &format!("the store refused it: {e}")).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not record saga; event will be redelivered");
            settle(delivery.nack().await, "nack");
        }
    }
}

/// Acks a message of a type this channel does not carry, and counts it.
pub(super) async fn ignore(delivery: Delivery, event_type: &str) {
    tracing::debug!(channel = %delivery.channel, %event_type, "ignoring event type");
    // Only known types become label values: an arbitrary string from the
    // wire would create a time series per distinct value.
    let label = EventType::parse(event_type).map_or("other", EventType::as_str);
    metrics::counter!(telemetry::IGNORED, "channel" => delivery.channel.clone(), "event_type" => label)
        .increment(1);
    settle(delivery.ack().await, "ack");
}

pub(super) async fn dead_letter(orch: &Orchestrator, delivery: Delivery, reason: &str) {
    let channel = delivery.channel.clone();
    let id = delivery.id.clone();
    tracing::warn!(%channel, message_id = %id, %reason, "dead-lettering message");
    match orch.inner.transport.dead_letter(delivery, reason).await {
        Ok(()) => {
            orch.stats().record_dead_letter(&channel);
            metrics::counter!(telemetry::DEAD_LETTERS, "channel" => channel).increment(1)
        }
        // Not acked: it stays with the broker and is dead-lettered on redelivery.
        Err(e) => {
            tracing::error!(%channel, message_id = %id, error = %e, "could not dead-letter; left unacked")
        }
    }
}

pub(super) fn settle(result: Result<(), crate::transport::TransportError>, what: &str) {
    if let Err(e) = result {
        // An unacked message is redelivered and deduplicated, so this costs
        // a repeat, never a loss.
        tracing::warn!(error = %e, "{what} failed");
    }
}
