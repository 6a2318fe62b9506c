//! The simulated participants over the broker (docs/contract.md §2–3): commands in
//! on `alliance-commands` / `integration-commands`, replies out on
//! `saga-replies` — `started`, then `progress`, then `completed` or
//! `failed`. A transient failure sends no final reply, the way a crashed
//! participant would, so the orchestrator's step deadline must notice.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Answer, Simulator};
use crate::config::Channels;
use crate::envelope::{Envelope, EventType, MessageStatus};
use crate::saga::Step;
use crate::transport::{Delivery, Transport, TransportError};

/// Commands handled at once.
const CONCURRENCY: usize = 256;

/// Consumes both command channels until `stop` is cancelled.
pub async fn run(
    sim: Simulator,
    transport: Arc<dyn Transport>,
    channels: Channels,
    max_message_bytes: usize,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    for channel in [
        channels.alliance_commands.clone(),
        channels.integration_commands.clone(),
    ] {
        let ctx = Context {
            sim: sim.clone(),
            transport: transport.clone(),
            replies: channels.saga_replies.clone(),
            max_message_bytes,
        };
        tasks.spawn(consume(
            ctx,
            channel,
            permits.clone(),
            tasks.clone(),
            stop.clone(),
        ));
    }
    tasks.close();
    tasks.wait().await;
}

#[derive(Clone)]
struct Context {
    sim: Simulator,
    transport: Arc<dyn Transport>,
    replies: String,
    max_message_bytes: usize,
}

async fn consume(
    ctx: Context,
    channel: String,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut subscription = loop {
        match ctx.transport.subscribe(&channel).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "simulator cannot subscribe yet");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    };
    loop {
        let batch = tokio::select! {
            batch = subscription.next_batch(32) => batch,
            () = stop.cancelled() => return,
        };
        let deliveries = match batch {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "simulator read failed");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        for delivery in deliveries {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let ctx = ctx.clone();
            tasks.spawn(async move {
                if let Err(e) = handle(&ctx, delivery).await {
                    tracing::warn!(error = %e, "simulator could not answer a command; it will be redelivered");
                }
                drop(permit);
            });
        }
    }
}

async fn handle(ctx: &Context, delivery: Delivery) -> Result<(), TransportError> {
    let command = match delivery.raw.decode(ctx.max_message_bytes) {
        Ok(command) => command,
        Err(e) => return ctx.transport.dead_letter(delivery, &e.to_string()).await,
    };
    let (step, reply_type) = match command.kind() {
        Some(EventType::CreateAlliance) => (Step::CreateAlliance, EventType::CreateAllianceReply),
        Some(EventType::DeletePartner) => (Step::DeletePartner, EventType::DeletePartnerReply),
        _ => return delivery.ack().await,
    };
    let (Some(saga_id), Some(partner_id)) =
        (command.saga_id, command.partner_id().map(str::to_string))
    else {
        return ctx
            .transport
            .dead_letter(delivery, "command without saga_id or payload.partner_id")
            .await;
    };
    let reply = |status: MessageStatus, extra: Value| {
        let mut payload = Map::new();
        payload.insert("partner_id".into(), partner_id.clone().into());
        // Echoed so the orchestrator can tell a late reply to an earlier
        // attempt from the answer it is waiting for.
        if let Some(attempt) = command.payload.get("attempt") {
            payload.insert("attempt".into(), attempt.clone());
        }
        if let Value::Object(extra) = extra {
            payload.extend(extra);
        }
        let mut envelope = Envelope::new(
            reply_type,
            command.correlation_id.clone(),
            Some(saga_id),
            Some(status),
            payload,
        );
        envelope.traceparent = command.traceparent.clone();
        envelope
    };

    ctx.transport
        .publish(&ctx.replies, &[reply(MessageStatus::Started, json!({}))])
        .await?;
    tokio::time::sleep(ctx.sim.config().latency / 2).await;
    ctx.transport
        .publish(
            &ctx.replies,
            &[reply(
                MessageStatus::Progress,
                json!({"progress": "half way"}),
            )],
        )
        .await?;
    tokio::time::sleep(ctx.sim.config().latency / 2).await;

    let key = step.idempotency_key(saga_id);
    let answer = match step {
        Step::CreateAlliance => ctx.sim.create_alliance(
            Some(&key),
            command.payload.get("email").and_then(Value::as_str),
        ),
        Step::DeletePartner => ctx.sim.delete_partner(Some(&key), &partner_id),
    };
    let last = match answer {
        Answer::Done { alliance_id, .. } => Some(reply(
            MessageStatus::Completed,
            json!({"alliance_id": alliance_id}),
        )),
        Answer::Refused { error } => Some(reply(MessageStatus::Failed, json!({"error": error}))),
        Answer::Unavailable => None,
    };
    if let Some(last) = last {
        ctx.transport.publish(&ctx.replies, &[last]).await?;
    }
    delivery.ack().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::simulator::SimulatorConfig;
    use crate::transport::{MemoryTransport, RawMessage};
    use std::time::Duration;

    /// The simulator answering on a fresh in-memory broker.
    fn start(config: SimulatorConfig) -> (MemoryTransport, Simulator, CancellationToken) {
        let t = MemoryTransport::new();
        let sim = Simulator::new(config);
        let stop = CancellationToken::new();
        tokio::spawn(run(
            sim.clone(),
            Arc::new(t.clone()),
            Channels::default(),
            1 << 20,
            stop.clone(),
        ));
        (t, sim, stop)
    }

    fn command(kind: EventType, saga_id: uuid::Uuid) -> Envelope {
        let payload = json!({"partner_id": "p-1", "name": "Acme", "reason": "test"});
        Envelope::new(
            kind,
            "corr-b",
            Some(saga_id),
            None,
            payload.as_object().cloned().unwrap(),
        )
    }

    async fn replies(t: &MemoryTransport, n: usize) -> Vec<Envelope> {
        for _ in 0..200 {
            let got: Vec<Envelope> = t
                .messages("saga-replies")
                .iter()
                .filter_map(|m: &RawMessage| m.decode(1 << 20).ok())
                .collect();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} replies");
    }

    #[tokio::test]
    async fn commands_get_started_progress_and_a_final_reply_once_per_saga() {
        let (t, sim, stop) = start(SimulatorConfig::default());
        let saga_id = uuid::Uuid::new_v4();
        let create = command(EventType::CreateAlliance, saga_id);
        t.publish("alliance-commands", &[create.clone(), create])
            .await
            .unwrap();

        let got = replies(&t, 6).await;
        let statuses: Vec<_> = got.iter().map(|e| e.status.unwrap()).collect();
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == MessageStatus::Completed)
                .count(),
            2
        );
        assert!(
            statuses.contains(&MessageStatus::Started)
                && statuses.contains(&MessageStatus::Progress)
        );
        for reply in &got {
            assert_eq!(reply.kind(), Some(EventType::CreateAllianceReply));
            assert_eq!(reply.saga_id, Some(saga_id));
            assert_eq!(reply.correlation_id, "corr-b");
        }
        let ids: Vec<_> = got
            .iter()
            .filter_map(|e| e.payload.get("alliance_id"))
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(
            ids[0], ids[1],
            "a redelivered command gets the same alliance"
        );
        assert_eq!(sim.stats().alliances.created, 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn refusals_reply_failed() {
        let (t, _sim, stop) = start(SimulatorConfig {
            delete_fail_ratio: 1.0,
            ..Default::default()
        });
        t.publish(
            "integration-commands",
            &[command(EventType::DeletePartner, uuid::Uuid::new_v4())],
        )
        .await
        .unwrap();
        let got = replies(&t, 3).await;
        let last = got.last().unwrap();
        assert_eq!(last.kind(), Some(EventType::DeletePartnerReply));
        assert_eq!(last.status, Some(MessageStatus::Failed));
        assert!(last.payload["error"]
            .as_str()
            .unwrap()
            .contains("cannot be deleted"));
        stop.cancel();
    }

    #[tokio::test]
    async fn transient_failures_send_no_final_reply() {
        let (t, sim, stop) = start(SimulatorConfig {
            transient_ratio: 1.0,
            ..Default::default()
        });
        t.publish(
            "alliance-commands",
            &[command(EventType::CreateAlliance, uuid::Uuid::new_v4())],
        )
        .await
        .unwrap();
        let got = replies(&t, 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            t.messages("saga-replies").len(),
            2,
            "started and progress only: {got:?}"
        );
        assert_eq!(sim.stats().alliances.transient_failures, 1);
        stop.cancel();
    }
}
