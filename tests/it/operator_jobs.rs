//! Bulk jobs through the operator routes and the command line: failed
//! sagas retried once healed, jobs idempotent by body, resumed after a
//! restart, aborted; `dlq` and `sagas retry` through the binary.

use std::time::Duration;

use serde_json::json;
use wiremock::ResponseTemplate;

use crate::helpers::{
    mocks, on_create_alliance, on_delete_partner, partner, spawn_app_with, TestApp, TestConfig,
};
use crate::operator::{audit, dead_letters, finished_job, get, post};

/// `n` sagas parked as `failed` (alliances refuses, integrations answers
/// 500), by id.
pub async fn failed_sagas(app: &TestApp, n: usize) -> Vec<String> {
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
pub async fn heal(app: &TestApp) {
    app.integrations.reset().await;
    on_delete_partner(&app.integrations, ResponseTemplate::new(204), None).await;
}

pub async fn failing_participants() -> (wiremock::MockServer, wiremock::MockServer) {
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

/// A single retry keeps who did it (the token's name) and why in the
/// saga's history.
#[tokio::test]
async fn a_single_retry_names_who_in_the_history() {
    let (alliances, integrations) = failing_participants().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.admin_tokens = vec![saga_orchestrator::config::NamedToken {
        name: "alice".into(),
        token: "alice-token".into(),
    }];
    let app = spawn_app_with(alliances, integrations, config).await;
    let saga = failed_sagas(&app, 1).await.remove(0);
    heal(&app).await;
    let path = format!("/sagas/{saga}/retry");
    let body = json!({"reason": "integrations healed"});
    let (status, _) = crate::operator::as_admin(
        &app,
        "alice-token",
        reqwest::Method::POST,
        &path,
        Some(body),
    )
    .await;
    assert_eq!(status, 202);
    let settled = app.settled_saga(&saga, Duration::from_secs(30)).await;
    assert_eq!(settled["state"], "compensated");
    let history = settled["history"].as_array().unwrap();
    let retried = history
        .iter()
        .find(|h| h["reason"] == "retried_by_operator")
        .expect("retried");
    assert_eq!(retried["detail"], "integrations healed (by alice)");
}

/// A job is paced at `JOB_RATE_PER_SEC`: four retries at two a second
/// take at least a second and a half, however fast the participants are.
#[tokio::test]
async fn a_job_is_paced() {
    let (alliances, integrations) = failing_participants().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.job_rate_per_sec = 2;
    let app = spawn_app_with(alliances, integrations, config).await;
    failed_sagas(&app, 4).await;
    heal(&app).await;
    let started = std::time::Instant::now();
    let (_, job) = post(
        &app,
        "/sagas/retry",
        json!({"name": "paced", "reason": "r"}),
    )
    .await;
    let job = finished_job(
        &app,
        job["job_id"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["done"], 4, "{job}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "4 items at 2/s took {took:?}"
    );
}
