//! Inputs and faults that once harmed participants' data or wedged a saga:
//! each test drives the real service from outside (HTTP in, or the broker)
//! against wiremock participants, and failed before its fix.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;
use wiremock::ResponseTemplate;

use crate::broker_mode::{answer, command, reply};
use crate::helpers::{
    alliance_created, mocks, on_create_alliance, on_delete_partner, partner, spawn_app,
    spawn_app_with, states, TestApp, TestConfig,
};
use saga_orchestrator::config::ParticipantMode;
use saga_orchestrator::envelope::MessageStatus;

const TOKEN: &str = "test-admin-token";

async fn status_and_detail(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("errors are JSON");
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_string(),
    )
}

/// A connection to the test's own database.
async fn database(app: &TestApp) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(app.config.database_url())
        .await
        .expect("connect to the test database")
}

#[tokio::test]
async fn ids_break_no_rule_on_any_input_path() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-ids"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let long = "c".repeat(257);
    let bad_bodies = [
        json!({"payload": {"partner_id": partner(), "name": "A"}, "correlation_id": long}),
        json!({"payload": {"partner_id": partner(), "name": "A"}, "event_id": long}),
        json!({"payload": {"partner_id": partner(), "name": "A"}, "event_id": "e\u{0}1"}),
        json!({"payload": {"partner_id": "p".repeat(257), "name": "A"}}),
        json!({"payload": {"partner_id": "..", "name": "A"}}),
        json!({"payload": {"partner_id": ".", "name": "A"}}),
    ];
    for body in &bad_bodies {
        let (status, detail) = status_and_detail(app.post("/sagas", body).await).await;
        assert_eq!(status, 422, "{body}: {detail}");
    }
    let (status, detail) =
        status_and_detail(app.get(&format!("/sagas?correlation_id={long}")).await).await;
    assert_eq!((status, detail.contains("256")), (400, true), "{detail}");

    // The edge of the broker applies the same rule: a dead letter with the reason.
    app.publish_partner("..", &format!("evt-dots-{}", partner()), "corr-dots")
        .await;
    let dlq = format!("{}-dlq", app.channels.partner_events);
    let dead = app.wait_for_entries(&dlq, 1, |_| true).await;
    assert!(dead[0]["dlq_reason"].contains("`..`"), "{:?}", dead[0]);

    // A 256-character id is fine, stored, and its events are published.
    let p = partner();
    let edge = "c".repeat(256);
    let started = app
        .post(
            "/sagas",
            &json!({"payload": {"partner_id": p, "name": "Edge"}, "correlation_id": edge}),
        )
        .await;
    assert_eq!(started.status(), 202);
    assert_eq!(app.settled(&p).await["state"], "completed");
    let events = &app.channels.saga_events;
    app.wait_for_entries(events, 1, |e| {
        e["event_type"] == "SagaCompleted" && e["correlation_id"] == edge
    })
    .await;

    // An operator's reason is bounded too.
    let id = app.sagas_of(&p).await[0]["saga_id"]
        .as_str()
        .unwrap()
        .to_string();
    let reason = app
        .http
        .post(format!("{}/sagas/{id}/compensate", app.address))
        .bearer_auth(TOKEN)
        .json(&json!({"reason": "r".repeat(1001)}))
        .send()
        .await
        .unwrap();
    assert_eq!(reason.status(), 422);
}

#[tokio::test]
async fn starting_a_saga_over_http_needs_the_admin_token() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let victim = partner();
    let body = json!({"payload": {"partner_id": victim, "name": "Victim"}});

    let (status, _) = status_and_detail(app.post_anonymous("/sagas", &body).await).await;
    assert_eq!(status, 401);
    let wrong = app
        .http
        .post(format!("{}/sagas", app.address))
        .bearer_auth("not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.sagas_of(&victim).await.is_empty(), "nothing started");
    assert_eq!(app.deletes().await.len(), 0, "and nothing deleted");

    // With no token configured the route is refused, never open.
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.admin_token = None;
    let closed = spawn_app_with(alliances, integrations, config).await;
    let (status, detail) = status_and_detail(closed.post_anonymous("/sagas", &body).await).await;
    assert_eq!(status, 403, "{detail}");
    assert!(detail.contains("ADMIN_TOKEN"), "{detail}");
}

#[tokio::test]
async fn a_second_start_for_a_partner_never_deletes_what_the_first_completed() {
    let (alliances, integrations) = mocks().await;
    // The first call creates the alliance; any later one is refused.
    on_create_alliance(&alliances, alliance_created("a-first"), Some(1)).await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let body = json!({"payload": {"partner_id": p, "name": "Twice"}});

    let first: Value = app.post("/sagas", &body).await.json().await.unwrap();
    assert_eq!(app.settled(&p).await["state"], "completed");
    // A client retrying without an event_id, and integrations republishing
    // the partner under a new event id.
    let again = app.post("/sagas", &body).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["saga_id"], first["saga_id"],
        "answered with the partner's saga"
    );
    assert_eq!(again["duplicate"], true);
    app.publish_partner(&p, &format!("evt-again-{p}"), "corr-again")
        .await;

    // Both second starts were seen (and answered with the first saga).
    let deadline = Instant::now() + Duration::from_secs(15);
    while duplicates(&app).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the republished event was never handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sagas = app.sagas_of(&p).await;
    assert_eq!(sagas.len(), 1, "{sagas:?}");
    assert_eq!(sagas[0]["state"], "completed");
    assert_eq!(
        app.deletes().await.len(),
        0,
        "the completed partner was never deleted"
    );
}

/// `saga_duplicate_events_total` of the service.
async fn duplicates(app: &TestApp) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("saga_duplicate_events_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_alliance_created_after_compensation_began_is_recorded_over_http() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        alliance_created("a-late").set_delay(Duration::from_millis(1200)),
        None,
    )
    .await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let id = app.start_saga(&p, "Late").await;
    let forced = app
        .admin_post(&format!("/sagas/{id}/compensate"), Some(TOKEN))
        .await;
    assert_eq!(forced.status(), 202);
    assert_eq!(app.settled(&p).await["state"], "compensated");

    // The alliance answer arrives after compensation began: kept on the saga.
    let deadline = Instant::now() + Duration::from_secs(10);
    let saga = loop {
        let saga = app.saga(&id).await;
        if saga["alliance_id"] == "a-late" || Instant::now() > deadline {
            break saga;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(saga["alliance_id"], "a-late", "{saga:#}");
    assert_eq!(saga["state"], "compensated");
    let late: Vec<_> = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["reason"] == "alliance_created_late")
        .collect();
    assert_eq!(late.len(), 1, "{saga:#}");
    assert!(late[0]["detail"]
        .as_str()
        .unwrap()
        .contains("undo it by hand"));
}

/// Makes the test's database refuse, as bad data (SQLSTATE 22000), any
/// saga update whose `last_error` contains `marker`.
async fn refuse_errors_containing(app: &TestApp, marker: &str) {
    let mut db = database(app).await;
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse_marker() RETURNS trigger AS $$ BEGIN \
            IF NEW.last_error LIKE '%{marker}%' THEN \
                RAISE EXCEPTION 'value refused by the test' USING ERRCODE = '22000'; \
            END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse_marker BEFORE UPDATE ON sagas \
            FOR EACH ROW EXECUTE FUNCTION refuse_marker();"
    ))
    .execute(&mut db)
    .await
    .expect("install the refusing trigger");
}

#[tokio::test]
async fn an_outcome_the_store_refuses_ends_the_attempt_instead_of_looping() {
    if crate::broker::BrokerKind::from_env() != crate::broker::BrokerKind::Redis {
        return; // The store's behaviour: one broker is enough.
    }
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        ResponseTemplate::new(503).set_body_string("poison-answer"),
        None,
    )
    .await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    refuse_errors_containing(&app, "poison-answer").await;
    let p = partner();
    app.post(
        "/sagas",
        &json!({"payload": {"partner_id": p, "name": "Poison"}}),
    )
    .await;

    // Each refused outcome counts as a failed attempt: the retries run out
    // and the saga compensates, instead of the sweeper calling alliances
    // again every lease period, for ever.
    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated", "{saga:#}");
    assert!(saga["last_error"]
        .as_str()
        .unwrap()
        .contains("store refused"));
    let calls = app.alliances.received_requests().await.unwrap().len();
    assert_eq!(calls, 3, "RETRY_MAX_ATTEMPTS calls, no more");
}

#[tokio::test]
async fn a_compensation_that_only_ever_reports_progress_is_parked_at_its_deadline() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    let s = &mut config.settings;
    s.participants.integrations_mode = ParticipantMode::Broker;
    s.participants.step_timeout = Duration::from_secs(1);
    s.retry.compensation_deadline = Duration::from_secs(3);
    let app = spawn_app_with(alliances, integrations, config).await;
    let p = partner();
    app.post(
        "/sagas",
        &json!({"payload": {"partner_id": p, "name": "Slow"}}),
    )
    .await;

    // Integrations takes the DeletePartner command and says "working on
    // it" every 300 ms, for ever.
    let delete = command(&app, &app.channels.integration_commands, &p, 1).await;
    let started = Instant::now();
    let mut saga = json!({});
    while started.elapsed() < Duration::from_secs(15) {
        answer(
            &app,
            reply(&delete, MessageStatus::Progress, json!({"progress": "50%"})),
        )
        .await;
        saga = app.sagas_of(&p).await[0].clone();
        if saga["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(saga["state"], "failed", "{saga:#}");
    let saga = app.saga(saga["saga_id"].as_str().unwrap()).await;
    let last = saga["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "compensation_deadline_passed", "{saga:#}");
}

#[tokio::test]
async fn a_driver_that_lost_its_lease_cannot_write_over_the_new_owner() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        ResponseTemplate::new(503).set_delay(Duration::from_millis(1500)),
        Some(1),
    )
    .await;
    on_create_alliance(&alliances, alliance_created("a-fenced"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let id = app.start_saga(&p, "Fenced").await;

    // While the (slow) call is out, another instance takes the saga over,
    // as it would once this one's lease lapsed in a store stall.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut db = database(&app).await;
    sqlx::query(
        "UPDATE sagas SET lease_owner = 'another-instance', lease_until = now() + interval '1 hour' \
         WHERE saga_id = $1::uuid",
    )
    .bind(&id)
    .execute(&mut db)
    .await
    .unwrap();

    // The stale driver's outcome (a failed attempt) must not be written.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let calls = app.alliances.received_requests().await.unwrap().len();
    assert_eq!(calls, 1, "the call was made and answered");
    let saga = app.saga(&id).await;
    assert_eq!(saga["attempts"], 1, "{saga:#}");
    assert_eq!(
        states(&saga),
        ["started", "creating_alliance"],
        "the new owner's saga, untouched"
    );
}

#[tokio::test]
async fn stopping_publishes_the_events_of_the_last_commits() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        alliance_created("a-stop").set_delay(Duration::from_millis(800)),
        None,
    )
    .await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.instance.shutdown_grace = Duration::from_secs(5);
    let mut app = spawn_app_with(alliances, integrations, config).await;
    let p = partner();
    app.post(
        "/sagas",
        &json!({"payload": {"partner_id": p, "name": "Stop"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.stop().await;

    // The call finished during the grace period and its commit went in;
    // its events went out before the process stopped, not at the next start.
    let events = app.entries(&app.channels.saga_events).await;
    let of_partner = |e: &&crate::helpers::Entry| {
        let payload: Value = serde_json::from_str(&e["payload"]).unwrap_or_default();
        payload["partner_id"] == p.as_str()
    };
    let completed = events
        .iter()
        .filter(of_partner)
        .filter(|e| e["event_type"] == "SagaCompleted")
        .count();
    assert_eq!(completed, 1, "{events:?}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.api.header_timeout = Duration::from_millis(300);
    let app = spawn_app_with(alliances, integrations, config).await;
    let addr = app.address.trim_start_matches("http://").to_string();

    let outcome = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // Half a request line, then nothing more.
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let started = Instant::now();
        let mut buf = [0u8; 512];
        let read = stream.read(&mut buf);
        (
            read.map(|n| n == 0 || buf.starts_with(b"HTTP/1.1 408")),
            started.elapsed(),
        )
    })
    .await
    .unwrap();
    let (closed, took) = outcome;
    assert!(
        matches!(closed, Ok(true)),
        "the server closed the connection: {closed:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "after the header timeout, not the client's: {took:?}"
    );
    // Everyone else is still served.
    assert_eq!(app.get("/health").await.status(), 200);
}

#[tokio::test]
async fn a_late_alliance_during_compensation_starts_no_second_delete() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        alliance_created("a-midway").set_delay(Duration::from_millis(800)),
        None,
    )
    .await;
    // The delete is still in flight when the alliance's answer arrives.
    on_delete_partner(
        &integrations,
        ResponseTemplate::new(204).set_delay(Duration::from_millis(1500)),
        None,
    )
    .await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let id = app.start_saga(&p, "Midway").await;
    let forced = app
        .admin_post(&format!("/sagas/{id}/compensate"), Some(TOKEN))
        .await;
    assert_eq!(forced.status(), 202);

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated", "{saga:#}");
    assert_eq!(saga["alliance_id"], "a-midway", "the late alliance is kept");
    // Past any second driver's delete.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(app.deletes().await.len(), 1, "one driver, one delete");
}
