//! The broker dies mid-stream (SIGKILL) and comes back on the same data:
//! every saga still reaches a terminal state, and none runs twice. And an
//! outage does not spend the attempts of sagas waiting for replies.
//!
//! Always on Pulsar, on a pulsar-lite of its own: the suite's shared broker
//! must stay up for the tests running beside this one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use saga_orchestrator::envelope::MessageStatus;
use serde_json::{json, Value};

use crate::broker_mode::{command, reasons, reply};
use crate::helpers::{
    alliance_created, broker_url, mocks, on_create_alliance, partner, spawn_app_with, states,
    PrivatePulsar, TestApp, TestBroker, TestConfig, TERMINAL,
};

const PER_HALF: usize = 100;

/// Every saga the service has, by partner (all pages).
async fn all_sagas(app: &TestApp) -> Vec<Value> {
    let mut sagas = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/sagas?limit=500&cursor={c}"),
            None => "/sagas?limit=500".to_string(),
        };
        let page: Value = app.get(&path).await.json().await.expect("json");
        sagas.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return sagas,
        }
    }
}

async fn publish_half(url: &str, app: &TestApp, half: usize) -> Vec<String> {
    let broker = TestBroker::connect_url(url).await;
    let mut partners = Vec::with_capacity(PER_HALF);
    for i in 0..PER_HALF {
        let p = format!("p-restart-{half}-{i}");
        broker
            .publish_partner(
                &app.channels.partner_events,
                &p,
                &format!("evt-{p}"),
                "corr-restart",
            )
            .await;
        partners.push(p);
    }
    partners
}

#[tokio::test]
async fn pulsar_broker_restart_mid_stream_loses_and_repeats_nothing() {
    let pulsar = PrivatePulsar::start().await;
    let (alliances, integrations) = mocks().await;
    // A little latency, so work is in flight when the broker dies.
    on_create_alliance(
        &alliances,
        alliance_created("a-restart").set_delay(Duration::from_millis(20)),
        None,
    )
    .await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.broker.url = broker_url(&pulsar.url);
    let app = spawn_app_with(alliances, integrations, config).await;

    let mut partners = publish_half(&pulsar.url, &app, 1).await;
    // Kill it once some sagas are done and others are still coming in.
    let started = Instant::now();
    loop {
        let done = all_sagas(&app)
            .await
            .iter()
            .filter(|s| s["state"] == "completed")
            .count();
        if done >= 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no progress before the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pulsar.kill_and_restart().await;
    partners.extend(publish_half(&pulsar.url, &app, 2).await);

    let started = Instant::now();
    let sagas = loop {
        let sagas = all_sagas(&app).await;
        let terminal = sagas
            .iter()
            .filter(|s| TERMINAL.contains(&s["state"].as_str().unwrap_or_default()))
            .count();
        if terminal >= partners.len() {
            break sagas;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{terminal} of {} sagas terminal after the restart",
            partners.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Once more after a pause: a late redelivery must not start a second saga.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sagas = if all_sagas(&app).await.len() == sagas.len() {
        sagas
    } else {
        all_sagas(&app).await
    };
    let mut per_partner: HashMap<&str, usize> = HashMap::new();
    for saga in &sagas {
        *per_partner
            .entry(saga["partner_id"].as_str().unwrap_or_default())
            .or_default() += 1;
        assert_eq!(saga["state"], "completed", "{saga}");
    }
    assert_eq!(
        sagas.len(),
        partners.len(),
        "one saga per event, none twice"
    );
    for p in &partners {
        assert_eq!(per_partner.get(p.as_str()), Some(&1), "{p}");
    }
    // Every alliance was asked for under its saga's key; retries reuse it.
    let keys: HashSet<String> = app
        .alliances
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(keys.len(), partners.len());
}

#[tokio::test]
async fn a_broker_outage_does_not_spend_the_attempts_of_sagas_awaiting_replies() {
    // Its own Pulsar: this test stops the broker.
    let pulsar = PrivatePulsar::start().await;
    let (alliances, integrations) = mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.broker.url = broker_url(&pulsar.url);
    config.over_broker(Duration::from_millis(1500));
    let app = spawn_app_with(alliances, integrations, config).await;
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-outage")
        .await;
    let create = command(&app, &app.channels.alliance_commands, &p, 1).await;

    // The broker goes away before the first reply deadline, for several
    // of them (RETRY_MAX_ATTEMPTS is 3 in tests: long enough to exhaust
    // them, were they spent).
    pulsar.stop_broker().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    pulsar.start_broker().await;

    // The participant answers the first (and only) command.
    let broker = TestBroker::connect_url(&pulsar.url).await;
    broker
        .publish_envelope(
            &app.channels.saga_replies,
            &reply(
                &create,
                MessageStatus::Completed,
                json!({"alliance_id": "a-o"}),
            ),
        )
        .await;
    let saga = app.settled(&p).await;
    // Spending an attempt per deadline, the outage would have exhausted
    // them and compensated the saga.
    assert_eq!(saga["state"], "completed", "{saga}");
    assert!(!states(&saga).contains(&"compensating".to_string()));
    let reasons = reasons(&saga);
    assert!(
        reasons.contains(&"broker_unreachable".to_string()),
        "{reasons:?}"
    );
}
