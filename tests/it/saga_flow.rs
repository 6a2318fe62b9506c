//! Sagas driven from outside: a PartnerCreated on the broker in, HTTP calls
//! to the (mocked) participants out, states read through the API.

use serde_json::{json, Value};
use wiremock::matchers::{body_partial_json, header, method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::broker::partner_created;
use crate::helpers::{
    alliance_created, mocks, on_create_alliance, on_delete_partner, partner, spawn_app,
    spawn_app_with, states, TestApp, TestConfig,
};

#[tokio::test]
async fn happy_path_completes_with_the_alliance() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-42"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-happy")
        .await;
    let saga = app.settled(&p).await;

    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["alliance_id"], "a-42");
    assert_eq!(saga["attempts"], 1);
    assert_eq!(states(&saga), ["started", "creating_alliance", "completed"]);
    let history = saga["history"].as_array().unwrap();
    assert_eq!(history[0]["from_state"], serde_json::Value::Null);
    assert_eq!(history[2]["reason"], "alliance_created");

    let requests = app.alliances.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    let saga_id = saga["saga_id"].as_str().unwrap();
    assert_eq!(
        request.headers["idempotency-key"],
        format!("{saga_id}:create-alliance").as_str()
    );
    let body: serde_json::Value = request.body_json().unwrap();
    assert_eq!(body["partner_id"], p.as_str());
    assert_eq!(body["name"], format!("Partner {p}"));
    assert_eq!(body["email"], format!("{p}@example.test"));
    assert_eq!(body["saga_id"], saga_id);
    assert_eq!(body["correlation_id"], "corr-happy");
    assert!(
        app.integrations
            .received_requests()
            .await
            .unwrap()
            .is_empty(),
        "no compensation"
    );
}

#[tokio::test]
async fn business_rejection_compensates_by_deleting_the_partner() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        ResponseTemplate::new(422)
            .set_body_json(json!({"error": "partner email domain not allowed"})),
        None,
    )
    .await;
    Mock::given(method("DELETE"))
        .and(path_regex("^/partners/.+$"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&integrations)
        .await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-reject")
        .await;
    let saga = app.settled(&p).await;

    assert_eq!(saga["state"], "compensated");
    assert_eq!(
        states(&saga),
        [
            "started",
            "creating_alliance",
            "compensating",
            "compensated"
        ]
    );
    assert!(saga["last_error"]
        .as_str()
        .unwrap()
        .contains("partner email domain not allowed"));
    assert_eq!(
        app.alliances.received_requests().await.unwrap().len(),
        1,
        "a rejection is not retried"
    );
    let deletes = app.integrations.received_requests().await.unwrap();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].url.path(), format!("/partners/{p}"));
    let saga_id = saga["saga_id"].as_str().unwrap();
    assert_eq!(
        deletes[0].headers["idempotency-key"],
        format!("{saga_id}:delete-partner").as_str()
    );
    assert_eq!(deletes[0].headers["x-correlation-id"], "corr-reject");
}

#[tokio::test]
async fn transient_failures_are_retried_then_complete() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(503), Some(2)).await;
    on_create_alliance(&alliances, alliance_created("a-7"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-retry")
        .await;
    let saga = app.settled(&p).await;

    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["attempts"], 3);
    assert_eq!(
        states(&saga),
        [
            "started",
            "creating_alliance",
            "creating_alliance",
            "creating_alliance",
            "completed"
        ]
    );
    let requests = app.alliances.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    let keys: Vec<_> = requests
        .iter()
        .map(|r| r.headers["idempotency-key"].clone())
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "every retry carries the same idempotency key"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "saga_retries_total{step=\"create_alliance\"} 2"),
        "two retries counted: {metrics}"
    );
}

#[tokio::test]
async fn retries_exhausted_compensate() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(500), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(404), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-exhaust")
        .await;
    let saga = app.settled(&p).await;

    assert_eq!(
        saga["state"], "compensated",
        "404 on delete means already gone"
    );
    assert_eq!(
        app.alliances.received_requests().await.unwrap().len(),
        3,
        "RETRY_MAX_ATTEMPTS=3"
    );
    let history = saga["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["reason"] == "retries_exhausted"));
}

#[tokio::test]
async fn slow_participants_time_out_and_are_retried() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        alliance_created("late").set_delay(std::time::Duration::from_secs(2)),
        Some(1),
    )
    .await;
    on_create_alliance(&alliances, alliance_created("a-fast"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.participants.step_timeout = std::time::Duration::from_millis(300);
    let app = spawn_app_with(alliances, integrations, config).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-slow")
        .await;
    let saga = app.settled(&p).await;

    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["alliance_id"], "a-fast");
    let history = saga["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("timed out")));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        Some(1),
    )
    .await;
    on_create_alliance(&alliances, alliance_created("a-1"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-429")
        .await;
    let saga = app.settled(&p).await;

    assert_eq!(saga["state"], "completed");
    let requests = app.alliances.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let at = |i: usize| {
        saga["history"][i]["at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    // history: started, creating_alliance, creating_alliance (429), completed
    let waited = at(3) - at(2);
    assert!(
        waited >= chrono::Duration::milliseconds(950),
        "waited only {waited}"
    );
}

#[tokio::test]
async fn rejection_with_failing_delete_parks_the_saga_as_failed() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(400), None).await;
    on_delete_partner(
        &integrations,
        ResponseTemplate::new(500).set_body_string("database locked"),
        None,
    )
    .await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-failed")
        .await;
    let saga = app.settled(&p).await;

    assert_eq!(saga["state"], "failed");
    assert!(saga["last_error"]
        .as_str()
        .unwrap()
        .contains("database locked"));
    assert_eq!(app.integrations.received_requests().await.unwrap().len(), 3);
    let history = saga["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["reason"], "compensation_exhausted");

    let listed: serde_json::Value = app.get("/sagas?state=failed").await.json().await.unwrap();
    let ids: Vec<_> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].clone())
        .collect();
    assert_eq!(ids, [saga["saga_id"].clone()]);

    let events = app
        .wait_for_entries(&app.channels.saga_events, 1, |e| {
            e["event_type"] == "SagaFailed"
        })
        .await;
    assert_eq!(events[0]["status"], "failed");
}

#[tokio::test]
async fn the_same_event_three_times_runs_one_saga() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-once"), None).await;
    let mut app = spawn_app(alliances, integrations).await;
    let p = partner();
    let event_id = format!("evt-{p}");

    for _ in 0..3 {
        app.publish_partner(&p, &event_id, "corr-dup").await;
    }
    let saga = app.settled(&p).await;
    // Give any (wrong) second saga time to appear before counting.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    assert_eq!(app.sagas_of(&p).await.len(), 1);
    assert_eq!(saga["state"], "completed");
    let requests = app.alliances.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].headers["idempotency-key"],
        format!("{}:create-alliance", saga["saga_id"].as_str().unwrap()).as_str()
    );
    let channel = app.channels.partner_events.clone();
    assert_eq!(
        app.stop_and_count_unacked(&channel).await,
        0,
        "all three deliveries acked"
    );
}

#[tokio::test]
async fn correlation_id_is_the_same_everywhere() {
    let (alliances, integrations) = mocks().await;
    Mock::given(method("POST"))
        .and(path("/alliances"))
        .and(header("x-correlation-id", "corr-trace-77"))
        .respond_with(alliance_created("a-77"))
        .mount(&alliances)
        .await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    app.publish_partner(&p, &format!("evt-{p}"), "corr-trace-77")
        .await;
    let saga = app.settled(&p).await;

    // The mock only answers with the right header, so completion proves it arrived.
    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["correlation_id"], "corr-trace-77");
    let saga_id = saga["saga_id"].as_str().unwrap().to_string();
    let events = app
        .wait_for_entries(&app.channels.saga_events, 3, |e| {
            e.get("saga_id") == Some(&saga_id)
        })
        .await;
    let types: Vec<_> = events.iter().map(|e| e["event_type"].as_str()).collect();
    assert_eq!(types, ["SagaStarted", "SagaStepSucceeded", "SagaCompleted"]);
    for event in &events {
        assert_eq!(event["correlation_id"], "corr-trace-77");
        let payload: serde_json::Value = serde_json::from_str(&event["payload"]).unwrap();
        assert_eq!(payload["partner_id"], p.as_str());
    }
    assert_eq!(events[0]["status"], "started");
    assert_eq!(events[2]["status"], "completed");
}

#[tokio::test]
async fn a_traceparent_sent_with_the_event_reaches_the_participant() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-traced"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut event = partner_created(&p, &format!("evt-{p}"), "corr-traced");
    event.traceparent = Some(format!("00-{trace_id}-b7ad6b7169203331-01"));
    app.broker
        .publish_envelope(&app.channels.partner_events, &event)
        .await;

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "completed");
    let requests = app.alliances.received_requests().await.unwrap();
    let sent = requests[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sent.split('-').nth(1),
        Some(trace_id),
        "the participant's call is in the event's trace: {sent}"
    );
    // The saga's own events carry it on too.
    let events = app
        .wait_for_entries(&app.channels.saga_events, 1, |e| {
            e.get("event_type").map(String::as_str) == Some("SagaCompleted")
        })
        .await;
    assert!(
        events[0]
            .get("traceparent")
            .is_some_and(|tp| tp.contains(trace_id)),
        "{events:?}"
    );
}

/// The saga's events on `saga-events`, in order, as (type, payload).
async fn saga_events_of(
    app: &TestApp,
    saga: &serde_json::Value,
    n: usize,
) -> Vec<(String, serde_json::Value)> {
    let saga_id = saga["saga_id"].as_str().unwrap().to_string();
    app.wait_for_entries(&app.channels.saga_events, n, |e| {
        e.get("saga_id") == Some(&saga_id)
    })
    .await
    .iter()
    .map(|e| {
        let payload = serde_json::from_str(&e["payload"]).unwrap();
        (e["event_type"].clone(), payload)
    })
    .collect()
}

/// The event types each transition of `saga`'s history says it
/// published, in order.
fn recorded_events(saga: &serde_json::Value) -> Vec<String> {
    let history = saga["history"].as_array().expect("a history");
    history
        .iter()
        .flat_map(|h| h["events"].as_array().expect("events").clone())
        .map(|e| e.as_str().expect("an event type").to_string())
        .collect()
}

fn types(events: &[(String, serde_json::Value)]) -> Vec<String> {
    events.iter().map(|(t, _)| t.clone()).collect()
}

/// Each event's (type, step, attempt, will_retry), `-` where it has none.
fn steps(events: &[(String, serde_json::Value)]) -> Vec<String> {
    let field = |p: &serde_json::Value, k: &str| match &p[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    events
        .iter()
        .map(|(kind, p)| {
            format!(
                "{kind} {} {} {}",
                field(p, "step"),
                field(p, "attempt"),
                field(p, "will_retry")
            )
        })
        .collect()
}

/// Each saga event names its step and attempt, and each transition in the
/// history lists the events it published: together, exactly what went out.
#[tokio::test]
async fn every_saga_event_names_the_step_and_attempt_it_is_about() {
    let (alliances, integrations) = mocks().await;
    let rejected = partner();
    let flaky = partner();
    let undeletable = partner();
    Mock::given(method("POST"))
        .and(body_partial_json(json!({ "partner_id": rejected })))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"error": "no"})))
        .mount(&alliances)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({ "partner_id": flaky })))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&alliances)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({ "partner_id": flaky })))
        .respond_with(alliance_created("a-flaky"))
        .mount(&alliances)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({ "partner_id": undeletable })))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"error": "no"})))
        .mount(&alliances)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/partners/{rejected}")))
        .respond_with(ResponseTemplate::new(204))
        .mount(&integrations)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/partners/{undeletable}")))
        .respond_with(ResponseTemplate::new(500))
        .mount(&integrations)
        .await;
    let app = spawn_app(alliances, integrations).await;
    for p in [&rejected, &flaky, &undeletable] {
        app.publish_partner(p, &format!("evt-{p}"), &format!("corr-{p}"))
            .await;
    }

    let saga = app.settled(&rejected).await;
    let published = saga_events_of(&app, &saga, 5).await;
    assert_eq!(recorded_events(&saga), types(&published), "{saga:#}");
    assert_eq!(
        steps(&published),
        [
            "SagaStarted create_alliance - -",
            "SagaStepFailed create_alliance 1 false",
            "SagaCompensating delete_partner - -",
            "SagaStepSucceeded delete_partner - -",
            "SagaCompensated delete_partner - -",
        ]
    );
    let saga = app.settled(&flaky).await;
    let published = saga_events_of(&app, &saga, 4).await;
    assert_eq!(recorded_events(&saga), types(&published), "{saga:#}");
    assert_eq!(
        steps(&published),
        [
            "SagaStarted create_alliance - -",
            "SagaStepFailed create_alliance 1 true",
            "SagaStepSucceeded create_alliance - -",
            "SagaCompleted create_alliance - -",
        ]
    );
    let saga = app.settled(&undeletable).await;
    let published = saga_events_of(&app, &saga, 5).await;
    assert_eq!(recorded_events(&saga), types(&published), "{saga:#}");
    let events = steps(&published);
    assert_eq!(events[1], "SagaStepFailed create_alliance 1 false");
    assert_eq!(events[2], "SagaCompensating delete_partner - -");
    assert_eq!(events[3], "SagaStepFailed delete_partner 1 true");
    assert_eq!(events.last().unwrap(), "SagaFailed delete_partner - -");
}

/// Which instance made each transition is in the saga's history, so a
/// history shows who drove it, and when another instance took over.
#[tokio::test]
async fn every_transition_names_the_instance_that_made_it() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(503), Some(3)).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let mut app = spawn_app(alliances, integrations).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), &p).await;
    let failed = app.settled(&p).await;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let instances = |saga: &Value| -> Vec<String> {
        saga["history"]
            .as_array()
            .expect("a history")
            .iter()
            .map(|h| h["instance_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let first = instances(&failed);
    assert!(
        !first[0].is_empty() && first.iter().all(|i| i == &first[0]),
        "one instance drove it: {first:?}"
    );

    app.restart().await;
    let id = failed["saga_id"].as_str().expect("saga_id");
    let retried = app
        .admin_post(&format!("/sagas/{id}/retry"), Some("test-admin-token"))
        .await;
    assert_eq!(retried.status(), 202);
    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated", "{saga:#}");
    let all = instances(&saga);
    let (before, after) = all.split_at(first.len());
    assert_eq!(before, &first[..], "history is never rewritten");
    assert!(
        !after.is_empty() && after.iter().all(|i| !i.is_empty() && i != &first[0]),
        "the new instance made the rest: {all:?}"
    );
}
