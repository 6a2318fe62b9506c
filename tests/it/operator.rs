//! The operator routes (docs/contract.md §5, "Operator routes"), driven
//! from outside on the broker `TEST_BROKER` names: dead letters listed,
//! read, redriven once and discarded; bulk jobs that retry failed sagas
//! and redrive dead letters, idempotent and resumable; who did it and why
//! in the audit record and saga histories; refusals without a token.

use std::time::{Duration, Instant};

use saga_orchestrator::config::NamedToken;
use serde_json::{json, Value};
use wiremock::ResponseTemplate;

use crate::helpers::{
    alliance_created, mocks, on_create_alliance, on_delete_partner, partner, spawn_app_with,
    TestApp, TestConfig,
};

const ALICE: &str = "alice-s3cret-token";

/// An admin request with the test's `ADMIN_TOKEN` (named `admin`).
async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    as_admin(app, "test-admin-token", method, path, body).await
}

async fn as_admin(
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

async fn get(app: &TestApp, path: &str) -> Value {
    let (status, body) = admin(app, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    admin(app, reqwest::Method::POST, path, Some(body)).await
}

/// Waits until the listing holds `n` dead letters of `channel`.
async fn dead_letters(app: &TestApp, channel: &str, n: usize) -> Vec<Value> {
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
async fn finished_job(app: &TestApp, job_id: &str, within: Duration) -> Value {
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

async fn audit(app: &TestApp) -> Vec<Value> {
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
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-1"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.limits.max_message_bytes = 2048;
    let mut app = spawn_app_with(alliances, integrations, config).await;
    let dlq = format!("{}-dlq", app.channels.partner_events);
    let partners: Vec<String> = (0..4).map(|_| partner()).collect();
    for p in &partners {
        publish_big_partner(&app, p).await;
    }
    let letters = dead_letters(&app, &dlq, 4).await;
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

/// `n` sagas parked as `failed` (alliances refuses, integrations answers
/// 500), by id.
async fn failed_sagas(app: &TestApp, n: usize) -> Vec<String> {
    let mut sagas = Vec::new();
    for _ in 0..n {
        let id = app.start_saga(&partner(), "Acme").await;
        assert_eq!(
            app.settled_saga(&id, Duration::from_secs(30)).await["state"],
            "failed"
        );
        sagas.push(id);
    }
    sagas
}

/// Integrations answers deletes again.
async fn heal(app: &TestApp) {
    app.integrations.reset().await;
    on_delete_partner(&app.integrations, ResponseTemplate::new(204), None).await;
}

async fn failing_participants() -> (wiremock::MockServer, wiremock::MockServer) {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(500), None).await;
    (alliances, integrations)
}

/// A job cut short by a restart is continued by the next instance once
/// its lease lapses, and still does each saga once.
#[tokio::test]
async fn a_job_is_resumed_after_a_restart() {
    let (alliances, integrations) = failing_participants().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.job_rate_per_sec = 1;
    let mut app = spawn_app_with(alliances, integrations, config).await;
    let sagas = failed_sagas(&app, 3).await;
    heal(&app).await;
    let body = json!({"name": "incident-restart", "reason": "healed", "max": 10});
    let (status, started) = post(&app, "/sagas/retry", body).await;
    assert_eq!(
        (status, started["matched"].clone()),
        (202, json!(3)),
        "{started}"
    );
    let job_id = started["job_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.restart().await;
    let job = finished_job(&app, &job_id, Duration::from_secs(40)).await;
    assert_eq!(
        (job["state"].clone(), job["done"].clone()),
        (json!("done"), json!(3)),
        "{job}"
    );
    for id in &sagas {
        assert_eq!(
            app.settled_saga(id, Duration::from_secs(10)).await["state"],
            "compensated"
        );
    }
    assert_eq!(
        app.deletes().await.len(),
        3,
        "each saga deleted once after the heal"
    );
}

/// An aborted job stops before its next item and stays aborted.
#[tokio::test]
async fn an_aborted_job_stops() {
    let (alliances, integrations) = failing_participants().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.job_rate_per_sec = 1;
    let app = spawn_app_with(alliances, integrations, config).await;
    failed_sagas(&app, 3).await;
    heal(&app).await;
    let (_, started) = post(
        &app,
        "/sagas/retry",
        json!({"name": "to-abort", "reason": "r"}),
    )
    .await;
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let (status, aborted) = post(
        &app,
        &format!("/jobs/{job_id}/abort"),
        json!({"reason": "wrong filter"}),
    )
    .await;
    assert_eq!(
        (status, aborted["state"].clone()),
        (200, json!("aborted")),
        "{aborted}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = get(&app, &format!("/jobs/{job_id}")).await;
    assert_eq!(job["state"], "aborted");
    assert!(job["done"].as_u64().unwrap() < 3, "{job}");
    assert_eq!(
        post(&app, &format!("/jobs/{job_id}/abort"), json!({}))
            .await
            .0,
        409
    );
    let record = audit(&app).await;
    assert!(record
        .iter()
        .any(|e| e["action"] == "job.abort" && e["reason"] == "wrong filter"));
}

/// Failed sagas whose participant is healed are retried by one bulk job
/// and end `compensated`, each deleted once more; the same job body again
/// does nothing twice; each saga's history says who retried it and why.
#[tokio::test]
async fn healed_failed_sagas_are_bulk_retried_once() {
    let (alliances, integrations) = failing_participants().await;
    let config = TestConfig::new(&alliances, &integrations).await;
    let app = spawn_app_with(alliances, integrations, config).await;
    let sagas = failed_sagas(&app, 3).await;
    let deletes_before = app.deletes().await.len();
    heal(&app).await;

    let body = json!({"filter": {"state": "failed"}, "name": "incident-integrations-500", "reason": "integrations healed"});
    let mut preview = body.clone();
    preview["dry_run"] = json!(true);
    let (status, counted) = post(&app, "/sagas/retry", preview).await;
    assert_eq!(
        (status, counted["matched"].clone()),
        (200, json!(3)),
        "{counted}"
    );
    assert_eq!(app.deletes().await.len(), 0, "a dry run does nothing");
    let (status, started) = post(&app, "/sagas/retry", body.clone()).await;
    assert_eq!(status, 202, "{started}");
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let job = finished_job(&app, &job_id, Duration::from_secs(30)).await;
    assert_eq!(
        (
            job["state"].clone(),
            job["done"].clone(),
            job["kind"].clone()
        ),
        (json!("done"), json!(3), json!("saga_retry")),
        "{job}"
    );
    for id in &sagas {
        let saga = app.settled_saga(id, Duration::from_secs(30)).await;
        assert_eq!(saga["state"], "compensated", "{saga}");
        let retried = saga["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["reason"] == "retried_by_operator")
            .cloned()
            .expect("retried");
        let detail = retried["detail"].as_str().unwrap();
        assert!(
            detail.contains("integrations healed")
                && detail.contains("by admin")
                && detail.contains(&job_id),
            "{detail}"
        );
    }
    let (status, again) = post(&app, "/sagas/retry", body).await;
    assert_eq!(
        (status, again["job_id"].clone(), again["duplicate"].clone()),
        (202, json!(job_id), json!(true))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.deletes().await.len(),
        3,
        "one more delete per saga, not two (before: {deletes_before})"
    );
    let (status, refused) = post(&app, &format!("/jobs/{job_id}/abort"), json!({})).await;
    assert_eq!(status, 409, "a finished job cannot be aborted: {refused}");
}

/// Runs the binary's operator commands against `app` with `token` as
/// `ADMIN_TOKEN`: (exit code, stdout, stderr).
async fn cli(app: &TestApp, token: Option<&str>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec![args[0], "--api", app.address.as_str()];
    all.extend_from_slice(&args[1..]);
    let all: Vec<String> = all.into_iter().map(str::to_string).collect();
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = token.iter().map(|t| ("ADMIN_TOKEN", t.as_str())).collect();
        let out = crate::helpers::binary(&std::env::temp_dir(), &args, &env)
            .output()
            .expect("run the binary");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    })
    .await
    .expect("the binary ran")
}

/// The command line does through the API what the routes do: list and
/// show dead letters, redrive them in bulk with progress, retry sagas in
/// bulk; without a token it says what to set.
#[tokio::test]
async fn the_cli_lists_redrives_and_retries_through_the_api() {
    let (alliances, integrations) = failing_participants().await;
    let config = TestConfig::new(&alliances, &integrations).await;
    let app = spawn_app_with(alliances, integrations, config).await;
    let dlq = format!("{}-dlq", app.channels.partner_events);
    let fields = vec![
        ("event_id".to_string(), "cli-poison".to_string()),
        ("event_type".to_string(), "PartnerCreated".to_string()),
        ("payload".to_string(), "{not json".to_string()),
    ];
    app.publish_fields(&app.channels.partner_events.clone(), &fields)
        .await;
    let id = dead_letters(&app, &dlq, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = Some("test-admin-token");

    let (code, out, err) = cli(&app, token, &["dlq", "list", "--channel", &dlq]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id) && out.contains("invalid JSON"), "{out}");
    let (code, out, _) = cli(&app, token, &["dlq", "show", &id]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("cli-poison"), "{out}");
    let (code, out, err) = cli(&app, None, &["dlq", "list"]).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(err.contains("ADMIN_TOKEN"), "{err}");

    let bulk = [
        "dlq",
        "redrive",
        "--all",
        "--channel",
        &dlq,
        "--name",
        "cli-incident",
        "--reason",
        "cli test",
    ];
    let (code, out, err) = cli(&app, token, &bulk).await;
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("done: 1 matched, 1 done"), "{out}");
    let (code, out, _) = cli(&app, token, &bulk).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("1 done"), "the same job, not a second: {out}");
    // Redriven as it was: bad JSON again, so a second letter, never a saga.
    dead_letters(&app, &dlq, 1).await;

    let saga = failed_sagas(&app, 1).await.remove(0);
    heal(&app).await;
    let retry = [
        "sagas",
        "retry",
        "--state",
        "failed",
        "--name",
        "cli-retry",
        "--reason",
        "healed",
    ];
    let mut preview = retry.to_vec();
    preview.push("--dry-run");
    let (code, out, _) = cli(&app, token, &preview).await;
    assert_eq!(
        (code, out.trim()),
        (Some(0), "1 would be touched (dry run: nothing done)")
    );
    let (code, out, err) = cli(&app, token, &retry).await;
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("done: 1 matched, 1 done"), "{out}");
    assert_eq!(
        app.settled_saga(&saga, Duration::from_secs(30)).await["state"],
        "compensated"
    );
}
