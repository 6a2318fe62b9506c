//! Poison input goes to `<channel>-dlq` with a reason, is acked, and never
//! stops the consumer.

use serde_json::json;

use crate::helpers::{
    alliance_created, mocks, on_create_alliance, partner, spawn_app_with, TestConfig,
};

fn fields(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn entry(event_id: &str, event_type: &str, payload: String) -> Vec<(String, String)> {
    fields(&[
        ("event_id", event_id.to_string()),
        ("correlation_id", format!("corr-{event_id}")),
        ("event_type", event_type.to_string()),
        ("payload", payload),
        ("timestamp", "2026-11-22T14:00:00.000Z".to_string()),
    ])
}

#[tokio::test]
async fn poison_entries_are_dead_lettered_while_valid_events_complete() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-1"), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    config.settings.limits.max_message_bytes = 4096;
    let mut app = spawn_app_with(alliances, integrations, config).await;
    let stream = app.channels.partner_events.clone();

    let poison = [
        (
            "bad-json",
            entry("bad-json", "PartnerCreated", "{not json".into()),
            "invalid JSON",
        ),
        (
            "no-partner",
            entry(
                "no-partner",
                "PartnerCreated",
                json!({"name": "X"}).to_string(),
            ),
            "payload.partner_id",
        ),
        (
            "no-name",
            entry(
                "no-name",
                "PartnerCreated",
                json!({"partner_id": "p"}).to_string(),
            ),
            "payload.name",
        ),
        (
            "too-big",
            entry(
                "too-big",
                "PartnerCreated",
                json!({"partner_id": "p", "name": "x".repeat(5000)}).to_string(),
            ),
            "exceeds MAX_MESSAGE_BYTES",
        ),
        (
            "no-correlation",
            fields(&[
                ("event_id", "no-correlation".into()),
                ("event_type", "PartnerCreated".into()),
                (
                    "payload",
                    json!({"partner_id": "p", "name": "X"}).to_string(),
                ),
            ]),
            "missing required field correlation_id",
        ),
        (
            "nul-char",
            entry(
                "nul-char",
                "PartnerCreated",
                json!({"partner_id": "p", "name": "A\u{0}B"}).to_string(),
            ),
            "NUL",
        ),
        (
            "bad-saga-id",
            {
                let mut f = entry(
                    "bad-saga-id",
                    "PartnerCreated",
                    json!({"partner_id": "p", "name": "X"}).to_string(),
                );
                f.push(("saga_id".into(), "not-a-uuid".into()));
                f
            },
            "saga_id",
        ),
    ];
    for (_, f, _) in &poison {
        app.publish_fields(&stream, f).await;
    }
    // An event type we do not handle: acked and ignored, not dead-lettered.
    app.publish_fields(
        &stream,
        &entry(
            "other-type",
            "PartnerUpdated",
            json!({"partner_id": "p"}).to_string(),
        ),
    )
    .await;
    // A valid event after all of that still runs.
    let p = partner();
    app.publish_partner(&p, &format!("evt-{p}"), "corr-valid")
        .await;

    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "completed");

    let dlq = format!("{stream}-dlq");
    let letters = app.wait_for_entries(&dlq, poison.len(), |_| true).await;
    assert_eq!(
        letters.len(),
        poison.len(),
        "exactly the poison entries: {letters:?}"
    );
    for (event_id, original, reason) in &poison {
        // An unparseable body is kept whole under `raw` (docs/contract.md §3);
        // Redis fields are always kept one by one.
        let raw_id = format!("\"event_id\":\"{event_id}\"");
        let letter = letters
            .iter()
            .find(|l| {
                l.get("event_id").map(String::as_str) == Some(*event_id)
                    || l.get("raw").is_some_and(|raw| raw.contains(&raw_id))
            })
            .unwrap_or_else(|| panic!("{event_id} not dead-lettered"));
        assert!(
            letter["dlq_reason"].contains(reason),
            "{event_id}: {}",
            letter["dlq_reason"]
        );
        assert_eq!(letter["source_channel"], stream);
        assert!(letter.contains_key("failed_at"));
        for (k, v) in original {
            match letter.get("raw") {
                Some(raw) => assert!(raw.contains(v.as_str()), "{event_id}: {k} kept in raw"),
                None => assert_eq!(
                    &letter[k], v,
                    "{event_id}: original field {k} kept as received"
                ),
            }
        }
    }
    assert!(!letters
        .iter()
        .any(|l| l.get("event_id").map(String::as_str) == Some("other-type")));
    assert_eq!(app.sagas_of("p").await.len(), 0, "no saga from poison");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("saga_dead_letters_total"), "{metrics}");
    assert!(metrics.contains("saga_ignored_messages_total"));
    assert_eq!(
        app.stop_and_count_unacked(&stream).await,
        0,
        "every entry acked"
    );
}
