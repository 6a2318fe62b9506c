//! The Pulsar adapter's producer batching, on the suite's pulsar-lite: the
//! messages of one send share broker entries, each read back whole with its
//! own properties and id; built without batching, each is an entry of its
//! own. Channels are this test's own.

use std::collections::HashSet;
use std::time::Duration;

use saga_orchestrator::envelope::{Envelope, EventType};
use saga_orchestrator::transport::{
    Delivery, OutboundMessage, PulsarTransport, RawMessage, Subscription, Transport, WireFormat,
};
use uuid::Uuid;

use crate::helpers::{env, PrivatePulsar};

const MESSAGES: usize = 40;

fn event(n: usize) -> Envelope {
    sized_event(n, 0)
}

/// Event `n`, its name `extra` bytes longer.
fn sized_event(n: usize, extra: usize) -> Envelope {
    let name = format!("Partner {n}{}", "x".repeat(extra));
    let payload = serde_json::json!({"partner_id": format!("p-{n}"), "name": name});
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
    let events: Vec<Envelope> = (0..MESSAGES).map(event).collect();
    sent_and_read_these(&transport, &events).await
}

/// Sends `events` in one send on a new channel and reads them all back,
/// each with its entry.
async fn sent_and_read_these(
    transport: &PulsarTransport,
    events: &[Envelope],
) -> Vec<(String, Delivery)> {
    let channel = format!("batching-{}", Uuid::new_v4().simple());
    let mut sub = transport.subscribe(&channel).await.expect("subscribe");
    let messages = events
        .iter()
        .map(|e| OutboundMessage::encode(e, WireFormat::Body))
        .collect();
    transport.send(&channel, messages).await.expect("send");

    let mut entries = Vec::new();
    for delivery in read_all(sub.as_mut(), events.len()).await {
        let entry: Vec<&str> = delivery.id.split(':').take(2).collect();
        entries.push((entry.join(":"), delivery));
    }
    entries
}

/// Reads `count` deliveries from `sub`, failing after 30 s.
async fn read_all(sub: &mut dyn Subscription, count: usize) -> Vec<Delivery> {
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read.len() < count {
        let so_far = read.len();
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {so_far} of {count}"
        );
        read.extend(sub.next_batch(count).await.expect("read"));
    }
    read
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

#[tokio::test]
async fn entries_close_before_they_outgrow_their_bytes_and_a_large_message_goes_alone() {
    // 40 KiB each, then one of 200 KiB: entries of three, and one of its own.
    let mut events: Vec<Envelope> = (0..6).map(|n| sized_event(n, 40 * 1024)).collect();
    events.push(sized_event(6, 200 * 1024));
    events.push(sized_event(7, 0));
    let read = sent_and_read_these(&transport().await, &events).await;

    let mut entries: Vec<&str> = read.iter().map(|(entry, _)| entry.as_str()).collect();
    entries.dedup();
    assert_eq!(
        entries.len(),
        4,
        "[3 x 40 KiB] [3 x 40 KiB] [200 KiB] [small]: {entries:?}"
    );
    for (_, delivery) in read {
        delivery.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn a_message_the_broker_refuses_fails_its_entry_as_a_refusal() {
    let pulsar = PrivatePulsar::start_with_max_message_size(16 * 1024).await;
    let name = format!("batching-{}", Uuid::new_v4().simple());
    let transport = PulsarTransport::connect(&pulsar.url, &name, &name)
        .await
        .expect("connect");
    let channel = format!("batching-{}", Uuid::new_v4().simple());
    let run = [
        sized_event(0, 0),
        sized_event(1, 32 * 1024),
        sized_event(2, 0),
    ];
    let messages = run
        .iter()
        .map(|e| OutboundMessage::encode(e, WireFormat::Body))
        .collect();

    let error = transport
        .send(&channel, messages)
        .await
        .expect_err("the broker takes at most 16 KiB");
    assert!(error.blames_the_message(), "{error}");
    // The producer is still good for what the broker takes.
    let small = vec![OutboundMessage::encode(
        &sized_event(3, 0),
        WireFormat::Body,
    )];
    transport
        .send(&channel, small)
        .await
        .expect("a small message goes");
}

#[tokio::test]
async fn two_sends_of_several_messages_on_one_channel_take_turns() {
    let transport = transport().await;
    let channel = format!("batching-{}", Uuid::new_v4().simple());
    let mut sub = transport.subscribe(&channel).await.expect("subscribe");
    let send = |from: usize| {
        let (transport, channel) = (transport.clone(), channel.clone());
        let messages: Vec<OutboundMessage> = (from..from + MESSAGES)
            .map(|n| OutboundMessage::encode(&event(n), WireFormat::Body))
            .collect();
        tokio::spawn(async move { transport.send(&channel, messages).await })
    };
    let (first, second) = (send(0), send(1_000));
    first.await.expect("task").expect("first send");
    second.await.expect("task").expect("second send");

    let read = read_all(sub.as_mut(), 2 * MESSAGES).await;
    let senders: Vec<bool> = read
        .iter()
        .map(|d| correlation(d).len() > "corr-99".len())
        .collect();
    let switches = senders.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 1, "each send's messages together: {senders:?}");
    for delivery in read {
        delivery.ack().await.expect("ack");
    }
}
