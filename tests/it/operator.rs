//! The operator routes (docs/contract.md §5, "Operator routes"), driven
//! from outside on the broker `TEST_BROKER` names: dead letters listed,
//! read, redriven once and discarded; who did it and why in the audit
//! record; refusals without a token. Bulk jobs and the command line are
//! in `operator_jobs.rs`, on the helpers here.

use std::time::{Duration, Instant};

use saga_orchestrator::config::NamedToken;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{
    alliance_created, mocks, on_create_alliance, partner, spawn_app_with, BrokerKind, TestApp,
    TestConfig,
};

const ALICE: &str = "alice-s3cret-token";

/// An admin request with the test's `ADMIN_TOKEN` (named `admin`).
pub async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    as_admin(app, "test-admin-token", method, path, body).await
}

pub async fn as_admin(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn get(app: &TestApp, path: &str) -> Value {
    let (status, body) = admin(app, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

pub async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    admin(app, reqwest::Method::POST, path, Some(body)).await
}

/// Waits until the listing holds `n` dead letters of `channel`.
pub async fn dead_letters(app: &TestApp, channel: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let page = get(app, &format!("/dead-letters?channel={channel}&limit=500")).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            return items;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {n} dead letters: {page}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until job `job_id` is no longer running.
pub async fn finished_job(app: &TestApp, job_id: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let job = get(app, &format!("/jobs/{job_id}")).await;
        if job["state"] != "running" {
            return job;
        }
        assert!(started.elapsed() < within, "job still running: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A service with a 2 KiB `MAX_MESSAGE_BYTES` (alliances creating every
/// alliance) that has dead-lettered `n` partners' events as too big: the
/// service, the partners, and their letters as listed.
pub async fn big_partners_dead_lettered(n: usize) -> (TestApp, Vec<String>, Vec<Value>) {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-1"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.limits.max_message_bytes = 2048;
    let app = spawn_app_with(alliances, integrations, config).await;
    let dlq = format!("{}-dlq", app.channels.partner_events);
    let partners: Vec<String> = (0..n).map(|_| partner()).collect();
    for p in &partners {
        publish_big_partner(&app, p).await;
    }
    let letters = dead_letters(&app, &dlq, n).await;
    (app, partners, letters)
}

/// A `PartnerCreated` too big for a 2 KiB `MAX_MESSAGE_BYTES`.
async fn publish_big_partner(app: &TestApp, partner_id: &str) {
    let fields: Vec<(String, String)> = [
        ("event_id", format!("evt-{partner_id}")),
        ("correlation_id", format!("corr-{partner_id}")),
        ("event_type", "PartnerCreated".to_string()),
        (
            "payload",
            json!({"partner_id": partner_id, "name": "n".repeat(3000)}).to_string(),
        ),
        ("timestamp", "2026-12-02T06:00:00.000Z".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    app.publish_fields(&app.channels.partner_events.clone(), &fields)
        .await;
}

pub async fn audit(app: &TestApp) -> Vec<Value> {
    get(app, "/audit?limit=500").await["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The scenario redrive exists for: events dead-lettered for a cause that
/// is then fixed (over `MAX_MESSAGE_BYTES`; the limit raised and the
/// service restarted) are redriven, one alone and the rest in bulk, and
/// each starts exactly one saga; redriving again doubles nothing.
#[tokio::test]
async fn dead_letters_fixed_by_a_restart_are_redriven_once_each() {
    let (mut app, partners, letters) = big_partners_dead_lettered(4).await;
    let dlq = format!("{}-dlq", app.channels.partner_events);
    for l in &letters {
        assert!(
            l["dlq_reason"]
                .as_str()
                .unwrap()
                .contains("MAX_MESSAGE_BYTES"),
            "{l}"
        );
        assert_eq!(l["source_channel"], app.channels.partner_events);
        assert!(
            l["message"]["event_id"]
                .as_str()
                .unwrap()
                .starts_with("evt-"),
            "{l}"
        );
    }

    app.config.settings.limits.max_message_bytes = 1 << 20;
    app.restart().await;

    // One alone: once, then refused.
    let one = letters[0]["id"].as_str().unwrap();
    let (status, body) = post(
        &app,
        &format!("/dead-letters/{one}/redrive"),
        json!({"reason": "limit raised"}),
    )
    .await;
    assert_eq!(
        (status, body["redriven"].clone()),
        (202, json!(true)),
        "{body}"
    );
    let (status, body) = post(
        &app,
        &format!("/dead-letters/{one}/redrive"),
        json!({"reason": "again"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        get(&app, &format!("/dead-letters/{one}")).await["state"],
        "redriven"
    );

    // The rest in bulk, previewed first.
    let bulk = json!({"filter": {"channel": dlq, "reason_contains": "MAX_MESSAGE_BYTES"},
        "name": "incident-big-partners", "reason": "limit raised"});
    let mut preview = bulk.clone();
    preview["dry_run"] = json!(true);
    let (status, body) = post(&app, "/dead-letters/redrive", preview).await;
    assert_eq!((status, body["matched"].clone()), (200, json!(3)), "{body}");
    let (status, started) = post(&app, "/dead-letters/redrive", bulk.clone()).await;
    assert_eq!(
        (status, started["matched"].clone()),
        (202, json!(3)),
        "{started}"
    );
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let job = finished_job(&app, &job_id, Duration::from_secs(30)).await;
    assert_eq!(
        (job["state"].clone(), job["done"].clone()),
        (json!("done"), json!(3)),
        "{job}"
    );

    for p in &partners {
        assert_eq!(app.settled(p).await["state"], "completed");
    }
    // The same body again, and the single redrive again: nothing twice.
    let (status, again) = post(&app, "/dead-letters/redrive", bulk).await;
    assert_eq!(
        (status, again["job_id"].clone(), again["duplicate"].clone()),
        (202, json!(job_id), json!(true))
    );
    assert_eq!(
        post(
            &app,
            &format!("/dead-letters/{one}/redrive"),
            json!({"reason": "x"})
        )
        .await
        .0,
        409
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in &partners {
        assert_eq!(app.sagas_of(p).await.len(), 1, "{p} has one saga");
    }
    let calls = app.alliances.received_requests().await.unwrap_or_default();
    assert_eq!(calls.len(), 4, "one alliance call per partner");
    assert!(
        get(&app, &format!("/dead-letters?channel={dlq}")).await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    if BrokerKind::from_env() == BrokerKind::Redis {
        let left = app.entries(&dlq).await;
        assert!(left.is_empty(), "redriven, yet on the stream: {left:?}");
    }

    let record = audit(&app).await;
    let redrives = record
        .iter()
        .filter(|e| e["action"] == "dead_letter.redrive")
        .count();
    assert_eq!(redrives, 4, "{record:?}");
    assert!(record.iter().any(|e| e["action"] == "job.start"
        && e["actor"] == "admin"
        && e["reason"] == "limit raised"));
}

/// A dead letter discarded with a reason leaves the listing once; the
/// audit record names who (the token's name) and why.
#[tokio::test]
async fn a_discard_is_audited_under_the_tokens_name() {
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.admin_tokens = vec![NamedToken {
        name: "alice".into(),
        token: ALICE.into(),
    }];
    let app = spawn_app_with(alliances, integrations, config).await;
    let dlq = format!("{}-dlq", app.channels.partner_events);
    let fields = vec![
        ("event_id".to_string(), "poison-1".to_string()),
        ("event_type".to_string(), "PartnerCreated".to_string()),
        ("payload".to_string(), "{not json".to_string()),
    ];
    app.publish_fields(&app.channels.partner_events.clone(), &fields)
        .await;
    let letter = dead_letters(&app, &dlq, 1).await.remove(0);
    let id = letter["id"].as_str().unwrap();
    let path = format!("/dead-letters/{id}/discard");

    let (status, _) = post(&app, &path, json!({})).await;
    assert_eq!(status, 422, "a discard says why");
    let (status, body) = as_admin(
        &app,
        ALICE,
        reqwest::Method::POST,
        &path,
        Some(json!({"reason": "garbage from a test producer"})),
    )
    .await;
    assert_eq!(
        (status, body["discarded"].clone()),
        (200, json!(true)),
        "{body}"
    );
    assert_eq!(post(&app, &path, json!({"reason": "again"})).await.0, 409);
    let shown = get(&app, &format!("/dead-letters/{id}")).await;
    assert_eq!(
        (shown["state"].clone(), shown["acted_by"].clone()),
        (json!("discarded"), json!("alice"))
    );
    assert!(
        get(&app, &format!("/dead-letters?channel={dlq}")).await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    if BrokerKind::from_env() == BrokerKind::Redis {
        // A stream can drop one entry; a Pulsar topic cannot.
        let left = app.entries(&dlq).await;
        assert!(left.is_empty(), "discarded, yet on the stream: {left:?}");
    }
    let record = audit(&app).await;
    let entry = record
        .iter()
        .find(|e| e["action"] == "dead_letter.discard")
        .expect("audited");
    assert_eq!(
        (entry["actor"].clone(), entry["target"].clone()),
        (json!("alice"), json!(id))
    );
    assert_eq!(entry["reason"], "garbage from a test producer");
}

/// Every operator route needs a token: 401 without or with a wrong one,
/// 403 when none is configured; the token never shows in an answer.
#[tokio::test]
async fn operator_routes_refuse_without_a_token() {
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.admin_tokens = vec![NamedToken {
        name: "alice".into(),
        token: ALICE.into(),
    }];
    let app = spawn_app_with(alliances, integrations, config.clone()).await;
    let job = "0190b2a4-0000-7000-8000-000000000000";
    let routes = [
        (reqwest::Method::GET, "/dead-letters".to_string()),
        (reqwest::Method::GET, "/dead-letters/x.1-0".to_string()),
        (
            reqwest::Method::POST,
            "/dead-letters/x.1-0/redrive".to_string(),
        ),
        (
            reqwest::Method::POST,
            "/dead-letters/x.1-0/discard".to_string(),
        ),
        (reqwest::Method::POST, "/dead-letters/redrive".to_string()),
        (reqwest::Method::POST, "/sagas/retry".to_string()),
        (reqwest::Method::GET, format!("/jobs/{job}")),
        (reqwest::Method::POST, format!("/jobs/{job}/abort")),
        (reqwest::Method::GET, "/audit".to_string()),
    ];
    let body = json!({"reason": "r", "name": "n"});
    for (method, path) in &routes {
        let url = format!("{}{path}", app.address);
        let none = app
            .http
            .request(method.clone(), &url)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{method} {path} without a token");
        let wrong = app
            .http
            .request(method.clone(), &url)
            .bearer_auth("nope")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{method} {path} with a wrong token");
        assert!(!wrong.text().await.unwrap().contains(ALICE));
    }
    drop(app);

    let (alliances, integrations) = mocks().await;
    let mut closed = TestConfig::new(&alliances, &integrations).await;
    closed.settings.api.admin_token = None;
    let app = spawn_app_with(alliances, integrations, closed).await;
    for (method, path) in &routes {
        let url = format!("{}{path}", app.address);
        let response = app
            .http
            .request(method.clone(), &url)
            .bearer_auth("anything")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            403,
            "{method} {path} with no token configured"
        );
    }
}

/// A redrive recorded but never published (the service died between the
/// two) is published by the service on a later round, once: the saga it
/// starts is started once, and the letter ends redriven.
#[tokio::test]
async fn a_redrive_cut_short_by_a_crash_is_finished_later() {
    let (mut app, partners, letters) = big_partners_dead_lettered(1).await;
    let p = partners[0].clone();
    let id = letters[0]["id"].as_str().unwrap().to_string();
    app.config.settings.limits.max_message_bytes = 1 << 20;
    app.stop().await;
    // What the redrive's first step leaves behind: recorded, not sent.
    let mut db = sqlx::PgConnection::connect(app.config.database_url())
        .await
        .expect("connect to the test database");
    sqlx::query(
        "UPDATE dead_letters SET state = 'redriving', acted_by = 'admin', \
            action_reason = 'cut short', acted_at = now() - interval '10 minutes' WHERE id = $1",
    )
    .bind(&id)
    .execute(&mut db)
    .await
    .unwrap();
    app.restart().await;
    assert_eq!(app.settled(&p).await["state"], "completed");
    let started = Instant::now();
    while get(&app, &format!("/dead-letters/{id}")).await["state"] != "redriven" {
        assert!(started.elapsed() < Duration::from_secs(10), "never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sagas_of(&p).await.len(), 1);
    assert_eq!(app.alliances.received_requests().await.unwrap().len(), 1);
}
