//! Participants over HTTP against hostile or broken answers: ids that try
//! to leave their path segment, answers that did not come from the business
//! logic, bodies no store accepts, credentials in participant URLs.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{
    alliance_created, mocks, on_create_alliance, on_delete_partner, partner, spawn_app,
    spawn_app_with, states, TestApp, TestConfig,
};

/// Fast enough for every test here: a saga that is not terminal by then is
/// stuck (e.g. a store refusing its transition), not slow.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

/// Starts a saga over the API for `partner_id`; returns its id.
async fn start(app: &TestApp, partner_id: &str) -> String {
    app.start_saga(partner_id, "Hostile Ltd").await
}

/// Waits for a saga, by id, to be terminal; returns it with its history.
async fn settled(app: &TestApp, saga_id: &str) -> Value {
    app.settled_saga(saga_id, SETTLE_WITHIN).await
}

/// Ids and the exact path each must reach: every byte but the unreserved
/// ones (RFC 3986) percent-encoded, so no server can read a separator,
/// a query, a fragment, a path parameter or a dot segment in it.
fn hostile_ids() -> Vec<(String, String)> {
    let fixed = [
        ("a/b", "a%2Fb"),
        ("%2e%2e", "%252e%252e"),
        ("%2E%2E%2F", "%252E%252E%252F"),
        ("?x=1", "%3Fx%3D1"),
        ("#frag", "%23frag"),
        ("a b", "a%20b"),
        ("ü/ñ", "%C3%BC%2F%C3%B1"),
        ("..%2f", "..%252f"),
        ("\\", "%5C"),
        ("..\\..", "..%5C.."),
        (";x", "%3Bx"),
        ("x;jsessionid=1", "x%3Bjsessionid%3D1"),
        ("...", "..."),
        ("a\tb\r\nc", "a%09b%0D%0Ac"),
        ("+&=,", "%2B%26%3D%2C"),
        ("/", "%2F"),
        ("p-1.x_y~z", "p-1.x_y~z"),
    ];
    let mut ids: Vec<(String, String)> = fixed
        .iter()
        .map(|(id, enc)| (id.to_string(), format!("/partners/{enc}")))
        .collect();
    let slashes = "a/".repeat(128);
    ids.push((slashes, format!("/partners/{}", "a%2F".repeat(128))));
    let wide = "ü".repeat(256);
    ids.push((wide, format!("/partners/{}", "%C3%BC".repeat(256))));
    let dotted = format!("{}/../..", "x".repeat(249));
    ids.push((dotted, format!("/partners/{}%2F..%2F..", "x".repeat(249))));
    ids
}

#[tokio::test]
async fn hostile_partner_ids_reach_integrations_as_exactly_one_segment() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;

    let cases = hostile_ids();
    let mut sagas = Vec::new();
    for (id, expected) in &cases {
        sagas.push((start(&app, id).await, id, expected));
    }
    for (saga_id, id, _) in &sagas {
        let saga = settled(&app, saga_id).await;
        assert_eq!(saga["state"], "compensated", "{id:?}: {saga}");
        assert_eq!(saga["partner_id"], id.as_str());
    }

    let sent = app.deletes().await;
    let mut wrong = Vec::new();
    for (saga_id, id, expected) in &sagas {
        let key = format!("{saga_id}:delete-partner");
        let paths: Vec<_> = sent
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, p)| p)
            .collect();
        if paths != [*expected] {
            wrong.push(format!("{id:?}: sent {paths:?}, expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(sent.len(), cases.len());
}

#[tokio::test]
async fn dot_partner_ids_never_reach_integrations() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(422), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;

    for id in [".", ".."] {
        let body = json!({"payload": {"partner_id": id, "name": "Dots"}});
        let response = app.post("/sagas", &body).await;
        if response.status().is_client_error() {
            // Refused at the edge: the safest answer of all.
            continue;
        }
        assert_eq!(response.status(), 202);
        let started: Value = response.json().await.unwrap();
        let saga = settled(&app, started["saga_id"].as_str().unwrap()).await;
        assert_eq!(
            saga["state"], "failed",
            "{id:?}: parked for a person, never compensated: {saga}"
        );
        assert!(
            saga["last_error"]
                .as_str()
                .unwrap()
                .contains("path segment"),
            "{saga}"
        );
    }
    assert_eq!(app.deletes().await, [], "no DELETE of any URL");
}

#[tokio::test]
async fn alliances_answering_404_is_retried_not_read_as_a_refusal() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(404), Some(2)).await;
    on_create_alliance(&alliances, alliance_created("a-after-404"), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    let saga_id = start(&app, &p).await;
    let saga = settled(&app, &saga_id).await;

    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["alliance_id"], "a-after-404");
    assert_eq!(saga["attempts"], 3);
    assert_eq!(app.alliances.received_requests().await.unwrap().len(), 3);
    assert_eq!(app.deletes().await, [], "no compensation");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "saga_participant_misconfigured_total{participant=\"alliances\",status=\"404\"}"
        )),
        "404s counted as a likely misconfiguration: {metrics}"
    );
}

#[tokio::test]
async fn alliances_answering_409_without_an_alliance_id_completes() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(409), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    let saga_id = start(&app, &p).await;
    let saga = settled(&app, &saga_id).await;

    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["alliance_id"], Value::Null, "unknown, not made up");
    let last = saga["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "alliance_created");
    assert!(
        last["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("alliance exists (409) without an alliance_id"),
        "{last}"
    );
    assert_eq!(app.alliances.received_requests().await.unwrap().len(), 1);
    assert_eq!(app.deletes().await, [], "no compensation");
}

/// A body no PostgreSQL text column accepts as it is: NUL, other control
/// characters, invalid UTF-8.
fn poisoned_body() -> Vec<u8> {
    let mut body = b"integrations says: \0 nul, \x1b[31m escape, ".to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(b" bad utf-8");
    body
}

/// Every string in a JSON value, keys included.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| std::iter::once(k.clone()).chain(strings(v)))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn a_delete_answer_with_nul_and_invalid_utf8_settles_in_three_calls() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(
        &alliances,
        ResponseTemplate::new(422).set_body_json(json!({"error": "bad\u{0}email"})),
        None,
    )
    .await;
    on_delete_partner(
        &integrations,
        ResponseTemplate::new(500).set_body_bytes(poisoned_body()),
        Some(2),
    )
    .await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    let saga_id = start(&app, &p).await;
    let saga = settled(&app, &saga_id).await;

    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(
        states(&saga),
        [
            "started",
            "creating_alliance",
            "compensating",
            "compensating",
            "compensating",
            "compensated"
        ]
    );
    let texts = strings(&saga);
    assert!(
        texts.iter().all(|t| !t.contains('\0')),
        "no NUL stored: {saga}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("says: \\u0000 nul, \\u001b[31m")),
        "the participant's words kept, escaped: {saga}"
    );
    assert!(
        texts.iter().any(|t| t.contains("bad\\u0000email")),
        "the refusal too: {saga}"
    );
    // Long enough for a sweeper to have called again if the saga were stuck.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.deletes().await.len(), 3, "not a growing loop");
}

#[tokio::test]
async fn an_alliance_id_with_nul_is_stored_escaped() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a\u{0}b\u{7}c"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    let saga_id = start(&app, &p).await;
    let saga = settled(&app, &saga_id).await;

    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["alliance_id"], "a\\u0000b\\u0007c");
}

#[tokio::test]
async fn an_alliance_id_over_256_characters_completes_without_the_id() {
    let (alliances, integrations) = mocks().await;
    // An idempotent participant answers every retry the same way: a retry
    // could never succeed, and compensation would delete the partner.
    on_create_alliance(&alliances, alliance_created(&"x".repeat(257)), None).await;
    let app = spawn_app(alliances, integrations).await;
    let p = partner();

    let saga_id = start(&app, &p).await;
    let saga = settled(&app, &saga_id).await;

    assert_eq!(saga["state"], "completed", "{saga}");
    assert!(saga["alliance_id"].is_null(), "{saga}");
    assert_eq!(saga["attempts"], 1);
    assert!(app.deletes().await.is_empty());
    let history = saga["history"].as_array().unwrap();
    assert!(
        history.iter().any(|h| h["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("alliance_id is longer than 256 characters")),
        "{saga}"
    );
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs a saga whose alliances URL is `url` (carrying `password`, and
/// pointing at a closed port) and checks the password is nowhere in what
/// the service stores or publishes.
async fn password_stays_out_of_saga_data(url_of: impl Fn(u16) -> String, password: &str) {
    let (alliances, integrations) = mocks().await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    // Parsed as the service parses ALIANZAS_API_URL, odd escapes and all.
    config.settings.participants.alliances_url =
        url::Url::parse(&url_of(closed_port().await)).expect("an http URL");
    let app = spawn_app_with(alliances, integrations, config).await;
    let p = partner();

    let saga_id = start(&app, &p).await;
    let saga = settled(&app, &saga_id).await;

    assert_eq!(saga["state"], "compensated", "{saga}");
    let last_error = saga["last_error"].as_str().unwrap();
    assert!(last_error.contains("connection failed"), "{last_error}");
    let listed = app.get("/sagas").await.text().await.unwrap();
    app.wait_for_entries(&app.channels.saga_events, 1, |e| {
        e.get("event_type").map(String::as_str) == Some("SagaCompensated")
            && e.get("saga_id") == Some(&saga_id)
    })
    .await;
    let events = format!("{:?}", app.entries(&app.channels.saga_events).await);
    for (what, text) in [
        ("the saga and its history", saga.to_string()),
        ("GET /sagas", listed),
        ("saga-events", events),
    ] {
        assert!(
            !text.contains(password),
            "{what} shows the password: {text}"
        );
    }
}

#[tokio::test]
async fn credentials_in_a_participant_url_never_reach_saga_data() {
    password_stays_out_of_saga_data(
        |port| format!("http://saga-user:s3cret-pw@127.0.0.1:{port}"),
        "s3cret-pw",
    )
    .await;
    // A user name that is not UTF-8 once decoded: reqwest cannot turn it
    // into an Authorization header and leaves it in the request URL.
    password_stays_out_of_saga_data(
        |port| format!("http://%FF:s3cret-pw2@127.0.0.1:{port}"),
        "s3cret-pw2",
    )
    .await;
}

#[tokio::test]
async fn a_401_from_integrations_is_retried_then_parked() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, ResponseTemplate::new(400), None).await;
    Mock::given(method("DELETE"))
        .and(path(format!("/partners/{}", "p-401")))
        .respond_with(ResponseTemplate::new(401))
        .mount(&integrations)
        .await;
    let app = spawn_app(alliances, integrations).await;

    let saga_id = start(&app, "p-401").await;
    let saga = settled(&app, &saga_id).await;

    assert_eq!(saga["state"], "failed", "{saga}");
    assert_eq!(app.deletes().await.len(), 3);
}
