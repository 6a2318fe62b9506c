//! What a crash leaves behind is finished by whoever runs next: pending
//! broker entries of a dead consumer, and sagas leased by a dead instance.

use std::time::Duration;

use serde_json::json;
use wiremock::ResponseTemplate;

use crate::helpers::{
    alliance_created, mocks, on_create_alliance, partner, spawn_app_with, TestBroker, TestConfig,
};

#[tokio::test]
async fn entries_left_pending_by_a_dead_consumer_are_reclaimed() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-claimed"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.broker.claim_idle = Duration::from_millis(500);
    let stream = config.channels().partner_events.clone();
    let broker = TestBroker::connect().await;

    // A consumer of the subscription takes the event and dies before acking it.
    let p = partner();
    broker
        .publish_partner(&stream, &p, &format!("evt-{p}"), "corr-orphan")
        .await;
    broker.leave_unacked_by_a_dead_consumer(&stream).await;

    let mut app = spawn_app_with(alliances, integrations, config).await;
    let saga = app.settled(&p).await;

    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["correlation_id"], "corr-orphan");
    assert_eq!(app.stop_and_count_unacked(&stream).await, 0);
}

#[tokio::test]
async fn a_saga_abandoned_mid_retry_is_finished_after_a_restart() {
    let (alliances, integrations) = mocks().await;
    // The first attempt fails and asks for a pause; the instance dies during it.
    on_create_alliance(
        &alliances,
        ResponseTemplate::new(503).insert_header("Retry-After", "1"),
        Some(1),
    )
    .await;
    on_create_alliance(&alliances, alliance_created("a-recovered"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.participants.step_timeout = Duration::from_millis(500);
    let mut app = spawn_app_with(alliances, integrations, config).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-crash")
        .await;
    let saga_id = loop {
        if let Some(saga) = app.sagas_of(&p).await.first() {
            if saga["attempts"] == 2 {
                break saga["saga_id"].as_str().unwrap().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    app.restart().await;

    let saga = app.settled(&p).await;
    assert_eq!(saga["saga_id"], saga_id.as_str());
    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["alliance_id"], "a-recovered");
    let requests = app.alliances.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2, "one failed attempt, one recovered");
    assert_eq!(
        requests[0].headers["idempotency-key"],
        requests[1].headers["idempotency-key"]
    );
}

#[tokio::test]
async fn sagas_recorded_beyond_capacity_wait_for_the_sweeper() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        alliance_created("a").set_delay(Duration::from_millis(300)),
        None,
    )
    .await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.limits.max_in_flight = 1;
    let app = spawn_app_with(alliances, integrations, config).await;

    let partners: Vec<String> = (0..4).map(|_| partner()).collect();
    for p in &partners {
        let r = app
            .post(
                "/sagas",
                &json!({"payload": {"partner_id": p, "name": "Queue"}}),
            )
            .await;
        assert_eq!(r.status(), 202, "accepted even when at capacity");
    }
    for p in &partners {
        assert_eq!(app.settled(p).await["state"], "completed");
    }
}

#[tokio::test]
async fn events_published_before_the_first_start_are_consumed() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-early"), None).await;
    let config = TestConfig::new(&alliances, &integrations).await;
    let stream = config.channels().partner_events.clone();
    let p = partner();
    TestBroker::connect()
        .await
        .publish_partner(&stream, &p, &format!("evt-{p}"), "corr-early")
        .await;

    let app = spawn_app_with(alliances, integrations, config).await;
    assert_eq!(app.settled(&p).await["state"], "completed");
}

#[tokio::test]
async fn a_batching_producers_events_survive_a_crash_part_way_through_the_batch() {
    let (alliances, integrations) = mocks().await;
    // Slow enough that the instance dies with most of the batch unhandled.
    on_create_alliance(
        &alliances,
        alliance_created("a-batch").set_delay(Duration::from_millis(500)),
        None,
    )
    .await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    // Fewer slots than the batch: its messages are handled (and acked) in parts.
    config.settings.limits.max_in_flight = 3;
    let stream = config.channels().partner_events.clone();
    let mut app = spawn_app_with(alliances, integrations, config).await;
    let partners: Vec<String> = (0..12).map(|_| partner()).collect();
    app.broker
        .publish_partners_batched(&stream, &partners)
        .await;

    // The first few are recorded (and their messages acked)...
    let started = std::time::Instant::now();
    while app
        .get("/sagas?limit=500")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["items"]
        .as_array()
        .map_or(0, Vec::len)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...then the instance goes. The rest of the batch must come again.
    app.restart().await;
    for p in &partners {
        assert_eq!(app.settled(p).await["state"], "completed", "{p}");
    }
    assert_eq!(app.stop_and_count_unacked(&stream).await, 0);
}
