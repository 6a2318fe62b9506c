//! Broker mode: the `saga-replies` consumer.
//!
//! Each reply is applied to its saga as stored now, through the same
//! version-checked commit as every other transition, and acked only after
//! that commit. Replies of one saga within a batch are applied in the order
//! received (when one cannot be stored, it and the ones after it go back to
//! the broker); different sagas' replies are applied concurrently. A reply
//! for a saga this store does not know, or one the saga has moved past (a
//! duplicate, an earlier attempt's), is acked and logged: redelivering it
//! would never make it apply. An alliance created after compensation began
//! is recorded on the saga and logged as a warning (`late_success`).

use std::collections::HashMap;

use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use super::consumer::{dead_letter, ignore, read_loop, settle, Gate};
use super::{OperateError, Orchestrator};
use crate::envelope::{EventType, MessageStatus};
use crate::saga::{self, Input, Reply, ReplyStatus, Saga, SagaState, Step};
use crate::telemetry;
use crate::transport::Delivery;

pub(super) async fn run(orch: Orchestrator) {
    let channel = orch.inner.config.channels.saga_replies.clone();
    read_loop(&orch, &channel, Gate::Batch, |deliveries| {
        handle(&orch, deliveries)
    })
    .await;
}

/// What one delivery on `saga-replies` asks of us.
#[derive(Debug, PartialEq)]
enum Verdict {
    Apply { saga_id: Uuid, reply: Reply },
    Ignore(String),
    DeadLetter(String),
}

fn judge(delivery: &Delivery, max_bytes: usize) -> Verdict {
    let envelope = match delivery.raw.decode(max_bytes) {
        Ok(envelope) => envelope,
        Err(e) => return Verdict::DeadLetter(e.to_string()),
    };
    let step = match envelope.kind() {
        Some(EventType::CreateAllianceReply) => Step::CreateAlliance,
        Some(EventType::DeletePartnerReply) => Step::DeletePartner,
        _ => return Verdict::Ignore(envelope.event_type),
    };
    let Some(saga_id) = envelope.saga_id else {
        return Verdict::DeadLetter(
            "missing required field saga_id (replies name their saga)".into(),
        );
    };
    let payload = &envelope.payload;
    let attempt = match payload.get("attempt") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n > 0 => Some(n),
            _ => {
                return Verdict::DeadLetter(
                    "invalid field payload.attempt: expected a positive whole number".into(),
                )
            }
        },
    };
    let status = match envelope.status {
        None => {
            return Verdict::DeadLetter(
                "missing required field status (started, progress, completed or failed)".into(),
            )
        }
        Some(MessageStatus::Started) => ReplyStatus::Started,
        Some(MessageStatus::Progress) => ReplyStatus::Progress {
            detail: payload.get("progress").map(text),
        },
        Some(MessageStatus::Completed) => ReplyStatus::Completed {
            alliance_id: payload
                .get("alliance_id")
                .filter(|v| !v.is_null())
                .map(text),
        },
        Some(MessageStatus::Failed) => ReplyStatus::Failed {
            error: payload
                .get("error")
                .filter(|v| !v.is_null())
                .map_or_else(|| "the participant reported a failure".into(), text),
            retryable: payload.get("retryable").and_then(Value::as_bool) == Some(true),
        },
    };
    Verdict::Apply {
        saga_id,
        reply: Reply {
            step,
            attempt,
            status,
        },
    }
}

/// A JSON value as text, strings without their quotes.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

async fn handle(orch: &Orchestrator, deliveries: Vec<Delivery>) {
    // One queue per saga, in arrival order.
    let mut queues: Vec<(Uuid, Vec<(Delivery, Reply)>)> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for delivery in deliveries {
        match judge(&delivery, orch.inner.config.max_message_bytes) {
            Verdict::Apply { saga_id, reply } => {
                let at = *index.entry(saga_id).or_insert_with(|| {
                    queues.push((saga_id, Vec::new()));
                    queues.len() - 1
                });
                queues[at].1.push((delivery, reply));
            }
            Verdict::Ignore(event_type) => ignore(delivery, &event_type).await,
            Verdict::DeadLetter(reason) => dead_letter(orch, delivery, &reason).await,
        }
    }
    let mut known = read_all(orch, &queues).await;
    futures::future::join_all(queues.into_iter().map(|(saga_id, replies)| {
        let saga = known.remove(&saga_id);
        apply_in_order(orch, saga_id, replies, saga)
    }))
    .await;
}

/// The batch's sagas in one read. If it fails each reply reads its own.
async fn read_all(
    orch: &Orchestrator,
    queues: &[(Uuid, Vec<(Delivery, Reply)>)],
) -> HashMap<Uuid, Saga> {
    let ids: Vec<Uuid> = queues.iter().map(|(saga_id, _)| *saga_id).collect();
    match orch.inner.store.get_many(&ids).await {
        Ok(sagas) => sagas.into_iter().map(|s| (s.saga_id, s)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading a batch of replies' sagas failed; each is read alone");
            metrics::counter!(telemetry::LOOP_ERRORS, "component" => "replies").increment(1);
            HashMap::new()
        }
    }
}

/// Applies one saga's replies in arrival order, the first decided on
/// `known` (the saga as [`read_all`] found it) and each next one on what
/// the previous one left.
async fn apply_in_order(
    orch: &Orchestrator,
    saga_id: Uuid,
    replies: Vec<(Delivery, Reply)>,
    mut known: Option<Saga>,
) {
    let mut replies = replies.into_iter();
    while let Some((delivery, reply)) = replies.next() {
        let labels = [
            ("step", reply.step.as_str()),
            ("status", status_label(&reply.status)),
        ];
        let alliance_done = reply.step == Step::CreateAlliance
            && matches!(reply.status, ReplyStatus::Completed { .. });
        let reply_by = saga::later(Utc::now(), orch.inner.config.step_timeout);
        let outcome = orch
            .operate_from(saga_id, Input::Replied { reply, reply_by }, known.take())
            .await;
        let applied = match &outcome {
            Ok(saga) if alliance_done && saga.state != SagaState::Completed => {
                tracing::warn!(%saga_id, state = %saga.state, alliance_id = ?saga.alliance_id,
                    "alliance created after compensation began; recorded on the saga for a person to undo");
                "late_success"
            }
            Ok(saga) => {
                tracing::debug!(%saga_id, state = %saga.state, "reply applied");
                "applied"
            }
            Err(OperateError::NotFound(_)) => {
                tracing::warn!(%saga_id, message_id = %delivery.id, "reply for a saga this store does not know; acked and dropped");
                "unknown_saga"
            }
            Err(OperateError::NotAllowed(e)) => {
                tracing::info!(%saga_id, message_id = %delivery.id, reason = %e, "stale reply; acked and dropped");
                "stale"
            }
            Err(e @ (OperateError::Busy(_) | OperateError::Store(_))) => {
                // Nothing was stored: the broker redelivers it. The saga's
                // later replies go back too, so they are not applied ahead
                // of it.
                tracing::warn!(%saga_id, error = %e, "could not apply reply; it and the saga's later replies will be redelivered");
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "replies").increment(1);
                settle(delivery.nack().await, "nack");
                for (later, _) in replies.by_ref() {
                    settle(later.nack().await, "nack");
                }
                return;
            }
        };
        // What this reply left is where the saga's next one starts.
        known = outcome.ok();
        metrics::counter!(telemetry::REPLIES, "step" => labels[0].1, "status" => labels[1].1, "outcome" => applied)
            .increment(1);
        settle(delivery.ack().await, "ack");
    }
}

fn status_label(status: &ReplyStatus) -> &'static str {
    match status {
        ReplyStatus::Started => "started",
        ReplyStatus::Progress { .. } => "progress",
        ReplyStatus::Completed { .. } => "completed",
        ReplyStatus::Failed { .. } => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::transport::{OutboundMessage, RawMessage, Settle, TransportError, WireFormat};
    use serde_json::json;

    struct Nothing;

    #[async_trait::async_trait]
    impl Settle for Nothing {
        async fn ack(&self) -> Result<(), TransportError> {
            Ok(())
        }
        async fn nack(&self) -> Result<(), TransportError> {
            Ok(())
        }
    }

    fn delivery(raw: RawMessage) -> Delivery {
        Delivery::new("saga-replies", "1-0", raw, Box::new(Nothing))
    }

    fn reply(
        kind: EventType,
        saga_id: Option<Uuid>,
        status: Option<MessageStatus>,
        payload: Value,
    ) -> Delivery {
        let envelope = Envelope::new(
            kind,
            "c-1",
            saga_id,
            status,
            payload.as_object().cloned().unwrap_or_default(),
        );
        delivery(OutboundMessage::encode(&envelope, WireFormat::Fields).raw)
    }

    fn judged(kind: EventType, status: Option<MessageStatus>, payload: Value) -> Verdict {
        judge(&reply(kind, Some(Uuid::nil()), status, payload), 1 << 20)
    }

    fn applies(step: Step, attempt: Option<u32>, status: ReplyStatus) -> Verdict {
        Verdict::Apply {
            saga_id: Uuid::nil(),
            reply: Reply {
                step,
                attempt,
                status,
            },
        }
    }

    #[test]
    fn every_status_is_understood() {
        use MessageStatus as S;
        let create = EventType::CreateAllianceReply;
        assert_eq!(
            judged(create, Some(S::Started), json!({"attempt": 2})),
            applies(Step::CreateAlliance, Some(2), ReplyStatus::Started)
        );
        assert_eq!(
            judged(create, Some(S::Progress), json!({"progress": 50})),
            applies(
                Step::CreateAlliance,
                None,
                ReplyStatus::Progress {
                    detail: Some("50".into())
                }
            )
        );
        assert_eq!(
            judged(create, Some(S::Completed), json!({"alliance_id": "a-1"})),
            applies(
                Step::CreateAlliance,
                None,
                ReplyStatus::Completed {
                    alliance_id: Some("a-1".into())
                }
            )
        );
        assert_eq!(
            judged(
                EventType::DeletePartnerReply,
                Some(S::Failed),
                json!({"error": "locked", "retryable": true})
            ),
            applies(
                Step::DeletePartner,
                None,
                ReplyStatus::Failed {
                    error: "locked".into(),
                    retryable: true
                }
            )
        );
        assert_eq!(
            judged(create, Some(S::Failed), json!({})),
            applies(
                Step::CreateAlliance,
                None,
                ReplyStatus::Failed {
                    error: "the participant reported a failure".into(),
                    retryable: false
                }
            )
        );
    }

    #[test]
    fn replies_without_saga_status_or_a_sane_attempt_are_dead_lettered() {
        let no_saga = reply(
            EventType::CreateAllianceReply,
            None,
            Some(MessageStatus::Started),
            json!({}),
        );
        assert!(
            matches!(judge(&no_saga, 1 << 20), Verdict::DeadLetter(r) if r.contains("saga_id"))
        );
        assert!(matches!(
            judged(EventType::CreateAllianceReply, None, json!({})),
            Verdict::DeadLetter(r) if r.contains("status")
        ));
        for attempt in [json!(0), json!(-1), json!("two"), json!(1.5)] {
            assert!(matches!(
                judged(EventType::CreateAllianceReply, Some(MessageStatus::Started), json!({"attempt": attempt})),
                Verdict::DeadLetter(r) if r.contains("payload.attempt")
            ));
        }
        let garbage = delivery(RawMessage::Body {
            data: b"{not json".to_vec(),
            properties: vec![],
        });
        assert!(matches!(judge(&garbage, 1 << 20), Verdict::DeadLetter(_)));
    }

    #[test]
    fn other_event_types_are_ignored() {
        assert_eq!(
            judged(
                EventType::SagaCompleted,
                Some(MessageStatus::Completed),
                json!({})
            ),
            Verdict::Ignore("SagaCompleted".into())
        );
    }
}
