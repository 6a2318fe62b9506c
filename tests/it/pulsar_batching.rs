//! The Pulsar adapter's producer batching, on the suite's pulsar-lite: the
//! messages of one send share broker entries, each read back whole with its
//! own properties and id; built without batching, each is an entry of its
//! own. Channels are this test's own.

use std::collections::HashSet;
use std::time::Duration;

use saga_orchestrator::envelope::{Envelope, EventType};
use saga_orchestrator::transport::{
    Delivery, OutboundMessage, PulsarTransport, RawMessage, Transport, WireFormat,
};
use uuid::Uuid;

use crate::helpers::env;

const MESSAGES: usize = 40;

fn event(n: usize) -> Envelope {
    let payload =
        serde_json::json!({"partner_id": format!("p-{n}"), "name": format!("Partner {n}")});
    Envelope::new(
        EventType::PartnerCreated,
        format!("corr-{n}"),
        None,
        None,
        payload.as_object().cloned().unwrap_or_default(),
    )
}

/// Sends `MESSAGES` events in one send on a new channel and reads them all
/// back; returns them with the entry (`ledger:entry`) each came in.
async fn sent_and_read(transport: PulsarTransport) -> Vec<(String, Delivery)> {
    let channel = format!("batching-{}", Uuid::new_v4().simple());
    let mut sub = transport.subscribe(&channel).await.expect("subscribe");
    let messages = (0..MESSAGES)
        .map(|n| OutboundMessage::encode(&event(n), WireFormat::Body))
        .collect();
    transport.send(&channel, messages).await.expect("send");

    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read.len() < MESSAGES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {MESSAGES}",
            read.len()
        );
        read.extend(sub.next_batch(MESSAGES).await.expect("read"));
    }
    let mut entries = Vec::new();
    for delivery in read {
        let entry: Vec<&str> = delivery.id.split(':').take(2).collect();
        entries.push((entry.join(":"), delivery));
    }
    entries
}

fn correlation(delivery: &Delivery) -> String {
    let RawMessage::Body { properties, .. } = &delivery.raw else {
        panic!("a Pulsar delivery has a body: {delivery:?}");
    };
    properties
        .iter()
        .find(|(k, _)| k == "correlation_id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

async fn transport() -> PulsarTransport {
    let name = format!("batching-{}", Uuid::new_v4().simple());
    PulsarTransport::connect(&env("TEST_PULSAR_URL"), &name, &name)
        .await
        .expect("connect")
}

#[tokio::test]
async fn one_sends_messages_share_entries_and_keep_their_own_properties() {
    let read = sent_and_read(transport().await).await;

    let entries: HashSet<&str> = read.iter().map(|(entry, _)| entry.as_str()).collect();
    assert!(
        entries.len() < MESSAGES / 4,
        "{} entries for {MESSAGES} messages",
        entries.len()
    );
    let ids: HashSet<&str> = read.iter().map(|(_, d)| d.id.as_str()).collect();
    assert_eq!(ids.len(), MESSAGES, "every message has an id of its own");
    let correlations: Vec<String> = read.iter().map(|(_, d)| correlation(d)).collect();
    let expected: Vec<String> = (0..MESSAGES).map(|n| format!("corr-{n}")).collect();
    assert_eq!(
        correlations, expected,
        "each message, in order, with its properties"
    );
    for (_, delivery) in read {
        delivery.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn without_batching_each_message_is_an_entry_of_its_own() {
    let read = sent_and_read(transport().await.without_batching()).await;

    let entries: HashSet<&str> = read.iter().map(|(entry, _)| entry.as_str()).collect();
    assert_eq!(entries.len(), MESSAGES);
    for (_, delivery) in read {
        delivery.ack().await.expect("ack");
    }
}
