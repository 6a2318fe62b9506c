//! The dead-letter index: the service's own subscription on a
//! `<channel>-dlq` channel (the shared one, `SUBSCRIPTION_NAME`, so several
//! instances split the work), each letter recorded in the store before it
//! is acked. A letter delivered twice is recorded once: its id is its
//! channel and broker message id.

use std::time::Duration;

use chrono::Utc;

use super::letter;
use crate::orchestrator::Orchestrator;
use crate::transport::{Delivery, Subscription};

/// Letters read at once.
const BATCH: usize = 256;
/// The longest wait between attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Indexes `channel`'s dead letters until shutdown (which drops it).
pub async fn run(orchestrator: Orchestrator, channel: String) {
    let mut failures: u32 = 0;
    loop {
        let mut subscription = match orchestrator.transport().subscribe(&channel).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%channel, error = %e, "cannot subscribe to the dead letters yet; retrying");
                }
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        failures = 0;
        if let Err(e) = index(&orchestrator, &channel, subscription.as_mut()).await {
            tracing::warn!(%channel, error = %e, "dead-letter index stopped; resubscribing");
            tokio::time::sleep(backoff(1)).await;
        }
    }
}

fn backoff(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6))).min(MAX_BACKOFF)
}

/// Records what the subscription hands out; returns on a broker error.
async fn index(
    orchestrator: &Orchestrator,
    channel: &str,
    subscription: &mut dyn Subscription,
) -> Result<(), crate::transport::TransportError> {
    let mut store_failures: u32 = 0;
    loop {
        let batch = subscription.next_batch(BATCH).await?;
        if batch.is_empty() {
            continue;
        }
        let records: Vec<_> = batch
            .iter()
            .map(|d| letter::record(channel, &d.id, &d.raw))
            .collect();
        match orchestrator
            .store()
            .index_dead_letters(&records, Utc::now())
            .await
        {
            Ok(_) => {
                store_failures = 0;
                settle(batch, true).await;
            }
            Err(e) => {
                // Given back, so they are recorded once the store answers.
                store_failures += 1;
                if store_failures == 1 {
                    tracing::warn!(%channel, error = %e, "cannot record dead letters; they stay on the broker");
                }
                settle(batch, false).await;
                tokio::time::sleep(backoff(store_failures)).await;
            }
        }
    }
}

async fn settle(batch: Vec<Delivery>, recorded: bool) {
    for delivery in batch {
        let settled = if recorded {
            delivery.ack().await
        } else {
            delivery.nack().await
        };
        if let Err(e) = settled {
            // Unsettled letters come back; recording them again is harmless.
            tracing::debug!(error = %e, "could not settle a dead letter");
        }
    }
}
