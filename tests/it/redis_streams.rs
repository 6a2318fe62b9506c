//! The Redis adapter's own upkeep: a nacked entry comes back within
//! seconds, not after the claim threshold.
//!
//! Always on the suite's Redis (`TEST_REDIS_URL`), whatever `TEST_BROKER`
//! says: Pulsar has nothing of the kind, so `scripts/test.sh` runs these in
//! its first pass only.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use saga_orchestrator::transport::{
    Delivery, OutboundMessage, RawMessage, RedisTransport, Subscription, Transport,
};
use uuid::Uuid;

use crate::helpers::env;

/// The orchestrator's consumer group (the default setting).
const GROUP: &str = "saga-orchestrator";

async fn redis() -> MultiplexedConnection {
    redis::Client::open(env("TEST_REDIS_URL"))
        .expect("TEST_REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// A stream name of this test's own.
fn stream() -> String {
    format!("t{}-redis", &Uuid::new_v4().simple().to_string()[..12])
}

fn entry(n: usize) -> OutboundMessage {
    OutboundMessage {
        key: None,
        raw: RawMessage::Fields(vec![("n".into(), n.to_string().into_bytes())]),
    }
}

/// The next non-empty batch, or a panic naming `what` after `within`.
async fn next_non_empty(
    subscription: &mut Box<dyn Subscription>,
    within: Duration,
    what: &str,
) -> Vec<Delivery> {
    let started = Instant::now();
    loop {
        let batch = subscription.next_batch(10).await.expect("next_batch");
        if !batch.is_empty() {
            return batch;
        }
        assert!(
            started.elapsed() < within,
            "{what}: nothing within {within:?}"
        );
    }
}

/// Entries pending in `group` on `stream`.
async fn pending(conn: &MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let summary: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(&mut conn.clone())
        .await
        .expect("XPENDING");
    match summary.first() {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("unexpected XPENDING reply: {other:?}"),
    }
}

#[tokio::test]
async fn a_nacked_entry_is_handed_out_again_within_seconds() {
    let stream = stream();
    // A claim threshold far beyond this test's patience: only the nack
    // itself can bring the entry back in time.
    let transport = RedisTransport::connect(
        &env("TEST_REDIS_URL"),
        GROUP,
        "consumer-a",
        Duration::from_secs(30),
    )
    .await
    .expect("connect");
    let mut subscription = transport.subscribe(&stream).await.expect("subscribe");
    transport.send(&stream, vec![entry(1)]).await.expect("send");

    let first = next_non_empty(&mut subscription, Duration::from_secs(5), "first read").await;
    assert_eq!(first.len(), 1);
    let id = first[0].id.clone();
    let nacked = Instant::now();
    first
        .into_iter()
        .next()
        .unwrap()
        .nack()
        .await
        .expect("nack");

    let again = next_non_empty(&mut subscription, Duration::from_secs(5), "redelivery").await;
    let waited = nacked.elapsed();
    assert_eq!(
        again.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    // Promptly, but not at once: a store outage must not become a tight loop.
    assert!(
        waited >= Duration::from_millis(500),
        "back after {waited:?}"
    );
    let conn = redis().await;
    assert_eq!(pending(&conn, &stream, GROUP).await, 1, "still pending");
    again.into_iter().next().unwrap().ack().await.expect("ack");
    assert_eq!(pending(&conn, &stream, GROUP).await, 0);
}
