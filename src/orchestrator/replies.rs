//! Broker mode: the `saga-replies` consumer.
//!
//! Each reply is applied to its saga as stored now, through the same
//! version-checked commit as every other transition, and acked only after
//! that commit. Replies of one saga within a batch are applied in the order
//! received, those that follow on while the saga still waits sharing one
//! write (when one cannot be stored, it and the ones after it go back to
//! the broker); different sagas' replies are applied concurrently. A reply
//! for a saga this store does not know, or one the saga has moved past (a
//! duplicate, an earlier attempt's), is acked and logged: redelivering it
//! would never make it apply. An alliance created after compensation began
//! is recorded on the saga and logged as a warning (`late_success`).

use std::collections::{HashMap, VecDeque};

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
/// the previous one left. Replies that follow on while the saga still
/// waits (`started`, `progress`, then the final one) share one write.
async fn apply_in_order(
    orch: &Orchestrator,
    saga_id: Uuid,
    replies: Vec<(Delivery, Reply)>,
    mut known: Option<Saga>,
) {
    // Each round sets the deadlines of the inputs it decides.
    let unset = Utc::now();
    let mut inputs: Vec<Input> = replies
        .iter()
        .map(|(_, reply)| Input::Replied {
            reply: reply.clone(),
            reply_by: unset,
        })
        .collect();
    let mut replies: VecDeque<(Delivery, Reply)> = replies.into();
    let mut at = 0;
    while !replies.is_empty() {
        // Each write's deadline runs from when it is made, not from when
        // the batch came in.
        let now_due = saga::later(Utc::now(), orch.inner.config.step_timeout);
        for input in &mut inputs[at..] {
            if let Input::Replied { reply_by, .. } = input {
                *reply_by = now_due;
            }
        }
        let outcome = orch
            .operate_run(saga_id, &inputs[at], &inputs[at + 1..], known.take())
            .await;
        let taken = match &outcome {
            Ok((_, taken)) => *taken,
            Err(e @ (OperateError::Busy(_) | OperateError::Store(_))) => {
                // Nothing was stored: the broker redelivers it. The saga's
                // later replies go back too, so they are not applied ahead
                // of it.
                tracing::warn!(%saga_id, error = %e, "could not apply reply; it and the saga's later replies will be redelivered");
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "replies").increment(1);
                for (later, _) in replies {
                    settle(later.nack().await, "nack");
                }
                return;
            }
            Err(_) => 1,
        };
        let outcome = outcome.map(|(saga, _)| saga);
        for (delivery, reply) in replies.drain(..taken.min(replies.len())) {
            let applied = report(saga_id, &delivery, &reply, &outcome);
            metrics::counter!(telemetry::REPLIES, "step" => reply.step.as_str(), "status" => status_label(&reply.status), "outcome" => applied)
                .increment(1);
            settle(delivery.ack().await, "ack");
        }
        // What these replies left is where the saga's next one starts.
        known = outcome.ok();
        at += taken;
    }
}

/// Logs what applying `reply` came to; its `outcome` label.
fn report(
    saga_id: Uuid,
    delivery: &Delivery,
    reply: &Reply,
    outcome: &Result<Saga, OperateError>,
) -> &'static str {
    let alliance_done =
        reply.step == Step::CreateAlliance && matches!(reply.status, ReplyStatus::Completed { .. });
    match outcome {
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
        Err(OperateError::Busy(_) | OperateError::Store(_)) => "not_stored",
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
    use crate::config::{ParticipantMode, Settings};
    use crate::envelope::Envelope;
    use crate::orchestrator::test_orchestrator;
    use crate::store::{NewSaga, SagaStore, SqliteStore};
    use crate::transport::{
        MemoryTransport, OutboundMessage, RawMessage, Settle, TransportError, WireFormat,
    };
    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

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

    /// Counts, on this thread, the transitions the orchestrator asked the
    /// store to write (`saga_store_write_items_total{write="transition"}`).
    #[derive(Default)]
    struct TransitionsWritten(Arc<AtomicU64>);

    impl metrics::Recorder for TransitionsWritten {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let transitions = key.name() == telemetry::STORE_WRITE_ITEMS
                && key
                    .labels()
                    .any(|l| l.key() == "write" && l.value() == "transition");
            if transitions {
                Counter::from_arc(self.0.clone())
            } else {
                Counter::noop()
            }
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Counts the acks it is asked for.
    struct Acks(Arc<AtomicUsize>);

    #[async_trait::async_trait]
    impl Settle for Acks {
        async fn ack(&self) -> Result<(), TransportError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        async fn nack(&self) -> Result<(), TransportError> {
            Ok(())
        }
    }

    /// An orchestrator on a fresh embedded store holding one saga that
    /// waits for its alliance reply (attempt 1).
    async fn awaiting_saga() -> (Orchestrator, Saga) {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        let saga = Saga {
            awaiting_reply: true,
            deadline_at: Utc::now() + chrono::Duration::hours(1),
            ..saga::test_saga(SagaState::AwaitingAlliance, Step::CreateAlliance, 1)
        };
        let new = NewSaga {
            saga: saga.clone(),
            history: Vec::new(),
            outbox: Vec::new(),
            lease: None,
        };
        store.create(&[new]).await.expect("create");
        let mut settings = Settings::default();
        settings.participants.alliances_mode = ParticipantMode::Broker;
        let orch = test_orchestrator(store, Arc::new(MemoryTransport::new()), &settings);
        // It waits in a slot, as a saga recorded with its command does.
        let slot = orch.try_permit().expect("a free slot");
        orch.hold_while_awaiting(saga.saga_id, slot, saga.deadline_at);
        (orch, saga)
    }

    /// The replies to `saga`'s attempt, in order, each counting its ack.
    fn replies_to(
        saga: &Saga,
        statuses: &[(MessageStatus, Value)],
        acks: &Arc<AtomicUsize>,
    ) -> Vec<Delivery> {
        statuses
            .iter()
            .map(|(status, extra)| {
                let mut payload = json!({"attempt": 1});
                if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), extra) {
                    p.extend(extra.clone());
                }
                let envelope = Envelope::new(
                    EventType::CreateAllianceReply,
                    "c-1",
                    Some(saga.saga_id),
                    Some(*status),
                    payload.as_object().cloned().unwrap_or_default(),
                );
                let raw = OutboundMessage::encode(&envelope, WireFormat::Fields).raw;
                Delivery::new("saga-replies", "1-0", raw, Box::new(Acks(acks.clone())))
            })
            .collect()
    }

    /// What one batch of replies to a waiting saga came to.
    struct Applied {
        before: Saga,
        after: Saga,
        reasons: Vec<String>,
        details: Vec<Option<String>>,
        writes: u64,
        acks: usize,
        /// Whether the saga still holds the slot it waited in.
        holds_its_slot: bool,
    }

    /// Hands the consumer one batch of replies with `statuses` for a saga
    /// waiting for its alliance reply.
    async fn one_batch(statuses: &[(MessageStatus, Value)]) -> Applied {
        let written = TransitionsWritten::default();
        let _counting = metrics::set_default_local_recorder(&written);
        let (orch, before) = awaiting_saga().await;
        let acks = Arc::new(AtomicUsize::new(0));
        handle(&orch, replies_to(&before, statuses, &acks)).await;
        let free = orch.inner.permits.available_permits();
        let holds_its_slot = free < orch.inner.config.max_in_flight;
        let store = orch.store();
        let after = store.get(before.saga_id).await.expect("read");
        let history = store.history(before.saga_id).await.expect("history");
        Applied {
            before,
            after: after.expect("saga"),
            reasons: history.iter().map(|h| h.reason.clone()).collect(),
            details: history.into_iter().map(|h| h.detail).collect(),
            writes: written.0.load(Ordering::Relaxed),
            acks: acks.load(Ordering::Relaxed),
            holds_its_slot,
        }
    }

    #[tokio::test]
    async fn a_replies_heartbeats_and_its_final_reply_share_one_write() {
        let applied = one_batch(&[
            (MessageStatus::Started, json!({})),
            (MessageStatus::Progress, json!({"progress": "a third"})),
            (MessageStatus::Progress, json!({"progress": "two thirds"})),
            (MessageStatus::Completed, json!({"alliance_id": "a-1"})),
        ])
        .await;
        let after = &applied.after;
        assert_eq!(after.state, SagaState::Completed);
        assert_eq!(after.alliance_id.as_deref(), Some("a-1"));
        assert_eq!(after.version, applied.before.version + 4, "one per reply");
        assert_eq!(
            applied.reasons,
            [
                "participant_started",
                "participant_progress",
                "participant_progress",
                "alliance_created"
            ]
        );
        assert_eq!(applied.details[2].as_deref(), Some("two thirds"));
        assert_eq!(applied.writes, 1, "the four replies in one write");
        assert_eq!(applied.acks, 4, "each acked once stored");
        assert!(!applied.holds_its_slot, "done: its slot is free again");
    }

    #[tokio::test]
    async fn heartbeats_alone_share_one_write_and_the_saga_keeps_its_slot() {
        let applied = one_batch(&[
            (MessageStatus::Started, json!({})),
            (MessageStatus::Progress, json!({"progress": "half"})),
        ])
        .await;
        assert_eq!(applied.after.state, SagaState::AwaitingAlliance);
        assert!(applied.after.awaiting_reply);
        assert_eq!(
            applied.reasons,
            ["participant_started", "participant_progress"]
        );
        assert_eq!(applied.writes, 1);
        assert_eq!(applied.acks, 2);
        assert!(applied.holds_its_slot, "still waiting, in its slot");
    }

    #[tokio::test]
    async fn a_stale_reply_inside_a_run_ends_the_fold_and_the_rest_folds_after_it() {
        let applied = one_batch(&[
            (MessageStatus::Started, json!({})),
            // An attempt this saga never made: stale, written nowhere.
            (MessageStatus::Progress, json!({"attempt": 2})),
            (MessageStatus::Progress, json!({"progress": "later"})),
            (MessageStatus::Completed, json!({"alliance_id": "a-3"})),
        ])
        .await;
        assert_eq!(applied.after.state, SagaState::Completed);
        assert_eq!(
            applied.reasons,
            [
                "participant_started",
                "participant_progress",
                "alliance_created"
            ]
        );
        assert_eq!(applied.details[1].as_deref(), Some("later"));
        assert_eq!(applied.writes, 2, "one before the stale reply, one after");
        assert_eq!(applied.acks, 4, "the stale one acked too");
        assert!(!applied.holds_its_slot);
    }

    #[tokio::test]
    async fn a_reply_after_the_final_one_is_applied_on_its_own_as_stale() {
        let applied = one_batch(&[
            (MessageStatus::Started, json!({})),
            (MessageStatus::Completed, json!({"alliance_id": "a-2"})),
            (MessageStatus::Progress, json!({"progress": "late"})),
        ])
        .await;
        assert_eq!(applied.after.state, SagaState::Completed);
        assert_eq!(
            applied.after.version,
            applied.before.version + 2,
            "the late heartbeat changed nothing"
        );
        assert_eq!(applied.reasons, ["participant_started", "alliance_created"]);
        assert_eq!(applied.writes, 1);
        assert_eq!(applied.acks, 3, "the stale one acked too");
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
