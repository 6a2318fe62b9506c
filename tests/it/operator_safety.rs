//! The operator routes against hostile or unlucky input: a producer that
//! names its own `source_channel`, a letter forged onto a dead-letter
//! channel. Helpers are `operator.rs`'s.

use serde_json::json;

use crate::helpers::{
    alliance_created, mocks, on_create_alliance, partner, spawn_app_with, BrokerKind, TestConfig,
};
use crate::operator::{dead_letters, get, post};

/// A producer's entry carrying its own `source_channel` (Redis keeps both
/// it and the one dead-lettering appends) is listed and redriven to the
/// channel it was really consumed from, never to the one it named; the
/// fields given back are the producer's own, its `source_channel` too.
#[tokio::test]
async fn a_producers_own_source_channel_never_steers_a_redrive() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-1"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.limits.max_message_bytes = 2048;
    let mut app = spawn_app_with(alliances, integrations, config).await;
    let source = app.channels.partner_events.clone();
    let dlq = format!("{source}-dlq");
    let other = format!("{source}-other-stream");
    let p = partner();
    let fields: Vec<(String, String)> = [
        ("event_id", format!("evt-{p}")),
        ("correlation_id", format!("corr-{p}")),
        ("event_type", "PartnerCreated".to_string()),
        (
            "payload",
            json!({"partner_id": p, "name": "n".repeat(3000)}).to_string(),
        ),
        ("timestamp", "2026-12-02T06:00:00.000Z".to_string()),
        ("source_channel", other.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    app.publish_fields(&source, &fields).await;
    let letter = dead_letters(&app, &dlq, 1).await.remove(0);
    assert_eq!(letter["source_channel"], source, "{letter}");
    let id = letter["id"].as_str().unwrap().to_string();

    app.config.settings.limits.max_message_bytes = 1 << 20;
    app.restart().await;
    let (status, body) = post(
        &app,
        &format!("/dead-letters/{id}/redrive"),
        json!({"reason": "limit raised"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["source_channel"], source, "{body}");
    assert_eq!(app.settled(&p).await["state"], "completed");
    if BrokerKind::from_env() == BrokerKind::Redis {
        assert!(app.entries(&other).await.is_empty(), "published to {other}");
        let entries = app.entries(&source).await;
        let back = entries.last().expect("redriven entry");
        assert_eq!(back.get("source_channel"), Some(&other), "{back:?}");
        assert!(back.get("dlq_reason").is_none(), "{back:?}");
    }
}

/// A letter put straight onto a dead-letter channel naming another
/// channel as its source is refused (422), stays listed, and nothing is
/// published there.
#[tokio::test]
async fn a_letter_naming_a_foreign_source_is_not_redriven() {
    let (alliances, integrations) = mocks().await;
    let config = TestConfig::new(&alliances, &integrations).await;
    let app = spawn_app_with(alliances, integrations, config).await;
    let source = app.channels.partner_events.clone();
    let dlq = format!("{source}-dlq");
    let other = format!("{source}-other-stream");
    let fields: Vec<(String, String)> = [
        ("event_id", "forged-1".to_string()),
        ("event_type", "PartnerCreated".to_string()),
        ("payload", json!({"partner_id": partner()}).to_string()),
        ("dlq_reason", "forged".to_string()),
        ("source_channel", other.clone()),
        ("failed_at", "2026-12-02T06:00:00.000Z".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    app.publish_fields(&dlq, &fields).await;
    let letter = dead_letters(&app, &dlq, 1).await.remove(0);
    let id = letter["id"].as_str().unwrap().to_string();
    let (status, body) = post(
        &app,
        &format!("/dead-letters/{id}/redrive"),
        json!({"reason": "try"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    assert_eq!(
        get(&app, &format!("/dead-letters/{id}")).await["state"],
        "pending"
    );
    if BrokerKind::from_env() == BrokerKind::Redis {
        assert!(app.entries(&other).await.is_empty(), "published to {other}");
    }
}

/// A listing holds many letters: a big value in one is cut to a few KiB
/// there (`"truncated": true`), and read in full by its id.
#[tokio::test]
async fn a_listing_truncates_big_messages_and_the_letter_keeps_them() {
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.limits.max_message_bytes = 2048;
    let app = spawn_app_with(alliances, integrations, config).await;
    let source = app.channels.partner_events.clone();
    let dlq = format!("{source}-dlq");
    let payload = json!({"partner_id": partner(), "name": "n".repeat(40_000)}).to_string();
    let fields: Vec<(String, String)> = [
        ("event_id", "big-1".to_string()),
        ("event_type", "PartnerCreated".to_string()),
        ("payload", payload.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    app.publish_fields(&source, &fields).await;
    let listed = dead_letters(&app, &dlq, 1).await.remove(0);
    assert_eq!(listed["truncated"], true, "{}", listed["truncated"]);
    let shown = listed.to_string().len();
    assert!(shown < 10_000, "a listed letter of {shown} bytes");
    assert_eq!(listed["message"]["event_id"], "big-1");
    let id = listed["id"].as_str().unwrap();
    let full = get(&app, &format!("/dead-letters/{id}")).await;
    assert_eq!(full["truncated"], false);
    // Redis keeps the payload as the text it was, Pulsar as JSON.
    let whole = &full["message"]["payload"];
    let whole: serde_json::Value = match whole.as_str() {
        Some(text) => serde_json::from_str(text).unwrap(),
        None => whole.clone(),
    };
    assert_eq!(whole.to_string(), payload);
}

/// A NUL (or any control character) in a dead letter's id or in a channel
/// filter is the caller's mistake: 4xx JSON, never a store failure's 503.
#[tokio::test]
async fn ids_and_channels_with_nul_are_refused_as_bad_input() {
    let (alliances, integrations) = mocks().await;
    let config = TestConfig::new(&alliances, &integrations).await;
    let app = spawn_app_with(alliances, integrations, config).await;
    let reason = json!({"reason": "r"});
    let calls = [
        (reqwest::Method::GET, "/dead-letters/a%00.1-0", None),
        (reqwest::Method::GET, "/dead-letters/%00", None),
        (reqwest::Method::GET, "/dead-letters?channel=a%00-dlq", None),
        (reqwest::Method::GET, "/dead-letters?channel=a%1B-dlq", None),
        (
            reqwest::Method::POST,
            "/dead-letters/a%00.1-0/redrive",
            Some(reason.clone()),
        ),
        (
            reqwest::Method::POST,
            "/dead-letters/a.1%00-0/discard",
            Some(reason.clone()),
        ),
        (
            reqwest::Method::POST,
            "/dead-letters/redrive",
            Some(
                json!({"filter": {"channel": "a\u{0}-dlq"}, "name": "n", "reason": "r", "dry_run": true}),
            ),
        ),
        (
            reqwest::Method::POST,
            "/dead-letters/redrive",
            Some(json!({"filter": {"channel": "a\u{0}-dlq"}, "name": "n", "reason": "r"})),
        ),
    ];
    for (method, path, body) in calls {
        let (status, answer) = crate::operator::admin(&app, method.clone(), path, body).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        assert!(
            answer["error"].is_string() && answer["detail"].is_string(),
            "{method} {path}: {answer}"
        );
    }
}

/// A bulk redrive reaching a letter someone else is redriving right now
/// waits for that to settle rather than calling it skipped: should that
/// redrive fail, the job still sends the letter.
#[tokio::test]
async fn a_job_waits_for_a_letter_being_redriven_elsewhere() {
    use sqlx::Connection;
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.job_rate_per_sec = 1;
    let app = spawn_app_with(alliances, integrations, config).await;
    let source = app.channels.partner_events.clone();
    let dlq = format!("{source}-dlq");
    for n in 0..3 {
        let fields: Vec<(String, String)> = [
            ("event_id", format!("busy-{n}")),
            // Valid JSON (the Pulsar probe sends it unquoted), no saga.
            ("payload", "{}".to_string()),
            ("dlq_reason", "busy".to_string()),
            ("source_channel", source.clone()),
            ("failed_at", "2026-12-02T06:00:00.000Z".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        app.publish_fields(&dlq, &fields).await;
    }
    let letters = dead_letters(&app, &dlq, 3).await;
    let last = letters[0]["id"].as_str().unwrap().to_string();
    let mut db = sqlx::PgConnection::connect(app.config.database_url())
        .await
        .expect("connect to the test database");
    let bulk = json!({"filter": {"channel": dlq, "reason_contains": "busy"},
        "name": "busy", "reason": "r"});
    let (status, started) = post(&app, "/dead-letters/redrive", bulk).await;
    assert_eq!((status, started["matched"].clone()), (202, json!(3)));
    // Another redrive of the job's last item, under way (recent: the
    // runner leaves it alone).
    sqlx::query(
        "UPDATE dead_letters SET state = 'redriving', acted_by = 'bob', \
         action_reason = 'by hand', acted_at = now() WHERE id = $1",
    )
    .bind(&last)
    .execute(&mut db)
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let job = get(&app, &format!("/jobs/{job_id}")).await;
    assert_eq!(
        (job["state"].clone(), job["skipped"].clone()),
        (json!("running"), json!(0)),
        "{job}"
    );
    // That redrive failed: the letter is pending again, and the job sends it.
    sqlx::query(
        "UPDATE dead_letters SET state = 'pending', acted_by = NULL, \
         action_reason = NULL, acted_at = NULL WHERE id = $1",
    )
    .bind(&last)
    .execute(&mut db)
    .await
    .unwrap();
    let job =
        crate::operator::finished_job(&app, &job_id, std::time::Duration::from_secs(20)).await;
    assert_eq!(
        (job["state"].clone(), job["done"].clone()),
        (json!("done"), json!(3)),
        "{job}"
    );
}
