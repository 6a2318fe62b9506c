//! Property tests through the running service: generated start requests
//! with hostile ids, names and payloads are either refused with a 4xx or
//! accepted — and then stored, driven to a terminal state and announced on
//! `saga-events` with their ids intact. Nothing a caller sends is a 5xx.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::{json, Value};

use crate::helpers::{mocks, on_create_alliance, on_delete_partner, spawn_app};
use wiremock::ResponseTemplate;

/// Requests per run: enough variety, bounded time.
const CASES: usize = 48;

/// Text from every corner of Unicode, controls and NUL included.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::string::string_regex(&format!("(?s).{{0,{max}}}")).expect("valid regex"),
        Just(String::new()),
        Just(".".into()),
        Just("..".into()),
        Just("a/../b".into()),
        Just("%2e%2e".into()),
        Just("x\u{0}y".into()),
        Just("\u{202e}rtl\u{feff}".into()),
        Just("💥".repeat(max.min(300))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        hostile_text(40).prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(hostile_text(10), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A `POST /sagas` body: sometimes well formed, often not.
fn start_body() -> impl Strategy<Value = Value> {
    (
        hostile_text(300),
        hostile_text(60),
        prop::option::of(hostile_text(300)),
        prop::option::of(hostile_text(300)),
        json_value(),
        any::<bool>(),
    )
        .prop_map(|(partner, name, correlation, event, extra, shaped)| {
            if !shaped {
                return extra; // any JSON at all
            }
            let mut body =
                json!({"payload": {"partner_id": partner, "name": name, "extra": extra}});
            if let Some(c) = correlation {
                body["correlation_id"] = c.into();
            }
            if let Some(e) = event {
                body["event_id"] = e.into();
            }
            body
        })
}

fn generated(cases: usize) -> Vec<Value> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    (0..cases)
        .map(|_| {
            start_body()
                .new_tree(&mut runner)
                .expect("a value")
                .current()
        })
        .collect()
}

#[tokio::test]
async fn hostile_start_requests_are_refused_or_run_to_the_end() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;

    let mut accepted: HashMap<String, (String, Value)> = HashMap::new();
    for body in generated(CASES) {
        let response = app.post("/sagas", &body).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("every answer is JSON");
        assert!(
            status == 202 || (400..500).contains(&status),
            "{status} for {body}: {answer}"
        );
        if status == 202 {
            let saga_id = answer["saga_id"].as_str().expect("saga_id").to_string();
            accepted.insert(
                saga_id,
                (
                    answer["correlation_id"].as_str().unwrap_or_default().into(),
                    body,
                ),
            );
        }
    }
    assert!(!accepted.is_empty(), "some generated requests are valid");

    // Every accepted saga is stored as given, ends terminal, and its end is
    // announced with its ids intact.
    for (saga_id, (correlation_id, body)) in &accepted {
        let saga = app.settled_saga(saga_id, Duration::from_secs(30)).await;
        assert_eq!(saga["partner_id"], body["payload"]["partner_id"], "{body}");
        assert_eq!(&saga["correlation_id"], correlation_id);
    }
    let events = &app.channels.saga_events;
    let ends = app
        .wait_for_entries(events, accepted.len(), |e| {
            e["event_type"] == "SagaCompensated" || e["event_type"] == "SagaCompleted"
        })
        .await;
    for (saga_id, (correlation_id, _)) in &accepted {
        let end = ends.iter().find(|e| e.get("saga_id") == Some(saga_id));
        let end = end.unwrap_or_else(|| panic!("no terminal event for {saga_id}"));
        assert_eq!(&end["correlation_id"], correlation_id);
    }
}
