//! The Redis adapter's own upkeep: a nacked entry comes back within
//! seconds, not after the claim threshold; the streams the orchestrator
//! consumes are trimmed, but never of an entry some group still needs;
//! consumers of instances that are gone leave our group once they hold
//! nothing.
//!
//! Always on the suite's Redis (`TEST_REDIS_URL`), whatever `TEST_BROKER`
//! says: Pulsar has nothing of the kind, so `make test` runs these in
//! its first pass only.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamReadReply};
use saga_orchestrator::transport::{
    Delivery, OutboundMessage, RawMessage, RedisTransport, Subscription, Transport,
};
use uuid::Uuid;

use crate::helpers::{
    alliance_created, broker_url, env, mocks, on_create_alliance, partner, spawn_app_with, TestApp,
    TestConfig,
};

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

/// How long a test waits for the service's upkeep to show.
const UPKEEP_TIMEOUT: Duration = Duration::from_secs(15);

async fn create_group(conn: &MultiplexedConnection, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn.clone())
        .await
        .expect("XGROUP CREATE");
}

/// Ids `consumer` of `group` reads (up to `count` new ones), left unacked.
async fn read_as(
    conn: &MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
) -> Vec<String> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut conn.clone())
        .await
        .expect("XREADGROUP");
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

async fn ack(conn: &MultiplexedConnection, stream: &str, group: &str, ids: &[String]) {
    let acked: usize = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(&mut conn.clone())
        .await
        .expect("XACK");
    assert_eq!(acked, ids.len(), "XACK {ids:?}");
}

/// The ids `stream` holds, oldest first.
async fn ids(conn: &MultiplexedConnection, stream: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn.clone())
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(id, _)| id).collect()
}

/// Waits until `stream` holds exactly `want`, then checks that several
/// more upkeep rounds leave it so.
async fn holds_exactly(conn: &MultiplexedConnection, stream: &str, want: &[String]) {
    let started = Instant::now();
    loop {
        let now = ids(conn, stream).await;
        if now == want {
            break;
        }
        assert!(
            started.elapsed() < UPKEEP_TIMEOUT,
            "{stream} holds {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ids(conn, stream).await, want, "{stream} trimmed too far");
}

/// Waits until the orchestrator's group has read and acked `n` entries of `stream`.
async fn consumed(conn: &MultiplexedConnection, stream: &str, n: usize) {
    let started = Instant::now();
    loop {
        let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn.clone())
            .await
            .expect("XINFO GROUPS");
        let ours = groups.groups.into_iter().find(|g| g.name == GROUP);
        if ours.is_some_and(|g| g.entries_read == Some(n) && g.pending == 0) {
            return;
        }
        assert!(started.elapsed() < UPKEEP_TIMEOUT, "{stream}: not consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.expect("metrics")
}

#[tokio::test]
async fn trimming_drops_only_what_every_group_has_acknowledged() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-trim"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    let broker = &mut config.settings.broker;
    broker.url = broker_url(&env("TEST_REDIS_URL"));
    broker.trim_interval = Some(Duration::from_millis(100));
    broker.trim_min_age = Duration::ZERO;
    let channels = config.channels().clone();
    let events = channels.partner_events.clone();
    let dlq = format!("{events}-dlq");
    let conn = redis().await;
    // Another team reads partner-events too; and someone has read and
    // acked everything the orchestrator produces, which still is not ours
    // to trim (we cannot know all of its readers).
    create_group(&conn, &events, "other-team").await;
    for produced in [&channels.saga_events, &dlq] {
        create_group(&conn, produced, "audit").await;
    }
    let app = spawn_app_with(alliances, integrations, config).await;

    let partners: Vec<String> = (0..3).map(|_| partner()).collect();
    for p in &partners {
        app.publish_partner(p, &format!("evt-{p}"), "corr-trim")
            .await;
    }
    let poison = [("event_id".to_string(), "bad".to_string())];
    app.publish_fields(&events, &poison).await;
    for p in &partners {
        app.settled(p).await;
    }
    consumed(&conn, &events, 4).await;
    let all = ids(&conn, &events).await;
    assert_eq!(all.len(), 4);
    // The other team has read nothing yet: everything stays.
    holds_exactly(&conn, &events, &all).await;

    // It reads two and acks the first: only that one may go.
    let read = read_as(&conn, &events, "other-team", "them", 2).await;
    assert_eq!(read, all[..2]);
    ack(&conn, &events, "other-team", &read[..1]).await;
    holds_exactly(&conn, &events, &all[1..]).await;

    // Nothing pending any more, but it has not read the rest.
    ack(&conn, &events, "other-team", &read[1..]).await;
    holds_exactly(&conn, &events, &all[2..]).await;

    let rest = read_as(&conn, &events, "other-team", "them", 10).await;
    ack(&conn, &events, "other-team", &rest).await;
    holds_exactly(&conn, &events, &[]).await;
    let text = metrics(&app).await;
    let counted = format!("saga_redis_trimmed_entries_total{{channel=\"{events}\"}} 4");
    assert!(text.contains(&counted), "{counted} not in\n{text}");

    for produced in [&channels.saga_events, &dlq] {
        let before = ids(&conn, produced).await;
        assert!(!before.is_empty(), "{produced} is empty");
        let read = read_as(&conn, produced, "audit", "auditor", 1000).await;
        ack(&conn, produced, "audit", &read).await;
        holds_exactly(&conn, produced, &before).await;
    }
}

/// The consumers of `group` on `stream`, by name.
async fn consumers(conn: &MultiplexedConnection, stream: &str, group: &str) -> Vec<String> {
    let reply: StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(&mut conn.clone())
        .await
        .expect("XINFO CONSUMERS");
    let mut names: Vec<String> = reply.consumers.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn idle_consumers_holding_nothing_leave_our_group() {
    let stream = stream();
    let conn = redis().await;
    // The removal threshold is a few times the claim threshold: short here.
    let claim_idle = Duration::from_millis(100);
    let transport = RedisTransport::connect(&env("TEST_REDIS_URL"), GROUP, "me", claim_idle)
        .await
        .expect("connect");
    let mut subscription = transport.subscribe(&stream).await.expect("subscribe");
    create_group(&conn, &stream, "other-team").await;
    transport
        .send(&stream, (0..4).map(entry).collect())
        .await
        .expect("send");
    // This instance reads one (Redis lists a consumer once it has read),
    // then stays as idle as the others.
    let mine = subscription.next_batch(1).await.expect("read");
    assert_eq!(mine.len(), 1);
    for delivery in mine {
        delivery.ack().await.expect("ack");
    }
    // Instances that are gone: one acked all it read, one left an entry
    // pending (it must be reclaimed first, not dropped with its consumer).
    let read = read_as(&conn, &stream, GROUP, "gone-clean", 1).await;
    ack(&conn, &stream, GROUP, &read).await;
    read_as(&conn, &stream, GROUP, "gone-holding", 1).await;
    // Another team's consumers are not ours to remove, however idle.
    let theirs = read_as(&conn, &stream, "other-team", "their-idle", 10).await;
    ack(&conn, &stream, "other-team", &theirs).await;

    tokio::time::sleep(claim_idle * 4 + Duration::from_millis(500)).await;
    // One that has just read and acked is alive, whatever it holds.
    let read = read_as(&conn, &stream, GROUP, "alive", 1).await;
    ack(&conn, &stream, GROUP, &read).await;
    transport
        .maintain(std::slice::from_ref(&stream))
        .await
        .expect("upkeep");

    assert_eq!(
        consumers(&conn, &stream, GROUP).await,
        ["alive", "gone-holding", "me"]
    );
    assert_eq!(
        consumers(&conn, &stream, "other-team").await,
        ["their-idle"]
    );
    assert_eq!(pending(&conn, &stream, GROUP).await, 1, "nothing dropped");
}
