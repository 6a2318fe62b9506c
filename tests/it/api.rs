//! The HTTP API: starting sagas, listing and paging, errors as JSON with
//! the right status, health, metrics (text and JSON summary), the admin
//! routes, and the OpenAPI document with its `/docs` page.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{
    alliance_created, mocks, on_create_alliance, on_delete_partner, partner, spawn_app,
    spawn_app_with, states, TestConfig,
};

async fn alliance_ok(server: &wiremock::MockServer) {
    on_create_alliance(server, alliance_created("a-api"), None).await;
}

async fn error_of(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("errors are JSON");
    assert!(body["error"].is_string(), "{body}");
    body["detail"].as_str().expect("detail").to_string()
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let (alliances, integrations) = mocks().await;
    alliance_ok(&alliances).await;
    let app = spawn_app(alliances, integrations).await;

    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health, json!({"status": "ok"}));

    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["store"]["status"], "ok");
    assert_eq!(ready["checks"]["broker"]["status"], "ok");

    let p = partner();
    app.post(
        "/sagas",
        &json!({"payload": {"partner_id": p, "name": "Metrics"}}),
    )
    .await;
    app.settled(&p).await;
    let metrics = app.get("/metrics").await;
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(r#"saga_sagas{state="completed"} 1"#),
        "{text}"
    );
    assert!(text.contains("saga_transitions_total{"), "{text}");
    assert!(
        text.contains("saga_participant_call_seconds_bucket"),
        "{text}"
    );
    for write in ["record", "transition"] {
        let batch = format!(r#"saga_store_write_seconds_bucket{{write="{write}""#);
        let items = format!(r#"saga_store_write_items_total{{write="{write}"}}"#);
        assert!(text.contains(&batch) && text.contains(&items), "{text}");
    }
    assert!(
        text.contains("saga_transition_commit_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn post_sagas_starts_once_per_event_id() {
    let (alliances, integrations) = mocks().await;
    alliance_ok(&alliances).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let body = json!({"payload": {"partner_id": p, "name": "Acme", "extra": {"kept": true}}, "event_id": format!("api-{p}")});

    let first = app.post("/sagas", &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert!(
        uuid::Uuid::parse_str(first["correlation_id"].as_str().unwrap()).is_ok(),
        "generated"
    );
    assert_eq!(first["duplicate"], false);
    let second: Value = app.post("/sagas", &body).await.json().await.unwrap();
    assert_eq!(second["saga_id"], first["saga_id"]);
    assert_eq!(second["duplicate"], true);
    assert_eq!(
        second["correlation_id"], first["correlation_id"],
        "the stored saga's, not a new one"
    );

    let saga = app.settled(&p).await;
    assert_eq!(saga["saga_id"], first["saga_id"]);
    assert_eq!(saga["state"], "completed");
    assert_eq!(app.alliances.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_requests_get_json_errors_never_500() {
    let (alliances, integrations) = mocks().await;
    let app = spawn_app(alliances, integrations).await;

    let detail = error_of(
        app.post("/sagas", &json!({"payload": {"partner_id": "p"}}))
            .await,
        422,
    )
    .await;
    assert!(detail.contains("payload.name"), "{detail}");
    error_of(
        app.post(
            "/sagas",
            &json!({"payload": {"partner_id": 5, "name": "x"}}),
        )
        .await,
        422,
    )
    .await;
    error_of(
        app.post("/sagas", &json!({"correlation_id": "c"})).await,
        422,
    )
    .await;
    let raw = app
        .http
        .post(format!("{}/sagas", app.address))
        .bearer_auth("test-admin-token")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    error_of(raw, 400).await;

    let detail = error_of(app.get("/sagas?state=done").await, 400).await;
    assert!(
        detail.contains("compensated"),
        "lists valid states: {detail}"
    );
    error_of(app.get("/sagas?limit=0").await, 400).await;
    error_of(app.get("/sagas?limit=501").await, 400).await;
    error_of(app.get("/sagas?limit=ten").await, 400).await;
    error_of(app.get("/sagas?cursor=nope").await, 400).await;
    error_of(app.get("/sagas/not-a-uuid").await, 400).await;
    error_of(
        app.get(&format!("/sagas/{}", uuid::Uuid::new_v4())).await,
        404,
    )
    .await;
    error_of(app.get("/nowhere").await, 404).await;
    let wrong_method = app
        .http
        .delete(format!("{}/sagas", app.address))
        .send()
        .await
        .unwrap();
    error_of(wrong_method, 405).await;
    let nul = json!({"payload": {"partner_id": "p-nul", "name": "A\u{0}B"}});
    let detail = error_of(app.post("/sagas", &nul).await, 422).await;
    assert!(detail.contains("NUL"), "{detail}");
}

#[tokio::test]
async fn list_filters_and_pages_newest_first() {
    let (alliances, integrations) = mocks().await;
    alliance_ok(&alliances).await;
    let app = spawn_app(alliances, integrations).await;
    let correlation = format!("batch-{}", partner());
    let mut started = Vec::new();
    for _ in 0..3 {
        let p = partner();
        let r: Value = app
            .post("/sagas", &json!({"payload": {"partner_id": p, "name": "Page"}, "correlation_id": correlation}))
            .await
            .json()
            .await
            .unwrap();
        started.push(r["saga_id"].as_str().unwrap().to_string());
        app.settled(&p).await;
    }

    let page1: Value = app
        .get(&format!("/sagas?correlation_id={correlation}&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    let items1 = page1["items"].as_array().unwrap();
    assert_eq!(items1.len(), 2);
    let cursor = page1["next_cursor"].as_str().expect("a next page");
    let page2: Value = app
        .get(&format!(
            "/sagas?correlation_id={correlation}&limit=2&cursor={cursor}"
        ))
        .await
        .json()
        .await
        .unwrap();
    let items2 = page2["items"].as_array().unwrap();
    assert_eq!(items2.len(), 1);
    assert!(page2["next_cursor"].is_null());

    let listed: Vec<_> = items1
        .iter()
        .chain(items2)
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    let newest_first: Vec<_> = started.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    for item in items1 {
        for key in [
            "saga_id",
            "correlation_id",
            "partner_id",
            "state",
            "step",
            "attempts",
            "alliance_id",
            "last_error",
            "created_at",
            "updated_at",
            "deadline_at",
        ] {
            assert!(item.get(key).is_some(), "saga shape has {key}");
        }
        assert!(
            item.get("history").is_none(),
            "history only on GET /sagas/{{id}}"
        );
    }
    let completed: Value = app
        .get(&format!(
            "/sagas?correlation_id={correlation}&state=completed"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(completed["items"].as_array().unwrap().len(), 3);
    let none: Value = app
        .get(&format!("/sagas?correlation_id={correlation}&state=failed"))
        .await
        .json()
        .await
        .unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn admin_routes_need_the_token_and_are_refused_without_one() {
    let (alliances, integrations) = mocks().await;
    alliance_ok(&alliances).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    app.post(
        "/sagas",
        &json!({"payload": {"partner_id": p, "name": "Admin"}}),
    )
    .await;
    let saga = app.settled(&p).await;
    let id = saga["saga_id"].as_str().unwrap();

    error_of(
        app.admin_post(&format!("/sagas/{id}/compensate"), None)
            .await,
        401,
    )
    .await;
    error_of(
        app.admin_post(&format!("/sagas/{id}/compensate"), Some("wrong"))
            .await,
        401,
    )
    .await;
    let detail = error_of(
        app.admin_post(&format!("/sagas/{id}/compensate"), Some("test-admin-token"))
            .await,
        409,
    )
    .await;
    assert!(detail.contains("completed"), "{detail}");
    error_of(
        app.admin_post(&format!("/sagas/{id}/retry"), Some("test-admin-token"))
            .await,
        409,
    )
    .await;

    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.admin_token = None;
    let closed = spawn_app_with(alliances, integrations, config).await;
    error_of(
        closed
            .admin_post(&format!("/sagas/{id}/retry"), Some("test-admin-token"))
            .await,
        403,
    )
    .await;
}

#[tokio::test]
async fn a_failed_saga_can_be_retried_once_integrations_recovers() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(503), Some(3)).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-redrive")
        .await;
    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "failed");
    let id = saga["saga_id"].as_str().unwrap();

    let retried = app
        .admin_post(&format!("/sagas/{id}/retry"), Some("test-admin-token"))
        .await;
    assert_eq!(retried.status(), 202);
    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated");
    let history = saga["history"].as_array().unwrap();
    assert!(history
        .iter()
        .any(|h| h["reason"] == "retried_by_operator" && h["from_state"] == "failed"));
    assert_eq!(app.integrations.received_requests().await.unwrap().len(), 4);
}

#[tokio::test]
async fn an_operator_can_force_compensation_of_a_live_saga() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        alliance_created("late").set_delay(Duration::from_millis(1500)),
        None,
    )
    .await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let started: Value = app
        .post(
            "/sagas",
            &json!({"payload": {"partner_id": p, "name": "Force"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = started["saga_id"].as_str().unwrap();

    let forced = app
        .admin_post(&format!("/sagas/{id}/compensate"), Some("test-admin-token"))
        .await;
    assert_eq!(forced.status(), 202);
    let forced: Value = forced.json().await.unwrap();
    assert_eq!(forced["state"], "compensating");

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated");
    // The alliance answer that arrives after compensation began is not
    // dropped: it is recorded on the saga, which stays compensated.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let saga = app.saga(id).await;
    assert_eq!(saga["state"], "compensated");
    assert_eq!(saga["alliance_id"], "late");
    assert_eq!(
        states(&saga),
        [
            "started",
            "creating_alliance",
            "compensating",
            "compensated",
            "compensated"
        ]
    );
    assert!(saga["history"][2]["reason"] == "forced_by_operator");
    assert!(saga["history"][4]["reason"] == "alliance_created_late");
}

#[tokio::test]
async fn a_forced_compensation_stops_a_driver_waiting_to_retry() {
    let (alliances, integrations) = mocks().await;
    // The first attempt asks for a 2 s pause; the operator acts during it.
    on_create_alliance(
        &alliances,
        ResponseTemplate::new(503).insert_header("Retry-After", "2"),
        Some(1),
    )
    .await;
    on_create_alliance(&alliances, alliance_created("must-not-happen"), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let started: Value = app
        .post(
            "/sagas",
            &json!({"payload": {"partner_id": p, "name": "Wait"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = started["saga_id"].as_str().unwrap();
    while app.saga(id).await["attempts"] != 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let forced = app
        .admin_post(&format!("/sagas/{id}/compensate"), Some("test-admin-token"))
        .await;
    assert_eq!(forced.status(), 202);
    assert_eq!(app.settled(&p).await["state"], "compensated");
    // Past the waiting driver's wake-up: it must see the saga moved and stop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.alliances.received_requests().await.unwrap().len(),
        1,
        "no alliance call after compensation began"
    );
    assert_eq!(app.saga(id).await["state"], "compensated");
}

#[tokio::test]
async fn openapi_json_documents_every_route_and_the_admin_scheme() {
    let (alliances, integrations) = mocks().await;
    let app = spawn_app(alliances, integrations).await;

    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = response.json().await.expect("valid JSON");
    let version = doc["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3."), "OpenAPI 3.x, got {version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    for (route, method) in [
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/metrics/summary", "get"),
        ("/sagas", "post"),
        ("/sagas", "get"),
        ("/sagas/{saga_id}", "get"),
        ("/sagas/{saga_id}/retry", "post"),
        ("/sagas/{saga_id}/compensate", "post"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
    ] {
        let op = &doc["paths"][route][method];
        assert!(op.is_object(), "{method} {route} is documented");
        assert!(
            op["responses"].is_object(),
            "{method} {route} has responses"
        );
    }
    let scheme = &doc["components"]["securitySchemes"]["admin_token"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let retry = &doc["paths"]["/sagas/{saga_id}/retry"]["post"];
    assert_eq!(retry["security"], json!([{"admin_token": []}]));
    for status in ["202", "401", "403", "404", "409"] {
        assert!(retry["responses"][status].is_object(), "retry {status}");
    }
    let params: Vec<_> = doc["paths"]["/sagas"]["get"]["parameters"]
        .as_array()
        .expect("list parameters")
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    for name in ["state", "partner_id", "correlation_id", "limit", "cursor"] {
        assert!(params.iter().any(|p| p == name), "{name} in {params:?}");
    }
}

/// Every `src="…"` and `href="…"` of a page.
fn referenced_urls(html: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            urls.push(part.split('"').next().unwrap_or_default().to_string());
        }
    }
    urls
}

#[tokio::test]
async fn docs_page_loads_only_local_assets() {
    let (alliances, integrations) = mocks().await;
    let app = spawn_app(alliances, integrations).await;

    let page = app.get("/docs").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.len() < 2048,
        "the page stays tiny: {} bytes",
        html.len()
    );

    let urls = referenced_urls(&html);
    assert!(urls.len() >= 3, "{urls:?}");
    for url in &urls {
        assert!(
            url.starts_with('/') && !url.starts_with("//"),
            "only local URLs: {url}"
        );
        let asset = app.get(url).await;
        assert_eq!(asset.status(), 200, "{url}");
        let expected = match url.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("png") => "image/png",
            other => panic!("unexpected asset type {other:?} for {url}"),
        };
        let content_type = asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with(expected), "{url}: {content_type}");
        assert_eq!(asset.headers()["cache-control"], "no-cache", "{url}");
        let etag = asset.headers()["etag"].clone();
        let body = asset.bytes().await.unwrap();
        assert!(!body.is_empty(), "{url}");

        let again = app
            .http
            .get(format!("{}{url}", app.address))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{url} revalidates");
    }
    let init = app.get("/docs/init.js").await.text().await.unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");
    let bundle = app
        .get("/docs/swagger-ui-bundle.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(bundle.contains("SwaggerUIBundle"));
}

/// Polls `/metrics/summary` until `done` holds for it (or fails after 10 s).
pub(crate) async fn summary_when(
    app: &crate::helpers::TestApp,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let response = app.get("/metrics/summary").await;
        assert_eq!(response.status(), 200);
        let summary: Value = response.json().await.expect("JSON");
        if done(&summary) {
            return summary;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "summary never matched: {summary:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn per_minute(rate: &Value) -> f64 {
    rate.as_f64().expect("a number") * 60.0
}

#[tokio::test]
async fn metrics_summary_counts_sagas_dead_letters_and_rates() {
    let (alliances, integrations) = mocks().await;
    let (ok, refused) = (partner(), partner());
    Mock::given(method("POST"))
        .and(path("/alliances"))
        .and(body_partial_json(json!({"partner_id": ok})))
        .respond_with(alliance_created("a-summary"))
        .mount(&alliances)
        .await;
    Mock::given(method("POST"))
        .and(path("/alliances"))
        .and(body_partial_json(json!({"partner_id": refused})))
        .respond_with(ResponseTemplate::new(422))
        .mount(&alliances)
        .await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let channel = app.channels.partner_events.clone();

    let empty = summary_when(&app, |_| true).await;
    assert_eq!(empty["sagas"]["total"], 0);
    assert_eq!(empty["in_flight"], 0);
    assert_eq!(empty["dead_letters"][&channel], 0, "listed from the start");
    assert!(empty["instance_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(empty["max_in_flight"].as_u64().is_some_and(|n| n > 0));
    assert!(chrono::DateTime::parse_from_rfc3339(empty["generated_at"].as_str().unwrap()).is_ok());

    app.post(
        "/sagas",
        &json!({"payload": {"partner_id": ok, "name": "Ok"}}),
    )
    .await;
    app.publish_partner(&refused, &format!("evt-{refused}"), "corr-summary")
        .await;
    assert_eq!(app.settled(&ok).await["state"], "completed");
    assert_eq!(app.settled(&refused).await["state"], "compensated");

    // The drivers let go of their sagas just after the last commit.
    // Store counts are shared by scrapes for up to 2 s: wait for them too.
    let summary = summary_when(&app, |s| {
        s["in_flight"] == 0
            && s["outbox_backlog"] == 0
            && s["sagas"]["completed"] == 1
            && s["sagas"]["compensated"] == 1
    })
    .await;
    let sagas = &summary["sagas"];
    assert_eq!(sagas["completed"], 1, "{summary:#}");
    assert_eq!(sagas["compensated"], 1);
    assert_eq!(sagas["total"], 2);
    for state in [
        "started",
        "creating_alliance",
        "awaiting_alliance",
        "compensating",
        "failed",
    ] {
        assert_eq!(sagas[state], 0, "{state}");
    }
    // Everything happened within the last minute: rate × 60 = count.
    let rates = &summary["rates"];
    let close = |rate: &Value, n: f64| (per_minute(rate) - n).abs() < 1e-6;
    assert!(close(&rates["started_per_sec_1m"], 2.0), "{rates}");
    assert!(close(&rates["completed_per_sec_1m"], 1.0), "{rates}");
    assert!(close(&rates["compensated_per_sec_1m"], 1.0), "{rates}");
    assert!(close(&rates["failed_per_sec_1m"], 0.0), "{rates}");
    assert!(close(&rates["dead_letters_per_sec_1m"], 0.0), "{rates}");
    assert_eq!(summary["dead_letters"][&channel], 0);

    // A poison message: dead-lettered and counted.
    app.publish_fields(
        &channel,
        &[
            ("event_id".to_string(), "poison-summary".to_string()),
            ("correlation_id".to_string(), "corr-poison".to_string()),
            ("event_type".to_string(), "PartnerCreated".to_string()),
            ("payload".to_string(), "{not json".to_string()),
        ],
    )
    .await;
    let summary = summary_when(&app, |s| s["dead_letters"][&channel] == 1).await;
    assert!(
        close(&summary["rates"]["dead_letters_per_sec_1m"], 1.0),
        "{summary:#}"
    );
    assert_eq!(summary["sagas"]["total"], 2, "poison starts no saga");
    assert_eq!(app.entries(&format!("{channel}-dlq")).await.len(), 1);
}

#[tokio::test]
async fn metrics_summary_is_503_json_when_the_store_is_down() {
    let (alliances, integrations) = mocks().await;
    let app = spawn_app(alliances, integrations).await;
    assert_eq!(app.get("/metrics/summary").await.status(), 200);

    // Take the service's database away from under it.
    let url = url::Url::parse(app.config.database_url()).unwrap();
    let name = url.path().trim_start_matches('/').to_string();
    let admin_url = std::env::var("TEST_DATABASE_URL").unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();

    // Counts are shared for up to 2 s, so the outage shows within that.
    let started = Instant::now();
    let mut response = app.get("/metrics/summary").await;
    while response.status() == 200 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        response = app.get("/metrics/summary").await;
    }
    let detail = error_of(response, 503).await;
    assert!(detail.contains("store"), "{detail}");
}

/// What Swagger UI's "Try it out" sends for `POST /sagas`: the request
/// body's examples, as the document shows them.
fn start_example(doc: &Value) -> Value {
    let body = &doc["components"]["schemas"]["StartBody"]["properties"];
    json!({ "payload": body["payload"]["examples"][0] })
}

#[tokio::test]
async fn the_docs_example_starts_a_new_saga_for_each_person_who_tries_it() {
    let (alliances, integrations) = mocks().await;
    alliance_ok(&alliances).await;
    let app = spawn_app(alliances, integrations).await;

    let mut started = Vec::new();
    for _person in 0..2 {
        let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
        let response = app.post("/sagas", &start_example(&doc)).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["duplicate"], false, "someone else's saga: {body}");
        started.push(body["saga_id"].clone());
    }
    assert_ne!(started[0], started[1]);
}
