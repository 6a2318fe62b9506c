//! A message the broker refuses on its own merits is parked after a few
//! attempts with the broker's reason, and never holds up the messages
//! behind it. Each test has a broker of its own that really refuses large
//! messages (nothing is mocked):
//!
//! - pulsar-lite with a small `max_message_size_bytes` answers an oversize
//!   send with a `SendError` (`NotAllowedError: Exceed maximum message size:
//!   …`) and keeps the connection, as a real Pulsar broker does;
//! - redis-server with `proto-max-bulk-len 1mb` answers a larger value with
//!   a protocol error and drops the connection, which looks like an outage
//!   until the relay pings it and sends again.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

use saga_orchestrator::config::{ParticipantMode, Settings};
use saga_orchestrator::envelope::MessageStatus;

use crate::api::summary_when;
use crate::broker::PrivateRedis;
use crate::broker_mode::{answer, command, reply};
use crate::helpers::{
    broker_url, mocks, partner, spawn_app_with, PrivatePulsar, TestApp, TestConfig,
};
use crate::outbox_rows::Db;
use crate::relay::{event_of, metric};

/// pulsar-lite's limit in the Pulsar test.
const PULSAR_MAX_MESSAGE_BYTES: usize = 8 * 1024;

#[tokio::test]
async fn a_command_pulsar_refuses_as_too_large_is_parked_and_the_rest_flows() {
    let pulsar = PrivatePulsar::start_with_max_message_size(PULSAR_MAX_MESSAGE_BYTES).await;
    let parked = refused_command_is_parked(&pulsar.url, 2 * PULSAR_MAX_MESSAGE_BYTES, |_| {}).await;
    for row in &parked {
        assert!(
            row.reason.contains("Exceed maximum message size"),
            "the broker's reason: {row:?}"
        );
    }
}

#[tokio::test]
async fn a_command_redis_refuses_as_too_large_is_parked_and_the_rest_flows() {
    let redis = PrivateRedis::start(&["--proto-max-bulk-len", "1mb"]).await;
    // The service itself takes bodies that large.
    let limit = |s: &mut Settings| s.limits.max_message_bytes = 4 * 1024 * 1024;
    let parked = refused_command_is_parked(&redis.url, 3 * 512 * 1024, limit).await;
    for row in &parked {
        assert!(row.reason.starts_with("redis: "), "{row:?}");
    }
}

/// A saga whose `CreateAlliance` command (it carries the partner, notes
/// and all) is `notes_bytes` long, then three small ones, in broker mode on
/// the broker at `url`: the small ones complete, the big one's commands are
/// parked and it is compensated. Returns the parked rows.
async fn refused_command_is_parked(
    url: &str,
    notes_bytes: usize,
    tailor: impl FnOnce(&mut Settings),
) -> Vec<crate::outbox_rows::ParkedRow> {
    let (alliances, integrations) = mocks().await;
    Mock::given(method("DELETE"))
        .and(path_regex("^/partners/.+$"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&integrations)
        .await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    let s = &mut config.settings;
    s.broker.url = broker_url(url);
    s.participants.alliances_mode = ParticipantMode::Broker;
    s.participants.step_timeout = Duration::from_millis(1500);
    tailor(s);
    let db = Db::from_url(config.database_url());
    let app = spawn_app_with(alliances, integrations, config).await;
    let commands = app.channels.alliance_commands.clone();
    let events = app.channels.saga_events.clone();

    let big = partner();
    let body =
        json!({"payload": {"partner_id": big, "name": "Big", "notes": "x".repeat(notes_bytes)}});
    assert_eq!(app.post("/sagas", &body).await.status(), 202);
    // Its command is in the outbox (and refused) before the others exist.
    wait_for_state(&app, &big, "awaiting_alliance").await;

    let small: Vec<String> = (0..3).map(|_| partner()).collect();
    for p in &small {
        app.publish_partner(p, &format!("evt-{p}"), "corr-small")
            .await;
    }
    for p in &small {
        let create = command(&app, &commands, p, 1).await;
        let done = reply(
            &create,
            MessageStatus::Completed,
            json!({"alliance_id": "a"}),
        );
        answer(&app, done).await;
    }
    for p in &small {
        app.wait_for_entries(&events, 1, |e| event_of(e, "SagaCompleted", p))
            .await;
    }

    // Never answered (its command never went out): compensated in the end.
    let saga = app.settled(&big).await;
    assert_eq!(saga["state"], "compensated", "{saga:#}");
    app.wait_for_entries(&events, 1, |e| event_of(e, "SagaCompensated", &big))
        .await;
    let sent = app.entries(&commands).await;
    assert!(
        !sent.iter().any(|e| event_of(e, "CreateAlliance", &big)),
        "the broker never took it"
    );

    let summary = summary_when(&app, |s| s["outbox_backlog"] == 0).await;
    let parked = db.parked().await;
    assert!(!parked.is_empty(), "the refused command is parked");
    for row in &parked {
        assert_eq!(row.channel, commands, "{row:?}");
        assert!(row.message.contains(&big), "only the big saga's: {row:?}");
        assert_eq!(row.attempts, 3, "{row:?}");
    }
    assert_eq!(summary["outbox_parked"], parked.len(), "{summary:#}");
    let counted = metric(&app, "saga_outbox_parked_total", "reason=\"refused\"").await;
    assert!(counted >= parked.len() as f64, "parked counter: {counted}");
    parked
}

async fn wait_for_state(app: &TestApp, partner_id: &str, state: &str) {
    for _ in 0..200 {
        let sagas = app.sagas_of(partner_id).await;
        if sagas.first().is_some_and(|s| s["state"] == state) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("saga of {partner_id} never reached {state}");
}
