//! Broker mode: the commands a saga sends its participants (docs/contract.md §2–3).

use serde_json::{Map, Value};

use crate::config::Channels;
use crate::envelope::{Envelope, EventType};
use crate::saga::{Saga, Step};
use crate::store::OutboxMessage;

/// The command for `step` of `saga`, on the participant's channel.
///
/// Besides the contract's fields the payload carries `attempt`, which
/// participants echo in their replies so a late reply to an earlier
/// attempt is told apart, and `idempotency_key`, the same key the HTTP
/// mode sends as a header, so a redelivered or retried command is done once.
pub fn command(channels: &Channels, saga: &Saga, step: Step) -> OutboxMessage {
    let (event_type, channel, mut payload) = match step {
        Step::CreateAlliance => (
            EventType::CreateAlliance,
            &channels.alliance_commands,
            // The partner as announced: partner_id, name, email and the rest.
            saga.payload.clone(),
        ),
        Step::DeletePartner => {
            let mut payload = Map::new();
            payload.insert(
                "reason".into(),
                Value::from(saga.last_error.clone().unwrap_or_default()),
            );
            (
                EventType::DeletePartner,
                &channels.integration_commands,
                payload,
            )
        }
    };
    payload.insert("partner_id".into(), Value::from(saga.partner_id.clone()));
    payload.insert("attempt".into(), Value::from(saga.attempts));
    payload.insert(
        "idempotency_key".into(),
        Value::from(step.idempotency_key(saga.saga_id)),
    );
    let mut envelope = Envelope::new(
        event_type,
        saga.correlation_id.clone(),
        Some(saga.saga_id),
        None,
        payload,
    );
    envelope.traceparent = saga.traceparent.clone();
    OutboxMessage::new(channel.clone(), envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::SagaState;
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    fn saga() -> Saga {
        let now = Utc::now();
        Saga {
            saga_id: Uuid::nil(),
            event_id: "e-1".into(),
            correlation_id: "c-1".into(),
            partner_id: "p-1".into(),
            state: SagaState::CreatingAlliance,
            step: Step::CreateAlliance,
            attempts: 2,
            alliance_id: None,
            last_error: Some("alliance_rejected: 422".into()),
            payload: json!({"partner_id": "p-1", "name": "Acme", "email": "a@x", "tier": "gold"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            created_at: now,
            updated_at: now,
            deadline_at: now,
            next_attempt_at: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            awaiting_reply: false,
            version: 3,
        }
    }

    #[test]
    fn create_alliance_carries_the_partner_attempt_and_key() {
        let m = command(&Channels::default(), &saga(), Step::CreateAlliance);
        assert_eq!(m.channel, "alliance-commands");
        let e = &m.envelope;
        assert_eq!(e.kind(), Some(EventType::CreateAlliance));
        assert_eq!(e.saga_id, Some(Uuid::nil()));
        assert_eq!(e.correlation_id, "c-1");
        assert_eq!(e.status, None);
        assert_eq!(e.payload["name"], "Acme");
        assert_eq!(
            e.payload["tier"], "gold",
            "whatever else the partner carried"
        );
        assert_eq!(e.payload["attempt"], 2);
        assert_eq!(
            e.payload["idempotency_key"],
            "00000000-0000-0000-0000-000000000000:create-alliance"
        );
        assert!(e.traceparent.is_some());
    }

    #[test]
    fn delete_partner_carries_the_partner_and_the_reason() {
        let m = command(&Channels::prefixed("t-"), &saga(), Step::DeletePartner);
        assert_eq!(m.channel, "t-integration-commands");
        let e = &m.envelope;
        assert_eq!(e.kind(), Some(EventType::DeletePartner));
        assert_eq!(e.payload["partner_id"], "p-1");
        assert_eq!(e.payload["reason"], "alliance_rejected: 422");
        assert_eq!(e.payload.get("name"), None);
        assert_eq!(
            e.payload["idempotency_key"],
            "00000000-0000-0000-0000-000000000000:delete-partner"
        );
    }
}
