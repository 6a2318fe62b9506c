//! The outbox relay never stops for one row: a stored row that cannot be
//! read back as a message is parked with its reason and the rest is
//! relayed, on both stores; a message we stored ourselves is published as
//! stored, even with an id today's inbound rule would refuse.

use serde_json::Value;

use crate::api::summary_when;
use crate::helpers::{
    alliance_created, mocks, on_create_alliance, partner, spawn_app_with, Entry, TestApp,
    TestConfig,
};
use crate::outbox_rows::{long_correlation_event, sqlite_url, Db};

/// The value of a counter or gauge in `/metrics` (summed over its labels
/// matching `label`), 0 when absent.
pub(crate) async fn metric(app: &TestApp, name: &str, label: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether `entry` is a `kind` event of `partner_id`'s saga.
pub(crate) fn event_of(entry: &Entry, kind: &str, partner_id: &str) -> bool {
    entry.get("event_type").is_some_and(|t| t == kind)
        && entry
            .get("payload")
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .is_some_and(|p| p["partner_id"] == partner_id)
}

async fn unreadable_rows_are_parked_and_the_rest_is_relayed(database_url: Option<String>) {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-relay"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    if let Some(url) = database_url {
        config.settings.database.url = url.into();
    }
    let db = Db::from_url(config.database_url());
    let app = spawn_app_with(alliances, integrations, config).await;
    let events = app.channels.saga_events.clone();

    // Oldest first, so every claim of the relay meets them before the good ones.
    let mut bad = vec![
        db.insert_outbox(&events, r#"{"hello": "not an envelope"}"#)
            .await,
        db.insert_outbox(&events, r#"["a", "list"]"#).await,
    ];
    if matches!(db, Db::Sqlite(_)) {
        // Only SQLite can hold text that is not JSON at all.
        bad.push(db.insert_outbox(&events, "{not json").await);
    }
    let long_partner = partner();
    let (long_id, long_event) = long_correlation_event(&long_partner);
    db.insert_outbox(&events, &long_event.to_string()).await;

    let partners: Vec<String> = (0..3).map(|_| partner()).collect();
    for p in &partners {
        app.publish_partner(p, &format!("evt-{p}"), "corr-relay")
            .await;
    }

    for p in &partners {
        app.wait_for_entries(&events, 1, |e| event_of(e, "SagaCompleted", p))
            .await;
    }
    let published = app
        .wait_for_entries(&events, 1, |e| event_of(e, "SagaStarted", &long_partner))
        .await;
    assert_eq!(
        published[0]["correlation_id"], long_id,
        "published as stored"
    );

    let parked = db.parked().await;
    assert_eq!(
        parked.iter().map(|r| r.id).collect::<Vec<_>>(),
        bad,
        "{parked:#?}"
    );
    for row in &parked {
        assert_eq!(row.channel, events);
        assert!(!row.reason.is_empty(), "{row:?}");
    }
    assert!(parked[0].reason.contains("event_id"), "{parked:?}");
    assert!(
        parked[0].message.contains("not an envelope"),
        "kept as stored"
    );

    let summary = summary_when(&app, |s| s["outbox_backlog"] == 0).await;
    assert_eq!(summary["outbox_parked"], bad.len(), "{summary:#}");
    let counted = metric(&app, "saga_outbox_parked_total", "reason=\"unreadable\"").await;
    assert!(counted >= bad.len() as f64, "parked counter: {counted}");
    // The gauge is process-wide: exact only when this is the one service
    // in the process (nextest runs each test in its own).
    let gauge = metric(&app, "saga_outbox_parked", "").await;
    if std::env::var_os("NEXTEST").is_some() {
        assert_eq!(gauge, bad.len() as f64, "parked gauge");
    }
}

#[tokio::test]
async fn unreadable_outbox_rows_are_parked_and_the_rest_is_relayed_on_postgres() {
    unreadable_rows_are_parked_and_the_rest_is_relayed(None).await;
}

#[tokio::test]
async fn unreadable_outbox_rows_are_parked_and_the_rest_is_relayed_on_sqlite() {
    unreadable_rows_are_parked_and_the_rest_is_relayed(Some(sqlite_url("relay"))).await;
}

#[tokio::test]
async fn a_saga_event_with_a_300_character_correlation_id_is_published_not_parked() {
    // The production incident: such a row stopped the relay for everyone.
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-long"), None).await;
    let config = TestConfig::new(&alliances, &integrations).await;
    let db = Db::from_url(config.database_url());
    let app = spawn_app_with(alliances, integrations, config).await;
    let events = app.channels.saga_events.clone();
    let long_partner = partner();
    let (long_id, long_event) = long_correlation_event(&long_partner);
    db.insert_outbox(&events, &long_event.to_string()).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-after")
        .await;

    app.wait_for_entries(&events, 1, |e| event_of(e, "SagaCompleted", &p))
        .await;
    let published = app
        .wait_for_entries(&events, 1, |e| event_of(e, "SagaStarted", &long_partner))
        .await;
    assert_eq!(published[0]["correlation_id"], long_id);
    assert_eq!(
        published[0]["event_id"],
        long_event["event_id"].as_str().expect("event_id")
    );
    summary_when(&app, |s| s["outbox_backlog"] == 0).await;
    assert!(db.parked().await.is_empty(), "nothing to park");
}

/// A raw connection to the suite's Redis.
async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(crate::helpers::env("TEST_REDIS_URL")).expect("redis URL");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to TEST_REDIS_URL")
}

#[tokio::test]
async fn an_error_that_hits_a_whole_channel_parks_nothing() {
    if crate::helpers::BrokerKind::from_env() != crate::helpers::BrokerKind::Redis {
        return; // A key of the wrong type is Redis's way to break a channel.
    }
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-channel"), None).await;
    let config = TestConfig::new(&alliances, &integrations).await;
    let events = config.channels().saga_events.clone();
    // saga-events is unusable (every XADD answers WRONGTYPE) while the
    // broker itself answers pings: no message is to blame for that.
    let mut conn = redis().await;
    let _: () = redis::cmd("SET")
        .arg(&events)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let app = spawn_app_with(alliances, integrations, config).await;
    let partners: Vec<String> = (0..3).map(|_| partner()).collect();
    for p in &partners {
        app.publish_partner(p, &format!("evt-{p}"), "corr-channel")
            .await;
    }
    for p in &partners {
        assert_eq!(app.settled(p).await["state"], "completed");
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        metric(&app, "saga_outbox_parked_total", "").await,
        0.0,
        "an outage of a channel parks nothing"
    );

    // Once the channel works again, every event goes out.
    let _: () = redis::cmd("DEL")
        .arg(&events)
        .query_async(&mut conn)
        .await
        .unwrap();
    for p in &partners {
        app.wait_for_entries(&events, 1, |e| event_of(e, "SagaCompleted", p))
            .await;
    }
}
