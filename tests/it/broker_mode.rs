//! Broker mode (`ALIANZAS_MODE=broker`, `INTEGRACIONES_MODE=broker`): the
//! test plays both participants on the broker, reading their command
//! channels and answering on `saga-replies` exactly as docs/contract.md §3 says.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use saga_orchestrator::envelope::{Envelope, EventType, MessageStatus};

use crate::helpers::{mocks, partner, spawn_app_with, states, Entry, TestApp, TestConfig};
use crate::relay::metric;

pub(crate) async fn broker_mode_app(step_timeout_ms: u64) -> TestApp {
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.over_broker(Duration::from_millis(step_timeout_ms));
    spawn_app_with(alliances, integrations, config).await
}

/// The `n`-th command (1-based) on `channel` for `partner_id`.
pub(crate) async fn command(app: &TestApp, channel: &str, partner_id: &str, n: usize) -> Entry {
    let of_partner = |e: &Entry| {
        e.get("payload")
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .is_some_and(|p| p["partner_id"] == partner_id)
    };
    let commands = app.wait_for_entries(channel, n, of_partner).await;
    commands[n - 1].clone()
}

pub(crate) fn payload(entry: &Entry) -> Value {
    serde_json::from_str(&entry["payload"]).expect("payload is JSON")
}

/// The participant's reply to `command`.
pub(crate) fn reply(command: &Entry, status: MessageStatus, extra: Value) -> Envelope {
    let kind = match command["event_type"].as_str() {
        "CreateAlliance" => EventType::CreateAllianceReply,
        "DeletePartner" => EventType::DeletePartnerReply,
        other => panic!("not a command: {other}"),
    };
    let sent = payload(command);
    let mut body = json!({"partner_id": sent["partner_id"], "attempt": sent["attempt"]});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    Envelope::new(
        kind,
        command["correlation_id"].clone(),
        Some(command["saga_id"].parse().expect("saga_id")),
        Some(status),
        body.as_object().cloned().unwrap_or_default(),
    )
}

pub(crate) async fn answer(app: &TestApp, envelope: Envelope) {
    app.broker
        .publish_envelope(&app.channels.saga_replies, &envelope)
        .await;
}

async fn wait_for_state(app: &TestApp, partner_id: &str, state: &str) -> Value {
    for _ in 0..400 {
        if let Some(saga) = app.sagas_of(partner_id).await.first() {
            if saga["state"] == state {
                return saga.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("saga of {partner_id} never reached {state}");
}

/// `field` of each of the saga's history rows, oldest first.
fn history_field<'a>(saga: &'a Value, field: &str) -> Vec<&'a Value> {
    saga["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| &h[field])
        .collect()
}

pub(crate) fn reasons(saga: &Value) -> Vec<String> {
    saga["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_saga_completes_through_commands_and_a_stream_of_replies() {
    let app = broker_mode_app(5_000).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-broker")
        .await;

    let create = command(&app, &app.channels.alliance_commands, &p, 1).await;
    assert_eq!(create["event_type"], "CreateAlliance");
    assert_eq!(create["correlation_id"], "corr-broker");
    let sent = payload(&create);
    assert_eq!(sent["name"], format!("Partner {p}"));
    assert_eq!(sent["email"], format!("{p}@example.test"));
    assert_eq!(sent["tier"], "gold", "whatever else the partner carried");
    assert_eq!(sent["attempt"], 1);
    assert_eq!(
        sent["idempotency_key"],
        format!("{}:create-alliance", create["saga_id"])
    );
    wait_for_state(&app, &p, "awaiting_alliance").await;

    answer(&app, reply(&create, MessageStatus::Started, json!({}))).await;
    for step in ["a third", "two thirds"] {
        answer(
            &app,
            reply(&create, MessageStatus::Progress, json!({"progress": step})),
        )
        .await;
    }
    answer(
        &app,
        reply(
            &create,
            MessageStatus::Completed,
            json!({"alliance_id": "a-b1"}),
        ),
    )
    .await;

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["alliance_id"], "a-b1");
    assert_eq!(saga["saga_id"], create["saga_id"].as_str());
    assert_eq!(
        reasons(&saga),
        [
            "partner_created",
            "alliance_requested",
            "command_sent",
            "participant_started",
            "participant_progress",
            "participant_progress",
            "alliance_created"
        ]
    );
    let progress: Vec<_> = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["detail"].as_str())
        .collect();
    assert!(progress.contains(&"two thirds"), "{progress:?}");
    assert!(app.alliances.received_requests().await.unwrap().is_empty());
}

/// A saga with a free slot is recorded with its first command in one
/// write: the command waits on no second transaction.
#[tokio::test]
async fn a_new_saga_is_recorded_with_its_first_command_in_one_write() {
    let app = broker_mode_app(5_000).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-one-write")
        .await;
    let create = command(&app, &app.channels.alliance_commands, &p, 1).await;
    wait_for_state(&app, &p, "awaiting_alliance").await;
    let saga = app.saga(&create["saga_id"]).await;
    assert_eq!(
        reasons(&saga),
        ["partner_created", "alliance_requested", "command_sent"]
    );
    assert_eq!(
        history_field(&saga, "seq"),
        [1, 2, 3],
        "one row per decision"
    );
    // One write: its rows carry its one time (a second write's would be later).
    let times = history_field(&saga, "at");
    assert!(times[0].is_string(), "{times:?}");
    assert!(times.iter().all(|at| *at == times[0]), "{times:?}");
    // The counters are process-wide: exact only when this is the one
    // service in the process (nextest runs each test in its own).
    if std::env::var_os("NEXTEST").is_some() {
        let written = |kind: &'static str| metric(&app, "saga_store_write_items_total", kind);
        assert_eq!(
            written("write=\"transition\"").await,
            0.0,
            "no transition was written apart from the record"
        );
        assert_eq!(written("write=\"record\"").await, 1.0);
    }
}

#[tokio::test]
async fn a_failed_reply_compensates_through_delete_partner_commands() {
    let app = broker_mode_app(5_000).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-broker-no")
        .await;

    let create = command(&app, &app.channels.alliance_commands, &p, 1).await;
    answer(&app, reply(&create, MessageStatus::Started, json!({}))).await;
    answer(
        &app,
        reply(
            &create,
            MessageStatus::Failed,
            json!({"error": "partner is blacklisted"}),
        ),
    )
    .await;

    let delete = command(&app, &app.channels.integration_commands, &p, 1).await;
    assert_eq!(delete["event_type"], "DeletePartner");
    assert_eq!(delete["saga_id"], create["saga_id"]);
    let sent = payload(&delete);
    assert!(
        sent["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("partner is blacklisted"),
        "{sent}"
    );
    assert_eq!(
        sent["idempotency_key"],
        format!("{}:delete-partner", create["saga_id"])
    );
    answer(&app, reply(&delete, MessageStatus::Started, json!({}))).await;
    answer(&app, reply(&delete, MessageStatus::Completed, json!({}))).await;

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated");
    assert_eq!(
        states(&saga),
        [
            "started",
            "creating_alliance",
            "awaiting_alliance",
            "awaiting_alliance",
            "compensating",
            "compensating",
            "compensating",
            "compensated"
        ]
    );
    assert!(app
        .integrations
        .received_requests()
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_missed_reply_deadline_sends_the_command_again_and_stale_replies_are_ignored() {
    let app = broker_mode_app(400).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-broker-slow")
        .await;

    // Attempt 1: the participant starts, reports progress, then goes quiet.
    let first = command(&app, &app.channels.alliance_commands, &p, 1).await;
    answer(&app, reply(&first, MessageStatus::Started, json!({}))).await;
    answer(
        &app,
        reply(&first, MessageStatus::Progress, json!({"progress": "1/2"})),
    )
    .await;

    // The deadline passes: attempt 2 goes out under the same key.
    let second = command(&app, &app.channels.alliance_commands, &p, 2).await;
    assert_eq!(payload(&second)["attempt"], 2);
    assert_eq!(
        payload(&second)["idempotency_key"],
        payload(&first)["idempotency_key"]
    );
    assert_ne!(second["event_id"], first["event_id"]);

    // Attempt 1's failure arrives late: it must not fail attempt 2.
    answer(
        &app,
        reply(&first, MessageStatus::Failed, json!({"error": "late"})),
    )
    .await;
    answer(&app, reply(&second, MessageStatus::Started, json!({}))).await;
    answer(
        &app,
        reply(
            &second,
            MessageStatus::Completed,
            json!({"alliance_id": "a-2"}),
        ),
    )
    .await;

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["alliance_id"], "a-2");
    let timed_out = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["reason"] == "attempt_failed")
        .expect("a failed attempt in the history");
    assert!(
        timed_out["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("no reply"),
        "{timed_out}"
    );
    assert!(!reasons(&saga).contains(&"alliance_rejected".to_string()));
}

#[tokio::test]
async fn a_participant_that_never_answers_is_compensated_after_the_last_attempt() {
    let app = broker_mode_app(300).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-broker-silent")
        .await;

    // RETRY_MAX_ATTEMPTS is 3 in tests: three commands, no answer.
    let third = command(&app, &app.channels.alliance_commands, &p, 3).await;
    assert_eq!(payload(&third)["attempt"], 3);
    let delete = command(&app, &app.channels.integration_commands, &p, 1).await;
    assert!(payload(&delete)["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("retries_exhausted"));
    answer(&app, reply(&delete, MessageStatus::Completed, json!({}))).await;

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated");
    assert!(reasons(&saga).contains(&"retries_exhausted".to_string()));
}

#[tokio::test]
async fn replies_for_unknown_or_finished_sagas_are_acked_and_dropped() {
    let mut app = broker_mode_app(5_000).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-broker-dup")
        .await;
    let create = command(&app, &app.channels.alliance_commands, &p, 1).await;
    let done = reply(
        &create,
        MessageStatus::Completed,
        json!({"alliance_id": "a-d"}),
    );
    answer(&app, done.clone()).await;
    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "completed");

    // The same reply again, a late progress, and a reply for a saga
    // nobody knows: all acked, none changes anything.
    answer(&app, done).await;
    answer(&app, reply(&create, MessageStatus::Progress, json!({}))).await;
    let mut stranger = reply(&create, MessageStatus::Completed, json!({}));
    stranger.saga_id = Some(Uuid::now_v7());
    answer(&app, stranger).await;
    // And a reply that names no saga at all: dead-lettered.
    let mut anonymous = reply(&create, MessageStatus::Started, json!({}));
    anonymous.saga_id = None;
    answer(&app, anonymous).await;

    let dlq = format!("{}-dlq", app.channels.saga_replies);
    let letters = app.wait_for_entries(&dlq, 1, |_| true).await;
    assert!(letters[0]["dlq_reason"].contains("saga_id"), "{letters:?}");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    for outcome in ["outcome=\"stale\"", "outcome=\"unknown_saga\""] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("saga_replies_total") && l.contains(outcome)),
            "{outcome} not counted"
        );
    }
    let after = app.saga(saga["saga_id"].as_str().unwrap()).await;
    assert_eq!(after["history"], saga["history"], "nothing changed");
    let replies = app.channels.saga_replies.clone();
    assert_eq!(app.stop_and_count_unacked(&replies).await, 0);
}

#[tokio::test]
async fn an_alliance_created_after_compensation_is_recorded_for_a_person() {
    let app = broker_mode_app(5_000).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-broker-late")
        .await;
    let create = command(&app, &app.channels.alliance_commands, &p, 1).await;
    answer(
        &app,
        reply(&create, MessageStatus::Failed, json!({"error": "not now"})),
    )
    .await;
    let delete = command(&app, &app.channels.integration_commands, &p, 1).await;
    answer(&app, reply(&delete, MessageStatus::Completed, json!({}))).await;
    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "compensated");

    // Alliances changes its mind after all: the alliance now exists for a
    // deleted partner. That must show, not vanish.
    answer(
        &app,
        reply(
            &create,
            MessageStatus::Completed,
            json!({"alliance_id": "a-late"}),
        ),
    )
    .await;
    let id = saga["saga_id"].as_str().unwrap().to_string();
    let mut after = app.saga(&id).await;
    for _ in 0..100 {
        if after["alliance_id"] == "a-late" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = app.saga(&id).await;
    }
    assert_eq!(after["state"], "compensated", "still compensated");
    assert_eq!(after["alliance_id"], "a-late");
    assert_eq!(
        reasons(&after).last().map(String::as_str),
        Some("alliance_created_late")
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("saga_replies_total") && l.contains("outcome=\"late_success\"")));
}

#[tokio::test]
async fn sagas_awaiting_replies_keep_their_slots_so_new_events_wait_in_the_broker() {
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.over_broker(Duration::from_secs(20));
    config.settings.limits.max_in_flight = 2;
    let app = spawn_app_with(alliances, integrations, config).await;
    let partners: Vec<String> = (0..5).map(|_| partner()).collect();
    for p in &partners {
        app.publish_partner(p, &format!("evt-{p}"), "corr-slots")
            .await;
    }

    // Two sagas wait for their replies: the other three events stay in the broker.
    let commands = app
        .wait_for_entries(&app.channels.alliance_commands, 2, |_| true)
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let page: Value = app
        .get("/sagas?correlation_id=corr-slots")
        .await
        .json()
        .await
        .expect("json");
    let recorded = page["items"].as_array().map_or(0, Vec::len);
    assert_eq!(recorded, 2, "only as many sagas as slots");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "saga_awaiting_replies 2"),
        "{metrics}"
    );

    // Their replies free the slots: the rest follow.
    complete(&app, &commands).await;
    let more = app
        .wait_for_entries(&app.channels.alliance_commands, 4, |_| true)
        .await;
    assert!(more.len() >= 4);
    complete(&app, &more[2..]).await;
    let last = app
        .wait_for_entries(&app.channels.alliance_commands, 5, |_| true)
        .await;
    complete(&app, &last[4..]).await;
    for p in &partners {
        assert_eq!(app.settled(p).await["state"], "completed");
    }
}

/// Alliances creates what each of `commands` asks for.
async fn complete(app: &TestApp, commands: &[Entry]) {
    for command in commands {
        let done = reply(
            command,
            MessageStatus::Completed,
            json!({"alliance_id": "a-s"}),
        );
        answer(app, done).await;
    }
}

/// A reply that needs a next call (here: a refusal, so compensation) is
/// driven on at once with the slot its saga held while waiting, even with
/// every slot taken: not left for the sweeper's next pass.
#[tokio::test]
async fn a_reply_at_capacity_is_driven_on_with_the_slot_it_waited_in() {
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.over_broker(Duration::from_secs(20));
    config.settings.limits.max_in_flight = 1;
    // Far longer than the wait below: only a driver started by the reply
    // can send the delete in time.
    config.settings.instance.sweep_interval = Duration::from_secs(60);
    let app = spawn_app_with(alliances, integrations, config).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-capacity")
        .await;
    let create = command(&app, &app.channels.alliance_commands, &p, 1).await;
    let refused = reply(&create, MessageStatus::Failed, json!({"error": "no"}));
    answer(&app, refused).await;
    let delete = tokio::time::timeout(
        Duration::from_secs(10),
        command(&app, &app.channels.integration_commands, &p, 1),
    )
    .await
    .expect("the delete command went out without waiting for the sweeper");
    assert_eq!(delete["saga_id"], create["saga_id"]);
    answer(&app, reply(&delete, MessageStatus::Completed, json!({}))).await;
    assert_eq!(app.settled(&p).await["state"], "compensated");

    // The slot is free again, once: the next event gets it, and waits in it.
    let next = partner();
    app.publish_partner(&next, &format!("evt-{next}"), "corr-capacity")
        .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        command(&app, &app.channels.alliance_commands, &next, 1),
    )
    .await
    .expect("the next saga got the freed slot");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "saga_awaiting_replies 1"),
        "{metrics}"
    );
}
